"""Killing `cpt chkpnt` never kills or strands the workload (issue 11, "High").

A 64 MiB workload (fixtures/workloads/counter.c, its memory a pattern it checks word by
word at the end) is checkpointed, and the command killed at 10 moments spread over its
work (tests/killing.py): full and --leave-running, SIGKILL and SIGTERM.  Each time the
workload goes on (or, killed after its dump was committed, the dump restores it), the
SIGTERM'ed command exits 16 with one line naming the signal (or 0, saying it came too
late), and nothing is left: no temporary dump file, no lock, no freezer cgroup.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cptcli import CPT, REPO
from killing import (
    TreeTarget,
    VeTarget,
    leftovers,
    moments,
    orphan_snapshots,
    route_of,
    snapshot_of,
    state_of,
    tracer_of,
)
from workloads import build, reaping, workloads_fixture  # noqa: F401

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="ptrace of a workload tree needs root"),
]

MOMENTS = 10
SIZE_MIB = "64"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["KILL", "TERM"])
@pytest.mark.parametrize("mode", ["full", "leave-running"])
def test_killed_tree_chkpnt_leaves_the_workload_running(
    workloads, tmp_path: Path, mode: str, sig: int
) -> None:
    wl = workloads.start("counter", SIZE_MIB)
    (tmp_path / "run").mkdir()
    (tmp_path / "dump").mkdir()
    target = TreeTarget(wl, tmp_path / "run", tmp_path / "dump")
    span = target.span(mode)
    failures = []
    for delay in moments(span, MOMENTS):
        shot, problems = target.trial(mode, sig, delay)
        if problems:
            failures.append(f"at {delay * 1000:.0f} ms (rc {shot.rc}): " + "; ".join(problems))
    assert not failures, f"span {span * 1000:.0f} ms:\n" + "\n".join(failures)
    assert wl.finish() == "PASS"


TREE_FAULTS = [
    ("full", "dump:seize"),
    ("full", "dump:pages"),
    ("full", "dump:fsync"),
    ("full", "dump:rename"),
    ("leave-running", "dump:pages"),
    ("leave-running", "dump:fsync"),
    ("leave-running", "dump:rename"),
    ("suspend", "suspend:freezer"),
    ("suspend", "suspend:state"),
]


@pytest.mark.parametrize(("mode", "point"), TREE_FAULTS)
def test_fault_point_leaves_the_tree_running_and_nothing_behind(
    workloads, cpt, tmp_path: Path, mode: str, point: str
) -> None:
    """A failure at each fault point of a tree's chkpnt: exit 16 with one line, the tree
    runs on (never stopped or traced), no dump, no temporary file, no lock, no freezer;
    the next command works.  And killed there (`:stall`, then SIGKILL): the same once the
    next command on the tree has run."""
    wl = workloads.start("counter", "8")
    dump = tmp_path / "Dump"
    args = {
        "full": ["--dumpfile", dump],
        "leave-running": ["--dumpfile", dump, "--leave-running"],
        "suspend": ["--suspend"],
    }[mode]
    rc, _, err = cpt("chkpnt", "--pid", wl.pid, *args, fault=point)
    assert rc == 16, err
    assert err.count("\n") == 1 and f"fault injected at {point}" in err, err
    assert not dump.exists()
    assert state_of(wl.pid) in ("R", "S") and tracer_of(wl.pid) == 0
    wl.wait_counter()
    assert leftovers(cpt.run_dir, tmp_path, f"pid-{wl.pid}") == []
    # killed at the same point
    env = dict(cpt.env, CPT_FAULT=f"{point}:stall")
    p = subprocess.Popen(
        [*CPT, "chkpnt", "--pid", str(wl.pid), *map(str, args)], cwd=REPO, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert p.stderr is not None
    line = p.stderr.readline()
    assert "stalled at" in line, line
    p.kill()
    p.wait()
    p.stderr.close()
    with reaping(wl):
        rc, _, err = cpt("chkpnt", "--pid", wl.pid, "--resume")
    assert rc in (0, 31), err
    deadline = time.monotonic() + 2
    while tracer_of(wl.pid) or state_of(wl.pid) not in ("R", "S"):
        assert time.monotonic() < deadline, f"left {state_of(wl.pid)}"
        time.sleep(0.01)
    wl.wait_counter()
    assert not dump.exists()
    assert leftovers(cpt.run_dir, tmp_path, f"pid-{wl.pid}") == []
    assert wl.finish() == "PASS"


@pytest.mark.destructive
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["KILL", "TERM"])
@pytest.mark.parametrize("mode", ["full", "leave-running"])
def test_killed_ve_chkpnt_leaves_the_ve_running(node, mode: str, sig: int) -> None:
    """The same for a VE: after each killed chkpnt the VE runs (or its committed dump
    restores it), `ve status` says what is true and the next command repairs it; its link
    and route are back, no orphan snapshot, no temporary file, no lock."""
    veid = {"full": "311", "leave-running": "312"}[mode] + ("1" if sig == signal.SIGKILL else "2")
    ip = f"198.18.{50 + int(veid[2:])}.2/24"
    launcher = "cd /root; mkdir -p c; setsid bin/counter /root/c 64 </dev/null >c/log 2>&1 & wait"
    node.create(veid, "--ip", ip, "--", "/bin/sh", "-c", launcher)
    bindir = node.root / "pool" / "private" / veid / "root" / "bin"
    bindir.mkdir(parents=True)
    shutil.copy(build("counter"), bindir / "counter")
    assert node.cpt("ve", "start", veid)[0] == 0
    wl_dir = node.root / "pool" / "private" / veid / "root" / "c"
    deadline = time.monotonic() + 20
    while not (wl_dir / "ready").exists():
        assert time.monotonic() < deadline, "the workload in the VE never became ready"
        time.sleep(0.05)
    target = VeTarget(node, veid, ip, wl_dir)
    span = target.span(mode)
    failures = []
    for delay in moments(span, MOMENTS):
        shot, problems = target.trial(mode, sig, delay)
        if problems:
            failures.append(f"at {delay * 1000:.0f} ms (rc {shot.rc}): " + "; ".join(problems))
    assert not failures, f"span {span * 1000:.0f} ms:\n" + "\n".join(failures)
    pid = int((wl_dir / "ready").read_text())
    rc, _, err = node.cpt("ve", "exec", veid, "--", "/bin/kill", "-TERM", str(pid))
    assert rc == 0, err
    deadline = time.monotonic() + 20
    while not (wl_dir / "result").exists():
        assert time.monotonic() < deadline, "no result from the workload"
        time.sleep(0.05)
    assert (wl_dir / "result").read_text() == "PASS\n"


def test_full_chkpnt_succeeds_while_the_zombie_waits_for_its_parent(
    workloads, cpt, tmp_path: Path
) -> None:
    """The tree's parent (this test) does not reap it at once: the chkpnt still succeeds
    (the dump is committed and the tree killed: exit 16 would promise a running workload),
    and a restore meanwhile names the parent that holds the zombie; reaped, it restores."""
    wl = workloads.start("counter", "8")
    dump = tmp_path / "Dump"
    t0 = time.monotonic()
    rc, _, err = cpt("chkpnt", "--pid", wl.pid, "--dumpfile", dump)  # no reaping
    assert rc == 0, err
    assert time.monotonic() - t0 < 10
    assert state_of(wl.pid) == "Z"
    rc, _, err = cpt("restore", "--dumpfile", dump)
    assert rc == 17 and f"a zombie of process {os.getpid()}" in err, err
    wl.reap()
    rc, _, err = cpt("restore", "--dumpfile", dump)
    assert rc == 0, err
    wl.refresh()
    wl.wait_counter()
    assert wl.finish() == "PASS"


def test_sigint_after_the_commit_says_so(workloads, cpt, tmp_path: Path) -> None:
    """A signal that comes after the dump was committed lets the chkpnt complete (exit 0)
    with one line saying so (it was exit 130 with no message).  The signal is sent as the
    dump file appears; a try where the command had ended first is tried again."""
    wl = workloads.start("counter", "8")
    dump = tmp_path / "Dump"
    said = []
    for _ in range(5):
        with contextlib.suppress(FileNotFoundError):
            dump.unlink()
        p = subprocess.Popen(
            [*CPT, "chkpnt", "--pid", str(wl.pid), "--dumpfile", str(dump)], cwd=REPO,
            env=cpt.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        with reaping(wl):
            while not dump.exists() and p.poll() is None:
                time.sleep(0.0002)
            p.send_signal(signal.SIGINT)
            _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert err.count("cpt:") <= 1, err
        said.append("SIGINT came after the point of no return" in err)
        rc, _, err = cpt("restore", "--dumpfile", dump)
        assert rc == 0, err
        wl.refresh()
        if said[-1]:
            break
    assert any(said), "the signal never came while the command ran"
    wl.wait_counter()
    assert wl.finish() == "PASS"


@pytest.mark.parametrize("planted", ["directory", "device"])
def test_symlink_at_the_dump_path_is_replaced_not_followed(
    workloads, cpt, tmp_path: Path, planted: str
) -> None:
    """A symlink to a directory or a device planted at the dump path no longer blocks the
    chkpnt: the link itself is replaced by the dump; what it pointed at is untouched."""
    wl = workloads.start("counter", "1")
    target = tmp_path / "victim-dir" if planted == "directory" else Path("/dev/null")
    if planted == "directory":
        target.mkdir()
    dump = tmp_path / "Dump"
    dump.symlink_to(target)
    rc, _, err = cpt("chkpnt", "--pid", wl.pid, "--dumpfile", dump, "--leave-running")
    assert rc == 0, err
    assert not dump.is_symlink() and dump.is_file() and dump.stat().st_size > 0
    assert (dump.stat().st_mode & 0o777) == 0o600
    if planted == "directory":
        assert list(target.iterdir()) == []
    else:
        assert target.is_char_device()
    wl.wait_counter()
    assert wl.finish() == "PASS"


VE_FAULTS = [
    ("full", "suspend:freezer"),
    ("full", "ve:link-down"),
    ("full", "suspend:state"),
    ("full", "ve:fs-snapshot"),
    ("full", "dump:seize"),
    ("full", "dump:pages"),
    ("full", "dump:fsync"),
    ("full", "dump:rename"),
    ("leave-running", "ve:link-up"),
]


@pytest.mark.destructive
def test_ve_fault_points_leave_it_running_and_nothing_behind(node) -> None:
    """Each fault point of a VE's chkpnt, failed (exit 16) and killed there (`:stall`,
    SIGKILL): the VE runs afterwards (at once, or once `ve status` named the command that
    repairs it and it ran), its link and route are back, its workload goes on, and no dump,
    temporary file, orphan snapshot or lock is left."""
    veid, ip = "3150", "198.18.65.2/24"
    launcher = (
        "cd /root; mkdir -p c; setsid bin/counter /root/c 8 </dev/null >c/log 2>&1 & wait; "
        "exec sleep 1000"  # the VE runs on after its workload's self-check
    )
    node.create(veid, "--ip", ip, "--", "/bin/sh", "-c", launcher)
    private = node.root / "pool" / "private" / veid
    (private / "root" / "bin").mkdir(parents=True)
    shutil.copy(build("counter"), private / "root" / "bin" / "counter")
    assert node.cpt("ve", "start", veid)[0] == 0
    wl_dir = private / "root" / "c"
    deadline = time.monotonic() + 20
    while not (wl_dir / "ready").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    target = VeTarget(node, veid, ip, wl_dir)
    failures = []
    for mode, point in VE_FAULTS:
        args = [*CPT, *target.args(mode)]
        for how in ("fail", "kill"):
            spec = point if how == "fail" else f"{point}:stall"
            env = dict(node.env, CPT_FAULT=spec)
            p = subprocess.Popen(
                args, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert p.stderr is not None
            if how == "kill":
                line = p.stderr.readline()
                p.kill()
            _, err = p.communicate(timeout=60)
            problems = []
            if how == "fail" and (p.returncode != 16 or f"fault injected at {point}" not in err):
                problems.append(f"rc {p.returncode}: {err.strip()}")
            if how == "kill" and "stalled at" not in line:
                problems.append(f"never stalled: {line} {err}")
            st = target.status()
            if st != "running":
                if "--resume" not in st:
                    problems.append(f"status {st!r} names no repair")
                rc, _, err = node.cpt("chkpnt", veid, "--resume")
                if rc != 0:
                    problems.append(f"status {st!r}, then --resume failed ({rc}): {err}")
            if target.status() != "running":
                problems.append(f"status {target.status()!r} after the repair")
            if not target.going_on():
                problems.append("the workload does not go on")
            if f"dev {node.ifname(veid)}" not in (r := route_of(ip.split("/")[0])):
                problems.append(f"the address is routed {r!r}")
            if target.dump.exists():
                problems.append("a dump file was left")
            node.cpt("snapshot", "cleanup", veid, "--orphans")
            problems += [f"orphan {o}" for o in orphan_snapshots(node.root, veid)]
            problems += leftovers(target.run_dir, target.dump.parent, f"ve-{veid}-none")
            if problems:
                failures.append(f"{point} ({how}): " + "; ".join(problems))
    # SIGTERM just after the snapshot is made (held until its step ends, then unwound)
    # and just after a leave-running dump is published (the command stops, the dump and
    # its snapshot stay, recorded): no orphan either way, without any cleanup
    # and SIGKILL there: the catalog cannot take the snapshot in; `snapshot cleanup
    # --orphans` takes it in as its dump's (the next dump then replaces it: no orphan)
    for point, sig in [
        ("ve:fs-snapshot-made", signal.SIGTERM),
        ("dump:published", signal.SIGTERM),
        ("dump:published", signal.SIGKILL),
    ]:
        with contextlib.suppress(FileNotFoundError):
            target.dump.unlink()
        how = "delay" if sig == signal.SIGTERM else "stall"
        env = dict(node.env, CPT_FAULT=f"{point}:{how}")
        p = subprocess.Popen(
            [*CPT, *target.args("leave-running")], cwd=REPO, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert p.stderr is not None
        line = p.stderr.readline()
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
        problems = [] if f"{how}ed at" in line else [f"never {how}ed: {line} {err}"]
        if p.returncode == 0:
            problems.append("the signalled command succeeded")
        if target.status() != "running" or not target.going_on():
            problems.append(f"status {target.status()!r}")
        if sig == signal.SIGKILL:
            rc, _, err = node.cpt("snapshot", "cleanup", veid, "--orphans")
            if rc != 0:
                problems.append(f"`cpt snapshot cleanup --orphans` failed ({rc}): {err}")
        problems += [f"orphan {o}" for o in orphan_snapshots(node.root, veid)]
        if point == "dump:published":
            if not target.dump.exists():
                problems.append("the published dump went")
            elif not snapshot_of(node.root, veid, target.dump):
                problems.append("the published dump's snapshot is not in the catalog")
        elif target.dump.exists():
            problems.append("a dump file was left")
        problems += leftovers(target.run_dir, target.dump.parent, f"ve-{veid}-none")
        if problems:
            failures.append(f"{point} ({signal.Signals(sig).name}): " + "; ".join(problems))
    # the next dump replaces the one the killed command left, and its snapshot
    target.dump.unlink()
    assert node.cpt(*target.args("leave-running"))[0] == 0
    if left := orphan_snapshots(node.root, veid):
        failures.append(f"after the next dump: orphans {left}")
    assert not failures, "\n".join(failures)
    pid = int((wl_dir / "ready").read_text())
    assert node.cpt("ve", "exec", veid, "--", "/bin/kill", "-TERM", str(pid))[0] == 0
    deadline = time.monotonic() + 20
    while not (wl_dir / "result").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert (wl_dir / "result").read_text() == "PASS\n"
    # a dump killed after its filesystem snapshot: `ve destroy` copes with the orphan
    env = dict(node.env, CPT_FAULT="dump:pages:stall")
    p = subprocess.Popen(
        [*CPT, "chkpnt", veid], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert p.stderr is not None and "stalled at" in p.stderr.readline()
    p.kill()
    p.communicate(timeout=60)
    assert orphan_snapshots(node.root, veid), "the killed dump's snapshot is an orphan"
    node.cpt("ve", "stop", veid, "--timeout", "2")
    rc, _, err = node.cpt("ve", "destroy", veid)
    assert rc == 0, err
    node.created.remove(veid)
    assert not (node.root / "pool" / "snapshots" / veid).exists()
