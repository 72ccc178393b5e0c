"""The stages of a VE (`cpt chkpnt VEID`, `cpt restore VEID`): cpt.stages' Stages for a
VE, vzctl's staged commands.

    chkpnt    suspend (freeze the VE's cgroup, take its link down, a blackhole route
              holds its address), dump (the image holds its namespaces), kill; or one
              stage per command: SUSPEND, DUMP, KILL, RESUME
    restore   undump (new namespaces, the VE restored but frozen, its link down), resume
              (thaw, link up, the route back); or one stage: UNDUMP, RESUME, KILL

As vzctl: a failed dump of a full chkpnt resumes the VE; a failed restore leaves nothing
of it running; the default dump file is /var/tmp/Dump.VEID (<root>/dump/Dump.VEID under
another node root), replaced atomically by a chkpnt and removed by a successful full
restore; restore of a running VE is refused (32) before the dump file is looked at; a
chkpnt of a stopped VE is refused (31).  Every stage holds the VE's lock.

Every dump snapshots the private area in the frozen window (fssnap.py) at a place the
snapshot hooks give (hooks.py), and tells them; a restore proves the area unchanged
against that snapshot, or rolls it back to it (RestoreOptions.rollback_fs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from cpt import interrupts
from cpt.dump.dumper import DumpStats
from cpt.dump.options import DumpOptions
from cpt.errors import AlreadyRunning, NotRunning, RestoreError, UsageError
from cpt.restore.options import RestoreOptions
from cpt.restore.relocate import relocate
from cpt.restore.restorer import RestoreStats
from cpt.stages.dump import checkpoint, dump
from cpt.stages.incremental import closing_stage, predump
from cpt.stages.kill import kill
from cpt.stages.restore import check_restorable, open_image, restore
from cpt.stages.resume import resume
from cpt.stages.stage import Stage, check_chkpnt_options, check_dumpfile, check_stage
from cpt.stages.store import KILLING, TreeState
from cpt.stages.suspend import suspend
from cpt.stages.tree import RUNS_AGAIN, Tree
from cptimage.container import ImageReader
from cptimage.records import FsSnapshot, IdMap, Mount, SectionType, SourceKind, UserNs
from storage import transfer

from . import fssnap, net
from .config import VEConfig
from .fssnap import FsCapture
from .hooks import SnapshotHooks
from .idmap import ID_COUNT, IdRangeError, IdRegistry, range_text
from .node import Node
from .runtime import RunState


class VeLink:
    """A VE's link to the host (cpt.stages.tree.Link): down while the VE is frozen."""

    def __init__(self, cfg: VEConfig) -> None:
        self.cfg = cfg

    def down(self) -> None:
        net.blackhole(self.cfg.ip)  # first: no moment without a route for the address
        net.set_host_link(self.cfg.veid, False)

    def up(self) -> None:
        net.set_host_link(self.cfg.veid, True)
        upl = net.route_to_ve(self.cfg.veid, self.cfg.ip)
        if upl is not None:  # its LAN learns it is here (restored from elsewhere)
            net.announce_soon(self.cfg.ip, upl)

    def is_up(self) -> bool:
        return net.host_link_up(self.cfg.veid) is not False


def ve_dump_options(base: DumpOptions | None = None) -> DumpOptions:
    """What a VE's image holds: everything a VE may have open (vzctl asks for nothing)."""
    return dataclasses.replace(
        base or DumpOptions(), tcp_established=True, file_locks=True, ext_unix_sk=False
    )


