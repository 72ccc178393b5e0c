"""Who gets a description's signals (FileOwner, format 1.6): set again by injection in the
process the record names, through its fd: F_SETOWN_EX (a thread, process or group of the
tree, by the ids the restored tree sees), F_SETSIG, and, for a description with O_ASYNC,
O_ASYNC cleared and set again with F_SETFL so that the kernel's SIGIO registration names
this fd (its si_fd) and this owner.  Run after the leases: taking a lease makes the taker
the owner.  The owner is set with the restorer's credentials (the process's are given
back later), so the kernel's check of who may signal whom passes as root's.
"""

from __future__ import annotations

import fcntl
import os
from typing import Any

from cptimage.records import FileOwner

from ..errors import RestoreError
from ..sys.files import F_SETOWN_EX, F_SETSIG, pack_owner
from ..sys.syscalls import NR
from .model import ImageModel
from .pstree import Task


class Owners:
    records: tuple[type, ...] = ()  # no descriptions of its own

    def open(self, model: ImageModel, desc: Any) -> int:
        raise AssertionError("owners have no open-file descriptions")

    def after_install(self, model: ImageModel, task: Task, local: dict[int, int]) -> None:
        for rec in model.owners:
            if rec.pid == task.pid:
                set_owner(task, rec, getattr(model.files.get(rec.file_id), "flags", 0))

    def close(self) -> None:
        pass


def set_owner(task: Task, rec: FileOwner, flags: int) -> None:
    t = task.leader
    sc = task.scratch
    assert sc is not None
    steps: list[tuple[str, int, int]] = []
    if flags & os.O_ASYNC:
        now = t.syscall(NR.fcntl, rec.fd, fcntl.F_GETFL)
        if now >= 0:
            steps += [("F_SETFL", fcntl.F_SETFL, now & ~os.O_ASYNC)]
            steps += [("F_SETFL", fcntl.F_SETFL, now | os.O_ASYNC)]
    steps.append(("F_SETOWN_EX", F_SETOWN_EX, sc.push(pack_owner(rec.owner_type, rec.owner))))
    steps.append(("F_SETSIG", F_SETSIG, rec.signum))
    try:
        for name, cmd, arg in steps:
            ret = t.syscall(NR.fcntl, rec.fd, cmd, arg)
            if ret < 0:
                raise RestoreError(
                    f"process {task.pid} fd {rec.fd}: fcntl({name}) for its signal owner "
                    f"{rec.owner} failed ({os.strerror(-ret)})",
                    pid=task.pid,
                )
    finally:
        sc.reset()
