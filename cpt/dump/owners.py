"""Who gets a description's signals (format 1.6, FileOwner): F_GETOWN_EX and F_GETSIG of
a duplicate of the fd (pidfd_getfd: the same open file).

Read for the descriptions where an owner does something: O_ASYNC set (SIGIO, or the
F_SETSIG signal, on I/O), sockets (SIGURG) and files holding a lease (the lease break
signal); a description with no owner and no signal set has no record.  The owner must
be a thread, process or process group of the tree: the dump refuses (and the tree
resumes) when it is another process, naming it.
"""

from __future__ import annotations

import os

from cptimage.records import FileOwner, OwnerType

from ..errors import UnsupportedError
from ..procfs import FdInfo, FdKind, FdTarget, Proc
from ..sys.files import O_ASYNC, get_owner
from .eventfds import duplicate_fd
from .fdbase import FdContext
from .pstree import TaskInfo

_TYPES = {0: OwnerType.TID, 1: OwnerType.PID, 2: OwnerType.PGRP}


def wants_owner(ft: FdTarget, fi: FdInfo) -> bool:
    return (
        bool(fi.flags & O_ASYNC)
        or ft.kind is FdKind.SOCKET
        or any(lk.kind == "LEASE" for lk in fi.locks)
    )


def dump_owner(ctx: FdContext, pid: int, fd: int, file_id: int) -> None:
    """The FileOwner record of description `file_id`, read through fd `fd` of `pid`."""
    dup = duplicate_fd(pid, fd)
    try:
        kind, owner, sig = get_owner(dup)
    finally:
        os.close(dup)
    if not owner and not sig:
        return
    tree: dict[int, TaskInfo] = ctx.cache.get("tree", {})
    where = f"{ctx.where(pid, fd)}: its signals (F_SETOWN)"
    if kind not in _TYPES:
        raise UnsupportedError(f"{where} go to an owner of unknown type {kind}", pid=pid)
    if owner and not _in_tree(kind, owner, tree):
        what = ("thread", "process", "process group")[kind]
        raise UnsupportedError(
            f"{where} go to {what} {owner}, which is outside the tree: checkpoint the tree "
            "that holds it, or have the program set another owner",
            pid=pid,
        )
    ctx.extra.append(
        FileOwner(file_id=file_id, pid=pid, fd=fd, owner_type=_TYPES[kind], owner=owner, signum=sig)
    )


def _in_tree(kind: int, owner: int, tree: dict[int, TaskInfo]) -> bool:
    if kind == 2:
        return any(info.pgid == owner for info in tree.values())
    if kind == 1:
        return owner in tree
    try:
        return Proc().tgid(owner) in tree
    except OSError:
        return False
