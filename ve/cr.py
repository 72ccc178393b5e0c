"""`cpt chkpnt VEID` and `cpt restore VEID`: vzctl's staged commands for a VE.

    chkpnt    suspend (freeze the VE's cgroup, take its link down, a blackhole route
              holds its address), dump (the image holds its namespaces), kill; or one
              stage per command: --suspend, --dump, --kill, --resume
    restore   undump (new namespaces, the VE restored but frozen, its link down), resume
              (thaw, link up, the route back); or --undump, --resume, --kill

As vzctl: a failed dump of a full chkpnt resumes the VE; a failed restore leaves nothing
of it running; the default dump file is /var/tmp/Dump.VEID (<root>/dump/Dump.VEID under
another node root), replaced atomically by a chkpnt and removed by a successful full
restore; restore of a running VE is refused (32) before the dump file is looked at; a
chkpnt of a stopped VE is refused (31).  Every command holds the VE's lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time

from cpt.checkpoint import Tree, open_for_restore
from cpt.dump.dumper import DumpStats
from cpt.dump.options import DumpOptions
from cpt.errors import AlreadyRunning, CommandError, NotRunning, RestoreError
from cpt.lock import run_dir
from cpt.restore.options import RestoreOptions
from cpt.restore.restorer import RestoreStats
from cptimage.atomic import atomic_output
from cptimage.container import ImageReader
from cptimage.errors import ImageError
from cptimage.records import FsSnapshot, SectionType, SourceKind
from snapshot.catalog import Catalog, Snap
from storage import backend_for
from storage.errors import FsError

from . import fssnap, net
from .config import VEConfig
from .fssnap import FsCapture
from .lifecycle import Runtime, VEManager, _starttime


class VeLink:
    """A VE's link to the host (Tree's Link): down while the VE is frozen."""

    def __init__(self, cfg: VEConfig) -> None:
        self.cfg = cfg

    def down(self) -> None:
        net.blackhole(self.cfg.ip)  # first: no moment without a route for the address
        net.set_host_link(self.cfg.veid, False)

    def up(self) -> None:
        net.set_host_link(self.cfg.veid, True)
        net.route_to_ve(self.cfg.veid, self.cfg.ip)


def ve_dump_options(base: DumpOptions | None = None) -> DumpOptions:
    """What a VE's image holds: everything a VE may have open (vzctl asks for nothing)."""
    return dataclasses.replace(
        base or DumpOptions(), tcp_established=True, file_locks=True, ext_unix_sk=False
    )


