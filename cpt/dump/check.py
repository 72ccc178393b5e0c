"""What cpt cannot checkpoint yet, found before anything is frozen.

The same per-resource predicates run again during the dump (the tree may have changed
between this check and the freeze); a refusal then rolls the freeze back.
"""

from __future__ import annotations

import os

from ..errors import NoSuchProcess, UnsupportedError
from ..procfs import FdTarget, Proc, fd_path
from .fds import unsupported_fd
from .locks import unsupported_locks
from .mm import unsupported_vma
from .options import DumpOptions
from .pidfds import unsupported_pidfds
from .pstree import TaskInfo, check_sessions
from .shares import sharing_problems
from .sockets import unsupported_sockets
from .timers import unsupported_timers
from .tty import tty_problems
from .ve import namespace_problems, ve_problems


def unsupported_process(pid: int, proc: Proc, opts: DumpOptions) -> list[str]:
    out = []
    status = proc.status(pid)
    if status.tracer_pid and status.tracer_pid != os.getpid():
        out.append(f"process {pid} is traced by process {status.tracer_pid} (a debugger?)")
    out += unsupported_timers(pid, proc)
    out += unsupported_locks(pid, proc, opts)
    for fd, ft in proc.fd_targets(pid).items():
        why = _fd_problem(pid, fd, ft, opts)
        if why:
            out.append(why)
    for v in proc.maps(pid):
        why = unsupported_vma(pid, v, opts.ghost_limit, opts.root)
        if why:
            out.append(why)
    return out


def _fd_problem(pid: int, fd: int, ft: FdTarget, opts: DumpOptions) -> str | None:
    """Why this fd of a RUNNING process cannot be dumped, or None.  The process may close
    the fd between the listing and the look at it (CPython does while it starts): a
    closed fd is no problem, the dump lists the fds again with the tree frozen."""
    try:
        why = unsupported_fd(pid, fd, ft, opts)
    except FileNotFoundError:
        why = f"process {pid} fd {fd}: {ft.target} cannot be read"
    if why and not os.path.lexists(fd_path(pid, fd)):
        return None
    return why


def precheck(tree: dict[int, TaskInfo], root: int, proc: Proc, opts: DumpOptions) -> None:
    """Raise UnsupportedError naming every problem (the first few) of the live tree."""
    if os.getpid() in tree:
        raise UnsupportedError(f"the tree of process {root} contains cpt itself")
    check_sessions(tree, root)
    problems: list[str] = []
    for info in tree.values():
        if info.zombie:
            continue
        try:
            problems += unsupported_process(info.pid, proc, opts)
        except NoSuchProcess:
            continue
    tree = dict(tree)
    for _ in range(len(tree) + 1):
        try:
            problems += _tree_problems(tree, root, proc, opts)
            break
        except NoSuchProcess as e:
            # the tree runs: a process that exited (or became a zombie) since it was listed
            # is left out and the checks run again; the dump lists the tree again frozen
            if e.pid == root or e.pid not in tree:
                raise
            del tree[e.pid]
    if opts.ve_id:
        problems += ve_problems(root)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UnsupportedError("; ".join(problems[:3]) + more, pid=root)


def _tree_problems(
    tree: dict[int, TaskInfo], root: int, proc: Proc, opts: DumpOptions
) -> list[str]:
    """The checks that look at the tree as a whole (sockets and pidfds pair processes)."""
    return [
        *unsupported_sockets(tree, proc, opts),
        *unsupported_pidfds(tree, proc),
        *tty_problems(tree, root, proc, opts),
        *namespace_problems(tree, root, proc),
        *sharing_problems(tree),
    ]
