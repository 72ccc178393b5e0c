"""Sanity tests of the self-checking workloads and their harness (tests/workloads.py).

Each workload must run, pass its own checks when nothing happened to it, and FAIL with a
precise reason when told (CPT_WL_SABOTAGE) to corrupt one piece of its own state right
before checking: a check that cannot fail proves nothing about a restore.
"""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from workloads import (
    ALL_WORKLOADS,
    C_WORKLOADS,
    CC,
    NEEDS_ROOT,
    SOURCES,
    WorkloadError,
    proc_info,
    reaping,
    source,
    start,
    workloads_fixture,  # noqa: F401 (registers the `workloads` fixture)
)

pytestmark = pytest.mark.skipif(shutil.which(CC) is None, reason=f"needs a C compiler ({CC})")

IS_ROOT = os.geteuid() == 0
HAS_AVX512 = " avx512f" in Path("/proc/cpuinfo").read_text()


def params(names):
    """pytest params, with the root mark (and a skip when not root) where needed."""
    out = []
    for name in names:
        marks = []
        if name.split("-")[0] in NEEDS_ROOT:
            marks = [
                pytest.mark.root,
                pytest.mark.skipif(not IS_ROOT, reason="changes its credentials"),
            ]
        out.append(pytest.param(name, marks=marks, id=name))
    return out


