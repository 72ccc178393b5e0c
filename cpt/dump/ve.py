"""A VE's namespaces in its image: which namespaces are the VE's own, its mount table
(mounts.py), hostname and network configuration (netns.py).  The IPC namespace's
objects are ipc.py's; the PID namespace is implied (the tree's ids inside it are the
innermost of each NSpid chain).

Every process of a tree (a VE's above all) must live in the namespaces of its root: one
that made its own (`unshare -n`, a nested container) would come back in the root's, so it
is refused.
"""

from __future__ import annotations

from typing import Any

from cptimage.records import Namespace, NsKind

from ..errors import UnsupportedError
from ..procfs import Proc
from .ipc import NS_OWN
from .mounts import dump_mounts
from .netns import dump_net, dump_uts
from .pstree import TaskInfo

# the namespaces a VE restore recreates (IPC: ipc.py records it)
VE_KINDS = {"mnt": NsKind.MNT, "uts": NsKind.UTS, "pid": NsKind.PID, "net": NsKind.NET}
# what every process must share with the VE's init
SHARED = ("mnt", "uts", "ipc", "net", "pid", "user", "cgroup", "time")


def namespace_problems(tree: dict[int, TaskInfo], root: int, proc: Proc) -> list[str]:
    """Processes of the tree that live in other namespaces than its root."""
    want = proc.ns(root)
    out = []
    for info in tree.values():
        if info.zombie or info.pid == root:
            continue
        have = proc.ns(info.pid)
        for kind in SHARED:
            if kind in want and have.get(kind) != want[kind]:
                out.append(
                    f"process {info.pid} is in a {kind} namespace other than its tree's "
                    f"root's: nested namespaces are not supported"
                )
                break
    return out


def dump_namespaces(init: int, proc: Proc) -> list[Any]:
    """The records of the VE whose init is `init`: its namespaces, mounts, hostname and
    network (the tree is stopped)."""
    ns = proc.ns(init)
    recs: list[Any] = [
        Namespace(kind=kind, pid=init, flags=NS_OWN, ino=ns.get(name, 0))
        for name, kind in VE_KINDS.items()
    ]
    table = dump_mounts(init)
    recs += table.mounts
    recs += table.data
    recs.append(dump_uts(init))
    recs += dump_net(init)
    return recs


def ve_problems(init: int) -> list[str]:
    """What of the VE itself cannot be dumped (its mounts, its network), before the
    freeze: the same readers run again during the dump."""
    out = []
    for fn in (dump_mounts, dump_net):
        try:
            fn(init)
        except UnsupportedError as e:
            out.append(str(e))
    return out
