"""Kernel structures processes of the tree share (kcmp(2)): an fd table (CLONE_FILES) and
an fs struct (cwd, root, umask: CLONE_FS) shared with the parent are carried (TaskShares;
restore clones the child with those flags); any other sharing, and an address space shared
by two processes (CLONE_VM without CLONE_THREAD, a vfork child), are refused."""

from __future__ import annotations

import functools

from cptimage.records import ShareFlags, TaskShares

from ..errors import NoSuchProcess
from ..sys.task import KCMP_FILES, KCMP_FS, KCMP_VM, kcmp
from .pstree import TaskInfo

_KINDS = ((KCMP_FILES, "fd table"), (KCMP_FS, "cwd, root and umask (fs struct)"))


def _same(a: int, b: int, kind: int) -> bool:
    try:
        return kcmp(a, b, kind) == 0
    except OSError:
        return False  # one exited meanwhile


def sharing_problems(tree: dict[int, TaskInfo]) -> list[str]:
    """Sharing restore cannot rebuild: a structure shared other than with the parent, an
    address space shared between processes."""
    live = [i.pid for i in tree.values() if not i.zombie]
    out = []
    for kind, what in ((KCMP_VM, "address space"), *_KINDS):
        groups = _groups(live, kind)
        for group in groups:
            if kind == KCMP_VM:
                out.append(f"processes {group} share one {what} (CLONE_VM, vfork): not supported")
                continue
            top = [p for p in group if tree[p].ppid not in group]
            if len(top) > 1:
                out.append(
                    f"processes {group} share one {what}, not each with its parent "
                    f"(CLONE_{'FILES' if kind == KCMP_FILES else 'FS'}): only a child "
                    f"sharing its parent's can be restored"
                )
    return out


def _groups(pids: list[int], kind: int) -> list[list[int]]:
    """Processes sharing one structure of `kind`, groups of two or more (kcmp orders the
    structures: a sort then compares neighbours only)."""

    def order(a: int, b: int) -> int:
        try:
            r = kcmp(a, b, kind)
        except OSError:
            return (a > b) - (a < b)
        return {0: 0, 1: -1, 2: 1}.get(r, (a > b) - (a < b))

    srt = sorted(pids, key=functools.cmp_to_key(order))
    out: list[list[int]] = []
    run: list[int] = []
    for p in srt:
        if run and _same(run[-1], p, kind):
            run.append(p)
            continue
        if len(run) > 1:
            out.append(sorted(run))
        run = [p]
    if len(run) > 1:
        out.append(sorted(run))
    return out


def dump_shares(info: TaskInfo, tree: dict[int, TaskInfo]) -> list[TaskShares]:
    """A TaskShares record when the process shares its parent's fd table or fs struct."""
    parent = tree.get(info.ppid)
    if parent is None or parent.zombie:
        return []
    flags = ShareFlags(0)
    try:
        if kcmp(info.pid, parent.pid, KCMP_FILES) == 0:
            flags |= ShareFlags.FILES
        if kcmp(info.pid, parent.pid, KCMP_FS) == 0:
            flags |= ShareFlags.FS
    except OSError as e:
        raise NoSuchProcess(info.pid) from e
    return [TaskShares(pid=info.pid, flags=flags)] if flags else []
