"""pidfds (format 1.6): a pidfd of a process or thread of the tree, live or a zombie, or of
a process already reaped.

fdinfo says everything: "Pid:" is the process (with PIDFD_THREAD, the thread) the pidfd
refers to as this /proc sees it, -1 once it is reaped, 0 when it lives in a PID namespace
this /proc cannot see; the flags carry PIDFD_NONBLOCK (O_NONBLOCK) and PIDFD_THREAD
(O_EXCL).  A pidfd of a process outside the tree cannot be given back (that process is
not restored with it) and is refused before freezing.
"""

from __future__ import annotations

from typing import Any

from cptimage.records import PidFd

from ..errors import NoSuchProcess, UnsupportedError
from ..procfs import FdInfo, FdKind, FdTarget, Proc
from .fdbase import FdContext, file_flags
from .options import DumpOptions
from .pstree import TaskInfo

REAPED = -1


def pidfd_problem(pid: int, fd: int, fi: FdInfo, tree: set[int], proc: Proc) -> str | None:
    """Why the pidfd at fd `fd` of `pid` cannot be carried (`tree`: the tree's PIDs)."""
    info = fi.pidfd
    where = f"process {pid} fd {fd}"
    if info is None:
        return f"{where}: a pidfd without Pid: in its fdinfo"
    if info.pid == REAPED:
        return None
    if info.pid == 0:
        return f"{where}: a pidfd of a process in a PID namespace cpt cannot see; not supported"
    try:
        owner = proc.tgid(info.pid)
    except (NoSuchProcess, OSError):
        owner = info.pid
    if owner not in tree:
        return (
            f"{where}: a pidfd of process {info.pid}, which is outside the tree (it would not "
            "be restored with it): close it or checkpoint the tree that holds that process"
        )
    return None


def unsupported_pidfds(tree: dict[int, TaskInfo], proc: Proc) -> list[str]:
    """The tree-wide pidfd check, before freezing."""
    pids = set(tree)
    out = []
    for info in tree.values():
        if info.zombie:
            continue
        try:
            targets = proc.fd_targets(info.pid)
            for fd, ft in targets.items():
                if ft.kind is FdKind.PIDFD:
                    why = pidfd_problem(info.pid, fd, proc.fdinfo(info.pid, fd), pids, proc)
                    if why:
                        out.append(why)
        except (NoSuchProcess, FileNotFoundError):
            continue
    return out


class PidFds:
    kinds = frozenset({FdKind.PIDFD})

    def unsupported(self, pid: int, fd: int, ft: FdTarget, opts: DumpOptions) -> str | None:
        return None  # whether its process is in the tree: unsupported_pidfds, and dump()

    def key(self, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> tuple[Any, ...]:
        info = fi.pidfd
        return ("pidfd", info.pid if info else None)

    def dump(self, ctx: FdContext, ident: int, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> Any:
        tree: dict[int, TaskInfo] = ctx.cache.get("tree", {})
        why = pidfd_problem(pid, fd, fi, set(tree), Proc())
        if why:
            raise UnsupportedError(why, pid=pid)
        assert fi.pidfd is not None
        return PidFd(id=ident, flags=file_flags(fi), pid=fi.pidfd.pid)


HANDLER = PidFds()
