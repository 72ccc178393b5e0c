"""File descriptor tables, and the open-file descriptions they refer to.

Each open-file description becomes ONE record, shared by every fd (in any process of the
tree) that refers to it: fds whose handler gives the same key are compared with
kcmp(KCMP_FILE), so a file opened before fork keeps one shared offset after restore.
Each kind of open file has its handler module, listed in HANDLERS.
"""

from __future__ import annotations

from typing import Any

from cptimage.records import Fd

from ..errors import UnsupportedError
from ..proc import FdInfo, FdKind, FdTarget
from ..sys.task import KCMP_FILE, kcmp
from . import files, pipes, shmem
from .fdbase import O_CLOEXEC, FdContext, Handler
from .options import DumpOptions
from .paths import PathTable

FD_CLOEXEC = 1

HANDLERS: dict[FdKind, Handler] = {}
for _h in (files.HANDLER, pipes.HANDLER, shmem.HANDLER):
    for _k in _h.kinds:
        HANDLERS[_k] = _h


def unsupported_fd(pid: int, fd: int, ft: FdTarget, opts: DumpOptions) -> str | None:
    """Why this fd cannot be dumped, or None.  Also run before freezing."""
    h = HANDLERS.get(ft.kind)
    if h is None:
        return f"process {pid} fd {fd}: {ft.kind.value} ({ft.target}) is not supported yet"
    return h.unsupported(pid, fd, ft, opts)


class FdTable:
    def __init__(self, paths: PathTable, opts: DumpOptions) -> None:
        self.ctx = FdContext(opts=opts, paths=paths)
        self.descriptions: list[Any] = []
        self._groups: dict[tuple[Any, ...], list[tuple[int, int, int]]] = {}
        self._next = 1

    @property
    def records(self) -> list[Any]:
        """Every description and the records they need beside them."""
        return self.descriptions + self.ctx.extra

    def dump_fd(self, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> Fd:
        why = unsupported_fd(pid, fd, ft, self.ctx.opts)
        if why:
            raise UnsupportedError(why, pid=pid)
        h = HANDLERS[ft.kind]
        key = h.key(pid, fd, ft, fi)
        ident = self._shared(key, pid, fd)
        if ident is None:
            ident = self._next
            self._next += 1
            self._groups.setdefault(key, []).append((pid, fd, ident))
            self.descriptions.append(h.dump(self.ctx, ident, pid, fd, ft, fi))
        return Fd(pid=pid, fd=fd, file_id=ident, flags=FD_CLOEXEC if fi.flags & O_CLOEXEC else 0)

    def _shared(self, key: tuple[Any, ...], pid: int, fd: int) -> int | None:
        for opid, ofd, ident in self._groups.get(key, ()):
            if kcmp(pid, opid, KCMP_FILE, fd, ofd) == 0:
                return ident
        return None
