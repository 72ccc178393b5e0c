"""eventfd, signalfd and timerfd, recreated in the restorer with their state.

A timerfd's remaining time counts from the restore, as with CRIU: the time the tree spent
checkpointed does not count, for any clock.  A timer armed with TFD_TIMER_ABSTIME keeps
the flag and is set to now + the remaining time on its own clock (a MONOTONIC or BOOTTIME
deadline means nothing on another boot or host); for CLOCK_REALTIME this moves a
wall-clock deadline later by the time spent checkpointed.  Unread expirations come back
with TFD_IOC_SET_TICKS after the timer is set (setting a timer clears them).
"""

from __future__ import annotations

import os
import time
from typing import Any

from cptimage.records import EventFd, SignalFd, TimerFd

from ..errors import RestoreError
from ..sys.anonfd import (
    SFD_CLOEXEC,
    TFD_CLOEXEC,
    TFD_TIMER_ABSTIME,
    signalfd,
    timerfd_create,
    timerfd_set_ticks,
    timerfd_settime,
)
from .model import ImageModel
from .pstree import Task


class EventFds:
    records = (EventFd, SignalFd, TimerFd)

    def open(self, model: ImageModel, desc: Any) -> int:
        nonblock = desc.flags & os.O_NONBLOCK
        if isinstance(desc, EventFd):
            fd = os.eventfd(
                0, os.EFD_CLOEXEC | nonblock | (os.EFD_SEMAPHORE if desc.semaphore else 0)
            )
            if desc.count:
                os.eventfd_write(fd, desc.count)  # the initial value is only 32 bits wide
            return fd
        if isinstance(desc, SignalFd):
            return signalfd(desc.sigmask, SFD_CLOEXEC | nonblock)
        return _timerfd(desc, nonblock)

    def after_install(self, model: ImageModel, task: Task, local: dict[int, int]) -> None:
        pass

    def close(self) -> None:
        pass


def _timerfd(desc: TimerFd, nonblock: int) -> int:
    try:
        fd = timerfd_create(desc.clockid, TFD_CLOEXEC | nonblock)
    except OSError as e:
        raise RestoreError(f"timerfd on clock {desc.clockid}: {e.strerror}") from None
    value = desc.value_ns
    if value and desc.settime_flags & TFD_TIMER_ABSTIME:
        value += time.clock_gettime_ns(desc.clockid)
    timerfd_settime(fd, desc.settime_flags, value, desc.interval_ns)
    if desc.ticks:
        timerfd_set_ticks(fd, desc.ticks)
    return fd
