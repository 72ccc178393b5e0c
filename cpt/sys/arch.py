"""x86_64 architecture facts: user_regs_struct as a Python object, page size, syscall ABI.

`Regs` is a plain class over `struct` (not ctypes) so it can leave cpt/sys: the dump stores
`regs.to_bytes()`, the injector edits attributes, restore writes `Regs.from_bytes(...)` back.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from typing import ClassVar

PAGE_SIZE = mmap.PAGESIZE
PAGE_SHIFT = PAGE_SIZE.bit_length() - 1

# The two bytes of the `syscall` instruction.
SYSCALL_INSN = b"\x0f\x05"
# Argument registers of the syscall ABI, in order.
SYSCALL_ARG_REGS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")
# Results in -4095..-1 are -errno (MAX_ERRNO in include/linux/err.h).
MAX_ERRNO = 4095

# Return values of an interrupted syscall that the kernel restarts (include/linux/errno.h).
ERESTARTSYS = 512
ERESTARTNOINTR = 513
ERESTARTNOHAND = 514
ERESTART_RESTARTBLOCK = 516

U64_MASK = (1 << 64) - 1


def to_signed(value: int) -> int:
    """A u64 register value as a signed 64-bit int (rax = 0xffff...fff2 -> -14)."""
    value &= U64_MASK
    return value - (1 << 64) if value >= 1 << 63 else value


def is_syscall_error(result: int) -> bool:
    """True if a signed syscall result is -errno."""
    return -MAX_ERRNO <= result <= -1


class Regs:
    """struct user_regs_struct (NT_PRSTATUS, 216 bytes), fields in kernel order.

    Values are kept as Python ints; `to_bytes` masks them to u64, so `regs.orig_rax = -1`
    is fine. `regs.signed("rax")` reads one back as signed.
    """

    FIELDS: ClassVar[tuple[str, ...]] = (
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
        "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp",
        "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
    )  # fmt: skip
    STRUCT: ClassVar[struct.Struct] = struct.Struct("<27Q")
    SIZE: ClassVar[int] = 216
    OFFSETS: ClassVar[dict[str, int]] = {name: 8 * i for i, name in enumerate(FIELDS)}

    __slots__ = FIELDS

    r15: int
    r14: int
    r13: int
    r12: int
    rbp: int
    rbx: int
    r11: int
    r10: int
    r9: int
    r8: int
    rax: int
    rcx: int
    rdx: int
    rsi: int
    rdi: int
    orig_rax: int
    rip: int
    cs: int
    eflags: int
    rsp: int
    ss: int
    fs_base: int
    gs_base: int
    ds: int
    es: int
    fs: int
    gs: int

    def __init__(self, *values: int, **named: int) -> None:
        if values and len(values) != len(self.FIELDS):
            raise ValueError(f"Regs takes {len(self.FIELDS)} values, got {len(values)}")
        for name, value in zip(self.FIELDS, values or (0,) * len(self.FIELDS), strict=True):
            object.__setattr__(self, name, value)
        for name, value in named.items():
            if name not in self.OFFSETS:
                raise AttributeError(f"Regs has no register {name!r}")
            object.__setattr__(self, name, value)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Regs:
        if len(data) < cls.SIZE:
            raise ValueError(f"user_regs_struct needs {cls.SIZE} bytes, got {len(data)}")
        return cls(*cls.STRUCT.unpack_from(data))

    def to_bytes(self) -> bytes:
        m = U64_MASK
        return self.STRUCT.pack(*[getattr(self, f) & m for f in self.FIELDS])

    def copy(self) -> Regs:
        return Regs(*[getattr(self, f) for f in self.FIELDS])

    def signed(self, name: str) -> int:
        return to_signed(getattr(self, name))

    def items(self) -> Iterator[tuple[str, int]]:
        for f in self.FIELDS:
            yield f, getattr(self, f)

    def as_dict(self) -> dict[str, int]:
        return dict(self.items())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Regs):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Regs(rip={self.rip:#x}, rsp={self.rsp:#x}, rax={self.rax:#x}, "
            f"orig_rax={self.signed('orig_rax')})"
        )
