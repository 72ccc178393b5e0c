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

from cpt.checkpoint import Tree, open_for_restore
from cpt.dump.dumper import DumpStats
from cpt.dump.options import DumpOptions
from cpt.errors import AlreadyRunning, NotRunning, RestoreError
from cpt.lock import run_dir
from cpt.restore.options import RestoreOptions
from cpt.restore.restorer import RestoreStats
from cptimage.atomic import atomic_output
from cptimage.records import SourceKind

from . import net
from .config import VEConfig
from .manager import Runtime, VEManager, _starttime


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

    def _tree(self, cfg: VEConfig, init_pid: int) -> Tree:
        return Tree(init_pid, ve_id=cfg.veid, link=VeLink(cfg))

    # -- chkpnt

    def chkpnt(
        self, veid: str, stage: str | None, dumpfile: str | None, opts: DumpOptions
    ) -> DumpStats | None:
        """One stage (suspend, dump, kill, resume) or the full chkpnt; returns the dump's
        statistics when there was a dump."""
        with self.mgr.locked(veid):
            cfg = self.mgr.config(veid)
            rt = self.mgr.runtime(veid)
            if rt is None:
                self.mgr.forget_ended(veid)
                raise NotRunning(f"VE {veid} is not running")
            tree = self._tree(cfg, rt.init_pid)
            path = self.dumpfile(veid, dumpfile)
            opts = ve_dump_options(opts)
            if stage == "suspend":
                tree.suspend(opts)
            elif stage == "dump":
                if dumpfile is None:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                return tree.dump(path, opts)
            elif stage == "kill":
                tree.kill()
                self._stopped(cfg)
            elif stage == "resume":
                tree.resume()
            else:
                if dumpfile is None:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                stats = tree.checkpoint(path, opts)
                if not opts.leave_running:
                    self._stopped(cfg)
                return stats
            return None

    def _stopped(self, cfg: VEConfig) -> None:
        """The VE's processes are gone: its runtime facts and its veth go (the network
        namespace may outlive them a moment); the blackhole route stays."""
        net.blackhole(cfg.ip)
        net.remove_host_link(cfg.veid)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.mgr.runtime_path(cfg.veid))

    # -- restore

    def restore(self, veid: str, stage: str | None, dumpfile: str | None) -> RestoreStats | None:
        """--undump, --resume, --kill, or the full restore (undump, resume)."""
        with self.mgr.locked(veid):
            return self.restore_locked(veid, stage, dumpfile)

    def restore_locked(
        self, veid: str, stage: str | None, dumpfile: str | None
    ) -> RestoreStats | None:
        cfg = self.mgr.config(veid)
        rt = self.mgr.runtime(veid)
        undumped = rt is not None and self._undumped(veid)
        if stage in ("resume", "kill"):
            if rt is None or not undumped:
                what = "running" if rt is not None else "not running"
                raise NotRunning(f"VE {veid} is {what}, not restored by `restore --undump`")
            tree = self._tree(cfg, rt.init_pid)
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
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # as vzctl: the VE runs again, its dump is spent
        return stats

    def _undumped(self, veid: str) -> bool:
        """Is the VE's frozen state one of `restore --undump`'s (its tree state says)?"""
        try:
            with open(os.path.join(run_dir(), f"ve-{veid}.json")) as f:
                return bool(json.load(f).get("state") == "undumped")
        except (FileNotFoundError, ValueError):
            return False
