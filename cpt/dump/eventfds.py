"""eventfd (counter, semaphore mode), signalfd (mask) and timerfd (clock, expiry, interval,
unread expirations): all the state is in fdinfo, except a timerfd's, read through a
duplicate of the fd (pidfd_getfd)."""

from __future__ import annotations

import os
from typing import Any

from cptimage.records import EventFd, SignalFd, TimerFd

from ..procfs import FdInfo, FdKind, FdTarget, Proc
from ..sys.anonfd import timerfd_gettime
from ..sys.task import pidfd_getfd, pidfd_open
from .fdbase import FdContext, file_flags
from .options import DumpOptions


class EventFds:
    kinds = frozenset({FdKind.EVENTFD})

    def unsupported(self, pid: int, fd: int, ft: FdTarget, opts: DumpOptions) -> str | None:
        return None

    def key(self, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> tuple[Any, ...]:
        ev = fi.eventfd
        return ("eventfd", ev.id if ev else None)

    def dump(self, ctx: FdContext, ident: int, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> Any:
        ev = fi.eventfd
        assert ev is not None, f"{ctx.where(pid, fd)}: fdinfo without eventfd-count"
        return EventFd(id=ident, flags=file_flags(fi), semaphore=int(ev.semaphore), count=ev.count)


class SignalFds:
    kinds = frozenset({FdKind.SIGNALFD})

    def unsupported(self, pid: int, fd: int, ft: FdTarget, opts: DumpOptions) -> str | None:
        return None

    def key(self, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> tuple[Any, ...]:
        return ("signalfd",)

    def dump(self, ctx: FdContext, ident: int, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> Any:
        mask = fi.signalfd_mask
        assert mask is not None, f"{ctx.where(pid, fd)}: fdinfo without sigmask"
        return SignalFd(id=ident, flags=file_flags(fi), sigmask=mask)


class TimerFds:
    kinds = frozenset({FdKind.TIMERFD})

    def unsupported(self, pid: int, fd: int, ft: FdTarget, opts: DumpOptions) -> str | None:
        return None

    def key(self, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> tuple[Any, ...]:
        return ("timerfd",)

    def dump(self, ctx: FdContext, ident: int, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> Any:
        dup = duplicate_fd(pid, fd)
        try:
            # gettime first: an interval timer that expired unread is re-armed and its missed
            # expirations counted into ticks, which fdinfo shows only after that
            value_ns, interval_ns = timerfd_gettime(dup)
            tfd = Proc().fdinfo(os.getpid(), dup).timerfd
        finally:
            os.close(dup)
        assert tfd is not None, f"{ctx.where(pid, fd)}: fdinfo without it_value"
        return TimerFd(
            id=ident,
            flags=file_flags(fi),
            clockid=tfd.clockid,
            settime_flags=tfd.settime_flags,
            ticks=tfd.ticks,
            value_ns=value_ns,
            interval_ns=interval_ns,
        )


def duplicate_fd(pid: int, fd: int) -> int:
    """The open file of fd `fd` of process `pid`, in this process (pidfd_getfd)."""
    pidfd = pidfd_open(pid)
    try:
        return pidfd_getfd(pidfd, fd, pid)
    finally:
        os.close(pidfd)


EVENTFD = EventFds()
SIGNALFD = SignalFds()
TIMERFD = TimerFds()
