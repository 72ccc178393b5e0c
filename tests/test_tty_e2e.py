"""End to end: terminals through the `cpt` command.

A tree holding both ends of ptys (fixtures/workloads/pty.c: a terminal emulator, its
shell and a foreground job) is checkpointed, killed and restored, also when its pty index
is taken meanwhile; a shell job (fixtures/workloads/ttyjob.c, run by tests/ttyshell.py on
a pty the test holds) goes through `cpt chkpnt --shell-job` and `cpt restore --shell-job`
run by that shell, and gets the terminal back as its foreground job.  Every refusal is
checked: exit code, the pid and the terminal named, the tree left running.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cptcli import CPT, REPO
from killing import state_of
from workloads import (  # noqa: F401
    build,
    descendants,
    image_records,
    kill_tree,
    make_subreaper,
    reaping,
    workloads_fixture,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="checkpoint/restore needs root (ptrace, clone3 set_tid)"
    ),
]

TTYSHELL = Path(__file__).resolve().parent / "ttyshell.py"


def stat_of(pid: int) -> dict[str, int]:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    f = data[data.rfind(b")") + 2 :].split()
    return {"ppid": int(f[1]), "pgrp": int(f[2]), "sid": int(f[3]), "tty_nr": int(f[4]),
            "tpgid": int(f[5])}  # fmt: skip


def tty_nr(path: str) -> int:
    """A terminal's device number as /proc/PID/stat prints tty_nr (new_encode_dev)."""
    rdev = os.stat(path).st_rdev
    ma, mi = os.major(rdev), os.minor(rdev)
    return (mi & 0xFF) | (ma << 8) | ((mi & ~0xFF) << 12)


