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

from .. import fault, interrupts
from ..dump.check import precheck
from ..dump.options import DumpOptions
from ..dump.pstree import TaskInfo, collect_tree
from ..errors import DumpError, NoSuchProcess, NotRunning
from .store import SUSPENDED, SUSPENDING, TreeState
from .tree import Tree, comm_of, fails_as


@fails_as(DumpError, "suspend")
def suspend(tree: Tree, opts: DumpOptions | None = None, *, then: str = SUSPENDED) -> TreeState:
    """Freeze the live tree in its own cgroup (refusing unsupported resources first:
    what is supported depends on the dump options, e.g. --tcp-established).

    Journalled: the state file says "suspending", with the original cgroup of every
    process about to move, before anything changes; `then` when done ("suspended", or
    "checkpointing" for a VE's full chkpnt).  On failure (or an interrupt) everything
    is undone; a command killed half-way is undone by the next (Tree.repair)."""
    if tree.suspended():
        raise DumpError(f"{tree.label} is already suspended", pid=tree.root)
    if tree.ve_id:
        return _suspend_ve(tree, tree.dump_opts(opts, staged=True), then)
    tree.clear_stale()
    procs = tree.live_tree()
    _refuse_frozen(tree, procs)
    precheck(procs, tree.root, tree.proc, tree.dump_opts(opts, staged=True))
    origins: dict[int, str] = {}
    tree.note(SUSPENDING)
    try:
        fault.point("suspend:freezer")
        tree.freezer.create()
        for _ in range(1000):
            new = [p for p, i in procs.items() if not i.zombie and p not in origins]
            if not new:
                break
            for pid in new:
                with contextlib.suppress(NoSuchProcess):
                    origins[pid] = tree.proc.cgroup2(pid)
            tree.note(SUSPENDING, origins)  # before they move
            tree.freezer.add(new)
            procs = collect_tree(tree.root, tree.proc)
        else:  # pragma: no cover - a fork bomb
            raise DumpError(f"tree {tree.root} keeps forking; cannot freeze it", pid=tree.root)
        tree.frozen_at = time.perf_counter()
        tree.freezer.freeze()
        fault.point("suspend:state")
        return tree.note(then, origins)
    except BaseException:
        with interrupts.deferred():  # the undoing runs to its end
            tree.release(origins)
            tree.store.drop()
        raise


def _suspend_ve(tree: Tree, opts: DumpOptions, then: str) -> TreeState:
    """A VE's processes are in its cgroup already: freeze it in place, then cut the
    link (frozen first: nothing inside notices the link go down)."""
    if not tree.freezer.exists():
        raise NotRunning(f"{tree.label} has no cgroup {tree.freezer.path}", pid=tree.root)
    _strangers(tree)
    with tree.inside():
        precheck(tree.live_tree(), tree.root, tree.proc, opts)
    if tree.in_freeze is not None:
        tree.in_freeze.prepare()
    tree.note(SUSPENDING)
    try:
        fault.point("suspend:freezer")
        tree.frozen_at = time.perf_counter()
        tree.freezer.freeze()
        _strangers(tree, collect_tree(tree.root, tree.proc))  # stable now
        if tree.link is not None:
            fault.point("ve:link-down")
            tree.link.down()
        fault.point("suspend:state")
        return tree.note(then)
    except BaseException:
        with interrupts.deferred():  # the undoing runs to its end
            tree.release({})
            if tree.link is not None:
                tree.link.up()
            tree.store.drop()
        raise


def _refuse_frozen(tree: Tree, procs: dict[int, TaskInfo]) -> None:
    """Refuse a tree a freezer holds (its processes would never run an injected syscall):
    cpt's own freezer of the tree without a stage state, or someone else's."""
    held = tree.frozen_by(p for p, i in procs.items() if not i.zombie)
    if held is None:
        return
    pid, where = held
    if where == tree.freezer.rel:
        raise DumpError(
            f"{tree.label} is frozen in {tree.freezer.path} without a stage state (a killed "
            f"cpt left it): `cpt chkpnt --pid {tree.root} --resume` thaws it",
            pid=pid,
        )
    raise DumpError(
        f"process {pid} of {tree.label} is frozen by the cgroup freezer of {where} (not "
        f"cpt's): thaw it (echo 0 > {tree.freezer.mount}{where}/cgroup.freeze), then retry",
        pid=pid,
    )


def _strangers(tree: Tree, procs: dict[int, TaskInfo] | None = None) -> None:
    """Refuse processes in a VE's cgroup that are not in its init's tree (`procs`: the
    frozen tree; None: the live one, listed after the cgroup's members, so that a child
    forked meanwhile is in both, and a member that exited since is no stranger)."""
    members = tree.freezer.procs()
    if procs is None:
        procs = tree.live_tree()
        members = [p for p in members if tree.proc.exists(p)]
    extra = sorted(set(members) - set(procs))
    if extra:
        who = ", ".join(f"{p} ({comm_of(p)})" for p in extra[:3])
        raise DumpError(
            f"{tree.label}: process(es) {who} are in the VE but not descendants of its init "
            f"(a `cpt ve exec` still running?): let them finish, then checkpoint",
            pid=tree.root,
        )
