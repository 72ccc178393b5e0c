"""Stage suspend: freeze a live tree in a cgroup of its own (chkpnt --suspend).

The tree's processes move into its freezer cgroup (re-reading the tree until no new
process appears), the cgroup is frozen, and the state file remembers each process's
original cgroup for resume.  What the dump options do not support is refused first,
with the tree untouched.  A VE's processes are in its cgroup already: it is frozen in
place, then its link is cut (frozen first: nothing inside notices the link go down).
Processes in a VE's cgroup that are not in its init's tree (a `cpt ve exec` still
running) are refused: they would be lost.
"""

from __future__ import annotations

import contextlib
import time

from ..dump.check import precheck
from ..dump.options import DumpOptions
from ..dump.pstree import TaskInfo, collect_tree
from ..errors import DumpError, NoSuchProcess, NotRunning
from .store import TreeState
from .tree import Tree, comm_of, fails_as


@fails_as(DumpError, "suspend")
def suspend(tree: Tree, opts: DumpOptions | None = None) -> TreeState:
    """Freeze the live tree in its own cgroup (refusing unsupported resources first:
    what is supported depends on the dump options, e.g. --tcp-established)."""
    if tree.suspended():
        raise DumpError(f"{tree.label} is already suspended", pid=tree.root)
    if tree.ve_id:
        return _suspend_ve(tree, tree.dump_opts(opts, staged=True))
    tree.clear_stale()
    procs = tree.live_tree()
    precheck(procs, tree.root, tree.proc, tree.dump_opts(opts, staged=True))
    origins: dict[int, str] = {}
    tree.freezer.create()
    try:
        for _ in range(1000):
            new = [p for p, i in procs.items() if not i.zombie and p not in origins]
            if not new:
                break
            for pid in new:
                with contextlib.suppress(NoSuchProcess):
                    origins[pid] = tree.proc.cgroup2(pid)
            tree.freezer.add(new)
            procs = collect_tree(tree.root, tree.proc)
        else:  # pragma: no cover - a fork bomb
            raise DumpError(f"tree {tree.root} keeps forking; cannot freeze it", pid=tree.root)
        tree.frozen_at = time.perf_counter()
        tree.freezer.freeze()
        st = TreeState(tree.root, "suspended", origins)
        tree.store.save(st)
        return st
    except BaseException:
        tree.release(origins)
        raise


def _suspend_ve(tree: Tree, opts: DumpOptions) -> TreeState:
    """A VE's processes are in its cgroup already: freeze it in place, then cut the
    link (frozen first: nothing inside notices the link go down)."""
    if not tree.freezer.exists():
        raise NotRunning(f"{tree.label} has no cgroup {tree.freezer.path}", pid=tree.root)
    _strangers(tree, tree.live_tree())
    with tree.inside():
        precheck(tree.live_tree(), tree.root, tree.proc, opts)
    if tree.in_freeze is not None:
        tree.in_freeze.prepare()
    tree.frozen_at = time.perf_counter()
    tree.freezer.freeze()
    try:
        _strangers(tree, collect_tree(tree.root, tree.proc))  # stable now
        if tree.link is not None:
            tree.link.down()
        st = TreeState(tree.root, "suspended", {})
        tree.store.save(st)
        return st
    except BaseException:
        tree.release({})
        if tree.link is not None:
            tree.link.up()
        raise


def _strangers(tree: Tree, procs: dict[int, TaskInfo]) -> None:
    """Refuse processes in a VE's cgroup that are not in its init's tree."""
    extra = sorted(set(tree.freezer.procs()) - set(procs))
    if extra:
        who = ", ".join(f"{p} ({comm_of(p)})" for p in extra[:3])
        raise DumpError(
            f"{tree.label}: process(es) {who} are in the VE but not descendants of its init "
            f"(a `cpt ve exec` still running?): let them finish, then checkpoint",
            pid=tree.root,
        )
