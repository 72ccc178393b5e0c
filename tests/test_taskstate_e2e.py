"""End to end: scheduling, login uid, membarrier, prctl values and job-control stops, through
the `cpt chkpnt --pid` / `cpt restore` commands (format 1.5 records ThreadSched, TaskExtra).

fixtures/workloads/taskstate.c checks itself after restore (sched_getattr of each thread,
/proc/self/loginuid, membarrier registrations, child_subreaper, pdeathsig, children stopped
by SIGSTOP and by SIGTSTP); the tests also check the image and what /proc shows of the
restored tree, and that a sabotaged restored workload fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from workloads import (  # noqa: F401
    Workload,
    checkpoint,
    image_records,
    kill_tree,
    make_subreaper,
    proc_info,
    reaping,
    restore,
    verdict_after_restore,
    workloads_fixture,
)

from cptimage.records import SectionType, Sigactions, TaskExtra, ThreadSched

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="checkpoint/restore needs root (ptrace, clone3 set_tid)"
    ),
]


def process_records(img: Path, cls: type) -> list:  # type: ignore[type-arg]
    return image_records(img, SectionType.PROCESS, cls)


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll `cond` until true; the bound is generous (a loaded machine), never a sleep."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def state(pid: int) -> str:
    info = proc_info(pid)
    return info.state if info is not None else "-"


def stopped_children(pid: int) -> dict[int, str]:
    """The workload's children and their /proc state letter."""
    out = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        info = proc_info(int(child))
        if info is not None:
            out[int(child)] = info.state
    return out


def test_taskstate_checkpoint_restore(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("taskstate")
    wl.wait_counter()
    before = stopped_children(wl.pid)
    assert sorted(before.values()) == ["S", "T", "T"], before
    img = tmp_path / "taskstate.img"
    checkpoint(cpt, wl, img)
    extra = {r.pid: r for r in process_records(img, TaskExtra)}
    assert extra[wl.pid].loginuid == 4242 and extra[wl.pid].membarrier & (1 << 4)
    stops = sorted(r.stop_signal for r in extra.values())
    assert stops == [0, 0, signal.SIGSTOP, signal.SIGTSTP], extra
    sched = {(r.policy, r.nice, r.priority, r.flags) for r in process_records(img, ThreadSched)}
    assert {(0, 5, 0, 0), (5, 5, 0, 0), (1, 0, 7, 1), (3, -3, 0, 0)} <= sched, sched
    rc, out, err = cpt("image", "verify", img)
    assert rc == 0, out + err
    restore(cpt, wl, img)
    assert stopped_children(wl.pid) == before, "the same children, stopped as before"
    wl.wait_counter()
    with reaping(wl):
        assert wl.finish() == "PASS"


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ("stopped", "S (pid"),
        ("policy", "thread I: policy 0"),
        ("loginuid", "loginuid 4343, want 4242"),
    ],
)
def test_taskstate_sabotage_after_restore(
    workloads, cpt, tmp_path: Path, item: str, reason: str
) -> None:
    verdict = verdict_after_restore(workloads, cpt, tmp_path, "taskstate", item)
    assert verdict.startswith("FAIL: ") and reason in verdict, verdict


def test_taskstate_leave_running(workloads, cpt, tmp_path: Path) -> None:
    """A dump that lets the tree run leaves the stopped children stopped."""
    wl = workloads.start("taskstate")
    wl.wait_counter()
    before = stopped_children(wl.pid)
    checkpoint(cpt, wl, tmp_path / "taskstate.img", "--leave-running")
    assert stopped_children(wl.pid) == before
    wl.wait_counter()
    with reaping(wl):
        assert wl.finish() == "PASS"


_STOPPED_ROOT = """
import os, signal, sys
open(os.path.join(sys.argv[1], "ready"), "w").close()
os.kill(os.getpid(), signal.SIGTSTP)   # the root's own group: restored with SIGSTOP
open(os.path.join(sys.argv[1], "continued"), "w").close()
signal.pause()
"""