def test_c_sources_compile_without_warnings():
    for name in C_WORKLOADS:
        proc = subprocess.run(
            [
                CC,
                "-fsyntax-only",
                "-pthread",
                "-Wall",
                "-Wextra",
                "-Werror",
                str(SOURCES / f"{name}.c"),
            ],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, f"{name}.c:\n{proc.stderr}"


def stdio_of(pid: int) -> list[str]:
    return [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (0, 1, 2)]


@pytest.mark.parametrize("name", params(ALL_WORKLOADS))
def test_workload_passes(workloads, name):
    wl = workloads.start(name)
    assert (wl.dir / "ready").read_text() == f"{wl.pid}\n"
    for pid in wl.pids:  # the engine must be able to save every fd: no tty, no harness pipe
        if proc_info(pid).state != "Z":
            assert stdio_of(pid) == ["/dev/null", str(wl.log_path), str(wl.log_path)], pid
    first = wl.counter()
    assert wl.wait_counter(first, by=2) >= first + 2
    assert wl.finish() == "PASS", wl.log()
    assert not any(proc_info(p) for p in wl.pids), "the tree did not exit"


def test_counter_with_memory(workloads):
    wl = workloads.start("counter", "16")
    wl.wait_counter(by=2)
    assert wl.finish() == "PASS", wl.log()


@pytest.mark.parametrize("name", params(ALL_WORKLOADS))
def test_default_sabotage_fails(workloads, name):
    """CPT_WL_SABOTAGE=1 corrupts each workload's default item: the verdict must be FAIL."""
    wl = workloads.start(name, sabotage="1")
    wl.wait_counter()
    verdict = wl.finish()
    assert verdict.startswith("FAIL: "), verdict
    assert "sabotage" not in verdict, verdict  # it failed for the right reason, see the log
    assert "sabotage: corrupting" in wl.log()


# (workload, sabotage item, a part of the reason the verdict must give)
SABOTAGE = [
    ("counter", "counter", "DIR/counter is inode"),
    ("counter", "memory", "differs from the pattern"),
    ("counter.py", "memory", "16 MiB buffer differs from its pattern"),
    ("counter.py", "pipe", "left in the pipe"),
    ("tree", "zombie", "is not a reapable zombie"),
    ("tree", "pgid", "B1 pgid is"),
    ("threads", "ymm", "ymm5 changed"),
    ("threads", "zmm", "zmm20 changed"),
    ("threads", "tls", "__thread data byte 100"),
    ("threads", "mxcsr", "MXCSR 0x1f80"),
    ("threads", "pingpong", "ping-pong: sequence"),
    ("memory", "anon", "anon: the 8 bytes at offset"),
    ("memory", "filemap", "mapped.dat (the file itself)"),
    ("memory", "brk", "brk is"),
    ("memory", "stack", "stack buffer: the 8 bytes"),
    ("memory", "guard", "permissions r--p, expected ---p"),
    ("memory", "madvise", "lack hg"),
    ("memory", "rodata", "permissions rw-p, expected r--p"),
    ("files", "offset", "rdwr.dat offset is 999"),
    ("files", "append", "did not land at its end"),
    ("files", "cloexec", "FD_CLOEXEC is clear"),
    ("files", "nonblock", "O_APPEND|O_NONBLOCK bits 0"),
    ("files", "pipe", "pipe: 69999 bytes pending"),
    ("files", "fifo", "fifo: 499 bytes pending"),
    ("files", "shared", "different descriptions"),
    ("files", "extra-fd", "unexpected fd"),
    ("procstate", "umask", "umask is 022"),
    ("procstate", "cwd", "cwd is"),
    ("procstate", "personality", "personality is 0"),
    ("procstate", "comm", "comm (PR_GET_NAME) is 'sabotaged'"),
    ("procstate", "sigaction", "signal 10: handler"),
    ("procstate", "mask", "blocked signals"),
    ("procstate", "altstack", "sigaltstack is"),
    ("procstate", "itimer", "the 10 ms timer is not running"),
    ("procstate", "rlimit", "RLIMIT_NOFILE 150"),
    ("procstate", "timerslack", "timer slack 50000"),
    ("procstate", "creds", "gid r/e/s 2000/2000/2000"),
    ("procstate", "caps", "capabilities eff 0"),
    ("procstate", "seccomp", "uname() gave Unknown error 999"),
    ("restart", "eintr", "read() failed: Interrupted system call"),
    ("pyscript", "dict", "differs at keys ['k77']"),
    ("pyscript", "generator", "did not resume at F(60)"),
    ("pyscript", "file", "position 124"),
    ("pyscript", "thread", "SHA-256"),
    ("novdso", "maps", "the special mappings are"),
    ("seccomp_tsync", "thread", "thread 1: uname() failed with errno 777"),
    ("procfiles", "offset", "stat is at offset 0, expected 10"),
    ("procfiles", "ns", "the net namespace fd"),
    ("sigstate", "trap", "the SIGTRAP handler ran 0 times"),
    ("sigstate", "zombie", "is not a reapable zombie"),
    ("sigign", "ignore", "SIGTRAP is not ignored"),
    ("unixzoo", "queue", "dgram pair: fewer messages queued than sent"),
    ("unixzoo", "pending", "no connection waits in the listener's accept queue"),
    ("unixzoo", "passcred", "SO_PASSCRED is off"),
    ("unixfid", "rights", "rights: first message b'plain after' with 0 files, expected 2"),
    ("unixfid", "creds", "creds: message b'cred two' carries credentials"),
    ("unixfid", "name", "sub/rel.sock does not reach it"),
    ("unixfid", "fifo", "the FIFO at held.sock lost its data"),
    ("sockopts", "option", "lsn TCP_KEEPINTVL is 14, was set to 13"),
    ("sockopts", "filter", "lsn SO_GET_FILTER gives 06000000ffffffff"),
    ("sockopts", "address", "free is bound to ('0.0.0.0', 0)"),
    ("sockopts", "ring", "pkt: no RX ring"),
    ("sockopts", "unbound", "unb is bound to ("),
    ("pktring", "ring", "the ring mapping at"),
    ("pktring", "tx", "tx: the frame sent through the TX ring was not received"),
    ("pktring", "priv", "v3: a block's first packet is at"),
    ("shmem.py", "pattern", "shared anonymous area differs"),
    ("sysvipc", "shm", "segment A differs"),
    ("sysvipc", "mq", "curmsgs 2"),
    ("shmem.py", "memfd", "memfd fd offset 0"),
    ("eventfds", "signalfd", "sfd_usr: fdinfo 'sigmask:' is '8000004000000000'"),
    ("eventfds", "ticks", "tfd_ticks: read gave 0 expirations, expected 12345"),
    ("eventfds", "timer", "tfd_once: disarmed without having fired"),
    ("eventfds", "nonblock", "ev_big: O_NONBLOCK is set"),
    ("epoll", "target", "item fd 8 data 0x2222 is missing"),
    ("epoll", "ready", "epoll_wait reported items 0xa0, expected 0xe2"),
    ("inotify", "mask", "in1: watch 1 is inode"),
    ("ptimers", "disarm", "timer 0 (every 25 ms) did not fire"),
    ("ptimers", "thread", "timer 3's signal ran on thread"),
    ("scale", "vma", "mapping 0 at"),
    ("scale", "fd", "is at offset 300, not 299"),
    ("scale", "member", "member 11 (pid"),
    ("taskstate", "nice", "main thread: nice 0, want 5"),
    ("taskstate", "policy", "thread I: policy 0 flags 0 priority 0, want policy 5"),
    ("taskstate", "rtprio", "thread F: policy 1 flags 0x1 priority 8, want policy 1 flags 0x1"),
    ("taskstate", "loginuid", "loginuid 4343, want 4242"),
    ("taskstate", "membarrier", "membarrier: not registered in a re-executed child's new mm"),
    ("taskstate", "subreaper", "child_subreaper 0, want 1"),
    ("taskstate", "pdeathsig", "P did not report"),
    ("taskstate", "stopped", "is not stopped"),
    ("memflags", "guard", "guard page 1: pagemap 0, guard bit clear"),
    ("memflags", "lock", "locked: VmFlags lack 'lo'"),
    ("memflags", "wipe", "wipeonfork: the forked child reads bytes that are not zero"),
    ("aio", "ctx", "context a: [aio] mapping of 0 bytes"),
    ("strict", "echo", "echo 3 from thread S is 'e', want 'f'"),
    ("leaders", "pgid", "P pgid is"),
    ("leaders", "mlock", "not locked: MCL_FUTURE lost"),
    ("shares", "files", "that C opened on c.dat is not in the root's table"),
    ("shares", "fs", "C: cwd and umask are"),
    ("removed", "fifo", "fifo: 299 bytes pending, want 300"),
    ("removed", "dir", "dir: mode 040700"),
]


def sabotage_params():
    out = []
    for name, item, reason in SABOTAGE:
        (p,) = params([name])
        marks = list(p.marks)
        if item == "zmm" and not HAS_AVX512:
            marks.append(pytest.mark.skip(reason="no AVX-512 on this CPU"))
        out.append(pytest.param(name, item, reason, marks=marks, id=f"{name}-{item}"))
    return out


@pytest.mark.parametrize(("name", "item", "reason"), sabotage_params())
def test_sabotage_gives_precise_reason(workloads, name, item, reason):
    args = ("4",) if (name, item) == ("counter", "memory") else ()
    wl = workloads.start(name, *args, sabotage=item)
    wl.wait_counter()
    verdict = wl.finish()
    assert verdict.startswith("FAIL: ") and reason in verdict, verdict


def test_every_sabotage_item_is_documented():
    """The items the tests use are the ones each source file lists in its header."""
    for name, item, _ in SABOTAGE:
        text = source(name).read_text()
        header = text.split("*/", 1)[0] if name in C_WORKLOADS else text.split('"""', 2)[1]
        listed = header.split("Sabotage item")[1].replace(",", " ").replace(".", " ").split()
        assert item in listed, f"{source(name).name} does not list sabotage item {item}"


# ---------------------------------------------------------------- the harness itself


def test_kill_tree_kills_the_whole_tree_and_its_zombies(workloads):
    wl = workloads.start("tree")
    pids = wl.refresh()
    assert len(pids) == 8  # root, A, A1, B, B1, B2 and two zombies
    assert sum(proc_info(p).state == "Z" for p in pids) == 2
    wl.kill_tree()
    assert [p for p in pids if proc_info(p)] == []


def test_kill_tree_finds_orphans_of_a_dead_root(workloads):
    """The root dies first: its child is re-parented to us (subreaper) and still killed."""
    wl = workloads.start("files")
    (child,) = wl.pids - {wl.pid}
    os.kill(wl.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while proc_info(child).ppid != os.getpid():
        assert time.monotonic() < deadline, "the orphan was not re-parented to the harness"
        time.sleep(0.005)
    wl.kill_tree()
    assert proc_info(child) is None and proc_info(wl.pid) is None


def test_reaping_reaps_a_killed_root_in_the_background(workloads):
    wl = workloads.start("counter")
    with reaping(wl):
        os.kill(wl.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while proc_info(wl.pid) is not None:
            assert time.monotonic() < deadline, "the zombie was not reaped"
            time.sleep(0.005)
    assert os.WTERMSIG(wl.statuses[wl.pid]) == signal.SIGKILL


def test_start_failure_reports_the_log(tmp_path):
    with pytest.raises(WorkloadError, match="is not a number of MiB") as e:
        start("counter", tmp_path, "lots")
    assert "exited (status" in str(e.value)


def test_finish_without_a_verdict_fails_loudly(workloads):
    wl = workloads.start("counter")
    os.kill(wl.pid, signal.SIGKILL)
    with pytest.raises(WorkloadError, match="exited without a verdict"):
        wl.finish()
