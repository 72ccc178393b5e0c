"""A VE's namespaces in its image: which namespaces are the VE's own, its user namespace
(a VE that contains its root: its maps), its mount table (mounts.py), hostname and
network configuration (netns.py).  The IPC namespace's
objects are ipc.py's; the PID namespace is implied (the tree's ids inside it are the
innermost of each NSpid chain).

Every process of a tree (a VE's above all) must live in the namespaces of its root: one
that made its own (`unshare -n`, a nested container) would come back in the root's, so it
is refused.
"""

from __future__ import annotations

import os
from typing import Any

from cptimage.records import IdMap, Namespace, NsKind, UserNs

from ..errors import UnsupportedError
from ..procfs import Proc
from .ipc import NS_OWN
from .mounts import dump_mounts
from .netns import dump_net, dump_uts
from .pstree import TaskInfo

# the namespaces a VE restore recreates (IPC: ipc.py records it)
VE_KINDS = {"mnt": NsKind.MNT, "uts": NsKind.UTS, "pid": NsKind.PID, "net": NsKind.NET}
# and those of a VE that contains its root
USERNS_KINDS = {"user": NsKind.USER, "cgroup": NsKind.CGROUP}
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


def dump_userns(init: int, proc: Proc) -> UserNs | None:
    """The user namespace of the VE whose init is `init`, if it has one of its own (a VE
    that contains its root): its maps as this host sees them, and setgroups."""
    here = proc.ns(os.getpid()).get("user")
    ns = proc.ns(init).get("user")
    if ns is None or ns == here:
        return None
    uid_map, gid_map = proc.uid_map(init), proc.gid_map(init)
    if not uid_map or not gid_map:
        raise UnsupportedError(
            f"VE init {init}: its user namespace has no uid or gid map", pid=init
        )
    return UserNs(
        ns_ino=ns,
        setgroups=1 if proc.setgroups(init) == "allow" else 0,
        uid_map=[IdMap(m.inside, m.outside, m.count) for m in uid_map],
        gid_map=[IdMap(m.inside, m.outside, m.count) for m in gid_map],
    )


def dump_namespaces(init: int, proc: Proc, userns: UserNs | None = None) -> list[Any]:
    """The records of the VE whose init is `init`: its namespaces (with `userns`: also its
    user and cgroup namespaces), mounts, hostname and network (the tree is stopped)."""
    ns = proc.ns(init)
    kinds = dict(VE_KINDS, **USERNS_KINDS) if userns is not None else VE_KINDS
    recs: list[Any] = [
        Namespace(kind=kind, pid=init, flags=NS_OWN, ino=ns.get(name, 0))
        for name, kind in kinds.items()
    ]
    if userns is not None:
        recs.append(userns)
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
