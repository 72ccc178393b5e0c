"""File locks (FileLock records): taken again by injection in the process the image names,
once its fds are in place, on the fd it names: flock(), fcntl(F_SETLK) for a POSIX lock
(owned by that process), fcntl(F_OFD_SETLK) for an OFD lock (owned by the description,
which every holder shares), fcntl(F_SETLEASE) for a lease (the description's too).  Non-blocking: a lock someone else took meanwhile fails the
restore, naming the lock.  Listed last in OPENERS: closing any fd of a file drops the
process's POSIX locks on it, so nothing may open and close files after this.
"""

from __future__ import annotations

import fcntl
import struct
from typing import Any

from cptimage.records import FileLock, LockKind

from ..errors import RestoreError
from ..sys.syscalls import NR
from .model import ImageModel
from .pstree import Task

FLOCK = struct.Struct("<hhxxxxqqi4x")  # struct flock: type, whence, start, len, pid
F_OFD_SETLK = 37
_NAMES: dict[int, str] = {LockKind.FLOCK: "flock", LockKind.POSIX: "POSIX", LockKind.OFD: "OFD"}
F_SETLEASE = 1024


def describe(lk: FileLock) -> str:
    if lk.kind == LockKind.LEASE:
        return f"{'write' if lk.write else 'read'} lease on fd {lk.fd}"
    end = "EOF" if not lk.length else str(lk.start + lk.length - 1)
    mode = "write" if lk.write else "read"
    return f"{_NAMES.get(lk.kind, lk.kind)} {mode} lock on fd {lk.fd} (bytes {lk.start}-{end})"


class Locks:
    records: tuple[type, ...] = ()  # no descriptions of its own

    def open(self, model: ImageModel, desc: Any) -> int:
        raise AssertionError("locks have no open-file descriptions")

    def after_install(self, model: ImageModel, task: Task, local: dict[int, int]) -> None:
        for lk in model.locks:
            if lk.pid == task.pid:
                take(task, lk)

    def close(self) -> None:
        pass


def take(task: Task, lk: FileLock) -> None:
    t = task.leader
    if lk.kind == LockKind.FLOCK:
        op = (fcntl.LOCK_EX if lk.write else fcntl.LOCK_SH) | fcntl.LOCK_NB
        ret = t.syscall(NR.flock, lk.fd, op)
    elif lk.kind == LockKind.LEASE:
        ret = t.syscall(NR.fcntl, lk.fd, F_SETLEASE, fcntl.F_WRLCK if lk.write else fcntl.F_RDLCK)
    else:
        sc = task.scratch
        assert sc is not None
        kind = fcntl.F_WRLCK if lk.write else fcntl.F_RDLCK
        arg = sc.push(FLOCK.pack(kind, 0, lk.start, lk.length, 0))  # whence SEEK_SET
        cmd = fcntl.F_SETLK if lk.kind == LockKind.POSIX else F_OFD_SETLK
        ret = t.syscall(NR.fcntl, lk.fd, cmd, arg)
        sc.reset()
    if ret < 0:
        raise RestoreError(
            f"process {task.pid}: cannot take back its {describe(lk)} (errno {-ret}): another "
            f"process holds a conflicting lock now"
            + (" or has the file open" if lk.kind == LockKind.LEASE else ""),
            pid=task.pid,
        )
