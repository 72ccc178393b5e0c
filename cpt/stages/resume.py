"""Stage resume: let a suspended (or undumped) tree run again (chkpnt --resume, restore
--resume): thaw its cgroup and move every process back to its original cgroup; a VE's
cgroup is its own and stays, and its link to the host comes back.

A tree that cpt's freezer holds without a stage state (left by an older cpt, or made by
hand) is resumed too: its processes go back to the root cgroup, their origins unknown.
"""

from __future__ import annotations

from .. import fault, interrupts
from ..errors import NotRunning
from .store import RESUMING
from .tree import RUNS_AGAIN, Tree


def resume(tree: Tree) -> None:
    st = tree.suspended()
    if st is None:
        if tree.repaired in RUNS_AGAIN:  # a killed cpt's suspend, undone as the lock was taken
            return
        frozen = tree.freezer.exists() and tree.freezer.freeze_requested()
        if tree.ve_id and (frozen or (tree.link is not None and not tree.link.is_up())):
            run_again(tree, {})  # a VE frozen or cut off without a stage state
            return
        if not tree.ve_id and tree.freezer.exists() and tree.freezer.procs():
            interrupts.no_return()
            tree.note(RESUMING)
            run_again(tree, {})
            return
        raise NotRunning(f"{tree.label} is not suspended; nothing to resume", pid=tree.root)
    interrupts.no_return()  # short and bounded: finished, whatever signal comes
    tree.note(RESUMING, st.origins)
    run_again(tree, st.origins)


def run_again(tree: Tree, origins: dict[int, str]) -> None:
    """Thaw the tree, move it back to `origins` (a tree), bring its link up (a VE), and
    drop its stage state (the journal said "resuming", or "checkpointing")."""
    with interrupts.deferred():  # never left half-done by a signal
        tree.release(origins)
        if tree.link is not None:
            fault.point("ve:link-up")
            tree.link.up()
        tree.store.drop()