def test_stopped_root_restores_stopped(cpt, tmp_path: Path) -> None:
    """A tree whose root is stopped by job control (as a shell's stopped job is) comes back
    stopped, and runs on at SIGCONT."""
    make_subreaper()
    # the root's parent is this test, in another group of the same session: SIGTSTP stops it
    p = subprocess.Popen(
        [sys.executable, "-c", _STOPPED_ROOT, str(tmp_path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        process_group=0,
    )
    try:
        wait_for("the root to stop", lambda: state(p.pid) == "T")
        img = tmp_path / "root.img"
        rc, _, err = cpt("chkpnt", "--pid", p.pid, "--dumpfile", img)
        assert rc == 0, err
        p.wait(timeout=30)
        (rec,) = [r for r in process_records(img, TaskExtra) if r.pid == p.pid]
        assert rec.stop_signal == signal.SIGTSTP
        rc, _, err = cpt("restore", "--dumpfile", img)
        assert rc == 0, err
        wait_for("the restored root to stop", lambda: state(p.pid) == "T")
        assert not (tmp_path / "continued").exists()
        os.kill(p.pid, signal.SIGCONT)
        wait_for("the continued root", lambda: (tmp_path / "continued").exists())
    finally:
        kill_tree(p.pid)


# --------------------------------------------------------------------------- ignored SIGTRAP


def sigign_has_sigtrap(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTRAP - 1) & 1)
    raise AssertionError(f"no SigIgn in /proc/{pid}/status")


def test_ignored_sigtrap_survives_dump_and_restore(workloads, cpt, tmp_path: Path) -> None:
    """Each injection ends in a forced single-step SIGTRAP, which resets an ignored SIGTRAP
    to SIG_DFL: the dump records SIG_IGN and gives it back to a tree left running, the
    restore sets it after its last injection."""
    wl = workloads.start("sigign")
    wl.wait_counter()
    assert sigign_has_sigtrap(wl.pid)
    checkpoint(cpt, wl, tmp_path / "running.img", "--leave-running")
    assert sigign_has_sigtrap(wl.pid), "the dump left SIGTRAP at SIG_DFL"
    wl.wait_counter()
    img = tmp_path / "sigign.img"
    checkpoint(cpt, wl, img)
    (sa,) = process_records(img, Sigactions)
    (trap,) = [a for a in sa.actions if a.signo == signal.SIGTRAP]
    assert trap.handler == 1, "SIG_IGN in the image"
    restore(cpt, wl, img)
    assert sigign_has_sigtrap(wl.pid), "the restore left SIGTRAP at SIG_DFL"
    wl.wait_counter()
    with reaping(wl):
        assert wl.finish() == "PASS"


def test_ignored_sigtrap_sabotage_after_restore(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("sigign", sabotage="ignore")
    wl.wait_counter()
    img = tmp_path / "sigign.img"
    checkpoint(cpt, wl, img)
    restore(cpt, wl, img)
    wl.wait_counter()
    with reaping(wl):
        verdict = wl.finish()
    assert verdict.startswith("FAIL: ") and "SIGTRAP is not ignored" in verdict, verdict


# --------------------------------------------------------------------------- O_TMPFILE


_TMPFILE_HOLDER = """
import os, sys, time
d = sys.argv[1]
fd = os.open(d, os.O_TMPFILE | os.O_RDWR | os.O_NOFOLLOW, 0o600)  # as tempfile.TemporaryFile
os.write(fd, b"hello tmpfile")
os.lseek(fd, 3, os.SEEK_SET)
os.dup2(fd, 50)
os.close(fd)
open(os.path.join(d, "ready"), "w").close()
time.sleep(600)
"""


def test_tmpfile_description_restores(cpt, tmp_path: Path) -> None:
    """A file made with O_TMPFILE keeps __O_TMPFILE|O_DIRECTORY (and O_NOFOLLOW) in its
    flags: the restore reopened it with them ("Not a directory", then ELOOP on the ghost's
    /proc path).  Contents, offset and access mode come back."""
    make_subreaper()
    p = subprocess.Popen(
        [sys.executable, "-c", _TMPFILE_HOLDER, str(tmp_path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for("the holder", lambda: (tmp_path / "ready").exists() or p.poll() is not None)
        assert p.poll() is None
        img = tmp_path / "tmpfile.img"
        rc, _, err = cpt("chkpnt", "--pid", p.pid, "--dumpfile", img)
        assert rc == 0, err
        p.wait(timeout=30)
        rc, _, err = cpt("restore", "--dumpfile", img)
        assert rc == 0, err
        assert os.readlink(f"/proc/{p.pid}/fd/50").endswith(" (deleted)")
        info = Path(f"/proc/{p.pid}/fdinfo/50").read_text()
        assert "pos:\t3\n" in info, info
        flags = int(info.split("flags:\t")[1].split()[0], 8)
        assert flags & os.O_ACCMODE == os.O_RDWR
        assert Path(f"/proc/{p.pid}/fd/50").read_bytes() == b"hello tmpfile"
        assert os.stat(f"/proc/{p.pid}/fd/50").st_nlink == 0
    finally:
        kill_tree(p.pid)
