"""A VE's namespaces at restore.

The stub of the VE's init is created in new PID, mount, UTS, IPC and network namespaces
(it is PID 1 there; a VE that contains its root: first a user namespace, which owns them
all and a cgroup namespace, see userns.py); its mount table is rebuilt and made its root (mounts.build, run by
a child that joined the new mount and PID namespaces, so proc shows the VE's PIDs), its
hostname set, its network configured: the caller's `links(pid)` creates what crosses
the namespace boundary (the veth pair of a VE, its peer on the host), netns.restore_net
the rest from the image.  From then on the restorer reaches the VE's files through
its root (ImageModel.open: openat2 inside the root /proc/<init>/root names) and creates sockets and IPC objects with its
thread inside the VE's namespaces (cpt.sys.ns.entered).
"""

from __future__ import annotations

from collections.abc import Callable

from cptimage.records import HeaderFlags

from ..errors import RestoreError
from ..procfs import root_path
from ..sys.ns import VE_NAMESPACES, in_child
from ..sys.ns import join as ns_join
from ..trace.tracee import Tracee
from . import mounts, netns, userns
from .model import ImageModel
from .stub import STUB_OPTIONS, kill_and_reap, spawn_stub


def spawn_init(
    model: ImageModel,
    on_spawn: Callable[[int], None] | None = None,
    links: Callable[[int], None] | None = None,
    slot: int = -1,
) -> tuple[Tracee, userns.Donor | None]:
    """The traced stub of the VE's init, in its new namespaces, the VE built around it.
    A VE that contains its root also gets the donor of its files (userns.py), whose pidfd
    its stubs hold at fd `slot` instead of the restorer's."""
    if model.root != 1:
        raise RestoreError(
            f"the image's root process is PID {model.root} inside its VE, not the VE's init "
            f"(PID 1): the image is damaged"
        )
    made: set[int] | None = None
    donor: userns.Donor | None = None
    if model.header.flags & HeaderFlags.USERNS or model.userns is not None:
        if model.userns is None:
            raise RestoreError("the VE image says USERNS but holds no UserNs record: damaged")
        if on_spawn is None:  # no cgroup to root its cgroup namespace in, no range check
            ve = model.header.source_id
            raise RestoreError(
                f"the image is of VE {ve}, which contains its root: restore it as the VE "
                f"(`cpt restore {ve}`), not as a process tree"
            )
        t, made, donor = userns.spawn_init(model, model.userns, on_spawn, slot)
    else:
        t = spawn_stub(options=STUB_OPTIONS, flags=VE_NAMESPACES)
    try:
        if on_spawn is not None and donor is None:  # the donor's stub started in its cgroup
            on_spawn(t.pid)
        build(model, t.pid, links, made)
    except BaseException:
        t.close()
        kill_and_reap(t.pid)
        if donor is not None:
            donor.close()
        raise
    return t, donor


def build(
    model: ImageModel,
    pid: int,
    links: Callable[[int], None] | None,
    made: set[int] | None = None,
) -> None:
    """The namespaces of the process `pid` become the VE's: mounts (but those `made`
    already, the host's part of a VE with a user namespace), hostname, network."""
    if not model.mounts:
        raise RestoreError("the VE image has no mount table: it cannot be restored")

    def make_root() -> None:
        mounts.build(model.mounts, model.mount_data, host_side=made)

    def join() -> None:
        # sysfs and mqueue belong to the namespaces of whoever mounts them, proc to the
        # PID namespace of the mounter's children
        ns_join(pid, ("net", "ipc", "uts", "mnt", "pid"))
        in_child(make_root)  # a PID namespace applies to children

    try:
        in_child(join)
    except (OSError, RuntimeError) as e:
        raise RestoreError(f"cannot rebuild the VE's mounts: {e}") from None
    if model.uts is not None:
        netns.restore_uts(pid, model.uts)
    if links is not None:
        links(pid)
    netns.restore_net(pid, model.net)
    model.set_root(root_path(pid))