class VeStages:
    """The chkpnt and restore stages of VE `veid` of `node`; `snapshots` keeps the
    filesystem snapshots its dumps take."""

    def __init__(self, veid: str, snapshots: SnapshotHooks, node: Node | None = None) -> None:
        self.veid = veid
        self.snapshots = snapshots
        self.node = node or Node()

    @property
    def label(self) -> str:
        return f"VE {self.veid}"

    def dumpfile(self, given: str | None = None) -> str:
        check_dumpfile(given)  # "" is refused, never taken for the default
        return given if given is not None else self.node.default_dumpfile(self.veid)

    def tree(self, cfg: VEConfig, init_pid: int, capture: FsCapture | None = None) -> Tree:
        return RunState(cfg.veid).tree(init_pid, link=VeLink(cfg), in_freeze=capture)

    def state(self) -> TreeState | None:
        return RunState(self.veid).tree().suspended()

    # -- chkpnt

    def chkpnt(
        self, stage: Stage, dumpfile: str | None = None, opts: DumpOptions | None = None
    ) -> DumpStats | None:
        """One stage (suspend, dump, kill, resume) or the full chkpnt; returns the dump's
        statistics when there was a dump.  Every dump snapshots the private area in the
        same frozen window, and the snapshot hooks keep it with the dump file."""
        check_stage(stage, "chkpnt")
        check_dumpfile(dumpfile)
        opts = opts or DumpOptions()
        check_chkpnt_options(stage, opts)
        run = RunState(self.veid)
        with run.locked():
            cfg = self.node.config(self.veid)
            repaired = self.repair_locked(cfg)
            rt = run.runtime()
            if rt is None:
                run.forget_ended(cfg.ip)
                raise NotRunning(f"VE {self.veid} is not running")
            if stage is Stage.RESUME and repaired in RUNS_AGAIN:
                return None  # the repair of a killed cpt's suspend resumed it
            path = self.dumpfile(dumpfile)
            opts = ve_dump_options(opts)
            if opts.pre_dump:  # memory only, the VE runs on: no filesystem snapshot
                return predump(
                    self.tree(cfg, rt.init_pid), path, opts, opts.parent or None,
                    opts.parent_dir or None,
                )  # fmt: skip
            if stage is Stage.SUSPEND:
                capture = FsCapture(self.veid, cfg.private, "")  # its sync, before the freeze
                suspend(self.tree(cfg, rt.init_pid, capture), opts)
            elif stage in (Stage.DUMP, Stage.CHKPNT):
                if dumpfile is None:
                    self.node.make_dump_dir()
                return self.dump_with_fs(cfg, rt.init_pid, path, opts, staged=stage is Stage.DUMP)
            elif stage is Stage.KILL:
                kill(self.tree(cfg, rt.init_pid))
                self.stopped(cfg)
                closing_stage(self.tree(cfg, rt.init_pid), killed=True)
            else:
                resume(self.tree(cfg, rt.init_pid))
                closing_stage(self.tree(cfg, rt.init_pid), killed=False)
            return None

    def repair(self) -> str | None:
        """repair_locked() with the VE's lock taken."""
        with RunState(self.veid).locked():
            return self.repair_locked(self.node.config(self.veid))

    def repair_locked(self, cfg: VEConfig) -> str | None:
        """Finish or undo what a cpt command killed half-way left on the VE, as its journal
        says (cpt.stages.tree.Tree.repair): frozen or cut off, it runs again; killed past
        its dump's commit, its runtime and link go.  Returns the state found, or None."""
        with interrupts.deferred():  # a repair is never left half-done
            return self._repair(cfg)

    def _repair(self, cfg: VEConfig) -> str | None:
        run = RunState(cfg.veid)
        rt = run.runtime()
        if rt is None:  # its processes are gone: what is left is forget_ended()'s
            st = run.tree().journal()
            if st is None or st.stable:
                return None
            run.stage_state().drop()
            return st.state
        found = self.tree(cfg, rt.init_pid).repair()
        if found == KILLING:
            self.stopped(cfg)
        return found

    def dump_with_fs(
        self,
        cfg: VEConfig,
        init_pid: int,
        path: str,
        opts: DumpOptions,
        *,
        staged: bool = False,
        dest: Path | None = None,
        keep: Callable[[FsCapture], object] | None = None,
    ) -> DumpStats:
        """Dump the VE to `path` with its private area snapshotted in the frozen window,
        at `dest` (default: a place the snapshot hooks give).  The snapshot is then
        `keep`'s (default: the hooks' `dumped`), which keeps it or removes it."""
        if dest is None:
            dest = self.snapshots.place(cfg.veid)
        capture = FsCapture(cfg.veid, cfg.private, dest)
        tree = self.tree(cfg, init_pid, capture)

        def kept() -> None:
            if keep is None:
                with interrupts.deferred():  # the catalog takes the new snapshot in and
                    self.snapshots.dumped(cfg.veid, path, capture)  # forgets the old at once
            else:
                keep(capture)

        try:
            stats = dump(tree, path, opts) if staged else checkpoint(tree, path, opts)
        except BaseException:
            if capture.info is not None:
                # a failed dump discards its snapshot: one still here went with a dump
                # published before the signal that stops this command came
                kept()
            raise
        if not staged and not opts.leave_running:
            self.stopped(cfg)
        stats.fs_snapshot_s = capture.took_s
        kept()
        return stats

    def stopped(self, cfg: VEConfig) -> None:
        """The VE's processes are gone: its runtime facts and its veth go (the network
        namespace may outlive them a moment); the blackhole route stays."""
        net.blackhole(cfg.ip)
        net.remove_host_link(cfg.veid)
        RunState(cfg.veid).drop_runtime()

    # -- restore

    def restore(
        self, stage: Stage, dumpfile: str | None = None, opts: RestoreOptions | None = None
    ) -> RestoreStats | None:
        """UNDUMP, RESUME, KILL, or the full RESTORE (undump, resume)."""
        check_stage(stage, "restore")
        check_dumpfile(dumpfile)
        opts = opts or RestoreOptions()
        if opts.pidns or opts.ipcns or opts.shell_job:
            raise UsageError("--pidns, --ipcns, --shell-job and --pidfile are for process trees")
        with RunState(self.veid).locked():
            self.repair_locked(self.node.config(self.veid))
            return self.restore_locked(
                stage,
                dumpfile,
                rollback_fs=opts.rollback_fs,
                trust=opts.trust,
                parent_dir=opts.parent_dir,
            )

    def restore_locked(
        self,
        stage: Stage,
        dumpfile: str | None = None,
        *,
        rollback_fs: bool = False,
        trust: bool = False,
        parent_dir: str = "",
    ) -> RestoreStats | None:
        """restore() with the VE's lock held.  The dump file is opened once and trusted
        as cpt.restore.trust says (`trust`: the operator vouches for it), an incremental
        one with its chain (each parent trusted too; `parent_dir`: where the parents are,
        if not next to it); the image must be this VE's, carry its filesystem proof, and
        stand on its configured private area (_check_image), before the area is proven or
        rolled back and the host is checked."""
        veid = self.veid
        cfg = self.node.config(veid)
        run = RunState(veid)
        rt = run.runtime()
        undumped = rt is not None and run.undumped()
        if stage in (Stage.RESUME, Stage.KILL):
            if rt is None or not undumped:
                what = "running" if rt is not None else "not running"
                raise NotRunning(f"VE {veid} is {what}, not restored by `restore --undump`")
            tree = self.tree(cfg, rt.init_pid)
            if stage is Stage.RESUME:
                resume(tree)
            else:
                kill(tree)
                self.stopped(cfg)
            return None
        if rt is not None:
            raise AlreadyRunning(f"VE {veid} is running: its restore is refused")
        run.forget_ended(cfg.ip)
        path = self.dumpfile(dumpfile)
        # a damaged image: ImageError, exit 40 (a pre-dump too); an incremental one flattened
        reader = open_image(path, trust=trust, parent_dir=parent_dir)
        with reader:
            h = reader.header
            if h.source_kind != SourceKind.VE:
                raise RestoreError(
                    f"{path} is the image of process tree {h.root_pid}, not of a VE: restore "
                    f"it with `cpt restore --dumpfile {path}`"
                )
            if h.source_id != veid:
                raise RestoreError(f"{path} is the image of VE {h.source_id}, not of VE {veid}")
            self._check_ids(cfg, path, reader)
            proofs = self._check_image(path, reader, cfg)
            self._check_fs(path, proofs, rollback_fs)

            def links(pid: int) -> None:
                net.setup_host(veid, cfg.ip, pid, up=False)

            opts = RestoreOptions(ve_links=links, trust=trust)
            check_restorable(reader, opts)
            stats = restore(self.tree(cfg, 0), reader, opts, undump=stage is Stage.UNDUMP)
        run.record(stats.host_pid, net.host_ifname(veid))
        if stage is Stage.RESTORE and path == self.node.default_dumpfile(veid):
            # as vzctl: the VE runs again, its dump is spent (and the snapshot with it)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            self.snapshots.spent(veid, path)
        return stats

    def restore_received(
        self,
        path: str,
        snapshot: str,
        *,
        parent_dir: str = "",
        undump: bool = False,
        verified: dict[str, BinaryIO] | None = None,
    ) -> RestoreStats:
        """With the VE's lock held: restore the image `path` a migration brought to this
        node (ve/agent.py), whose private area came as the received read-only snapshot
        `snapshot` and was made the VE's area from it.  The proof that the area is the
        one the image was dumped with is the snapshot's received UUID: the UUID of the
        source's snapshot the image records.  The image is restored relocated to this
        node's area (cpt.restore.relocate); `undump`: left frozen, link down;
        `verified`: the images of its chain verified as they arrived, open (by path)."""
        veid = self.veid
        cfg = self.node.config(veid)
        run = RunState(veid)
        if run.runtime() is not None:
            raise AlreadyRunning(f"VE {veid} is running here: its restore is refused")
        run.forget_ended(cfg.ip)
        base = open_image(path, parent_dir=parent_dir, verified=verified)
        try:
            h = base.header
            if h.source_kind != SourceKind.VE or h.source_id != veid:
                raise RestoreError(f"{path} is not an image of VE {veid}")
            recs = [x for x in base.records(SectionType.FSSNAP) if isinstance(x, FsSnapshot)]
            if len(recs) != 1:
                raise RestoreError(f"{path}: {len(recs)} filesystem snapshots, not one")
            got = transfer.received_uuid(Path(snapshot))
            if got != recs[0].uuid:
                raise RestoreError(
                    f"the private area received ({snapshot}) is not the snapshot VE {veid} "
                    f"was dumped with; refusing to restore"
                )
            reader = relocate(base, recs[0].subvolume, cfg.private, snapshot)
        except BaseException:
            base.close()
            raise
        with reader:
            self._check_ids(cfg, path, reader)
            self._check_image(path, reader, cfg, snapshots=os.path.dirname(snapshot))

            def links(pid: int) -> None:
                net.setup_host(veid, cfg.ip, pid, up=False)

            opts = RestoreOptions(ve_links=links)
            check_restorable(reader, opts)
            stats = restore(self.tree(cfg, 0), reader, opts, undump=undump)
        run.record(stats.host_pid, net.host_ifname(veid))
        return stats

    def _check_image(
        self, path: str, reader: ImageReader, cfg: VEConfig, *, snapshots: str = ""
    ) -> list[FsSnapshot]:
        """The image must stand on this VE's configured private area: its root mount is
        that area, and it carries the filesystem proof (FsSnapshot) of that area, whose
        snapshots are this VE's in the node's pool (those are the paths a rollback
        touches).  Returns the proofs, with the area and the snapshot paths as resolved
        here."""
        veid = self.veid
        area = os.path.realpath(cfg.private)
        mounts = [m for m in reader.records(SectionType.NAMESPACES) if isinstance(m, Mount)]
        if mounts and os.path.realpath(mounts[0].source) != area:
            raise RestoreError(
                f"{path}: the image's root mount is {mounts[0].source}, not the private area "
                f"{cfg.private} of VE {veid}; refusing to restore"
            )
        recs = [x for x in reader.records(SectionType.FSSNAP) if isinstance(x, FsSnapshot)]
        if not recs:
            raise RestoreError(
                f"{path}: the image carries no filesystem snapshot (FsSnapshot): the private "
                f"area {cfg.private} of VE {veid} cannot be proven to be the one it was dumped "
                f"with; refusing to restore"
            )
        place = os.path.realpath(snapshots or self.node.snapshots_dir(veid))
        out = []
        for rec in recs:
            if rec.ve_id != veid or os.path.realpath(rec.subvolume) != area:
                raise RestoreError(
                    f"{path}: the image's filesystem snapshot is of {rec.subvolume} (VE "
                    f"{rec.ve_id}), not of the private area {cfg.private} of VE {veid}; "
                    f"refusing to restore"
                )
            snap = os.path.realpath(rec.snapshot_path)
            if not snap.startswith(place + os.sep):
                raise RestoreError(
                    f"{path}: the image's filesystem snapshot {rec.snapshot_path} is not one of "
                    f"VE {veid}'s snapshots in the node's pool ({place}); refusing to restore"
                )
            out.append(dataclasses.replace(rec, subvolume=area, snapshot_path=snap))
        return out

    def _check_ids(self, cfg: VEConfig, path: str, reader: ImageReader) -> None:
        """The image's user namespace must be the VE's (its configured range; none for a
        privileged VE), and its range this VE's on this machine: refuse (naming the range
        and who holds it) before anything is created."""
        found = [x for x in reader.records(SectionType.NAMESPACES) if isinstance(x, UserNs)]
        userns = found[0] if found else None
        if userns is None and not cfg.privileged:
            raise RestoreError(
                f"{path} is the image of VE {cfg.veid} when it was privileged; it contains its "
                f"root now (`cpt ve set {cfg.veid} --privileged` to restore it as it was)"
            )
        if userns is None:
            return
        if cfg.privileged:
            raise RestoreError(
                f"{path} is the image of VE {cfg.veid} in its user namespace; the VE is "
                f"privileged now (`cpt ve set {cfg.veid} --no-privileged` first)"
            )
        want = [IdMap(0, cfg.id_base, ID_COUNT)]
        for name in ("uid_map", "gid_map"):
            got = getattr(userns, name)
            if got != want:
                shown = ", ".join(range_text(e.outside, e.count) for e in got) or "nothing"
                raise RestoreError(
                    f"{path}: its {name} maps the VE's ids to host ids {shown}; VE "
                    f"{cfg.veid} has {range_text(cfg.id_base, ID_COUNT)}: refusing to restore"
                )
        try:
            IdRegistry().ensure(cfg.veid, self.node.root, cfg.id_base)
        except IdRangeError as e:
            raise RestoreError(f"{e}; refusing to restore") from None

    def _check_fs(self, path: str, recs: list[FsSnapshot], rollback_fs: bool) -> None:
        """The private area must be what the dump's snapshot holds: refuse naming what
        changed, or (`rollback_fs`) roll it back, keeping the live contents.  Before
        anything is created."""
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
            self.roll_back(rec)

    def roll_back(self, rec: FsSnapshot) -> Path:
        """Roll the private area back to the snapshot of `rec`; its live contents are kept,
        read-only, at a place the snapshot hooks give (returned), and they are told."""
        kept = fssnap.rollback_to(rec, self.snapshots.place(self.veid))
        self.snapshots.rolled_back(self.veid, rec, kept)
        return kept
