"""File descriptor tables, and the open-file descriptions they refer to.

Each open-file description becomes ONE record, shared by every fd (in any process of the
tree) that refers to it: fds whose handler gives the same key are compared with
kcmp(KCMP_FILE), so a file opened before fork keeps one shared offset after restore.
kcmp orders descriptions (by their kernel addresses, obfuscated), so the descriptions of
one key are kept sorted and an fd is placed by binary search: 10,000 descriptions of one
file cost ~14 comparisons each, not up to 10,000 (as CRIU's rbtree of files).  Each kind
of open file has its handler module, listed in HANDLER_OF.
"""

from __future__ import annotations

import dataclasses
import fcntl
import importlib
import os
from typing import Any

from cptimage.records import Fd

from ..errors import UnsupportedError
from ..procfs import FdInfo, FdKind, FdTarget, Proc, fd_path
from ..sys.files import MQUEUE_MAGIC, fs_magic
from ..sys.task import KCMP_FILE, kcmp
from .fdbase import O_CLOEXEC, FdContext, Handler
from .locks import dump_locks
from .options import DumpOptions
from .owners import dump_owner, wants_owner
from .paths import PathTable

KCMP_LESS, KCMP_GREATER = 1, 2  # kcmp(2): the first description orders before / after
# the handler of each kind of open file: (its module, the handler's name there), imported
# at the first fd of that kind (a tree without sockets does not import the socket code);
# the precheck before a freeze meets every kind the tree has, so none is imported in it
HANDLER_OF: dict[FdKind, tuple[str, str]] = {
    FdKind.FILE: ("files", "HANDLER"),
    FdKind.PIPE: ("pipes", "HANDLER"),
    FdKind.MEMFD: ("shmem", "HANDLER"),
    FdKind.MQUEUE: ("mqueue", "HANDLER"),
    FdKind.EVENTFD: ("eventfds", "EVENTFD"),
    FdKind.SIGNALFD: ("eventfds", "SIGNALFD"),
    FdKind.TIMERFD: ("eventfds", "TIMERFD"),
    FdKind.EPOLL: ("epoll", "HANDLER"),
    FdKind.INOTIFY: ("inotify", "HANDLER"),
    FdKind.SOCKET: ("sockets", "HANDLER"),
    FdKind.PTS: ("tty", "HANDLER"),
    FdKind.PTMX: ("tty", "HANDLER"),
    FdKind.PIDFD: ("pidfds", "HANDLER"),
    FdKind.NSFS: ("nsfs", "HANDLER"),
}


def handler(kind: FdKind) -> Handler | None:
    """The handler of fds of `kind` (None: not supported)."""
    where = HANDLER_OF.get(kind)
    if where is None:
        return None
    module, name = where
    h: Handler = getattr(importlib.import_module(f"{__package__}.{module}"), name)
    assert kind in h.kinds, (kind, module, name)
    return h


def classify(pid: int, fd: int, ft: FdTarget) -> FdTarget:
    """The link text cannot tell a POSIX message queue ("/name") from a file: statfs can."""
    if ft.kind is FdKind.FILE:
        try:
            if fs_magic(fd_path(pid, fd)) == MQUEUE_MAGIC:
                return dataclasses.replace(ft, kind=FdKind.MQUEUE)
        except OSError:
            pass  # the fd vanished: the handler will say so
    return ft


def unsupported_fd(pid: int, fd: int, ft: FdTarget, opts: DumpOptions) -> str | None:
    """Why this fd cannot be dumped, or None.  Also run before freezing."""
    return _unsupported(pid, fd, classify(pid, fd, ft), opts)


def _unsupported(pid: int, fd: int, ft: FdTarget, opts: DumpOptions) -> str | None:
    h = handler(ft.kind)
    if h is None:
        return f"process {pid} fd {fd}: {ft.kind.value} ({ft.target}) is not supported yet"
    return h.unsupported(pid, fd, ft, opts)


class FdTable:
    def __init__(self, paths: PathTable, opts: DumpOptions) -> None:
        self.ctx = FdContext(opts=opts, paths=paths)
        self.descriptions: list[Any] = []
        # key -> (pid, fd, id) of one fd per description, in kcmp order
        self._groups: dict[tuple[Any, ...], list[tuple[int, int, int]]] = {}
        self._next = 1
        self.ctx.dump_file = self.dump_own

    def dump_own(self, fd: int) -> int:
        """The description of fd `fd` of this process (a file in flight in a unix socket,
        received by a peek): found by kcmp among the tree's, or dumped as any other.  The
        caller keeps `fd` open until the dump ends (later fds are compared with it)."""
        pid = os.getpid()
        proc = Proc()
        ft = classify(pid, fd, proc.fd_targets(pid)[fd])
        why = _unsupported(pid, fd, ft, self.ctx.opts)
        if why:
            raise UnsupportedError(why.replace(f"process {pid} fd {fd}", "a file in flight"))
        return self._description(pid, fd, ft, proc.fdinfo(pid, fd))

    def _description(self, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> int:
        h = handler(ft.kind)
        assert h is not None  # _unsupported said so before
        key = h.key(pid, fd, ft, fi)
        group = self._groups.setdefault(key, [])
        ident, where = _find(group, pid, fd)
        if ident is None:
            ident = self._next
            self._next += 1
            group.insert(where, (pid, fd, ident))
            self.descriptions.append(h.dump(self.ctx, ident, pid, fd, ft, fi))
        self.ctx.ids[(pid, fd)] = ident
        return ident

    @property
    def records(self) -> list[Any]:
        """Every description and the records they need beside them."""
        while self.ctx.finish:
            self.ctx.finish.pop(0)()
        return self.descriptions + self.ctx.extra

    def dump_fd(self, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> Fd:
        ft = classify(pid, fd, ft)
        why = _unsupported(pid, fd, ft, self.ctx.opts)
        if why:
            raise UnsupportedError(why, pid=pid)
        known = len(self.descriptions)
        ident = self._description(pid, fd, ft, fi)
        dump_locks(self.ctx, pid, fd, ident, fi)
        if len(self.descriptions) > known and wants_owner(ft, fi):
            dump_owner(self.ctx, pid, fd, ident)
        return Fd(
            pid=pid, fd=fd, file_id=ident, flags=fcntl.FD_CLOEXEC if fi.flags & O_CLOEXEC else 0
        )


def _find(group: list[tuple[int, int, int]], pid: int, fd: int) -> tuple[int | None, int]:
    """(id, index) of the description fd `fd` of `pid` refers to among `group` (sorted by
    kcmp), or (None, where it goes)."""
    lo, hi = 0, len(group)
    while lo < hi:
        mid = (lo + hi) // 2
        opid, ofd, ident = group[mid]
        order = kcmp(pid, opid, KCMP_FILE, fd, ofd)
        if order == 0:
            return ident, mid
        if order == KCMP_LESS:
            hi = mid
        elif order == KCMP_GREATER:
            lo = mid + 1
        else:  # no order given (not for files on Linux): compare with each
            for i, (opid, ofd, ident) in enumerate(group):
                if kcmp(pid, opid, KCMP_FILE, fd, ofd) == 0:
                    return ident, i
            return None, len(group)
    return None, lo
