"""File-descriptor syscalls the os module lacks or cannot do in place: ioctl on a mutable
buffer, tee(2), memfd_create with MFD_EXEC, close_range, openat2 (a path resolved as
inside a root directory), a description's owner (F_GETOWN_EX, F_GETSIG)."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct

from cpt.procfs import map_files_path
from cpt.sys._libc import PinnedBuffer, checked_syscall, errno_error, get_errno, raw_syscall
from cpt.sys.syscalls import NR

MFD_CLOEXEC = 0x1
MFD_ALLOW_SEALING = 0x2
MFD_HUGETLB = 0x4
MFD_NOEXEC_SEAL = 0x8
MFD_EXEC = 0x10

AT_FDCWD = -100

F_ADD_SEALS = 1033
F_GET_SEALS = 1034
F_SEAL_SEAL = 0x1
F_SEAL_SHRINK = 0x2
F_SEAL_GROW = 0x4
F_SEAL_WRITE = 0x8

SPLICE_F_MOVE = 1
SPLICE_F_NONBLOCK = 2

# openat2's struct open_how.resolve
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

CLOSE_RANGE_UNSHARE = 1 << 1
CLOSE_RANGE_CLOEXEC = 1 << 2

_NR_IOCTL = int(NR.ioctl)


def ioctl(
    fd: int, request: int, arg: int | bytearray | memoryview = 0, pid: int | None = None
) -> int:
    """ioctl(2). `arg` is an integer argument, or a mutable buffer the kernel reads and
    writes IN PLACE (no 1024-byte copy limit as with fcntl.ioctl). Returns the result."""
    if isinstance(arg, int):
        ret = raw_syscall(_NR_IOCTL, fd, request, arg)
    else:
        with PinnedBuffer(arg, writable=True) as pb:
            ret = raw_syscall(_NR_IOCTL, fd, request, pb.address)
    if ret == -1:
        raise errno_error(get_errno(), f"ioctl(fd {fd}, {request:#x})", pid)
    return ret


def tee(fd_in: int, fd_out: int, length: int, flags: int = 0) -> int:
    """tee(2): duplicate up to `length` bytes of pipe `fd_in` into pipe `fd_out` without
    consuming them (how pending pipe data is peeked at dump). 0 when the pipe is empty."""
    return checked_syscall(
        f"tee(fd {fd_in} -> fd {fd_out})", None, NR.tee, fd_in, fd_out, length, flags
    )


def memfd_create(name: str, flags: int = MFD_CLOEXEC) -> int:
    """memfd_create(2). MFD_EXEC is dropped on kernels older than 6.3, which reject it."""
    try:
        return os.memfd_create(name, flags)
    except OSError as e:
        # Kernels before 6.3 know neither MFD_EXEC nor MFD_NOEXEC_SEAL (EINVAL).
        if e.errno == errno.EINVAL and flags & MFD_EXEC:
            return os.memfd_create(name, flags & ~MFD_EXEC)
        raise OSError(e.errno, f"memfd_create({name!r}): {e.strerror}") from None


def close_range(first: int, last: int, flags: int = 0) -> None:
    """close_range(2) in this process (CLOSE_RANGE_CLOEXEC marks instead of closing)."""
    checked_syscall(f"close_range({first}, {last})", None, NR.close_range, first, last, flags)


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """openat2(2): open `path` relative to `dirfd` with the RESOLVE_* rules `resolve`
    (RESOLVE_IN_ROOT: as if `dirfd` were the root directory, so that neither ".." nor an
    absolute symlink leaves it).  Returns the new fd; OSError with the errno and path."""
    if not flags & (os.O_CREAT | O_TMPFILE):
        mode = 0  # openat2 refuses a mode without O_CREAT or O_TMPFILE (EINVAL)
    how = (ctypes.c_uint64 * 3)(flags, mode, resolve)
    cpath = ctypes.create_string_buffer(os.fsencode(path))
    ret = raw_syscall(
        NR.openat2, dirfd, ctypes.addressof(cpath), ctypes.addressof(how), ctypes.sizeof(how)
    )
    if ret == -1:
        err = get_errno()
        raise OSError(err, os.strerror(err), path)
    return ret


O_TMPFILE = getattr(os, "O_TMPFILE", 0o20200000)


def shared_anon_file(size: int) -> int:
    """A new shared anonymous memory object (what mmap(MAP_SHARED|MAP_ANONYMOUS) creates,
    named "/dev/zero (deleted)" in /proc/PID/maps), as an O_RDWR fd of this process.

    The kernel creates such objects only through mmap: map one, open it through
    /proc/self/map_files (needs CAP_SYS_ADMIN), unmap it; the fd keeps it alive.
    """
    prot = 0x1 | 0x2  # PROT_READ | PROT_WRITE
    flags = 0x01 | 0x20  # MAP_SHARED | MAP_ANONYMOUS
    addr = raw_syscall(int(NR.mmap), 0, size, prot, flags, -1 & 0xFFFFFFFFFFFFFFFF, 0)
    if addr == -1:
        raise errno_error(get_errno(), f"mmap of a {size}-byte shared anonymous object")
    try:
        return os.open(map_files_path("self", addr, addr + size), os.O_RDWR | os.O_CLOEXEC)
    finally:
        raw_syscall(int(NR.munmap), addr, size)


MQUEUE_MAGIC = 0x19800202


def fs_magic(path: str) -> int:
    """statfs(path).f_type: which filesystem a path (or a /proc/PID/fd/N link) is on."""
    buf = ctypes.create_string_buffer(120)  # struct statfs; f_type is its first long
    cpath = ctypes.create_string_buffer(os.fsencode(path))
    checked_syscall(
        f"statfs({path})", None, NR.statfs, ctypes.addressof(cpath), ctypes.addressof(buf)
    )
    return int.from_bytes(buf.raw[:8], "little")


# fcntl(2): a description's owner and signal
F_SETSIG = 10
F_GETSIG = 11
F_SETOWN_EX = 15
F_GETOWN_EX = 16
F_SETLEASE = 1024
F_GETLEASE = 1025
O_ASYNC = 0o20000  # FASYNC
_OWNER_EX = struct.Struct("<ii")  # struct f_owner_ex: type, pid


def get_owner(fd: int) -> tuple[int, int, int]:
    """(F_OWNER_* type, pid, F_GETSIG signal) of the description of `fd`."""
    kind, pid = _OWNER_EX.unpack(fcntl.fcntl(fd, F_GETOWN_EX, bytes(_OWNER_EX.size)))
    return kind, pid, fcntl.fcntl(fd, F_GETSIG)


def pack_owner(kind: int, pid: int) -> bytes:
    """The struct f_owner_ex F_SETOWN_EX takes."""
    return _OWNER_EX.pack(kind, pid)
