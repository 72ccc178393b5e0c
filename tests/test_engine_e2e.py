"""End to end: real workloads checkpointed, killed and restored through the `cpt` command.

Every workload checks itself after restore (PASS/FAIL with the reason); the tests also
check what a user sees: exit codes, the dump file (mode 0600, verify clean), PIDs gone
after a kill, and that refusals leave the workload running or nothing created.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cptcli import CPT, REPO
from workloads import ALL_WORKLOADS, Workload, reaping, workloads_fixture  # noqa: F401

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="checkpoint/restore needs root (ptrace, clone3 set_tid)"
    ),
]


def pid_exists(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def traced_by(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    return 0


def checkpoint(cpt, wl: Workload, img: Path, *extra: object) -> str:  # type: ignore[no-untyped-def]
    with reaping(wl):
        rc, out, err = cpt("chkpnt", "--pid", wl.pid, "--dumpfile", img, *extra)
    assert rc == 0, err
    return out


def restore(cpt, wl: Workload, img: Path, *extra: object) -> str:  # type: ignore[no-untyped-def]
    rc, out, err = cpt("restore", "--dumpfile", img, *extra)
    assert rc == 0, err
    wl.refresh()
    return out


# --------------------------------------------------------------------------- every workload


def _identity(pid: int) -> tuple[str, bytes, str, tuple[int, ...]]:
    """What /proc shows of a process: exe, cmdline, comm, thread ids (zombies: comm only)."""
    proc = Path(f"/proc/{pid}")
    try:
        exe = os.readlink(proc / "exe")
    except OSError:
        exe = ""
    tids = tuple(sorted(int(t) for t in os.listdir(proc / "task")))
    return exe, (proc / "cmdline").read_bytes(), (proc / "comm").read_text(), tids


@pytest.mark.parametrize("name", ALL_WORKLOADS)
def test_checkpoint_kill_restore(workloads, cpt, tmp_path: Path, name: str) -> None:
    wl = workloads.start(name)
    wl.wait_counter(by=2)
    pids = set(wl.tree())
    identity = {p: _identity(p) for p in pids}
    img = tmp_path / "dump.img"
    checkpoint(cpt, wl, img)
    dumped = wl.counter()
    assert not any(pid_exists(p) for p in pids), "a kill must leave no PID of the tree"
    assert stat.S_IMODE(img.stat().st_mode) == 0o600
    rc, out, err = cpt("image", "verify", img)
    assert rc == 0, out + err
    rc, out, _ = cpt("image", "show", img)
    assert rc == 0 and str(wl.pid) in out

    restore(cpt, wl, img)
    assert set(wl.tree()) == pids, "the same PIDs come back"
    assert {p: _identity(p) for p in pids} == identity, "exe, cmdline, comm and tids"
    assert wl.wait_counter(above=dumped, by=2) > dumped
    with reaping(wl):
        assert wl.finish() == "PASS"


# --------------------------------------------------------------------------- modes and stages


def test_leave_running_twice_then_restore(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("files")
    wl.wait_counter()
    for i in (1, 2):
        out = checkpoint(cpt, wl, tmp_path / f"snap{i}.img", "--leave-running")
        assert "frozen_s=" in out
        assert traced_by(wl.pid) == 0
        c = wl.counter()
        assert wl.wait_counter(above=c) > c, "the tree keeps running after --leave-running"
        assert cpt("image", "verify", tmp_path / f"snap{i}.img")[0] == 0
    rc, _, _ = cpt("image", "diff", tmp_path / "snap1.img", tmp_path / "snap2.img")
    assert rc == 1, "two snapshots of a running counter differ"
    with reaping(wl):
        assert wl.finish() == "PASS"


def test_dump_restore_dump_restore(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("tree")
    wl.wait_counter()
    for i in (1, 2):
        img = tmp_path / f"round{i}.img"
        checkpoint(cpt, wl, img)
        c = wl.counter()
        restore(cpt, wl, img)
        assert wl.wait_counter(above=c) > c
    with reaping(wl):
        assert wl.finish() == "PASS"


def test_staged_commands(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("threads")
    wl.wait_counter()
    pid = wl.pid
    img = tmp_path / "staged.img"

    rc, _, err = cpt("chkpnt", "--pid", pid, "--suspend")
    assert rc == 0, err
    c = wl.counter()
    time.sleep(0.3)
    assert wl.counter() == c, "a suspended tree does not run"
    assert traced_by(pid) == 0, "the frozen state outlives the command, without ptrace"

    rc, _, err = cpt("chkpnt", "--pid", pid, "--dump", "--dumpfile", img)
    assert rc == 0, err
    time.sleep(0.2)
    assert wl.counter() == c, "still suspended after --dump"

    with reaping(wl):
        rc, _, err = cpt("chkpnt", "--pid", pid, "--kill")
    assert rc == 0, err
    assert not pid_exists(pid)

    rc, _, err = cpt("restore", "--dumpfile", img, "--undump")
    assert rc == 0, err
    wl.refresh()
    assert pid_exists(pid)
    time.sleep(0.3)
    assert wl.counter() == c, "undumped: restored but frozen"

    rc, _, err = cpt("restore", "--dumpfile", img, "--resume")
    assert rc == 0, err
    assert wl.wait_counter(above=c) > c
    with reaping(wl):
        assert wl.finish() == "PASS"
    assert img.exists(), "restore never deletes a dump file named with --dumpfile"


def test_suspend_resume_and_restore_kill(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("counter")
    wl.wait_counter()
    assert cpt("chkpnt", "--pid", wl.pid, "--suspend")[0] == 0
    assert cpt("chkpnt", "--pid", wl.pid, "--resume")[0] == 0
    c = wl.counter()
    assert wl.wait_counter(above=c) > c

    img = tmp_path / "k.img"
    checkpoint(cpt, wl, img)
    assert cpt("restore", "--dumpfile", img, "--undump")[0] == 0
    wl.refresh()
    with reaping(wl):
        rc, _, err = cpt("restore", "--dumpfile", img, "--kill")
    assert rc == 0, err
    assert not pid_exists(wl.pid)


def test_pidfile(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("counter")
    wl.wait_counter()
    img = tmp_path / "p.img"
    checkpoint(cpt, wl, img)
    restore(cpt, wl, img, "--pidfile", tmp_path / "pid")
    assert (tmp_path / "pid").read_text().strip() == str(wl.pid)
    with reaping(wl):
        assert wl.finish() == "PASS"


# --------------------------------------------------------------------------- refusals


@pytest.fixture
def socket_holder(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process holding an MPTCP socket (not supported; netlink sockets now are), killed
    by PID afterwards."""
    code = (
        "import socket, sys, time; s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262); "
        "print('ready', flush=True); time.sleep(600)"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # The holder says when its socket exists: polling /proc/PID/fd races
        # with the interpreter's start-up, which opens and closes files.
        assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        yield p
    finally:
        p.kill()
        p.wait()
        if p.stdout is not None:
            p.stdout.close()


def test_unsupported_fd_is_refused_and_tree_untouched(cpt, socket_holder, tmp_path: Path) -> None:
    img = tmp_path / "no.img"
    rc, _, err = cpt("chkpnt", "--pid", socket_holder.pid, "--dumpfile", img)
    assert rc == 16
    assert f"process {socket_holder.pid} fd" in err and "socket" in err
    assert len(err.strip().splitlines()) == 1
    assert not img.exists()
    assert socket_holder.poll() is None
    assert traced_by(socket_holder.pid) == 0
    state = Path(f"/proc/{socket_holder.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    assert state == "S"
    assert not list(Path("/sys/fs/cgroup").rglob(f"cpt/pid-{socket_holder.pid}"))


@pytest.mark.parametrize(
    ("code", "expect"),
    [
        (
            "import os, time; p = os.pidfd_open(1); time.sleep(600)",
            "a pidfd of process 1, which is outside the tree",
        ),
        (
            "import ctypes, time; u = ctypes.CDLL(None).syscall(323, 0); time.sleep(600)",
            "userfaultfd",
        ),
    ],
    ids=["pidfd", "userfaultfd"],
)
def test_more_unsupported_resources_are_refused(
    cpt, tmp_path: Path, code: str, expect: str
) -> None:
    p = subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(0.5)
        assert p.poll() is None
        rc, _, err = cpt("chkpnt", "--pid", p.pid, "--dumpfile", tmp_path / "x.img")
        assert rc == 16 and expect in err and f"process {p.pid}" in err, err
        assert p.poll() is None and traced_by(p.pid) == 0
        assert not (tmp_path / "x.img").exists()
    finally:
        p.kill()
        p.wait()


def test_failed_dump_resumes_and_leaves_no_file(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("counter")
    wl.wait_counter()
    img = tmp_path / "missing-dir" / "x.img"
    rc, _, err = cpt("chkpnt", "--pid", wl.pid, "--dumpfile", img)
    assert rc == 16, err
    assert not img.exists()
    c = wl.counter()
    assert wl.wait_counter(above=c) > c, "the workload was resumed"
    assert traced_by(wl.pid) == 0
    assert not list(tmp_path.glob("**/.x.img.*"))
    with reaping(wl):
        assert wl.finish() == "PASS"


def test_dump_of_running_tree_is_refused(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("counter")
    wl.wait_counter()
    rc, _, err = cpt("chkpnt", "--pid", wl.pid, "--dump", "--dumpfile", tmp_path / "d.img")
    assert rc == 16 and "not suspended" in err
    c = wl.counter()
    assert wl.wait_counter(above=c) > c


def test_restore_refuses_pid_in_use(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("counter")
    wl.wait_counter()
    img = tmp_path / "live.img"
    checkpoint(cpt, wl, img, "--leave-running")
    before = set(os.listdir("/proc"))
    rc, _, err = cpt("restore", "--dumpfile", img)
    assert rc == 17
    assert f"PID {wl.pid} is in use" in err and "--pidns" in err
    after = {p for p in os.listdir("/proc") if p.isdigit()} - {p for p in before if p.isdigit()}
    assert not [
        p
        for p in after
        if Path(f"/proc/{p}/cmdline").exists()
        and b"stub" in Path(f"/proc/{p}/cmdline").read_bytes()
    ]
    with reaping(wl):
        assert wl.finish() == "PASS"


def test_restore_refuses_changed_file(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("counter")
    wl.wait_counter()
    img = tmp_path / "c.img"
    checkpoint(cpt, wl, img)
    with open(wl.dir / "log", "a") as f:
        f.write("changed behind the checkpoint's back\n")
    rc, _, err = cpt("restore", "--dumpfile", img)
    assert rc == 17
    assert str(wl.dir / "log") in err and "changed" in err
    assert not pid_exists(wl.pid), "nothing was created"


def test_restore_refuses_corrupted_image(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("counter", "4")
    wl.wait_counter()
    img = tmp_path / "bad.img"
    checkpoint(cpt, wl, img)
    data = bytearray(img.read_bytes())
    data[len(data) // 2] ^= 0x40  # inside the page data
    img.write_bytes(bytes(data))
    rc, _, err = cpt("restore", "--dumpfile", img)
    assert rc == 40  # SPEC.md section 9: a corrupted image is exit 40, not a failed restore
    assert "checksum" in err and "refusing to restore" in err
    assert not pid_exists(wl.pid)


def test_usage_errors(cpt) -> None:
    rc, _, err = cpt("chkpnt", "--pid", "1", "--suspend", "--kill")
    assert rc == 20 and "at most one stage" in err
    rc, _, err = cpt("chkpnt", "--pid", "1", "--dump")
    assert rc == 20 and "--dumpfile" in err
    rc, _, err = cpt("restore", "--dumpfile", "x", "--undump", "--kill")
    assert rc == 20


def test_chkpnt_of_missing_process(cpt) -> None:
    pid = 4_000_000 - 7  # above any pid_max default: never a live process
    rc, _, err = cpt("chkpnt", "--pid", pid)
    assert rc == 31 and str(pid) in err


def test_second_command_on_a_locked_tree(workloads, cpt) -> None:
    import fcntl

    wl = workloads.start("counter")
    wl.wait_counter()
    cpt.run_dir.mkdir(parents=True, exist_ok=True)
    lock = cpt.run_dir / f"pid-{wl.pid}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        rc, _, err = cpt("chkpnt", "--pid", wl.pid, "--suspend")
        assert rc == 9 and "locked" in err
    finally:
        os.close(fd)
    c = wl.counter()
    assert wl.wait_counter(above=c) > c


def test_kill_leaves_no_zombie_pids(workloads, cpt, tmp_path: Path) -> None:
    """The tree workload holds two unreaped zombies; a kill reports done only when every
    PID of the tree is gone."""
    wl = workloads.start("tree")
    wl.wait_counter()
    pids = set(wl.tree())
    checkpoint(cpt, wl, tmp_path / "t.img")
    assert not [p for p in pids if pid_exists(p)]


def no_freezer_left(name: str) -> bool:
    return not list(Path("/sys/fs/cgroup").rglob(f"cpt/{name}"))


def test_failed_dump_in_a_full_checkpoint_resumes_the_tree(workloads, cpt, tmp_path) -> None:
    wl = workloads.start("threads")
    wl.wait_counter()
    img = tmp_path / "f.img"
    rc, _, err = cpt("chkpnt", "--pid", wl.pid, "--dumpfile", img, fault="dump:pages")
    assert rc == 16 and "fault injected at dump:pages" in err
    assert not img.exists() and not list(tmp_path.glob(".f.img.*"))
    c = wl.counter()
    assert wl.wait_counter(above=c) > c, "the tree runs again"
    assert traced_by(wl.pid) == 0
    assert no_freezer_left(f"pid-{wl.pid}")
    with reaping(wl):
        assert wl.finish() == "PASS"


def test_failed_restore_leaves_nothing_alive(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("tree")
    wl.wait_counter()
    pids = set(wl.tree())
    img = tmp_path / "r.img"
    checkpoint(cpt, wl, img)
    with reaping(wl):
        rc, _, err = cpt("restore", "--dumpfile", img, fault="restore:memory")
    assert rc == 17 and "fault injected at restore:memory" in err
    assert not [p for p in pids if pid_exists(p)]
    assert no_freezer_left(f"pid-{wl.pid}")
    restore(cpt, wl, img)  # and the image still restores
    with reaping(wl):
        assert wl.finish() == "PASS"


def test_sigkill_of_cpt_restore_leaves_nothing(workloads, cpt, tmp_path: Path) -> None:
    """Stubs are traced with PTRACE_O_EXITKILL: a restorer killed with the whole tree built
    but not yet released takes every process along."""
    wl = workloads.start("tree")
    wl.wait_counter()
    pids = set(wl.tree())
    img = tmp_path / "s.img"
    checkpoint(cpt, wl, img)
    env = dict(cpt.env, CPT_FAULT="restore:detach:stall")
    p = subprocess.Popen(
        [*CPT, "restore", "--dumpfile", str(img)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert p.stderr is not None
        line = p.stderr.readline()
        assert "stalled at restore:detach" in line
        assert all(pid_exists(pid) for pid in pids), "the whole tree exists, still traced"
    finally:
        p.kill()
        p.wait()
    with reaping(wl):
        deadline = time.monotonic() + 10
        while [q for q in pids if pid_exists(q)] and time.monotonic() < deadline:
            time.sleep(0.02)
    assert not [q for q in pids if pid_exists(q)]


def test_pidns_restores_while_pids_are_in_use(workloads, cpt, tmp_path: Path) -> None:
    """The original stays (suspended, its PIDs in use); the copy gets the same PIDs inside
    a new PID namespace."""
    wl = workloads.start("tree")
    wl.wait_counter()
    img = tmp_path / "ns.img"
    assert cpt("chkpnt", "--pid", wl.pid, "--suspend")[0] == 0
    assert cpt("chkpnt", "--pid", wl.pid, "--dump", "--dumpfile", img)[0] == 0
    rc, _, err = cpt("restore", "--dumpfile", img)
    assert rc == 17 and f"PID {wl.pid} is in use" in err
    rc, _, err = cpt("restore", "--dumpfile", img, "--pidns", "--pidfile", tmp_path / "pid")
    assert rc == 0, err
    host_pid = int((tmp_path / "pid").read_text())
    try:
        assert host_pid != wl.pid
        nspid = next(
            line.split()[1:]
            for line in Path(f"/proc/{host_pid}/status").read_text().splitlines()
            if line.startswith("NSpid:")
        )
        assert nspid == [str(host_pid), str(wl.pid)], "inside, the root has its old PID"
        children = Path(f"/proc/{host_pid}/task/{host_pid}/children").read_text().split()
        assert len(children) == 4, "its two children and two zombies came back too"
        init = int(Path(f"/proc/{host_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        init_nspid = next(
            line.split()[1:]
            for line in Path(f"/proc/{init}/status").read_text().splitlines()
            if line.startswith("NSpid:")
        )
        assert init_nspid[-1] == "1", "the root's parent is the namespace's init"
    finally:
        os.kill(host_pid, signal.SIGKILL)
    assert cpt("chkpnt", "--pid", wl.pid, "--resume")[0] == 0
    with reaping(wl):
        assert wl.finish() == "PASS"
    # the init reaps the copy, exits once it has no child left, and comes to us: reap it
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and os.waitpid(init, os.WNOHANG)[0] == 0:
        time.sleep(0.02)
    assert not pid_exists(init)
