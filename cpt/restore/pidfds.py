"""pidfds (PidFd, format 1.6): opened once the tree is built, with pidfd_open(2) of the
restored process (or thread, with PIDFD_THREAD), zombies included; a pidfd of a process
reaped before the dump refers to a process reaped again: a child forked here that exits
at once, opened while it is a zombie, then reaped (fdinfo then says "Pid: -1", as it did).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from cptimage.records import PidFd

from ..errors import RestoreError
from ..sys.task import PIDFD_NONBLOCK, PIDFD_THREAD, pidfd_open
from .model import ImageModel
from .pstree import Task

REAPED = -1


class PidFds:
    records = (PidFd,)

    def open(self, model: ImageModel, desc: Any) -> int:
        raise AssertionError("pidfds are opened once the tree exists (open_built)")

    def open_built(self, desc: PidFd, host_pid: Callable[[int], int]) -> int:
        """The pidfd of `desc`, now that its process exists (`host_pid`: an image pid as
        this host sees it)."""
        flags = desc.flags & (PIDFD_NONBLOCK | PIDFD_THREAD)
        if desc.pid == REAPED:
            return _reaped(flags)
        try:
            fd = pidfd_open(host_pid(desc.pid), flags)
        except OSError as e:
            raise RestoreError(f"pidfd of process {desc.pid}: {e.strerror}") from None
        os.set_inheritable(fd, False)
        return fd

    def after_install(self, model: ImageModel, task: Task, local: dict[int, int]) -> None:
        pass

    def close(self) -> None:
        pass


def _reaped(flags: int) -> int:
    child = os.fork()
    if child == 0:  # pragma: no cover - the child only exits
        os._exit(0)
    try:
        return pidfd_open(child, flags)
    finally:
        os.waitpid(child, 0)
