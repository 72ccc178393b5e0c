"""The snapshot manager of VEs: create, list, show, diff, delete, cleanup, rollback.

    create     a running VE: a checkpoint with leave-running whose private area is
               snapshotted in the same frozen window (one snapshot, with memory),
               incremental on the previous one with memory while the VE's writes have
               been tracked since that one (its image holds only the pages written
               since; the tracking goes on in a holder between snapshots); a stopped VE,
               or --no-memory: the filesystem alone (a running VE is frozen for the
               snapshot: its files are consistent with each other)
    rollback   stop the VE, keep its live area as a "pre-rollback" snapshot, roll the area
               back, and restore the processes from the snapshot's image when it has one:
               the VE runs exactly as it did at snapshot time
    cleanup    retention by number, age and free space; what is in use is never removed

A snapshot is named by its id or its name.  Every operation holds the VE's lock (a second
one at the same time fails, exit 9); the catalog (catalog.py) is replaced atomically.  A
snapshot is in use while a dump file waits for restore with it (a "checkpoint" snapshot):
deleting it would make that restore impossible, so it is refused.  Deleting a snapshot
whose image the chain of another one needs keeps that image until none does (catalog.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

from cpt.dump.options import DumpOptions
from cpt.errors import InvalidValue, NotRunning
from cpt.stages.stage import Stage
from cptimage.container import ImageReader
from cptimage.diff import Difference
from cptimage.diff import diff as diff_images
from cptimage.errors import ImageError, quote
from cptimage.records import FsSnapshot, Process, SectionType
from storage import backend_for
from storage.base import Changes
from ve import fssnap
from ve.lifecycle import VEManager
from ve.node import Node
from ve.stages import ve_dump_options

from .catalog import FS, Catalog, Snap, chain_below
from .hooks import CatalogHooks, adopt

IMAGE = "Dump"


class InUse(InvalidValue):
    """A snapshot something still needs."""


@dataclasses.dataclass
class Policy:
    """Retention: keep the newest `keep` snapshots, none older than `max_age` seconds,
    and delete the oldest while the pool has less than `min_free` bytes free."""

    keep: int | None = None
    max_age: float | None = None
    min_free: int | None = None


class SnapshotManager:
    """The snapshots of the VEs of `node` (default: CPT_ROOT's)."""

    def __init__(self, node: Node | None = None) -> None:
        self.hooks = CatalogHooks(node)
        self.mgr = VEManager(self.hooks, self.hooks.node)

    def catalog(self, veid: str) -> Catalog:
        self.mgr.config(veid)  # the VE exists
        return self.hooks.catalog(veid)

    # -- create

    def create(
        self, veid: str, *, name: str = "", description: str = "", memory: bool = True
    ) -> Snap:
        with self.mgr.locked(veid):
            cfg = self.mgr.config(veid)
            catalog = self.hooks.catalog(veid)
            if name:
                check_name(name)
                if any(s.name == name for s in catalog.snaps):
                    raise InvalidValue(f"VE {veid} has a snapshot named {quote(name)} already")
            if len(description) > DESCRIPTION_MAX or not description.isprintable():
                raise InvalidValue(
                    f"--description {quote(description)}: at most {DESCRIPTION_MAX} printable "
                    "characters on one line"
                )
            rt = self.mgr.runtime(veid)
            if rt is not None and memory:
                dest = catalog.reserve()
                slot = dest.parent  # the image goes beside the filesystem snapshot
                slot.mkdir(parents=True, exist_ok=True)
                image = str(slot / IMAGE)
                parent = self._tracked_parent(veid, catalog, rt.init_pid)
                opts = ve_dump_options(
                    DumpOptions(leave_running=True, parent=parent, keep_tracking=True)
                )

                def keep(capture: fssnap.FsCapture) -> Snap:
                    return adopt(
                        self.hooks.catalog(veid), capture, "snapshot", image=image, name=name,
                        description=description,
                    )  # fmt: skip

                try:
                    self.mgr.stages(veid).dump_with_fs(
                        cfg, rt.init_pid, image, opts, dest=dest, keep=keep
                    )
                except BaseException:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(image)
                    with contextlib.suppress(OSError):
                        slot.rmdir()
                    raise
                catalog = self.hooks.catalog(veid)
                snap = catalog.find(str(catalog.ident_of(dest)))
            else:
                snap = self._fs_only(veid, cfg.private, catalog, name, description, rt is not None)
            catalog.current = snap.id
            catalog.save()
            return snap

    def _tracked_parent(self, veid: str, catalog: Catalog, init_pid: int) -> str:
        """The image of the snapshot the VE's writes are tracked since (the last one with
        memory, while its holder keeps the tracking), or "" (the snapshot is full)."""
        from cpt.stages.incremental import notice
        from cpt.stages.tracking import Tracking

        st = Tracking(self.mgr.stages(veid).tree(self.mgr.config(veid), init_pid), notice).live()
        if st is None:
            return ""
        for s in sorted(catalog.snaps, key=lambda s: s.id, reverse=True):
            if not s.image or s.kind != "snapshot":
                continue
            try:
                with ImageReader(s.image) as r:
                    if r.header.uuid.hex() == st.uuid:
                        return s.image
            except (OSError, ImageError):
                continue
        return ""

    def _fs_only(
        self, veid: str, area: str, catalog: Catalog, name: str, description: str, running: bool
    ) -> Snap:
        capture = fssnap.FsCapture(veid, area, catalog.reserve())
        capture.prepare()
        fz = self.mgr.freezer(veid)
        frozen_here = running and not fz.freeze_requested()
        if frozen_here:
            fz.freeze()  # the VE's files consistent with each other
        try:
            capture.take()
        finally:
            if frozen_here:
                fz.thaw()
        return adopt(catalog, capture, "snapshot", name=name, description=description)

    # -- read

    def snapshots(self, veid: str) -> list[Snap]:
        return sorted(self.catalog(veid).snaps, key=lambda s: s.id)

    def listing(self, veid: str) -> list[dict[str, Any]]:
        """The snapshots as `snapshot list` shows them: with `image_parent` (the snapshot
        whose image this one's builds on) and `held` (bytes of images of deleted snapshots
        its chain still needs)."""
        catalog = self.catalog(veid)
        return [self._doc(catalog, s) for s in sorted(catalog.snaps, key=lambda s: s.id)]

    def _doc(self, catalog: Catalog, snap: Snap) -> dict[str, Any]:
        doc = snap.to_json()
        doc["held"] = catalog.held(snap)
        doc["image_parent"] = None
        if snap.image:
            below = chain_below(snap.image)[:1]
            for s in catalog.snaps:
                if below and s.image and os.path.realpath(s.image) == below[0]:
                    doc["image_parent"] = s.id
        return doc

    def show(self, veid: str, ref: str) -> dict[str, Any]:
        catalog = self.catalog(veid)
        snap = catalog.find(ref)
        doc = self._doc(catalog, snap)
        doc["current"] = catalog.current == snap.id
        doc["in_use"] = self.in_use(snap)
        if snap.image and os.path.exists(snap.image):
            with ImageReader(snap.image) as r:
                doc["image_uuid"] = r.header.uuid.hex()
                procs = r.records(SectionType.PROCESS)
                doc["processes"] = sum(1 for x in procs if isinstance(x, Process))
        return doc

    def diff(self, veid: str, a: str, b: str) -> tuple[Snap, Snap, Changes, list[Difference]]:
        """Files added, removed and changed from snapshot `a` to `b`, and the differences
        of their images (when both have memory)."""
        catalog = self.catalog(veid)
        sa, sb = catalog.find(a), catalog.find(b)
        changes = backend_for(sa.fs).diff(sa.fs, sb.fs)
        images: list[Difference] = []
        if sa.image and sb.image:
            images = diff_images(sa.image, sb.image)
        return sa, sb, changes, images

    # -- delete, cleanup

    def in_use(self, snap: Snap) -> str:
        """Why the snapshot cannot go ("" if it can)."""
        if snap.kind == "checkpoint" and snap.image and os.path.exists(snap.image):
            return f"the dump file {snap.image} waits for a restore with it"
        return ""

    def delete(self, veid: str, ref: str) -> Snap:
        with self.mgr.locked(veid):
            catalog = self.catalog(veid)
            snap = catalog.find(ref)
            why = self.in_use(snap)
            if why:
                raise InUse(f"snapshot {snap.label} of VE {veid} is in use: {why}")
            catalog.forget(snap, keep_image=snap.kind == "checkpoint")
            return snap

    def orphans(self, veid: str) -> list[Path]:
        """Remove the orphan snapshots of the VE (taken by a dump killed before the catalog
        took them in: no catalog entry names them); returns their slots.  The one its dump
        file needs (that dump was committed) is taken in as that dump's, as the killed
        command would have: its earlier snapshot goes, as after any dump."""
        with self.mgr.locked(veid):
            catalog = self.catalog(veid)
            dump = self.hooks.node.default_dumpfile(veid)
            needed = snapshots_needed_by(dump)
            slots = []
            for slot in catalog.orphans():
                if str(slot / FS) not in needed:
                    catalog.sweep(slot)
                    slots.append(slot)
                    continue
                capture = fssnap.FsCapture(veid, self.mgr.config(veid).private, slot / FS)
                capture.info = capture.backend.info(slot / FS)
                self.hooks.dumped(veid, dump, capture)
            return slots

    def cleanup(self, veid: str, policy: Policy, *, now: float | None = None) -> list[Snap]:
        """Delete what the policy does not keep (oldest first, never what is in use);
        returns what was deleted."""
        now = time.time() if now is None else now
        with self.mgr.locked(veid):
            catalog = self.catalog(veid)
            snaps = sorted(catalog.snaps, key=lambda s: (s.created_ns, s.id))
            doomed: list[Snap] = []
            if policy.keep is not None:
                doomed += snaps[: max(0, len(snaps) - policy.keep)]
            if policy.max_age is not None:
                cutoff = (now - policy.max_age) * 1e9
                doomed += [s for s in snaps if s.created_ns < cutoff]
            gone: list[Snap] = []
            for snap in snaps:
                if snap in doomed and not self.in_use(snap):
                    catalog.forget(snap, keep_image=snap.kind == "checkpoint")
                    gone.append(snap)
            if policy.min_free is not None:
                for snap in [s for s in snaps if s not in gone]:
                    if _free(catalog.dir) >= policy.min_free:
                        break
                    if not self.in_use(snap):
                        catalog.forget(snap, keep_image=snap.kind == "checkpoint")
                        gone.append(snap)
            return gone

    # -- rollback

    def rollback(self, veid: str, ref: str) -> tuple[Snap, Snap, bool]:
        """Back to snapshot `ref`: returns (it, the pre-rollback snapshot, whether the
        processes were restored from its image)."""
        with self.mgr.locked(veid):
            catalog = self.catalog(veid)
            snap = catalog.find(ref)
            if snap.image and not os.path.exists(snap.image):
                raise InvalidValue(f"snapshot {snap.label}: its image {snap.image} is gone")
            was_running = self.mgr.runtime(veid) is not None
            if was_running:
                self.mgr.stop_locked(veid, timeout=5.0)
            else:
                with contextlib.suppress(NotRunning):
                    self.mgr.stop_locked(veid)  # what a VE that ended left
            if os.path.exists(self.mgr.node.default_dumpfile(veid)):
                raise InUse(
                    f"VE {veid} has a dump file waiting ({self.mgr.node.default_dumpfile(veid)})"
                    f": restore it or remove it before a rollback"
                )
            cfg = self.mgr.config(veid)
            rec = fssnap.record(veid, cfg.private, backend_for(snap.fs).info(snap.fs))
            stages = self.mgr.stages(veid)
            kept = stages.roll_back(rec)
            catalog = self.hooks.catalog(veid)
            pre = catalog.find(str(catalog.ident_of(kept)))
            catalog.current = snap.id
            catalog.save()
            if snap.image:
                stages.restore_locked(Stage.RESTORE, snap.image)
                return snap, pre, True
            if was_running:
                self.mgr.start_locked(veid, boot=True)
            return snap, pre, False


def snapshots_needed_by(image: str) -> set[str]:
    """The filesystem snapshots the dump file `image` needs for its restore (a dump
    committed by a chkpnt killed before the catalog took its snapshot in)."""
    try:
        with ImageReader(image) as r:
            return {
                x.snapshot_path for x in r.records(SectionType.FSSNAP) if isinstance(x, FsSnapshot)
            }
    except (OSError, ImageError):
        return set()


def _free(path: os.PathLike[str] | str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def parse_age(text: str) -> float:
    """ "30d", "12h", "90m", "3600s", "3600" -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    t = text.strip().lower()
    unit = t[-1] if t[-1:] in units else "s"
    num = t[:-1] if t[-1:] in units else t
    try:
        value = float(num)
    except ValueError:
        raise InvalidValue(f"--max-age {quote(text)}: use e.g. 30d, 12h, 90m") from None
    if not math.isfinite(value * units[unit]):  # nan, inf, 1e999
        raise InvalidValue(f"--max-age {quote(text)}: not a finite age")
    if value < 0:
        raise InvalidValue(f"--max-age {quote(text)}: an age cannot be negative")
    return value * units[unit]


NAME_MAX = 64
DESCRIPTION_MAX = 1024


def check_name(name: str) -> str:
    """A snapshot's name: 1-64 printable characters, not only digits (ids are)."""
    if name.isdigit():
        raise InvalidValue(f"--name {quote(name)}: a name cannot be a number (ids are)")
    if len(name) > NAME_MAX or not name.isprintable() or name.strip() != name:
        raise InvalidValue(
            f"--name {quote(name)}: use 1-{NAME_MAX} printable characters, without blanks "
            "around them"
        )
    return name
