"""Killing `cpt chkpnt` at a chosen moment of its work, and judging what it left: shared by
tests/test_kill.py (10 moments per kind, in `make test`) and bench/kill_soak.py (50).

A moment is a delay after the command began to act on the workload: the workload's first
thread traced (a tree: seized; cpt's Python start-up is not counted), or the VE's cgroup
frozen.  The delays are spread over the time a reference run of the same command took
from there to its exit, so that they fall in the seize, the probes, the page copy, the
file write, the commit and the kill or resume.

A problem that starts with "LOST:" means the workload did not survive.  A trial holds
when the workload goes on: either it runs (not stopped, not traced, its
counter moving), or it was killed after its dump was committed and the dump restores it;
and nothing is left (no temporary dump file, no lock file, no freezer cgroup; after a
SIGKILL, once the next command on the tree has run).  The workload's own check at its end
(its 64 MiB pattern, word by word) is the caller's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cptcli import CPT, REPO
from ve_node import Node
from workloads import Workload, WorkloadError, reaping

from cpt.sys.cgroup import cgroup2_mount

CGROUP2 = Path(cgroup2_mount())
START_TIMEOUT = 30.0  # until the command acts on the workload
RUN_TIMEOUT = 120.0  # the whole command


@dataclass
class Shot:
    """One killed (or not: it ended first) command."""

    sig: int
    delay: float
    killed: bool  # the signal was sent while the command ran
    rc: int
    err: str


def tracer_of(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def state_of(pid: int) -> str | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2]


ALL_BLOCKED = "fffffffffffbfeff"  # every signal the kernel lets a mask hold


def masks(pids: list[int]) -> list[tuple[str, str]]:
    """(command, whether every signal is blocked) of every thread of `pids`, sorted: what a
    killed command must leave as it was (a thread left with every signal blocked still
    counts, but never again answers SIGTERM; a process may be gone).  Not the mask itself:
    a thread in sigsuspend or sigtimedwait shows a passing one."""
    out = []
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, NotADirectoryError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
                    fields = dict(ln.split(":\t", 1) for ln in status.splitlines() if ":\t" in ln)
                    blocked = fields["SigBlk"].strip() == ALL_BLOCKED
                    out.append((fields["Name"], "all blocked" if blocked else "its own"))
    return sorted(out)


def cgroup_pids(cgroup: Path) -> list[int]:
    """Every process of a cgroup tree."""
    pids: list[int] = []
    for f in cgroup.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids += [int(x) for x in f.read_text().split()]
    return pids


def frozen(cgroup: Path) -> bool:
    try:
        return (cgroup / "cgroup.freeze").read_text().strip() == "1"
    except OSError:
        return False


def shoot(
    args: list[str],
    env: dict[str, str],
    began: Callable[[], bool],
    delay: float,
    sig: int,
) -> Shot:
    """Run `cpt *args`; once `began()` is true, wait `delay` seconds and send `sig` (if the
    command still runs).  Output goes to a file: a child of a killed cpt may hold it."""
    with tempfile.TemporaryFile("w+") as errf:
        p = subprocess.Popen(
            [*CPT, *args], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=errf,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not began() and p.poll() is None:
                if time.monotonic() > deadline:
                    raise AssertionError(f"cpt {' '.join(args)} did not begin within the bound")
                time.sleep(0.0002)
            t0 = time.monotonic()
            while time.monotonic() - t0 < delay and p.poll() is None:
                time.sleep(min(0.001, max(0.0, delay - (time.monotonic() - t0))))
            killed = p.poll() is None
            if killed:
                p.send_signal(sig)
            rc = p.wait(timeout=RUN_TIMEOUT)
        except BaseException:
            if p.poll() is None:
                p.kill()
                p.wait()
            raise
        errf.seek(0)
        return Shot(sig, delay, killed, rc, errf.read())


def reference(args: list[str], env: dict[str, str], began: Callable[[], bool]) -> float:
    """How long the command takes from began() to its exit (it must succeed).  The
    callers take the shorter of two runs: a first one pays one-time costs."""
    with tempfile.TemporaryFile("w+") as errf:
        p = subprocess.Popen(
            [*CPT, *args], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=errf,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while not began() and p.poll() is None:
            assert time.monotonic() < deadline, "the reference run did not begin"
            time.sleep(0.0002)
        t0 = time.monotonic()
        rc = p.wait(timeout=RUN_TIMEOUT)
        took = time.monotonic() - t0
        errf.seek(0)
        assert rc == 0, errf.read()
    return took


def moments(span: float, n: int) -> list[float]:
    """n delays spread over [0, span * 1.05]: the last ones reach the commit and the end."""
    return [span * 1.05 * i / max(1, n - 1) for i in range(n)]


def check_message(shot: Shot) -> str | None:
    """What is wrong with the command's exit, or None.  Exit 0: it completed (a signal
    after the point of no return is said in one `cpt:` line; one as it exited, not at
    all).  SIGKILL: killed.  SIGTERM/SIGHUP/SIGINT: exit 16 with one `cpt:` line naming
    the signal."""
    if shot.rc == 0:  # it completed: the signal came too late (said), or as it exited
        lines = [ln for ln in shot.err.splitlines() if ln.startswith("cpt:")]
        if len(lines) > 1 or (lines and "point of no return" not in lines[0]):
            return f"exit 0 with {shot.err!r}"
        return None
    if not shot.killed:
        return f"rc {shot.rc}: {shot.err.strip()}"
    if shot.sig == signal.SIGKILL:
        return None if shot.rc == -signal.SIGKILL else f"rc {shot.rc} after SIGKILL"
    name = signal.Signals(shot.sig).name
    lines = [ln for ln in shot.err.splitlines() if ln.startswith("cpt:")]
    if shot.rc == 16:
        if len(lines) != 1 or f"interrupted by {name}" not in lines[0]:
            return f"exit 16 without one `cpt: ... interrupted by {name}` line: {shot.err!r}"
        return None
    return f"rc {shot.rc} after {name}: {shot.err.strip()}"


def leftovers(run_dir: Path, dump_dir: Path, name: str, *, lock_ok: bool = False) -> list[str]:
    """Temporary dump files, lock files, a freezer cgroup of tree/VE `name` left behind."""
    out = [f"temporary file {p}" for p in dump_dir.iterdir() if p.name.endswith(".tmp")]
    if not lock_ok:
        out += [f"lock file {p}" for p in run_dir.glob("*.lock")]
    cg = CGROUP2 / "cpt" / name
    if cg.exists():
        out.append(f"freezer cgroup {cg}")
    return out


class TreeTarget:
    """A workload tree checkpointed by `cpt chkpnt --pid P` (full, or --leave-running)."""

    def __init__(self, wl: Workload, run_dir: Path, dump_dir: Path) -> None:
        self.wl = wl
        self.run_dir = run_dir
        self.dump_dir = dump_dir
        self.dump = dump_dir / f"Dump.pid-{wl.pid}"
        self.env = dict(os.environ, CPT_RUN_DIR=str(run_dir))

    def args(self, mode: str) -> list[str]:
        extra = ["--leave-running"] if mode == "leave-running" else []
        return ["chkpnt", "--pid", str(self.wl.pid), "--dumpfile", str(self.dump), *extra]

    def began(self) -> bool:
        return tracer_of(self.wl.pid) != 0

    def cpt(self, *args: str) -> tuple[int, str]:
        p = subprocess.run(
            [*CPT, *args], cwd=REPO, env=self.env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=RUN_TIMEOUT,
        )  # fmt: skip
        return p.returncode, p.stderr

    def span(self, mode: str) -> float:
        took = []
        for _ in range(2):
            took.append(reference(self.args(mode), self.env, self.began))
            if mode != "leave-running":
                self.restore()
        return min(took)

    def restore(self) -> str | None:
        with reaping(self.wl):
            rc, err = self.cpt("restore", "--dumpfile", str(self.dump))
        if rc != 0:
            return f"restore of the committed dump failed ({rc}): {err.strip()}"
        self.wl.refresh()
        return None

    def trial(self, mode: str, sig: int, delay: float) -> tuple[Shot, list[str]]:
        """One killed command and what is wrong after it (empty: it held)."""
        with contextlib.suppress(FileNotFoundError):
            self.dump.unlink()
        before = masks([self.wl.pid])
        with reaping(self.wl):
            shot = shoot(self.args(mode), self.env, self.began, delay, sig)
        problems = [m] if (m := check_message(shot)) else []
        if not self.wl.alive():
            if not self.dump.exists():
                return shot, [*problems, "LOST: the workload is gone and no dump was committed"]
            if err := self.restore():
                return shot, [*problems, f"LOST: {err}"]
        deadline = time.monotonic() + 2
        while tracer_of(self.wl.pid) or state_of(self.wl.pid) in ("t", "T"):
            if time.monotonic() > deadline:
                problems.append(f"LOST: the workload is left {state_of(self.wl.pid)}, traced by "
                                f"{tracer_of(self.wl.pid)}")  # fmt: skip
                return shot, problems
            time.sleep(0.005)
        try:
            self.wl.wait_counter(timeout=5)
        except WorkloadError as e:
            return shot, [*problems, f"LOST: the workload does not go on: {str(e)[:300]}"]
        if shot.killed and shot.sig == signal.SIGKILL:
            # the next command on the tree repairs and sweeps what the killed one left
            rc, err = self.cpt("chkpnt", "--pid", str(self.wl.pid), "--resume")
            if rc not in (0, 31):
                problems.append(f"the next command failed ({rc}): {err.strip()}")
        if (after := masks([self.wl.pid])) != before:
            problems.append(f"LOST: signal masks {before} became {after}")
        problems += leftovers(self.run_dir, self.dump_dir, f"pid-{self.wl.pid}")
        return shot, problems


class VeTarget:
    """A VE checkpointed by `cpt chkpnt VEID` (full, or --leave-running), with a workload
    inside whose directory (its counter) the host sees at `wl_dir`."""

    def __init__(self, node: Node, veid: str, ip: str, wl_dir: Path) -> None:
        self.node = node
        self.veid = veid
        self.ip = ip.split("/")[0]
        self.wl_dir = wl_dir
        self.dump = node.root / "dump" / f"Dump.{veid}"
        self.run_dir = node.root / "run"
        self.cgroup = node.cgroup(veid)

    def args(self, mode: str) -> list[str]:
        return ["chkpnt", self.veid, *(["--leave-running"] if mode == "leave-running" else [])]

    def began(self) -> bool:
        return frozen(self.cgroup)

    def status(self) -> str:
        rc, out, err = self.node.cpt("ve", "status", self.veid)
        assert rc == 0, err
        return out.strip().removeprefix(f"VE {self.veid} ")

    def counter(self) -> int:
        for _ in range(50):
            with contextlib.suppress(ValueError):
                return int((self.wl_dir / "counter").read_bytes())
            time.sleep(0.001)
        raise AssertionError("unreadable counter")

    def going_on(self, timeout: float = 5.0) -> bool:
        start = self.counter()
        deadline = time.monotonic() + timeout
        while self.counter() <= start:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def span(self, mode: str) -> float:
        took = []
        for _ in range(2):
            took.append(reference(self.args(mode), self.node.env, self.began))
            if mode != "leave-running":
                rc, _, err = self.node.cpt("restore", self.veid)
                assert rc == 0, err
        return min(took)

    def trial(self, mode: str, sig: int, delay: float) -> tuple[Shot, list[str]]:
        with contextlib.suppress(FileNotFoundError):
            self.dump.unlink()
        before = masks(cgroup_pids(self.cgroup))
        shot = shoot(self.args(mode), self.node.env, self.began, delay, sig)
        problems = [m] if (m := check_message(shot)) else []
        st = self.status()
        if st != "running":
            if st == "suspended" or "finishes it" in st:  # a committed dump waits for it
                cmd: tuple[str, ...] = ("restore", self.veid)
            elif "--resume" in st:
                cmd = ("chkpnt", self.veid, "--resume")
            else:
                return shot, [*problems, f"LOST: the VE is {st!r}"]
            if sig != signal.SIGKILL and "was killed" in st:
                problems.append(f"after {signal.Signals(sig).name} the VE is {st!r}")
            rc, _, err = self.node.cpt(*cmd)
            if rc != 0:
                return shot, [*problems, f"LOST: {st!r}, then `cpt {' '.join(cmd)}` failed: {err}"]
            st = self.status()
            if st != "running":
                return shot, [*problems, f"LOST: the VE is {st!r} after `cpt {' '.join(cmd)}`"]
        if not self.going_on():
            problems.append("LOST: the workload in the VE does not go on")
        if (after := masks(cgroup_pids(self.cgroup))) != before:
            problems.append(f"LOST: signal masks {before} became {after}")
        if f"dev {self.node.ifname(self.veid)}" not in route_of(self.ip):
            problems.append(f"the VE's address is routed {route_of(self.ip)!r}")
        if shot.killed and shot.sig == signal.SIGKILL:
            self.node.cpt("chkpnt", self.veid, "--resume")  # the next command sweeps its lock
            # a dump killed after its filesystem snapshot leaves it to the catalog's cleanup
            rc, _, err = self.node.cpt("snapshot", "cleanup", self.veid, "--orphans")
            if rc != 0:
                problems.append(f"`cpt snapshot cleanup --orphans` failed ({rc}): {err}")
        problems += leftovers(self.run_dir, self.dump.parent, f"ve-{self.veid}-none")
        problems += [f"orphan snapshot {p}" for p in orphan_snapshots(self.node.root, self.veid)]
        return shot, problems


def route_of(addr: str) -> str:
    return subprocess.run(
        ["ip", "route", "show", f"{addr}/32"], capture_output=True, text=True, check=False
    ).stdout.strip()


def orphan_snapshots(root: Path, veid: str) -> list[Path]:
    """Snapshot slots of the VE that no catalog entry names and no committed dump needs
    (a chkpnt killed between its dump's commit and the catalog's update leaves one the
    dump needs: `snapshot cleanup --orphans` keeps it while the dump is there)."""
    from snapshot.catalog import FS, Catalog
    from snapshot.manager import snapshots_needed_by

    d = root / "pool" / "snapshots" / veid
    if not d.is_dir():
        return []
    needed = snapshots_needed_by(str(root / "dump" / f"Dump.{veid}"))
    return [p for p in Catalog(veid, d).orphans() if str(p / FS) not in needed]


def snapshot_of(root: Path, veid: str, dump: Path) -> bool:
    """Does the VE's catalog name a snapshot that goes with the dump file `dump`?"""
    from snapshot.catalog import Catalog

    return Catalog(veid, root / "pool" / "snapshots" / veid).by_image(str(dump)) is not None


def env_with(**kv: str) -> dict[str, str]:
    return dict(os.environ, **kv)


__all__ = [
    "Shot",
    "TreeTarget",
    "VeTarget",
    "cgroup_pids",
    "check_message",
    "env_with",
    "frozen",
    "leftovers",
    "masks",
    "moments",
    "orphan_snapshots",
    "reference",
    "route_of",
    "shoot",
    "snapshot_of",
    "state_of",
    "tracer_of",
]