class VeCheckpoint:
    def __init__(self, mgr: VEManager | None = None) -> None:
        self.mgr = mgr or VEManager()

    def dumpfile(self, veid: str, given: str | None) -> str:
        return given or self.mgr.node.default_dumpfile(veid)

    def catalog(self, veid: str) -> Catalog:
        return Catalog(veid, self.mgr.node.snapshots_dir(veid))

    def tree(self, cfg: VEConfig, init_pid: int, capture: FsCapture | None = None) -> Tree:
        return Tree(init_pid, ve_id=cfg.veid, link=VeLink(cfg), in_freeze=capture)

    # -- chkpnt

    def chkpnt(
        self, veid: str, stage: str | None, dumpfile: str | None, opts: DumpOptions
    ) -> DumpStats | None:
        """One stage (suspend, dump, kill, resume) or the full chkpnt; returns the dump's
        statistics when there was a dump.  Every dump snapshots the private area in the
        same frozen window (a "checkpoint" snapshot of the catalog, paired with the dump
        file; one replacing the dump file replaces its snapshot)."""
        with self.mgr.locked(veid):
            cfg = self.mgr.config(veid)
            rt = self.mgr.runtime(veid)
            if rt is None:
                self.mgr.forget_ended(veid)
                raise NotRunning(f"VE {veid} is not running")
            path = self.dumpfile(veid, dumpfile)
            opts = ve_dump_options(opts)
            if stage == "suspend":
                capture = FsCapture(veid, cfg.private, "")  # its sync, before the freeze
                self.tree(cfg, rt.init_pid, capture).suspend(opts)
            elif stage in ("dump", None):
                if dumpfile is None:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                return self.dump_with_fs(cfg, rt.init_pid, path, opts, staged=stage == "dump")
            elif stage == "kill":
                self.tree(cfg, rt.init_pid).kill()
                self._stopped(cfg)
            elif stage == "resume":
                self.tree(cfg, rt.init_pid).resume()
            return None

    def dump_with_fs(
        self,
        cfg: VEConfig,
        init_pid: int,
        path: str,
        opts: DumpOptions,
        *,
        staged: bool = False,
        kind: str = "checkpoint",
        name: str = "",
        description: str = "",
    ) -> DumpStats:
        """Dump the VE to `path` with its private area snapshotted in the frozen window;
        the snapshot joins the catalog (`kind`), or is removed if anything fails."""
        catalog = self.catalog(cfg.veid)
        ident = catalog.new_id()
        catalog.save()
        capture = FsCapture(cfg.veid, cfg.private, catalog.slot(ident) / "fs")
        tree = self.tree(cfg, init_pid, capture)
        stats = tree.dump(path, opts) if staged else tree.checkpoint(path, opts)
        if not staged and not opts.leave_running:
            self._stopped(cfg)
        stats.fs_snapshot_s = capture.took_s
        assert capture.info is not None
        old = catalog.by_image(path) if kind == "checkpoint" else None
        snap = Snap(
            id=ident, kind=kind, created_ns=capture.info.created_ns, fs=str(capture.info.path),
            backend=capture.backend.name, uuid=str(capture.info.uuid),
            generation=capture.info.generation, name=name, description=description,
            image=path, parent=catalog.current, image_size=os.path.getsize(path),
        )  # fmt: skip
        try:
            snap.fs_size = capture.backend.size(capture.info.path)
            catalog.add(snap)
        except BaseException:
            capture.discard()  # a snapshot the catalog does not know is no snapshot
            raise
        if old is not None:  # the dump file it went with was replaced
            forget(catalog, old, keep_image=True)
        return stats

    def _stopped(self, cfg: VEConfig) -> None:
        """The VE's processes are gone: its runtime facts and its veth go (the network
        namespace may outlive them a moment); the blackhole route stays."""
        net.blackhole(cfg.ip)
        net.remove_host_link(cfg.veid)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.mgr.runtime_path(cfg.veid))

    # -- restore

    def restore(
        self, veid: str, stage: str | None, dumpfile: str | None, *, rollback_fs: bool = False
    ) -> RestoreStats | None:
        """--undump, --resume, --kill, or the full restore (undump, resume)."""
        with self.mgr.locked(veid):
            return self.restore_locked(veid, stage, dumpfile, rollback_fs=rollback_fs)

    def restore_locked(
        self, veid: str, stage: str | None, dumpfile: str | None, *, rollback_fs: bool = False
    ) -> RestoreStats | None:
        cfg = self.mgr.config(veid)
        rt = self.mgr.runtime(veid)
        undumped = rt is not None and self._undumped(veid)
        if stage in ("resume", "kill"):
            if rt is None or not undumped:
                what = "running" if rt is not None else "not running"
                raise NotRunning(f"VE {veid} is {what}, not restored by `restore --undump`")
            tree = self.tree(cfg, rt.init_pid)
            if stage == "resume":
                tree.resume()
            else:
                tree.kill()
                self._stopped(cfg)
            return None
        if rt is not None:
            raise AlreadyRunning(f"VE {veid} is running: its restore is refused")
        self.mgr.forget_ended(veid)
        path = self.dumpfile(veid, dumpfile)
        self._check_fs(veid, path, rollback_fs)
        reader = open_for_restore(path)
        with reader:
            h = reader.header
            if h.source_kind != SourceKind.VE:
                raise RestoreError(
                    f"{path} is the image of process tree {h.root_pid}, not of a VE: restore "
                    f"it with `cpt restore --dumpfile {path}`"
                )
            if h.source_id != veid:
                raise RestoreError(f"{path} is the image of VE {h.source_id}, not of VE {veid}")

            def links(pid: int) -> None:
                net.setup_host(veid, cfg.ip, pid, up=False)

            opts = RestoreOptions(ve_links=links)
            tree = Tree(0, ve_id=veid, link=VeLink(cfg))
            stats = tree.restore(reader, opts, undump=stage == "undump")
        init = stats.host_pid
        rt = Runtime(init_pid=init, host_if=net.host_ifname(veid), starttime=_starttime(init))
        with atomic_output(self.mgr.runtime_path(veid), mode=0o644) as f:
            f.write(json.dumps(dataclasses.asdict(rt)).encode())
        if stage is None and path == self.mgr.node.default_dumpfile(veid):
            # as vzctl: the VE runs again, its dump is spent (and the snapshot with it)
            catalog = self.catalog(veid)
            snap = catalog.by_image(path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            if snap is not None:
                forget(catalog, snap, keep_image=True)
        return stats

    def _check_fs(self, veid: str, path: str, rollback_fs: bool) -> None:
        """The private area must be what the dump's snapshot holds: refuse naming what
        changed, or (`rollback_fs`) roll it back, keeping the live contents as a
        pre-rollback snapshot.  Before anything is created."""
        try:
            with ImageReader(path) as r:
                recs = [x for x in r.records(SectionType.FSSNAP) if isinstance(x, FsSnapshot)]
        except ImageError as e:
            raise RestoreError(f"{e}; refusing to restore") from None
        for rec in recs:
            diff = fssnap.changes(rec)
            if diff is None:
                raise RestoreError(
                    f"{path}: the filesystem snapshot {rec.snapshot_path} taken with this dump "
                    f"is gone: the private area {rec.subvolume} cannot be proven unchanged"
                )
            if not diff:
                continue
            if not rollback_fs:
                names = diff.paths()
                shown = ", ".join(names[:5]) + (
                    f" (and {len(names) - 5} more)" if len(names) > 5 else ""
                )
                raise RestoreError(
                    f"the private area {rec.subvolume} changed since the checkpoint: {shown}; "
                    f"restore with --rollback-fs to roll it back to the snapshot"
                )
            self.keep_live(veid, rec)

    def keep_live(self, veid: str, rec: FsSnapshot) -> Snap:
        """Roll the private area back to the snapshot of `rec`; its live contents become
        a "pre-rollback" snapshot of the catalog."""
        catalog = self.catalog(veid)
        ident = catalog.new_id()
        catalog.save()
        keep = fssnap.rollback_to(rec, catalog.slot(ident) / "fs")
        backend = backend_for(rec.subvolume)
        info = backend.info(keep)
        snap = Snap(
            id=ident, kind="pre-rollback", created_ns=time.time_ns(), fs=str(keep),
            backend=backend.name, uuid=str(info.uuid), generation=info.generation,
            description=f"the private area before a rollback to {rec.snapshot_path}",
            parent=catalog.current,
        )  # fmt: skip
        with contextlib.suppress(FsError, CommandError):
            snap.fs_size = backend.size(keep)
        catalog.add(snap)
        return snap

    def _undumped(self, veid: str) -> bool:
        """Is the VE's frozen state one of `restore --undump`'s (its tree state says)?"""
        try:
            with open(os.path.join(run_dir(), f"ve-{veid}.json")) as f:
                return bool(json.load(f).get("state") == "undumped")
        except (FileNotFoundError, ValueError):
            return False


def forget(catalog: Catalog, snap: Snap, *, keep_image: bool = False) -> None:
    """Remove a snapshot: out of the catalog first, then its filesystem snapshot, its
    image (unless `keep_image`: a dump file is not the catalog's) and its slot."""
    catalog.remove(snap)
    backend_for(snap.fs).delete_snapshot(snap.fs)
    if snap.image and not keep_image:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(snap.image)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(snap.fs))
