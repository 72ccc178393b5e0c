"""Memory of another process: process_vm_readv/writev, the PAGEMAP_SCAN ioctl, mm constants.

process_vm_{readv,writev} are the hot path of dump and restore. Remote ranges are packed
1024 at a time (IOV_MAX) into one preallocated iovec array per thread, the local side is
ONE iovec over the caller's buffer, and partial transfers (an unmapped or protected page,
or the kernel's MAX_RW_COUNT cap) are resumed from the exact byte they stopped at.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import struct
import threading
from collections.abc import Sequence
from itertools import chain

from cpt.procfs import Proc, clear_refs, open_pagemap
from cpt.sys._libc import PinnedBuffer, errno_error, get_errno, raw_syscall
from cpt.sys.arch import PAGE_SHIFT
from cpt.sys.syscalls import NR

IOV_MAX = 1024

# mmap/mprotect (include/uapi/asm-generic/mman*.h).
PROT_NONE = 0x0
PROT_READ = 0x1
PROT_WRITE = 0x2
PROT_EXEC = 0x4
PROT_GROWSDOWN = 0x01000000
PROT_GROWSUP = 0x02000000
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_SHARED_VALIDATE = 0x03
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_GROWSDOWN = 0x0100
MAP_DENYWRITE = 0x0800
MAP_EXECUTABLE = 0x1000
MAP_LOCKED = 0x2000
MAP_NORESERVE = 0x4000
MAP_POPULATE = 0x8000
MAP_NONBLOCK = 0x10000
MAP_STACK = 0x20000
MAP_HUGETLB = 0x40000
MAP_SYNC = 0x80000
MAP_FIXED_NOREPLACE = 0x100000
MREMAP_MAYMOVE = 1
MREMAP_FIXED = 2
MREMAP_DONTUNMAP = 4
MADV_NORMAL = 0
MADV_RANDOM = 1
MADV_SEQUENTIAL = 2
MADV_WILLNEED = 3
MADV_DONTNEED = 4
MADV_FREE = 8
MADV_REMOVE = 9
MADV_DONTFORK = 10
MADV_DOFORK = 11
MADV_MERGEABLE = 12
MADV_UNMERGEABLE = 13
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MADV_DONTDUMP = 16
MADV_DODUMP = 17
MADV_WIPEONFORK = 18
MADV_KEEPONFORK = 19
MADV_COLD = 20
MADV_PAGEOUT = 21
MADV_POPULATE_READ = 22
MADV_POPULATE_WRITE = 23
MADV_GUARD_INSTALL = 102  # 6.13: accesses to these pages fault (no VMA of their own)

# PAGEMAP_SCAN (include/uapi/linux/fs.h, kernel 6.7+).
PAGEMAP_SCAN = 0xC0606610
PAGE_IS_WPALLOWED = 1 << 0
PAGE_IS_WRITTEN = 1 << 1
PAGE_IS_FILE = 1 << 2
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SWAPPED = 1 << 4
PAGE_IS_PFNZERO = 1 << 5
PAGE_IS_HUGE = 1 << 6
PAGE_IS_SOFT_DIRTY = 1 << 7
PAGE_IS_GUARD = 1 << 8  # 6.15: a guard region's page (MADV_GUARD_INSTALL)
CLEAR_REFS_SOFT_DIRTY = 4  # what to write to /proc/PID/clear_refs (fs/proc/task_mmu.c)
PM_SCAN_WP_MATCHING = 1 << 0
PM_SCAN_CHECK_WPASYNC = 1 << 1

_NR_READV = int(NR.process_vm_readv)
_NR_MADVISE = int(NR.madvise)
_NR_WRITEV = int(NR.process_vm_writev)
_NR_IOCTL = int(NR.ioctl)


class MemoryFault(OSError):
    """A remote address could not be transferred (EFAULT): unmapped or protected page.

    `address` is the first remote byte not transferred; bytes before it were.
    """

    def __init__(self, pid: int, address: int, op: str, transferred: int) -> None:
        super().__init__(
            errno.EFAULT,
            f"{op} pid {pid}: cannot access remote address "
            f"{address:#x} (unmapped or protected page)",
        )
        self.pid = pid
        self.address = address
        self.transferred = transferred


class _IoState(threading.local):
    def __init__(self) -> None:
        # One iovec[IOV_MAX] for the remote side and one iovec for the local side, per thread.
        self.remote = (ctypes.c_uint64 * (2 * IOV_MAX))()
        self.remote_addr = ctypes.addressof(self.remote)
        self.remote_mv = memoryview(self.remote).cast("B")
        self.local = (ctypes.c_uint64 * 2)()
        self.local_addr = ctypes.addressof(self.local)


_io = _IoState()


def _vm_rw(
    nr: int, op: str, pid: int, local: object, remote: Sequence[tuple[int, int]], writable: bool
) -> int:
    ranges = remote if isinstance(remote, list | tuple) else list(remote)
    io = _io
    done = 0
    with PinnedBuffer(local, writable) as pb:
        n = len(ranges)
        i = 0
        skip = 0  # bytes of ranges[i] already transferred after a partial call
        while i < n:
            j = min(n, i + IOV_MAX)
            flat = list(chain.from_iterable(ranges[i:j]))
            if skip:
                flat[0] += skip
                flat[1] -= skip
            want = sum(flat[1::2])
            if done + want > pb.length:
                raise ValueError(
                    f"{op} pid {pid}: local buffer of {pb.length} bytes is "
                    f"smaller than the remote ranges"
                )
            struct.pack_into(f"<{len(flat)}Q", io.remote_mv, 0, *flat)
            io.local[0] = pb.address + done
            io.local[1] = want
            ret = raw_syscall(nr, pid, io.local_addr, 1, io.remote_addr, j - i, 0)
            if ret == -1:
                err = get_errno()
                if err == errno.EFAULT:
                    # Nothing moved: the first byte of the first non-empty range faulted.
                    bad = next((flat[k] for k in range(0, len(flat), 2) if flat[k + 1]), flat[0])
                    raise MemoryFault(pid, bad, op, done)
                raise errno_error(err, op, pid)
            done += ret
            if ret == want:
                i, skip = j, 0
                continue
            if ret == 0:
                # The kernel answers -EFAULT, not 0, when nothing moved: never loop on it.
                raise MemoryFault(pid, flat[0], op, done)
            # Partial: find the range and offset where the kernel stopped, resume there.
            left = ret
            for k in range(0, len(flat), 2):
                if left < flat[k + 1]:
                    skip = (skip if k == 0 else 0) + left
                    i += k // 2
                    break
                left -= flat[k + 1]
    return done


def process_vm_readv(pid: int, remote: Sequence[tuple[int, int]], local: object) -> int:
    """Read the remote (address, length) ranges of `pid` back to back into `local`.

    `local` is any writable contiguous buffer (bytearray, mmap, memoryview) at least as long
    as the ranges together. Returns the byte count; raises MemoryFault at the first byte that
    cannot be read (the bytes before it are in `local`).
    """
    return _vm_rw(_NR_READV, "process_vm_readv", pid, local, remote, True)


def process_vm_writev(pid: int, local: object, remote: Sequence[tuple[int, int]]) -> int:
    """Write `local` (any contiguous buffer, read-only allowed) to the remote ranges of `pid`.

    Honours the target's protections: a read-only page raises MemoryFault (write it through
    /proc/PID/mem, which uses FOLL_FORCE, or mprotect it first).
    """
    return _vm_rw(_NR_WRITEV, "process_vm_writev", pid, local, remote, False)


def populate_write(buf: object, *, threads: int = 0) -> None:
    """Fault every page of `buf` (a writable mapping) in for writing: MADV_POPULATE_WRITE.

    For a shared file mapping this allocates the page cache behind it (and reserves its
    blocks), which is what writing a file costs on a VM whose free memory went back to
    its host.  The range is split between `threads` threads (default: one per CPU, at
    most 4): the allocation scales across CPUs, and the GIL is released during the call.
    Raises OSError (EINVAL where the kernel has no MADV_POPULATE_WRITE, EFAULT or ENOMEM
    when a page cannot be had, e.g. the filesystem is full).
    """
    with PinnedBuffer(buf, True) as pb:
        page = 1 << PAGE_SHIFT
        pages = pb.length // page
        n = max(1, min(threads or min(os.cpu_count() or 1, 4), pages))
        bounds = [pb.address + page * (pages * i // n) for i in range(n + 1)]
        bounds[-1] = pb.address + pb.length
        errors: list[int] = []

        def run(lo: int, hi: int) -> None:
            if hi > lo and raw_syscall(_NR_MADVISE, lo, hi - lo, MADV_POPULATE_WRITE) == -1:
                errors.append(get_errno())

        helpers = [
            threading.Thread(target=run, args=(bounds[i], bounds[i + 1]), name="cpt-populate")
            for i in range(1, n)
        ]
        for t in helpers:
            t.start()
        run(bounds[0], bounds[1])
        for t in helpers:
            t.join()
        if errors:
            raise errno_error(errors[0], f"madvise(MADV_POPULATE_WRITE, {pb.length} bytes)")


def page_write_rate(nbytes: int = 32 << 20, threads: int = 2) -> float:
    """Bytes per second that process_vm_writev puts into fresh anonymous pages from pages
    in memory, as a restore writes a tree's memory (restore/mm.py: two threads for a large
    one): measured on `nbytes` of this process's own memory (the faults and zeroing of
    the fresh pages are most of the cost)."""
    import mmap
    import time

    src = mmap.mmap(-1, nbytes)
    dst = mmap.mmap(-1, nbytes)
    try:
        populate_write(src)
        view = memoryview(src)
        with PinnedBuffer(dst, True) as pb:
            n = max(1, threads)
            bounds = [(nbytes * i // n) & ~((1 << PAGE_SHIFT) - 1) for i in range(n)] + [nbytes]
            pid = os.getpid()

            def run(lo: int, hi: int) -> None:
                process_vm_writev(pid, view[lo:hi], [(pb.address + lo, hi - lo)])

            helpers = [
                threading.Thread(target=run, args=(bounds[i], bounds[i + 1]), name="cpt-probe")
                for i in range(1, n)
            ]
            t0 = time.perf_counter()
            for t in helpers:
                t.start()
            run(bounds[0], bounds[1])
            for t in helpers:
                t.join()
            took = time.perf_counter() - t0
        view.release()
    finally:
        src.close()
        dst.close()
    return nbytes / max(took, 1e-9)


# ---- PAGEMAP_SCAN ------------------------------------------------------------------------------

_PM_SCAN_ARG = struct.Struct("<12Q")
_PAGE_REGION = struct.Struct("<3Q")
_SCAN_VEC_LEN = 4096


class _ScanState(threading.local):
    def __init__(self) -> None:
        self.arg = ctypes.create_string_buffer(_PM_SCAN_ARG.size)
        self.arg_addr = ctypes.addressof(self.arg)
        self.vec = ctypes.create_string_buffer(_PAGE_REGION.size * _SCAN_VEC_LEN)
        self.vec_addr = ctypes.addressof(self.vec)


_scan = _ScanState()


def pagemap_scan(
    pagemap_fd: int,
    start: int,
    end: int,
    flags: int = 0,
    category_mask: int = 0,
    category_inverted: int = 0,
    category_anyof_mask: int = 0,
    return_mask: int = 0,
    max_pages: int = 0,
    pid: int | None = None,
) -> list[tuple[int, int, int]]:
    """PAGEMAP_SCAN over [start, end) of an open /proc/PID/pagemap.

    Returns (start, end, categories) regions with `categories` masked by `return_mask`,
    adjacent equal regions merged. A page matches when
    ((categories ^ category_inverted) & category_mask) == category_mask and, if given,
    (categories ^ category_inverted) & category_anyof_mask != 0. With return_mask == 0 no
    output vector is passed (use it for PM_SCAN_WP_MATCHING alone) and [] is returned.
    `max_pages` (0 = no limit) caps the pages reported. `pid` only names the error.
    """
    st = _scan
    out: list[tuple[int, int, int]] = []
    vec_len = _SCAN_VEC_LEN if return_mask else 0
    vec = st.vec_addr if return_mask else 0
    pages = 0
    cur = start
    while cur < end:
        limit = max_pages - pages if max_pages else 0
        _PM_SCAN_ARG.pack_into(
            st.arg,
            0,
            _PM_SCAN_ARG.size,
            flags,
            cur,
            end,
            0,
            vec,
            vec_len,
            limit,
            category_inverted,
            category_mask,
            category_anyof_mask,
            return_mask,
        )
        ret = raw_syscall(_NR_IOCTL, pagemap_fd, PAGEMAP_SCAN, st.arg_addr)
        if ret == -1:
            raise errno_error(get_errno(), f"ioctl(PAGEMAP_SCAN, {cur:#x}-{end:#x})", pid)
        walk_end = _PM_SCAN_ARG.unpack_from(st.arg, 0)[4]
        if ret:
            raw = ctypes.string_at(st.vec_addr, ret * _PAGE_REGION.size)
            for rs, re_, cat in _PAGE_REGION.iter_unpack(raw):
                if out and out[-1][1] == rs and out[-1][2] == cat:
                    out[-1] = (out[-1][0], re_, cat)
                else:
                    out.append((rs, re_, cat))
                pages += (re_ - rs) >> PAGE_SHIFT
        if max_pages and pages >= max_pages:
            break
        # walk_end can be stale: trust it only when the vector filled up (the scan stopped early).
        if not vec_len or ret < vec_len or walk_end <= cur:
            break
        cur = walk_end
    return out


def soft_dirty_works() -> bool:
    """Does clear_refs(4) + a write set bit 55 of the page's pagemap entry?  (Needs
    CONFIG_MEM_SOFT_DIRTY; not set on this project's kernels.)"""
    page = 1 << PAGE_SHIFT
    buf = ctypes.create_string_buffer(2 * page)
    addr = (ctypes.addressof(buf) + page - 1) & ~(page - 1)
    clear_refs("self", CLEAR_REFS_SOFT_DIRTY)
    ctypes.memset(addr, 1, 1)
    fd = open_pagemap("self")
    try:
        entry = int.from_bytes(os.pread(fd, 8, (addr >> PAGE_SHIFT) * 8), "little")
    finally:
        os.close(fd)
    return bool(entry >> 55 & 1)