def wait_for(what: str, cond, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def counter(d: Path) -> int:
    try:
        return int((d / "counter").read_bytes() or b"0")
    except (FileNotFoundError, ValueError):
        return 0


def runs(d: Path) -> None:
    c = counter(d)
    wait_for(f"the counter in {d} to move past {c}", lambda: counter(d) > c)


@contextlib.contextmanager
def reaping_pids(pids: set[int]) -> Iterator[None]:
    """Reap these processes if they die as our children (orphans of a killed job come to
    us, the subreaper) while the block runs: until then their PIDs stay in use."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.01):
            for p in pids:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(p, os.WNOHANG)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
        # a last pass: one that became our zombie after the loop's last turn (the command
        # returned as soon as the tree was dead) is reaped too, and its PID free
        deadline = time.monotonic() + 5
        for p in pids:
            while state_of(p) == "Z" and time.monotonic() < deadline:
                try:
                    os.waitpid(p, os.WNOHANG)
                except ChildProcessError:
                    break  # not ours to reap
                time.sleep(0.005)


def slave_fd_link(pid: int) -> str:
    """The /dev/pts/N a process holds (the pty workload's root holds one slave fd)."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
        if link.startswith("/dev/pts/"):
            return link
    raise AssertionError(f"process {pid} holds no pty slave")


# --------------------------------------------------------------------------- ptys in the tree


def test_pty_tree_checkpoint_restore(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("pty")
    wl.wait_counter()
    pids = wl.refresh()
    link = slave_fd_link(wl.pid)
    img = tmp_path / "pty.img"
    with reaping(wl):
        rc, _, err = cpt("chkpnt", "--pid", wl.pid, "--dumpfile", img)
    assert rc == 0, err
    assert not any(os.path.exists(f"/proc/{p}") for p in pids)
    rc, _, err = cpt("restore", "--dumpfile", img)
    assert rc == 0, err
    assert wl.refresh() == pids
    assert slave_fd_link(wl.pid) == link, "a free pty index is taken again"
    wl.wait_counter()
    with reaping(wl):
        assert wl.finish() == "PASS"


def test_pty_tree_leave_running(workloads, cpt, tmp_path: Path) -> None:
    """The dump reads the master's unread output and puts it back: the tree sees nothing."""
    wl = workloads.start("pty")
    wl.wait_counter()
    rc, _, err = cpt("chkpnt", "--pid", wl.pid, "--dumpfile", tmp_path / "p.img", "--leave-running")
    assert rc == 0, err
    wl.wait_counter()
    with reaping(wl):
        assert wl.finish() == "PASS"


def test_pty_index_taken_at_restore(workloads, cpt, tmp_path: Path) -> None:
    """The index is in use: the pty comes back under another one, and still works."""
    wl = workloads.start("pty")
    wl.wait_counter()
    link = slave_fd_link(wl.pid)
    img = tmp_path / "pty.img"
    with reaping(wl):
        assert cpt("chkpnt", "--pid", wl.pid, "--dumpfile", img)[0] == 0
    held: list[int] = []
    try:
        while True:  # the lowest free index comes first: take ptys up to the dumped one
            m, s = os.openpty()
            held += [m, s]
            name = os.ttyname(s)
            if name == link or len(held) > 200:
                break
        assert name == link
        rc, _, err = cpt("restore", "--dumpfile", img)
        assert rc == 0, err
        wl.refresh()
        assert slave_fd_link(wl.pid) != link
        wl.wait_counter()
        with reaping(wl):
            assert wl.finish() == "PASS"
    finally:
        for fd in held:
            os.close(fd)


_LEADER_WITHOUT_FD = """
m, s = os.openpty()
name = os.ttyname(s)
if os.fork() == 0:  # the session leader: its terminal as controlling one, then no fd of it
    os.close(m)
    os.close(s)
    os.setsid()
    t = os.open(name, os.O_RDWR)
    g = os.fork()
    if g == 0:  # the foreground job keeps the slave
        os.setpgid(0, 0)
        time.sleep(600)
    os.setpgid(g, g)
    os.tcsetpgrp(t, g)
    os.close(t)
    open(os.path.join(d, "leader"), "w").write(f"{os.getpid()} {g}")
    time.sleep(600)
os.close(s)
while not os.path.exists(os.path.join(d, "leader")):
    time.sleep(0.01)
"""


def test_foreground_group_set_by_a_leader_without_fd(workloads, cpt, tmp_path: Path) -> None:
    """TIOCSCTTY and TIOCSPGRP through a temporary open when the leader holds no fd of its
    controlling terminal."""
    p = start_holder(tmp_path, _LEADER_WITHOUT_FD)
    try:
        leader, job = map(int, (tmp_path / "leader").read_text().split())
        before = {q: stat_of(q) for q in (p.pid, leader, job)}
        assert before[leader]["tpgid"] == job and before[leader]["tty_nr"] != 0
        img = tmp_path / "x.img"
        with reaping_pids({p.pid, leader, job}):
            rc, _, err = cpt("chkpnt", "--pid", p.pid, "--dumpfile", img)
        assert rc == 0, err
        rc, _, err = cpt("restore", "--dumpfile", img)
        assert rc == 0, err
        after = {q: stat_of(q) for q in (p.pid, leader, job)}
        assert after == before
    finally:
        kill_tree(p.pid)


def test_restored_tree_does_not_inherit_the_restorers_terminal(
    shell: Shell, cpt, tmp_path: Path
) -> None:
    """A tree whose root is not a session leader joins the restorer's session; it had no
    controlling terminal, so it must not keep the one it inherits from the restorer."""
    code = (
        "try:\n    t = os.open('/dev/tty', os.O_RDWR)\n"
        "    fcntl.ioctl(t, termios.TIOCNOTTY)\n    os.close(t)\n"
        "except OSError:\n    pass"
    )
    p = start_holder(tmp_path, code, new_session=False)
    try:
        assert stat_of(p.pid)["tty_nr"] == 0
        img = tmp_path / "x.img"
        with reaping_pids({p.pid}):
            rc, _, err = cpt("chkpnt", "--pid", p.pid, "--dumpfile", img)
        assert rc == 0, err
        rc, out = shell_cpt(shell, tmp_path / "cpt.log", "restore", "--dumpfile", img, fg=True)
        assert rc == 0, out
        st = stat_of(p.pid)
        assert st["sid"] == shell.pid, "it joined the restorer's session"
        assert st["tty_nr"] == 0, "but not its terminal"
    finally:
        kill_tree(p.pid)


# a process holding a pty (both ends, or the slave of a pty the test holds), set up by
# code run after the pty exists; it writes DIR/ready and sleeps
_PTY_HOLDER = """
import fcntl, os, sys, termios, time
d = sys.argv[1]
{setup}
open(os.path.join(d, "ready"), "w").close()
time.sleep(600)
"""


def start_holder(
    tmp_path: Path,
    setup: str,
    *args: str,
    prefix: tuple[str, ...] = (),
    new_session: bool = True,
) -> subprocess.Popen[bytes]:
    """`prefix`: a command that execs the holder (same pid); `new_session`: False keeps
    the test's session (and its terminal, if the test has one)."""
    make_subreaper()
    code = _PTY_HOLDER.format(setup=setup)
    p = subprocess.Popen(
        [*prefix, sys.executable, "-c", code, str(tmp_path), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "holder.err", "wb"),  # noqa: SIM115
        start_new_session=new_session,
    )
    wait_for("the pty holder", lambda: (tmp_path / "ready").exists() or p.poll() is not None)
    assert p.poll() is None, (tmp_path / "holder.err").read_text()
    return p


def test_pty_pending_output_in_packet_mode_refused(cpt, tmp_path: Path) -> None:
    setup = (
        "m, s = os.openpty(); fcntl.ioctl(m, termios.TIOCPKT, b'\\1\\0\\0\\0'); os.write(s, b'x')"
    )
    p = start_holder(tmp_path, setup)
    try:
        rc, _, err = cpt("chkpnt", "--pid", p.pid, "--dumpfile", tmp_path / "x.img")
        assert rc == 16, err
        assert "packet mode with output not read yet" in err and f"process {p.pid}" in err, err
        assert p.poll() is None and not (tmp_path / "x.img").exists()
    finally:
        kill_tree(p.pid)


_QUEUED = (
    "m, s = os.openpty(); os.fchown(s, 1234, 5); os.fchmod(s, 0o620); "
    "a = termios.tcgetattr(s); a[3] &= ~termios.ECHO; termios.tcsetattr(s, termios.TCSANOW, a); "
    "os.write(m, b'line one\\nhalf a li'); os.write(s, b'out bytes'); "
    "open(os.path.join(d, 'fds'), 'w').write(f'{m} {s}')"
)


def test_pty_queued_bytes_owner_and_mode(cpt, tmp_path: Path) -> None:
    """A pty with input the slave has not read (a whole line and a partial one, canonical
    mode) and output the master has not read, its slave chown'ed and chmod'ed: after a
    checkpoint (which must leave the queues as they were when the tree runs on: checked by
    a leave-running dump first) and a restore, the bytes read back in both directions and
    the slave's owner and mode are as before (format 1.7 PtyState)."""
    from cptimage.records import PtyState, SectionType

    p = start_holder(tmp_path, _QUEUED)
    try:
        m, s = (int(x) for x in (tmp_path / "fds").read_text().split())
        img = tmp_path / "q.img"
        rc, _, err = cpt("chkpnt", "--pid", p.pid, "--leave-running", "--dumpfile", img)
        assert rc == 0, err
        rc, _, err = cpt("chkpnt", "--pid", p.pid, "--dumpfile", img)
        assert rc == 0, err
        p.wait(timeout=30)
        (st,) = image_records(img, SectionType.FILES, PtyState)
        assert (st.uid, st.gid, st.mode, st.input) == (1234, 5, 0o620, b"line one\nhalf a li")
        rc, _, err = cpt("restore", "--dumpfile", img)
        assert rc == 0, err
        slave = os.stat(f"/proc/{p.pid}/fd/{s}")
        assert (slave.st_uid, slave.st_gid, slave.st_mode & 0o7777) == (1234, 5, 0o620)
        sfd = os.open(f"/proc/{p.pid}/fd/{s}", os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        # the master itself (a reopened /dev/ptmx would be a new pty): pidfd_getfd
        pidfd = os.pidfd_open(p.pid)
        mfd = ctypes.CDLL(None, use_errno=True).syscall(438, pidfd, m, 0)
        os.close(pidfd)
        assert mfd >= 0, os.strerror(ctypes.get_errno())
        os.set_blocking(mfd, False)
        try:
            assert os.read(sfd, 100) == b"line one\n", "a whole line, canonical mode"
            attrs = termios.tcgetattr(sfd)
            attrs[3] &= ~termios.ICANON
            termios.tcsetattr(sfd, termios.TCSANOW, attrs)
            assert os.read(sfd, 100) == b"half a li", "the partial line after it"
            assert os.read(mfd, 100) == b"out bytes", "the slave's unread output"
        finally:
            os.close(sfd)
            os.close(mfd)
    finally:
        kill_tree(p.pid)


def test_session_with_outside_terminal_refused(cpt, tmp_path: Path) -> None:
    """A session of the tree whose controlling terminal's master is outside: refused even
    with --shell-job (the restorer's terminal cannot be given to another session)."""
    m, s = os.openpty()
    name = os.ttyname(s)
    try:
        p = start_holder(tmp_path, "t = os.open(sys.argv[2], os.O_RDWR)", name)
        try:
            img = tmp_path / "x.img"
            rc, _, err = cpt("chkpnt", "--pid", p.pid, "--shell-job", "--dumpfile", img)
            assert rc == 16, err
            assert f"session {p.pid}" in err and name in err and "master is outside" in err
            assert p.poll() is None
        finally:
            kill_tree(p.pid)
    finally:
        os.close(m)
        os.close(s)


def refused(cpt, p: subprocess.Popen[bytes], tmp_path: Path, *extra: object) -> str:  # type: ignore[no-untyped-def]
    """`cpt chkpnt` of the holder: refused (exit 16), the holder untouched; the error."""
    img = tmp_path / "x.img"
    try:
        rc, _, err = cpt("chkpnt", "--pid", p.pid, "--dumpfile", img, *extra)
        assert rc == 16, err
        assert p.poll() is None and not img.exists()
        return err
    finally:
        kill_tree(p.pid)


def test_private_devpts_refused(cpt, tmp_path: Path) -> None:
    mount = 'mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts && exec "$@"'
    p = start_holder(
        tmp_path, "m, s = os.openpty()", prefix=("unshare", "-m", "sh", "-c", mount, "sh")
    )
    err = refused(cpt, p, tmp_path)
    assert f"process {p.pid} fd " in err and "another devpts instance" in err, err


def test_terminal_not_a_pty_refused(cpt, tmp_path: Path) -> None:
    try:  # a virtual console, as a session leader's controlling terminal
        os.close(os.open("/dev/tty1", os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY))
    except OSError as e:
        pytest.skip(f"this machine has no virtual console to test with: {e}")
    p = start_holder(tmp_path, "t = os.open('/dev/tty1', os.O_RDWR | os.O_NONBLOCK)")
    err = refused(cpt, p, tmp_path, "--shell-job")
    assert f"process {p.pid}: its controlling terminal (device 4:1) is not a pty" in err, err


def test_outside_terminal_not_the_shells_refused(cpt, tmp_path: Path) -> None:
    """An fd on a terminal outside the tree: refused without --shell-job, and with it too
    when that terminal is not the controlling terminal of the tree's (outside) session."""
    m, s = os.openpty()
    name = os.ttyname(s)
    try:
        setup = "t = os.open(sys.argv[2], os.O_RDWR | os.O_NOCTTY)"
        p = start_holder(tmp_path, setup, name, new_session=False)
        err = refused(cpt, p, tmp_path)
        assert f"process {p.pid} fd 3: {name} is a terminal whose master" in err, err
        (tmp_path / "ready").unlink()
        p = start_holder(tmp_path, setup, name, new_session=False)
        err = refused(cpt, p, tmp_path, "--shell-job")
        assert f"{name} is a terminal outside the tree but not the controlling" in err, err
    finally:
        os.close(m)
        os.close(s)


# --------------------------------------------------------------------------- shell jobs


class Shell:
    """tests/ttyshell.py as the session leader of a fresh pty whose master the test holds."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        make_subreaper()
        self.master, slave = os.openpty()
        self.tty = os.ttyname(slave)
        cmd_r, self.cmd_w = os.pipe()
        self.reply_r, reply_w = os.pipe()
        self.env = env
        self.proc = subprocess.Popen(
            [sys.executable, str(TTYSHELL), str(cmd_r), str(reply_w)],
            stdin=slave,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "shell.err", "wb"),  # noqa: SIM115
            pass_fds=(cmd_r, reply_w),
            start_new_session=True,
            cwd=REPO,
            env=env,
        )
        for fd in (slave, cmd_r, reply_w):
            os.close(fd)
        self._buf = b""
        self._replies: list[dict[str, int]] = []
        self.output = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def run(self, argv: list[object], out: Path, fg: bool = True) -> int:
        """Start a job (`fg`: in the foreground, given the terminal); returns its pid."""
        cmd = {"argv": [str(a) for a in argv], "out": str(out), "fg": fg}
        os.write(self.cmd_w, (json.dumps(cmd) + "\n").encode())
        return self._reply(lambda r: "pid" in r)["pid"]

    def status(self, pid: int, timeout: float = 30.0) -> int:
        """The wait status of child `pid` of the shell, once it ended."""
        return self._reply(lambda r: r.get("exited") == pid, timeout)["status"]

    def _reply(
        self, match: Callable[[dict[str, int]], bool], timeout: float = 10.0
    ) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while True:
            for r in self._replies:
                if match(r):
                    self._replies.remove(r)
                    return r
            left = deadline - time.monotonic()
            assert left > 0 and select.select([self.reply_r], [], [], left)[0], "shell silent"
            self._buf += os.read(self.reply_r, 4096)
            *lines, self._buf = self._buf.split(b"\n")
            self._replies += [json.loads(line) for line in lines]

    def read_until(self, want: bytes, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while want not in self.output:
            left = deadline - time.monotonic()
            assert left > 0 and select.select([self.master], [], [], left)[0], (
                f"no {want!r} on the terminal: {self.output!r}"
            )
            self.output += os.read(self.master, 4096)

    def close(self) -> None:
        kill_tree(self.proc.pid)  # the shell, its jobs, a restored job under cpt
        for fd in (self.master, self.cmd_w, self.reply_r):
            os.close(fd)


@pytest.fixture
def shell(tmp_path: Path, cpt) -> Iterator[Shell]:
    sh = Shell(tmp_path, cpt.env)
    try:
        yield sh
    finally:
        sh.close()


def start_job(shell: Shell, tmp_path: Path) -> tuple[int, Path]:
    d = tmp_path / "job"
    d.mkdir()
    pid = shell.run([build("ttyjob"), d], d / "log")
    wait_for("the job's DIR/ready", lambda: (d / "ready").exists())
    runs(d)
    return pid, d


def shell_cpt(shell: Shell, log: Path, *args: object, fg: bool = False) -> tuple[int, str]:
    """`cpt ARGS` run by the shell on its terminal (in the background unless `fg`):
    (exit code, output)."""
    pid = shell.run([*CPT, *args], log, fg=fg)
    status = shell.status(pid)
    assert os.WIFEXITED(status), f"cpt ended with status {status:#x}"
    return os.WEXITSTATUS(status), log.read_text()


def test_shell_job_without_flag_refused(shell: Shell, tmp_path: Path) -> None:
    pid, d = start_job(shell, tmp_path)
    st = stat_of(pid)
    assert (st["sid"], st["tty_nr"], st["tpgid"]) == (shell.pid, tty_nr(shell.tty), pid)
    img = tmp_path / "x.img"
    rc, out = shell_cpt(shell, tmp_path / "chk.log", "chkpnt", "--pid", pid, "--dumpfile", img)
    assert rc == 16, out
    assert f"process {pid}" in out and shell.tty in out and "--shell-job" in out, out
    assert not img.exists()
    runs(d)  # untouched: it runs on


def test_shell_job_checkpoint_restore(shell: Shell, cpt, tmp_path: Path) -> None:
    pid, d = start_job(shell, tmp_path)
    (kid,) = descendants(pid)
    img = tmp_path / "job.img"
    rc, out = shell_cpt(
        shell, tmp_path / "chk.log", "chkpnt", "--pid", pid, "--dumpfile", img, "--shell-job"
    )
    assert rc == 0, out
    assert os.WIFSIGNALED(shell.status(pid)), "the shell saw its job killed"

    # refused restores leave nothing behind
    rc, out = shell_cpt(shell, tmp_path / "r1.log", "restore", "--dumpfile", img)
    assert rc == 17 and "restore it with --shell-job" in out, out
    rc, _, err = cpt("restore", "--dumpfile", img, "--shell-job")  # cpt without a terminal
    assert rc == 17 and "needs a controlling terminal" in err, err
    assert not os.path.exists(f"/proc/{pid}") and not os.path.exists(f"/proc/{kid}")

    # restored by the shell, as its foreground job: cpt stays until the job ends
    c = counter(d)
    log = tmp_path / "cpt.log"
    cpt_pid = shell.run([*CPT, "restore", "--dumpfile", img, "--shell-job"], log)
    wait_for("the restored job", lambda: counter(d) > c)
    st, kst = stat_of(pid), stat_of(kid)
    assert st == {"ppid": cpt_pid, "pgrp": pid, "sid": shell.pid, "tty_nr": tty_nr(shell.tty),
                  "tpgid": pid}  # fmt: skip
    assert (kst["pgrp"], kst["sid"], kst["tty_nr"]) == (pid, shell.pid, tty_nr(shell.tty))
    os.write(shell.master, b"ping\n")
    shell.read_until(b"pong")
    os.kill(pid, signal.SIGTERM)
    wait_for("the job's verdict", lambda: (d / "result").exists())
    assert (d / "result").read_text().strip() == "PASS", (d / "log").read_text()
    status = shell.status(cpt_pid)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, log.read_text()
    assert "restored tree" in log.read_text()


@pytest.mark.parametrize(
    ("item", "reason"),
    [("foreground", "foreground group"), ("ctty", "controlling terminal tty_nr 0")],
)
def test_ttyjob_sabotage(shell: Shell, tmp_path: Path, item: str, reason: str) -> None:
    """The shell job's checks can fail (it cannot run under the harness: no terminal)."""
    d = tmp_path / "job"
    d.mkdir()
    pid = shell.run(["env", f"CPT_WL_SABOTAGE={item}", build("ttyjob"), d], d / "log")
    wait_for("the job's DIR/ready", lambda: (d / "ready").exists())
    os.write(shell.master, b"ping\n")
    shell.read_until(b"pong")
    os.kill(pid, signal.SIGTERM)
    wait_for("the job's verdict", lambda: (d / "result").exists())
    verdict = (d / "result").read_text()
    assert verdict.startswith("FAIL: ") and reason in verdict, verdict
