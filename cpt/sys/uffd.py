"""userfaultfd: the ioctls write-protect tracking uses (include/uapi/linux/userfaultfd.h).

A userfaultfd acts on the mm of the process that created it, whoever holds the fd: the
tracker injects userfaultfd() into a target, takes the fd with pidfd_getfd, and registers
the target's mappings from outside.  With UFFD_FEATURE_WP_ASYNC a write to a protected page
is resolved by the kernel itself (the protection is dropped, the page counts as written):
the target never blocks and no event is ever read.  PAGEMAP_SCAN (mem.py) reports the
written pages and protects them again.

Errors are OSError with the errno the kernel gave: a dead mm (the process exec'd or exited)
shows as ENOMEM from register and ESRCH from writeprotect (uffd_mm_alive); EINVAL or
EPERM from register: a mapping that
cannot be tracked (the vDSO, VM_PFNMAP/VM_IO, a shared mapping without VM_MAYWRITE).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct

from cpt.sys._libc import get_errno, raw_syscall
from cpt.sys.anonfd import UFFD_USER_MODE_ONLY, userfaultfd
from cpt.sys.syscalls import NR

UFFD_API = 0xAA
# _IOWR(0xAA, nr, struct): API 0x3f (24 bytes), REGISTER 0x00 (32), UNREGISTER 0x01 (16),
# WRITEPROTECT 0x06 (24)
UFFDIO_API = 0xC018AA3F
UFFDIO_REGISTER = 0xC020AA00
UFFDIO_UNREGISTER = 0x8010AA01
UFFDIO_WRITEPROTECT = 0xC018AA06
UFFDIO_REGISTER_MODE_MISSING = 1 << 0
UFFDIO_REGISTER_MODE_WP = 1 << 1
UFFDIO_WRITEPROTECT_MODE_WP = 1 << 0
UFFD_FEATURE_EVENT_FORK = 1 << 1
UFFD_FEATURE_EVENT_REMAP = 1 << 2
UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12
UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
UFFD_FEATURE_WP_ASYNC = 1 << 15
# What tracking asks for: asynchronous write-protect only.  No EVENT_FORK (a fork would
# block until someone reads the event), no EVENT_REMAP: a moved mapping loses its
# registration, and the tracker finds it unregistered and copies it whole.
TRACK_FEATURES = UFFD_FEATURE_WP_ASYNC

_API = struct.Struct("<QQQ")  # api, features, ioctls
_REGISTER = struct.Struct("<QQQQ")  # range.start, range.len, mode, ioctls
_RANGE = struct.Struct("<QQ")
_WRITEPROTECT = struct.Struct("<QQQ")  # range.start, range.len, mode
_NR_IOCTL = int(NR.ioctl)


def _ioctl(fd: int, request: int, buf: ctypes.Array[ctypes.c_char], what: str) -> None:
    if raw_syscall(_NR_IOCTL, fd, request, ctypes.addressof(buf)) == -1:
        err = get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def uffd_api(fd: int, features: int) -> tuple[int, int]:
    """UFFDIO_API with `features`; returns (features, ioctls) the kernel grants.  EINVAL:
    a feature this kernel lacks."""
    buf = ctypes.create_string_buffer(_API.pack(UFFD_API, features, 0), _API.size)
    _ioctl(fd, UFFDIO_API, buf, f"UFFDIO_API(features {features:#x})")
    _, got, ioctls = _API.unpack(buf.raw)
    return got, ioctls


def uffd_register_wp(fd: int, start: int, length: int, pid: int | None = None) -> int:
    """UFFDIO_REGISTER [start, start+length) in write-protect mode; returns the ioctls the
    range supports.  Registering a range the same fd registered already is allowed."""
    buf = ctypes.create_string_buffer(
        _REGISTER.pack(start, length, UFFDIO_REGISTER_MODE_WP, 0), _REGISTER.size
    )
    who = f" of pid {pid}" if pid is not None else ""
    _ioctl(fd, UFFDIO_REGISTER, buf, f"UFFDIO_REGISTER {start:#x}+{length:#x}{who}")
    return int(_REGISTER.unpack(buf.raw)[3])


def uffd_unregister(fd: int, start: int, length: int) -> None:
    buf = ctypes.create_string_buffer(_RANGE.pack(start, length), _RANGE.size)
    _ioctl(fd, UFFDIO_UNREGISTER, buf, f"UFFDIO_UNREGISTER {start:#x}+{length:#x}")


def uffd_writeprotect(fd: int, start: int, length: int, protect: bool = True) -> None:
    """Protect (or unprotect) a registered range explicitly (PAGEMAP_SCAN with
    PM_SCAN_WP_MATCHING is the cheaper way to protect what is written)."""
    mode = UFFDIO_WRITEPROTECT_MODE_WP if protect else 0
    buf = ctypes.create_string_buffer(_WRITEPROTECT.pack(start, length, mode), _WRITEPROTECT.size)
    _ioctl(fd, UFFDIO_WRITEPROTECT, buf, f"UFFDIO_WRITEPROTECT {start:#x}+{length:#x}")


def uffd_mm_alive(fd: int, addr: int, page: int = 4096) -> bool:
    """Is the mm the fd was made for still alive?  After an exec or an exit it is not:
    UFFDIO_REGISTER then fails with ENOMEM, as for an unmapped range, but
    UFFDIO_WRITEPROTECT says ESRCH.  The probe UNprotects one page at `addr` (a page
    written since the last scan stays written; a clean one only counts as written once):
    it never hides a write."""
    try:
        uffd_writeprotect(fd, addr, page, protect=False)
    except OSError as e:
        return e.errno != errno.ESRCH
    return True


def tracking_fd(flags: int = os.O_CLOEXEC | os.O_NONBLOCK) -> int:
    """A userfaultfd of THIS process set up for tracking (WP_ASYNC); probes the kernel."""
    fd = userfaultfd(flags | UFFD_USER_MODE_ONLY)
    try:
        uffd_api(fd, TRACK_FEATURES)
    except BaseException:
        os.close(fd)
        raise
    return fd


def probe_tracking() -> str:
    """Does write tracking work here?  Tracks two pages of this process: both count as
    written, a write to one after the scan shows exactly that one.  Raises OSError why not."""
    from cpt.procfs import open_pagemap
    from cpt.sys.mem import PAGE_IS_WRITTEN, PM_SCAN_WP_MATCHING, pagemap_scan

    page = os.sysconf("SC_PAGE_SIZE")
    buf = mmap.mmap(-1, 2 * page, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    cbuf = (ctypes.c_char * (2 * page)).from_buffer(buf)
    addr = ctypes.addressof(cbuf)
    fd = tracking_fd()
    pm = open_pagemap("self")
    try:
        buf[0] = buf[page] = 1
        uffd_register_wp(fd, addr, 2 * page)

        def scan() -> list[tuple[int, int, int]]:
            return pagemap_scan(
                pm,
                addr,
                addr + 2 * page,
                flags=PM_SCAN_WP_MATCHING,
                category_mask=PAGE_IS_WRITTEN,
                return_mask=PAGE_IS_WRITTEN,
            )

        first = scan()
        buf[page] = 2
        second = scan()
        uffd_unregister(fd, addr, 2 * page)
    finally:
        os.close(pm)
        os.close(fd)
        del cbuf
        buf.close()
    if first != [(addr, addr + 2 * page, PAGE_IS_WRITTEN)]:
        raise OSError("a registered page that was never protected does not count as written")
    if second != [(addr + page, addr + 2 * page, PAGE_IS_WRITTEN)]:
        raise OSError(f"the scan did not find exactly the page written: {second}")
    return "userfaultfd WP_ASYNC + PAGEMAP_SCAN: pre-dumps and incremental dumps"


__all__ = [
    "TRACK_FEATURES",
    "UFFDIO_REGISTER_MODE_WP",
    "UFFD_FEATURE_WP_ASYNC",
    "probe_tracking",
    "tracking_fd",
    "uffd_api",
    "uffd_mm_alive",
    "uffd_register_wp",
    "uffd_unregister",
    "uffd_writeprotect",
]