@functools.cache
def guard_category() -> int:
    """PAGE_IS_GUARD if this kernel's PAGEMAP_SCAN knows it (6.15), else 0 (an unknown
    category is EINVAL).  Probed once, on this process's own pagemap."""
    fd = open_pagemap(os.getpid())
    try:
        here = _scan.vec_addr & ~(4095)
        pagemap_scan(fd, here, here + 4096, category_mask=PAGE_IS_GUARD)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return 0
        raise
    finally:
        os.close(fd)
    return PAGE_IS_GUARD


@functools.cache
def guard_vmflag() -> bool:
    """Whether this kernel marks a mapping that may hold guard regions with the VmFlags
    code "gu" in smaps (VM_MAYBE_GUARD, 6.19 and backports): set by MADV_GUARD_INSTALL,
    kept by a merge (a sticky flag) and copied on fork, so that a mapping without it
    holds none.  Probed once, on a guard page of this process's own."""
    if not guard_category():
        return False
    import mmap

    m = mmap.mmap(-1, 1 << PAGE_SHIFT)
    try:
        with PinnedBuffer(m, True) as pb:
            if raw_syscall(_NR_MADVISE, pb.address, pb.length, MADV_GUARD_INSTALL) == -1:
                return False
            codes = Proc().smaps_vmflags(os.getpid()).get((pb.address, pb.address + pb.length))
        return codes is not None and "gu" in codes
    finally:
        m.close()
