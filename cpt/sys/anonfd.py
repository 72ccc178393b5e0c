"""Anonymous-inode files the os module lacks (Python 3.11): signalfd, timerfd, epoll as a
bare fd, userfaultfd, and kcmp of a target registered in an epoll (KCMP_EPOLL_TFD); the
structs an injected epoll_ctl or timer_settime reads.  eventfd comes from the os module."""

from __future__ import annotations

import ctypes
import os
import struct

from cpt.sys._libc import checked_syscall
from cpt.sys.syscalls import NR
from cpt.sys.task import KCMP_EPOLL_TFD

SFD_CLOEXEC = TFD_CLOEXEC = EPOLL_CLOEXEC = os.O_CLOEXEC
TFD_NONBLOCK = os.O_NONBLOCK
TFD_TIMER_ABSTIME = 1
TFD_IOC_SET_TICKS = 0x40085400  # _IOW('T', 0, u64); only with CONFIG_CHECKPOINT_RESTORE
EPOLL_CTL_ADD = 1
UFFD_USER_MODE_ONLY = 1  # handle faults of user space only (no CAP_SYS_PTRACE needed)
NSEC = 1_000_000_000

# struct itimerspec: it_interval (sec, nsec), it_value (sec, nsec)
ITIMERSPEC = struct.Struct("<4q")
# struct epoll_event is packed on x86_64: events u32, data u64
EPOLL_EVENT = struct.Struct("<IQ")


def pack_itimerspec(value_ns: int, interval_ns: int) -> bytes:
    return ITIMERSPEC.pack(*divmod(interval_ns, NSEC), *divmod(value_ns, NSEC))


def unpack_itimerspec(data: bytes) -> tuple[int, int]:
    """-> (value_ns, interval_ns)"""
    isec, insec, vsec, vnsec = ITIMERSPEC.unpack(data)
    return vsec * NSEC + vnsec, isec * NSEC + insec


def signalfd(mask: int, flags: int = SFD_CLOEXEC) -> int:
    """A new signalfd for the signals in `mask` (bit n-1 = signal n)."""
    m = ctypes.c_uint64(mask)
    return checked_syscall("signalfd4", None, NR.signalfd4, -1, ctypes.addressof(m), 8, flags)


def timerfd_create(clockid: int, flags: int = TFD_CLOEXEC) -> int:
    return checked_syscall(
        f"timerfd_create(clock {clockid})", None, NR.timerfd_create, clockid, flags
    )


def timerfd_settime(fd: int, flags: int, value_ns: int, interval_ns: int) -> None:
    buf = ctypes.create_string_buffer(pack_itimerspec(value_ns, interval_ns), ITIMERSPEC.size)
    checked_syscall(
        "timerfd_settime", None, NR.timerfd_settime, fd, flags, ctypes.addressof(buf), 0
    )


def timerfd_gettime(fd: int) -> tuple[int, int]:
    """-> (remaining ns, 0 = disarmed; interval ns).  For an interval timer that expired
    unread, this also counts the missed expirations into its ticks and re-arms it, as a
    read would (fdinfo alone shows such a timer as disarmed)."""
    buf = ctypes.create_string_buffer(ITIMERSPEC.size)
    checked_syscall("timerfd_gettime", None, NR.timerfd_gettime, fd, ctypes.addressof(buf))
    return unpack_itimerspec(buf.raw)


def timerfd_set_ticks(fd: int, ticks: int) -> None:
    """Expirations a read returns (TFD_IOC_SET_TICKS)."""
    t = ctypes.c_uint64(ticks)
    checked_syscall(
        "ioctl(TFD_IOC_SET_TICKS)", None, NR.ioctl, fd, TFD_IOC_SET_TICKS, ctypes.addressof(t)
    )


def epoll_create1(flags: int = EPOLL_CLOEXEC) -> int:
    return checked_syscall("epoll_create1", None, NR.epoll_create1, flags)


def userfaultfd(flags: int = os.O_CLOEXEC) -> int:
    """userfaultfd(2): a new userfaultfd (flags: O_CLOEXEC, O_NONBLOCK, UFFD_USER_MODE_ONLY)."""
    return checked_syscall("userfaultfd", None, NR.userfaultfd, flags)


def kcmp_epoll_tfd(pid1: int, fd1: int, pid2: int, epfd: int, tfd: int, toff: int) -> int:
    """Is fd1 of pid1 the file registered as the `toff`-th item with fd number `tfd` in
    epoll `epfd` of pid2?  0 yes, 1/2/3 no; OSError EBADF when fd1 is not open in pid1,
    ENOENT when the epoll has no such item."""
    slot = (ctypes.c_uint32 * 3)(epfd, tfd, toff)
    return checked_syscall(
        f"kcmp(KCMP_EPOLL_TFD, {pid1}/{fd1}, {pid2}/{epfd}:{tfd})",
        pid1,
        NR.kcmp,
        pid1,
        pid2,
        KCMP_EPOLL_TFD,
        fd1,
        ctypes.addressof(slot),
    )
