"""A VE's filesystem snapshot inside a dump's frozen window (cpt.stages.tree.InFreeze).

    prepare   before the freeze: write the filesystem back (sync), so that the snapshot
              in the frozen window costs milliseconds, not the writeback (ENGINE-NOTES)
    take      with the VE frozen: snapshot its private area, read-only, with every
              subvolume nested in it (btrfs: one group, all or none, see
              storage/btrfs.py); the FsSnapshot record goes into the image
    discard   the dump failed: the snapshot goes

and, at restore, the proof that the private area is still what the snapshot holds
(`changes`), or the rollback to it (`rollback_to`).  A btrfs area is never fsfrozen (a
snapshot of a frozen btrfs hangs): the freezer cgroup holds every writer of the VE.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path

from cpt import fault, interrupts
from cpt.errors import CommandError
from cptimage.records import FsSnapshot
from storage import backend_for
from storage.base import Changes, SnapshotInfo
from storage.errors import FsError

NO_UUID = bytes(16)


def record(veid: str, area: str, info: SnapshotInfo) -> FsSnapshot:
    return FsSnapshot(
        backend=info.backend,
        generation=info.generation,
        created_ns=info.created_ns,
        uuid=info.uuid.bytes,
        parent_uuid=info.parent_uuid.bytes if info.parent_uuid else NO_UUID,
        subvolume=area,
        snapshot_path=str(info.path),
        ve_id=veid,
        manifest_digest=info.manifest_digest,
    )


class FsCapture:
    def __init__(self, veid: str, area: str, dest: str | os.PathLike[str]) -> None:
        self.veid = veid
        self.area = area
        self.dest = Path(dest)
        self.backend = backend_for(area)
        self.info: SnapshotInfo | None = None
        self.took_s = 0.0  # the snapshot's share of the frozen window

    def prepare(self) -> None:
        self.backend.sync(self.area)

    def take(self) -> list[FsSnapshot]:
        t0 = time.perf_counter()
        with interrupts.deferred():  # made and known together: discard() can find it
            self.info = self.backend.snapshot(self.area, self.dest)
            fault.point("ve:fs-snapshot-made")
        self.took_s = time.perf_counter() - t0
        return [record(self.veid, self.area, self.info)]

    def discard(self) -> None:
        if self.info is not None:
            with contextlib.suppress(FsError, CommandError):
                self.backend.delete_snapshot(self.info.path)
            self.info = None
        with contextlib.suppress(OSError):
            self.dest.parent.rmdir()  # the snapshot's slot, if nothing else is in it


def changes(rec: FsSnapshot) -> Changes | None:
    """How the live private area differs from the snapshot the image recorded (empty:
    identical); None when the snapshot is gone."""
    if not os.path.isdir(rec.snapshot_path):
        return None
    backend = backend_for(rec.subvolume)
    info = backend.info(rec.snapshot_path)
    if info.uuid != uuid.UUID(bytes=rec.uuid):
        return None  # another snapshot at that path now
    return backend.changes_since(rec.subvolume, rec.snapshot_path)


def rollback_to(rec: FsSnapshot, keep: str | os.PathLike[str]) -> Path:
    """Make the private area the snapshot again; the live contents are kept, read-only, at
    `keep`."""
    return backend_for(rec.subvolume).rollback(rec.subvolume, rec.snapshot_path, keep=keep)
