"""A VE on this host while it runs: the one name of its per-VE objects, and the run-dir
store that owns its runtime facts.

    <run>/ve-<VEID>.runtime.json  Runtime: its init's PID and start time, its host interface
    <run>/ve-<VEID>.json          the stage state of its frozen tree (cpt.stages.store's
                                  StateStore: read and dropped through it, never parsed here)
    <run>/ve-<VEID>.lock          its lock (cpt.stages.store.locked)
    <cgroup2>/cpt/ve-<VEID>       its freezer cgroup (cpt/sys/cgroup.py); ve-<VEID>@<tag>
                                  on a node root other than the default (cgroup_name:
                                  the run directory is the node's, cgroups the machine's)

`<run>` is cpt.stages.store.run_dir(), and every path in it run_path()'s.  Every file is
named by `object_name`, every cgroup by `cgroup_name`; every question about a VE's
runtime (is it running, is it frozen, was it undumped) is asked of `RunState`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator

from cpt.errors import NoSuchProcess
from cpt.procfs import Proc
from cpt.stages.store import StateStore, TreeState, locked, node_tag, run_path
from cpt.stages.tree import InFreeze, Link, Tree
from cpt.sys.cgroup import Freezer
from cptimage.atomic import atomic_output

from . import net
from .config import check_veid


def object_name(veid: str) -> str:
    """The name of a VE's lock and state files (in its node's run directory): ve-<VEID>."""
    return f"ve-{veid}"


def cgroup_name(veid: str, tag: str | None = None) -> str:
    """The name of a VE's freezer cgroup: ve-<VEID> on the default node root,
    ve-<VEID>@<tag> on another (`tag`: node_tag(), CPT_ROOT's by default): cgroups are
    machine-wide, and the same VEID on two node roots of one machine is two VEs."""
    tag = node_tag() if tag is None else tag
    return f"ve-{veid}@{tag}" if tag else f"ve-{veid}"


@dataclasses.dataclass
class Runtime:
    init_pid: int
    host_if: str
    starttime: int  # of the init, to tell it from a later process with its PID


class RunState:
    """The runtime of one VE: its lock, freezer, frozen tree and runtime facts."""

    def __init__(self, veid: str) -> None:
        self.veid = check_veid(veid)
        self.name = object_name(veid)

    @property
    def path(self) -> str:
        """The runtime facts' file."""
        return run_path(self.name, ".runtime.json")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the VE's lock (LockedError, exit 9, if another cpt command holds it)."""
        with locked(self.name, f"VE {self.veid}"):
            yield

    def freezer(self) -> Freezer:
        return Freezer(cgroup_name(self.veid))

    def tree(
        self, init_pid: int = 0, *, link: Link | None = None, in_freeze: InFreeze | None = None
    ) -> Tree:
        """The VE's processes as the stages see them (init_pid 0: to be restored)."""
        return Tree(init_pid, name=self.name, ve_id=self.veid, cgroup=cgroup_name(self.veid),
                    link=link, in_freeze=in_freeze)  # fmt: skip

    def stage_state(self) -> StateStore:
        """The stage state of the VE's frozen tree (suspended, or undumped)."""
        return StateStore(self.name)

    # -- runtime facts

    def runtime(self) -> Runtime | None:
        """The running VE's facts; None when it is not running (no facts, or its init is
        gone)."""
        try:
            with open(self.path) as f:
                rt = Runtime(**json.load(f))
        except FileNotFoundError:
            return None
        return rt if _alive(rt.init_pid, rt.starttime) else None

    def recorded(self) -> bool:
        """Are there runtime facts (of a running VE, or of one that ended by itself)?"""
        return os.path.exists(self.path)

    def record(self, init_pid: int, host_if: str) -> Runtime:
        """The VE runs with `init_pid` as its init: write its facts."""
        rt = Runtime(init_pid=init_pid, host_if=host_if, starttime=Proc().stat(init_pid).starttime)
        # not synced: after a crash no process of it runs, and runtime() says so anyway
        with atomic_output(self.path, mode=0o644, durable=False) as f:
            f.write(json.dumps(dataclasses.asdict(rt)).encode())
        return rt

    def drop_runtime(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def clear(self) -> None:
        """The VE is not running: its runtime facts and its frozen tree's state go."""
        self.drop_runtime()
        self.stage_state().drop()

    def undumped(self) -> bool:
        """Is the VE's frozen state one of `restore --undump`'s (its tree's state says)?"""
        try:
            st: TreeState | None = self.stage_state().load()
        except (ValueError, KeyError):
            return False  # a damaged state file: not one restore --undump wrote
        return st is not None and st.state == "undumped"

    # -- processes

    def kill_all(self) -> None:
        """SIGKILL everything in the VE's cgroup, wait for it to empty, remove it."""
        fz = self.freezer()
        if not fz.exists():
            return
        fz.kill_all()
        fz.remove(timeout=10.0)

    def forget_ended(self, ip: str = "") -> None:
        """Clear what a VE that ended by itself (its init exited) left: its cgroup, veth,
        runtime facts and state file, and (`ip`: its address) the uplink's answers for
        it.  Its address is held all along (net.HOLD_METRIC).  Called with the VE's lock
        held."""
        if not self.recorded() or self.runtime() is not None:
            return
        fz = self.freezer()
        if fz.exists() and fz.freeze_requested():
            fz.thaw()
        self.kill_all()
        net.remove_host_link(self.veid)
        net.blackhole(ip)
        self.clear()


def _alive(pid: int, starttime: int) -> bool:
    """Is `pid` still the process that started at `starttime` (not a zombie, not reused)?"""
    try:
        st = Proc().stat(pid)
    except NoSuchProcess:
        return False
    return st.starttime == starttime and st.state not in ("Z", "X")
