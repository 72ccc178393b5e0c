"""Stage resume: let a suspended (or undumped) tree run again (chkpnt --resume, restore
--resume): thaw its cgroup and move every process back to its original cgroup; a VE's
cgroup is its own and stays, and its link to the host comes back."""

from __future__ import annotations

from ..errors import NotRunning
from .tree import Tree


def resume(tree: Tree) -> None:
    st = tree.suspended()
    if st is None:
        raise NotRunning(f"{tree.label} is not suspended; nothing to resume", pid=tree.root)
    tree.freezer.thaw()
    tree.release(st.origins)
    if tree.link is not None:
        tree.link.up()
    tree.store.drop()
