"""What snapshots add to the VE layer: its snapshot hooks (ve/hooks.py) kept in each VE's
catalog, and `ve_manager`, which builds the VE layer with them (what the CLI uses).

    a dump               its filesystem snapshot is a "checkpoint" snapshot paired with the
                         dump file; a dump replacing the file replaces its snapshot
    a full restore       of the default dump file: the file is spent, its snapshot goes
    a rollback of the    (restore --rollback-fs, snapshot rollback): the live contents
    private area         become a "pre-rollback" snapshot
    destroy              every snapshot of the VE goes, then its catalog directory
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cpt.errors import CommandError
from cptimage.records import FsSnapshot
from storage import backend_for
from storage.errors import FsError
from ve.lifecycle import VEManager
from ve.node import Node

from .catalog import Catalog, Snap

if TYPE_CHECKING:
    from ve.fssnap import FsCapture


class CatalogHooks:
    """ve.hooks.SnapshotHooks on the snapshot catalog of each VE of `node`."""

    def __init__(self, node: Node | None = None) -> None:
        self.node = node or Node()

    def catalog(self, veid: str) -> Catalog:
        return Catalog(veid, self.node.snapshots_dir(veid))

    def place(self, veid: str) -> Path:
        return self.catalog(veid).reserve()

    def dumped(self, veid: str, image: str, capture: FsCapture) -> None:
        catalog = self.catalog(veid)
        old = catalog.by_image(image)
        adopt(catalog, capture, "checkpoint", image=image)
        if old is not None:  # the dump file it went with was replaced
            catalog.forget(old, keep_image=True)

    def spent(self, veid: str, image: str) -> None:
        catalog = self.catalog(veid)
        snap = catalog.by_image(image)
        if snap is not None:
            catalog.forget(snap, keep_image=True)

    def rolled_back(self, veid: str, rec: FsSnapshot, kept: Path) -> None:
        catalog = self.catalog(veid)
        backend = backend_for(rec.subvolume)
        snap = Snap.of(
            catalog.ident_of(kept), "pre-rollback", backend, backend.info(kept),
            created_ns=time.time_ns(), parent=catalog.current,
            description=f"the private area before a rollback to {rec.snapshot_path}",
        )  # fmt: skip
        with contextlib.suppress(FsError, CommandError):
            snap.fs_size = backend.size(kept)
        catalog.add(snap)

    def destroyed(self, veid: str) -> None:
        d = self.node.snapshots_dir(veid)
        if not os.path.isdir(d):
            return
        catalog = Catalog(veid, d)
        for slot in catalog.orphans():  # a killed dump's, which no catalog entry names
            catalog.sweep(slot)
        for snap in list(catalog.snaps):
            catalog.remove(snap)
            if os.path.exists(snap.fs):
                backend_for(snap.fs).delete_snapshot(snap.fs)
        shutil.rmtree(d)  # the images, the slots, the catalog


def adopt(
    catalog: Catalog,
    capture: FsCapture,
    kind: str,
    *,
    image: str | None = None,
    name: str = "",
    description: str = "",
) -> Snap:
    """Add the snapshot `capture` took (at a path the catalog reserved) as a snapshot of
    `kind`; if that fails, the snapshot is removed: one the catalog does not know is none."""
    assert capture.info is not None
    snap = Snap.of(
        catalog.ident_of(capture.dest), kind, capture.backend, capture.info,
        parent=catalog.current, image=image, name=name, description=description,
    )  # fmt: skip
    try:
        snap.fs_size = capture.backend.size(capture.info.path)
        catalog.add(snap)
    except BaseException:
        capture.discard()
        raise
    return snap


def ve_manager(node: Node | None = None) -> VEManager:
    """The VEs of `node` (default: CPT_ROOT's) with their snapshots in the catalog."""
    node = node or Node()
    return VEManager(CatalogHooks(node), node)
