"""The ways a dump can put a process's pages into its image file, each timed on the same
pages (for bench/cli_bench.py, on host-cold memory: ENGINE-NOTES "Writing the image").

    write       process_vm_readv into a reused 16 MiB buffer, write() to a new file (the
                streaming writer: the page cache is allocated inside the freeze)
    O_DIRECT    the same, the file opened O_DIRECT (no page cache; the disk's speed)
    splice      process_vm_readv into the buffer, vmsplice it into a pipe, splice the pipe
                to a new file (CRIU's page pipes; CRIU's parasite vmsplices the target's
                own memory, so its copy is the splice alone: the page cache is allocated
                by the splice as by write())
    reserve     cpt's path: before the freeze ftruncate + mmap(MAP_SHARED) of the file and
                MADV_POPULATE_WRITE of it on two threads (cpt.sys.mem.populate_write);
                in the freeze process_vm_readv straight into the mapping

Each returns the seconds of what would be inside the frozen window (and, for reserve, of
the part before it).  Run as root on a live process; every file is removed.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import time
from collections.abc import Callable
from pathlib import Path

from cr_bench import batches  # bench/: the ranges cut into 16 MiB batches

from cpt.sys.mem import populate_write, process_vm_readv

BUF_SIZE = 16 << 20
PIPE_SIZE = 1 << 20
SPLICE_F_MOVE = 1
F_SETPIPE_SZ = 1031


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.vmsplice.argtypes = [ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_ulong, ctypes.c_uint]
_libc.vmsplice.restype = ctypes.c_ssize_t


def _buffer() -> mmap.mmap:
    return mmap.mmap(-1, BUF_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)


def _streamed(pid: int, ranges: list[tuple[int, int]], path: Path, flags: int) -> float:
    buf = _buffer()
    view = memoryview(buf)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flags, 0o600)
    try:
        t0 = time.perf_counter()
        for batch in batches(ranges, BUF_SIZE):
            n = process_vm_readv(pid, batch, buf)
            off = 0
            while off < n:
                off += os.write(fd, view[off:n])
        return time.perf_counter() - t0
    finally:
        os.close(fd)
        path.unlink()
        view.release()
        buf.close()


def write(pid: int, ranges: list[tuple[int, int]], path: Path) -> float:
    return _streamed(pid, ranges, path, 0)


def direct(pid: int, ranges: list[tuple[int, int]], path: Path) -> float:
    return _streamed(pid, ranges, path, os.O_DIRECT)


def splice(pid: int, ranges: list[tuple[int, int]], path: Path) -> float:
    buf = _buffer()
    cbuf = ctypes.c_char.from_buffer(buf)
    base = ctypes.addressof(cbuf)
    r, w = os.pipe()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
        t0 = time.perf_counter()
        for batch in batches(ranges, BUF_SIZE):
            n = process_vm_readv(pid, batch, buf)
            off = 0
            while off < n:
                iov = _Iovec(base + off, min(PIPE_SIZE, n - off))
                put = _libc.vmsplice(w, ctypes.byref(iov), 1, 0)
                if put < 0:
                    raise OSError(ctypes.get_errno(), "vmsplice")
                left = put
                while left:
                    left -= os.splice(r, fd, left, flags=SPLICE_F_MOVE)
                off += put
        return time.perf_counter() - t0
    finally:
        os.close(fd)
        os.close(r)
        os.close(w)
        path.unlink()
        del cbuf
        buf.close()


def reserve(pid: int, ranges: list[tuple[int, int]], path: Path) -> tuple[float, float]:
    """(before the freeze, in it)."""
    total = sum(n for _, n in ranges)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        t0 = time.perf_counter()
        os.ftruncate(fd, total)
        area = mmap.mmap(fd, total, flags=mmap.MAP_SHARED)
        populate_write(area)
        t1 = time.perf_counter()
        view = memoryview(area)
        off = 0
        for batch in batches(ranges, BUF_SIZE):
            n = sum(k for _, k in batch)
            off += process_vm_readv(pid, batch, view[off : off + n])
        t2 = time.perf_counter()
        view.release()
        area.close()
        return t1 - t0, t2 - t1
    finally:
        os.close(fd)
        path.unlink()


PATHS: dict[str, Callable[[int, list[tuple[int, int]], Path], float]] = {
    "write": write,
    "O_DIRECT": direct,
    "splice": splice,
}
