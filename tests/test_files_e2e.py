"""End to end: deleted-but-open files, hard links, file locks and hard rlimits, through the
`cpt` command.

fixtures/workloads/ghost.c (files deleted while open or mapped, a deleted executable,
hard links) and locks.c (flock, POSIX and OFD locks, a process blocked in F_SETLKW) check
themselves after restore; the tests also check the image (ghost contents, lock records),
each refusal (exit code, what it names, the tree left running) and that a restore refused
half-way leaves nothing alive.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from workloads import (  # noqa: F401
    Workload,
    checkpoint,
    image_records,
    kill_tree,
    make_subreaper,
    reaping,
    restore,
    workloads_fixture,
)

from cpt.restore.ghost import recreate
from cptimage.records import FileLock, LockKind, PathFlags, PathKind, PathObj, SectionType

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="checkpoint/restore needs root (ptrace, clone3 set_tid)"
    ),
]


def pids_exist(pids: set[int]) -> list[int]:
    return [p for p in pids if os.path.exists(f"/proc/{p}")]


def records(img: Path, cls: type) -> list:  # type: ignore[type-arg]
    return image_records(img, SectionType.FILES, cls)


# --------------------------------------------------------------------------- deleted files


def test_ghost_checkpoint_restore(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("ghost")
    wl.wait_counter()
    exe = os.readlink(f"/proc/{wl.pid}/exe")
    assert exe == f"{wl.dir}/exe.copy (deleted)"
    img = tmp_path / "ghost.img"
    checkpoint(cpt, wl, img)
    ghosts = {Path(p.path).name: p for p in records(img, PathObj) if p.flags & PathFlags.GHOST}
    assert set(ghosts) == {"exe.copy", "ghost.dat", "shm.dat"}
    assert len(ghosts["ghost.dat"].contents) == 64 * 1024 and ghosts["ghost.dat"].nlink == 0
    assert ghosts["shm.dat"].contents[100:116] == b"\xab" * 16  # written through the mapping
    rc, out, err = cpt("image", "verify", img)
    assert rc == 0, out + err
    restore(cpt, wl, img)
    assert os.readlink(f"/proc/{wl.pid}/exe") == exe, "recreated under its old name"
    assert not (wl.dir / "ghost.dat").exists(), "a ghost is recreated unlinked"
    wl.wait_counter()
    with reaping(wl):
        assert wl.finish() == "PASS"


def test_ghost_leave_running(workloads, cpt, tmp_path: Path) -> None:
    """The dump reads the ghosts (and the rest) without disturbing the running tree."""
    wl = workloads.start("ghost")
    wl.wait_counter()
    checkpoint(cpt, wl, tmp_path / "ghost.img", "--leave-running")
    wl.wait_counter()
    with reaping(wl):
        assert wl.finish() == "PASS"


def _ghost(path: Path) -> PathObj:
    return PathObj(
        id=1,
        kind=PathKind.REG,
        flags=PathFlags.DELETED | PathFlags.GHOST,
        mode=0o100751,
        uid=123,
        gid=456,
        mtime_ns=1_234_567_890_123_456_789,
        path=str(path),
        contents=b"ghost contents",
        size=14,
    )


@pytest.mark.parametrize("where", ["free", "taken", "no-directory"])
def test_ghost_recreated(tmp_path: Path, where: str) -> None:
    """Under its old name when free (then unlinked), else unnamed in its directory, else
    in the temporary directory; contents, mode, owner and mtime as dumped; read-only."""
    path = tmp_path / ("gone/x" if where == "no-directory" else "x")
    if where == "taken":
        path.write_bytes(b"a new file")
    fd = recreate(_ghost(path))
    try:
        st = os.fstat(fd)
        assert (st.st_nlink, st.st_mode, st.st_uid, st.st_gid) == (0, 0o100751, 123, 456)
        assert st.st_mtime_ns == 1_234_567_890_123_456_789
        assert os.pread(fd, 100, 0) == b"ghost contents"
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        name = os.readlink(f"/proc/self/fd/{fd}")
        if where == "free":
            assert name == f"{path} (deleted)" and not path.exists()
        elif where == "taken":
            assert name.startswith(f"{tmp_path}/") and name != f"{path} (deleted)"
            assert path.read_bytes() == b"a new file", "the new file is left alone"
        else:
            assert name.startswith(tempfile.gettempdir())
    finally:
        os.close(fd)


def test_ghost_above_limit_refused(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("ghost")
    wl.wait_counter()
    img = tmp_path / "x.img"
    rc, _, err = cpt("chkpnt", "--pid", wl.pid, "--dumpfile", img, "--ghost-limit", "16K")
    assert rc == 16, err
    assert f"{wl.dir}/ghost.dat is a deleted file of 65536 bytes" in err, err
    assert "--ghost-limit 16384" in err and f"process {wl.pid}" in err, err
    assert not img.exists()
    wl.wait_counter()
    with reaping(wl):
        assert wl.finish() == "PASS"


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ("offset", "offsets 999 and 77"),
        ("inode", "are inodes"),
        ("mapping", "the COW'd word is 0"),
        ("hardlink", "hard links: fds"),
    ],
)
def test_ghost_sabotage(workloads, item: str, reason: str) -> None:
    wl = workloads.start("ghost", sabotage=item)
    wl.wait_counter()
    with reaping(wl):
        verdict = wl.finish()
    assert verdict.startswith("FAIL: ") and reason in verdict, verdict


def _holder(tmp_path: Path, code: str) -> subprocess.Popen[bytes]:
    """A Python process running `code` (with d = tmp_path), then DIR/ready, then sleep."""
    make_subreaper()
    prog = f"import os, time\nd = {str(tmp_path)!r}\n{code}\nopen(d + '/ready', 'w').close()\n"
    p = subprocess.Popen(
        [sys.executable, "-c", prog + "time.sleep(600)\n"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd="/",
    )
    while not (tmp_path / "ready").exists():
        assert p.poll() is None, "the holder died"
        time.sleep(0.01)
    return p


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (
            "os.mkdir(d + '/a'); os.mkdir(d + '/b'); f = open(d + '/a/x', 'w'); "
            "os.link(d + '/a/x', d + '/b/y'); os.unlink(d + '/a/x')",
            "/a/x was removed but its inode still has 1 other link(s)",
        ),
        (
            "os.mknod(d + '/null', 0o20666, os.makedev(1, 3)); "
            "g = os.open(d + '/null', os.O_RDWR); os.unlink(d + '/null')",
            "/null is a deleted device node (not a regular file)",
        ),
    ],
    ids=["removed-link-elsewhere", "deleted-device-node"],
)
def test_unreachable_file_refused(cpt, tmp_path: Path, code: str, reason: str) -> None:
    p = _holder(tmp_path, code)
    try:
        rc, _, err = cpt("chkpnt", "--pid", p.pid, "--dumpfile", tmp_path / "x.img")
        assert rc == 16, err
        assert reason in err and f"process {p.pid}" in err, err
        assert p.poll() is None and not (tmp_path / "x.img").exists()
    finally:
        kill_tree(p.pid)


# --------------------------------------------------------------------------- file locks


def test_locks_checkpoint_restore(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("locks")
    wl.wait_counter()
    pids = wl.refresh()
    img = tmp_path / "locks.img"
    checkpoint(cpt, wl, img, "--file-locks")
    locks = records(img, FileLock)
    kinds = sorted((lk.kind, lk.write, lk.start, lk.length) for lk in locks)
    assert kinds == sorted(
        [
            (LockKind.FLOCK, 0, 0, 0),
            (LockKind.FLOCK, 1, 0, 0),
            (LockKind.POSIX, 1, 100, 100),
            (LockKind.POSIX, 0, 300, 100),
            (LockKind.POSIX, 0, 5000, 0),
            (LockKind.POSIX, 1, 2000, 100),
            (LockKind.OFD, 1, 500, 100),
        ]
    ), "one record per lock: flock and OFD locks once, though two processes hold them"
    posix_owners = {lk.pid for lk in locks if lk.kind == LockKind.POSIX}
    assert posix_owners == {wl.pid, min(pids - {wl.pid})}, "the root and C own POSIX locks"
    restore(cpt, wl, img)
    assert wl.pids == pids
    wl.wait_counter()
    with reaping(wl):
        assert wl.finish() == "PASS"


def test_locks_refused_without_flag(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("locks")
    wl.wait_counter()
    rc, _, err = cpt("chkpnt", "--pid", wl.pid, "--dumpfile", tmp_path / "x.img")
    assert rc == 16, err
    assert f"process {wl.pid} fd " in err, err
    assert f"holds a POSIX write lock on {wl.dir}/locks.dat bytes 100-199" in err, err
    assert "--file-locks" in err
    wl.wait_counter()
    with reaping(wl):
        assert wl.finish() == "PASS", "refused before anything was frozen: nothing changed"


def test_lease_being_broken_refused(cpt, tmp_path: Path) -> None:
    """A lease another open is breaking cannot be carried (the open waits for it): refused,
    naming it; the holder runs on.  A lease at rest is carried (tests/test_fdowner_e2e.py)."""
    code = (
        "import fcntl, signal; signal.signal(signal.SIGIO, signal.SIG_IGN); "
        "open(d + '/lease.dat', 'w').close(); "
        "fd = os.open(d + '/lease.dat', os.O_RDONLY); fcntl.fcntl(fd, fcntl.F_SETLEASE, 1)"
    )  # F_WRLCK
    p = _holder(tmp_path, code)
    try:
        with pytest.raises(BlockingIOError):  # starts the break, does not wait for it
            os.open(tmp_path / "lease.dat", os.O_RDONLY | os.O_NONBLOCK)
        rc, _, err = cpt("chkpnt", "--pid", p.pid, "--dumpfile", tmp_path / "x.img", "--file-locks")
        assert rc == 16, err
        assert f"process {p.pid} fd 3: holds a lease on {tmp_path}/lease.dat being broken" in err
        assert p.poll() is None
    finally:
        kill_tree(p.pid)


def test_lock_taken_meanwhile_fails_restore(workloads, cpt, tmp_path: Path) -> None:
    """Someone else took a lock of the image since: restore fails naming it, leaves nothing
    alive, and succeeds once the lock is free again."""
    wl = workloads.start("locks")
    wl.wait_counter()
    pids = wl.refresh()
    img = tmp_path / "locks.img"
    checkpoint(cpt, wl, img, "--file-locks")
    fd = os.open(wl.dir / "flock.dat", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        with reaping(wl):  # the killed stubs' orphans come to us, the subreaper
            rc, _, err = cpt("restore", "--dumpfile", img)
        assert rc == 17, err
        assert f"process {wl.pid}: cannot take back its flock write lock on fd" in err, err
        assert pids_exist(pids) == []
    finally:
        os.close(fd)
    restore(cpt, wl, img)
    wl.wait_counter()
    with reaping(wl):
        assert wl.finish() == "PASS"


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ("posix", "F_GETLK 300+100 for write: got type 2"),
        ("ofd", "F_OFD_GETLK 500+100"),
        ("flock", "flock LOCK_SH on flock.dat was granted"),
        ("range", "100+101"),
    ],
)
def test_locks_sabotage(workloads, item: str, reason: str) -> None:
    """The locks workload's checks can fail (it is not in ALL_WORKLOADS: it needs
    --file-locks, which the generic tests do not pass)."""
    wl = workloads.start("locks", sabotage=item)
    wl.wait_counter()
    with reaping(wl):
        verdict = wl.finish()
    assert verdict.startswith("FAIL: ") and reason in verdict, verdict


# --------------------------------------------------------------------------- hard rlimits


def test_hard_rlimit_above_the_restorers(workloads, cpt, tmp_path: Path) -> None:
    """Raising a hard limit needs CAP_SYS_RESOURCE, which root lacks here: a restorer whose
    own hard RLIMIT_NOFILE is below the tree's fails with exit 17 and the reason, and
    leaves nothing alive; with its usual limit the same image restores."""
    wl = workloads.start("counter")
    wl.wait_counter()
    pids = wl.refresh()
    hard = next(
        int(line.split()[4])
        for line in Path(f"/proc/{wl.pid}/limits").read_text().splitlines()
        if line.startswith("Max open files")
    )
    assert hard > 128
    img = tmp_path / "counter.img"
    checkpoint(cpt, wl, img)
    low = hard // 2
    with reaping(wl):
        rc, _, err = cpt("restore", "--dumpfile", img, nofile=(64, low))
    assert rc == 17, err
    assert "RLIMIT_NOFILE" in err and f"hard limit is {low}" in err, err
    assert "CAP_SYS_RESOURCE" in err, err
    assert pids_exist(pids) == [], "a failed restore leaves nothing alive"
    restore(cpt, wl, img)
    wl.wait_counter()
    with reaping(wl):
        assert wl.finish() == "PASS"


def test_an_fd_closed_during_the_precheck_is_no_problem(tmp_path: Path) -> None:
    """The check before the freeze looks at a RUNNING process, which may close an fd
    between the listing and the look at it (CPython does while it starts): that fd is
    not refused (the dump lists the fds again, frozen).  A phantom fd stands for it."""
    from cpt.dump.check import unsupported_process
    from cpt.dump.options import DumpOptions
    from cpt.procfs import Proc

    class Listing(Proc):
        def fd_targets(self, pid: int):  # type: ignore[no-untyped-def]
            real = super().fd_targets(pid)
            return {**real, 987: real[0]}  # listed, but closed by the time it is read

    (tmp_path / "f").write_text("x")
    with open(tmp_path / "f") as f:
        p = subprocess.Popen(["sleep", "60"], stdin=f)
    try:
        assert not os.path.lexists(f"/proc/{p.pid}/fd/987")
        assert unsupported_process(p.pid, Listing(), DumpOptions()) == []
    finally:
        p.kill()
        p.wait()
