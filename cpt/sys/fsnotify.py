"""inotify, and file handles (name_to_handle_at / open_by_handle_at): how the path of an
inotify watch is found again from the handle that fdinfo shows."""

from __future__ import annotations

import ctypes
import os
import struct

from cpt.sys._libc import checked_syscall
from cpt.sys.syscalls import NR

IN_CLOEXEC = os.O_CLOEXEC
IN_NONBLOCK = os.O_NONBLOCK
IN_DONT_FOLLOW = 0x02000000
MAX_HANDLE_SZ = 128
_FILE_HANDLE = struct.Struct("<Ii")  # struct file_handle: handle_bytes, handle_type, f_handle[]


def inotify_init1(flags: int = IN_CLOEXEC) -> int:
    return checked_syscall("inotify_init1", None, NR.inotify_init1, flags)


def inotify_add_watch(fd: int, path: str | bytes, mask: int) -> int:
    """-> the watch descriptor."""
    p = ctypes.create_string_buffer(os.fsencode(path))
    return checked_syscall(
        f"inotify_add_watch({os.fsdecode(path)!r})",
        None,
        NR.inotify_add_watch,
        fd,
        ctypes.addressof(p),
        mask,
    )


def inotify_rm_watch(fd: int, wd: int) -> None:
    checked_syscall(f"inotify_rm_watch(wd {wd})", None, NR.inotify_rm_watch, fd, wd)


def name_to_handle_at(dirfd: int, path: str | bytes, flags: int = 0) -> tuple[int, bytes, int]:
    """-> (handle type, handle bytes, mount id) of `path` (relative to dirfd)."""
    buf = ctypes.create_string_buffer(_FILE_HANDLE.pack(MAX_HANDLE_SZ, 0), 8 + MAX_HANDLE_SZ)
    mnt = ctypes.c_int(0)
    p = ctypes.create_string_buffer(os.fsencode(path))
    checked_syscall(
        f"name_to_handle_at({os.fsdecode(path)!r})",
        None,
        NR.name_to_handle_at,
        dirfd,
        ctypes.addressof(p),
        ctypes.addressof(buf),
        ctypes.addressof(mnt),
        flags,
    )
    size, htype = _FILE_HANDLE.unpack_from(buf.raw)
    return htype, buf.raw[8 : 8 + size], mnt.value


def open_by_handle_at(mount_fd: int, htype: int, handle: bytes, flags: int) -> int:
    """Open what a handle names on the filesystem of mount_fd (needs CAP_DAC_READ_SEARCH)."""
    buf = ctypes.create_string_buffer(_FILE_HANDLE.pack(len(handle), htype) + handle)
    return checked_syscall(
        "open_by_handle_at", None, NR.open_by_handle_at, mount_fd, ctypes.addressof(buf), flags
    )
