"""POSIX message queues held open by the tree: attributes, owner, and queued messages.

An mq fd looks like a path ("/name") in /proc/PID/fd; fds.py routes fds on the mqueue
filesystem here.  The messages are read by receiving them all and sending them back in
the same order (there is no peek), on a description of our own, while the tree is
stopped: the queue ends as it was, priorities and order within a priority included.
"""

from __future__ import annotations

import os
from typing import Any

from cptimage.records import PosixMq, PosixMqMsg

from ..procfs import FdInfo, FdKind, FdTarget, fd_path
from ..sys import ipc as I
from .fdbase import FdContext, file_flags
from .options import DumpOptions


class MessageQueues:
    kinds = frozenset({FdKind.MQUEUE})

    def unsupported(self, pid: int, fd: int, ft: FdTarget, opts: DumpOptions) -> str | None:
        return None

    def key(self, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> tuple[Any, ...]:
        st = os.stat(fd_path(pid, fd))
        return ("mqueue", st.st_dev, st.st_ino)

    def dump(self, ctx: FdContext, ident: int, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> Any:
        link = fd_path(pid, fd)
        qfd = os.open(link, os.O_RDWR | os.O_CLOEXEC)
        try:
            st = os.fstat(qfd)
            _flags, maxmsg, msgsize, _cur = I.mq_getattr(qfd)
            seen: set[int] = ctx.cache.setdefault("mqueues", set())
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                for prio, data in drain_and_refill(qfd, msgsize):
                    ctx.extra.append(PosixMqMsg(mq_id=ident, prio=prio, data=data))
        finally:
            os.close(qfd)
        name = (ft.path or ft.target).lstrip("/")
        return PosixMq(
            id=ident,
            mode=st.st_mode & 0o7777,
            uid=st.st_uid,
            gid=st.st_gid,
            flags=file_flags(fi),
            maxmsg=maxmsg,
            msgsize=msgsize,
            name=name,
            ino=st.st_ino,
            deleted=1 if ft.deleted else 0,
        )


def drain_and_refill(qfd: int, msgsize: int) -> list[tuple[int, bytes]]:
    """Every queued message (highest priority first, as the queue delivers them), left
    in the queue as found."""
    msgs = []
    while (m := I.mq_receive_now(qfd, msgsize)) is not None:
        msgs.append(m)
    for prio, data in msgs:
        I.mq_send(qfd, data, prio)
    return msgs


HANDLER = MessageQueues()
