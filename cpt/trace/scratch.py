"""A scratch mapping inside a stopped, traced process: where injected syscalls find their
argument and result buffers.

The address is chosen in a gap of every layout given (the live one, and at restore also
the layout being rebuilt), away from any neighbour so the kernel cannot merge it into an
adjacent VMA, and mapped with MAP_FIXED_NOREPLACE.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from cpt.errors import CptError
from cpt.sys.arch import PAGE_SIZE
from cpt.sys.mem import (
    MAP_ANONYMOUS,
    MAP_FIXED_NOREPLACE,
    MAP_PRIVATE,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
)
from cpt.sys.syscalls import NR

from .tracee import Tracee

# Lowest and highest addresses we ever pick (mmap_min_addr is at most 64 KiB; the top of
# the 47-bit user space is below the vsyscall page).
_LOW = 1 << 24
_HIGH = (1 << 47) - (1 << 24)
SCRATCH_SIZE = 1 << 20  # room for seccomp programs, clone args, paths, sigaction tables


def free_gap(occupied: Iterable[tuple[int, int]], size: int, guard: int = 16 * PAGE_SIZE) -> int:
    """A page-aligned address with `size` bytes free and `guard` bytes free on each side."""
    ranges = sorted((max(s, 0), e) for s, e in occupied)
    best = None
    prev_end = _LOW
    for s, e in [*ranges, (_HIGH, _HIGH)]:
        lo, hi = max(prev_end, _LOW), min(s, _HIGH)
        if hi - lo >= size + 2 * guard:
            gap = hi - lo
            if best is None or gap > best[1]:
                best = (lo, gap)
        prev_end = max(prev_end, e)
    if best is None:
        raise CptError(f"no free {size}-byte gap in the address space for a scratch area")
    lo, gap = best
    # the middle of the largest gap: far from the heap's and the stack's growth
    addr = lo + (gap - size) // 2
    return addr & ~(PAGE_SIZE - 1)


class Scratch:
    """A private anonymous rwx mapping in the target, addressed through /proc/PID/mem."""

    # the first page holds the syscall instruction and small result buffers; push()
    # hands out the rest for arguments, from the bottom up, until reset()
    ARGS = PAGE_SIZE

    def __init__(self, tracee: Tracee, addr: int, size: int) -> None:
        self.tracee = tracee
        self.addr = addr
        self.size = size
        self._top = self.ARGS

    @classmethod
    def map(
        cls,
        tracee: Tracee,
        occupied: Iterable[tuple[int, int]],
        size: int = SCRATCH_SIZE,
        *,
        exec_: bool = False,
    ) -> Scratch:
        addr = free_gap(occupied, size)
        prot = PROT_READ | PROT_WRITE | (PROT_EXEC if exec_ else 0)
        got = tracee.syscall_checked(
            NR.mmap, addr, size, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0
        )
        if got != addr:
            raise CptError(f"scratch mmap in pid {tracee.pid} landed at {got:#x}, not {addr:#x}")
        return cls(tracee, addr, size)

    def unmap(self, tracee: Tracee | None = None) -> None:
        (tracee or self.tracee).syscall_checked(NR.munmap, self.addr, self.size)

    # -- buffers

    def put(self, data: bytes, offset: int = 0) -> int:
        if offset + len(data) > self.size:
            raise CptError(
                f"{len(data)} bytes do not fit the scratch area of pid {self.tracee.pid}"
            )
        self.tracee.write_mem(self.addr + offset, data)
        return self.addr + offset

    def push(self, data: bytes) -> int:
        """Copy `data` into the argument area; returns its address in the target."""
        addr = self.put(data, self._top)
        self._top = (self._top + len(data) + 15) & ~15
        return addr

    def push_str(self, s: str | bytes) -> int:
        b = s.encode("utf-8", "surrogateescape") if isinstance(s, str) else s
        return self.push(b + b"\0")

    def reset(self) -> None:
        self._top = self.ARGS

    def get(self, offset: int, n: int) -> bytes:
        return self.tracee.read_mem(self.addr + offset, n)

    def u64(self, offset: int = 0) -> int:
        return int(struct.unpack("<Q", self.get(offset, 8))[0])

    def i32(self, offset: int = 0) -> int:
        return int(struct.unpack("<i", self.get(offset, 4))[0])
