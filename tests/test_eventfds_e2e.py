"""eventfd, signalfd, timerfd, epoll, inotify and POSIX timers through `cpt chkpnt` and
`cpt restore`, beyond the plain checkpoint + kill + restore of their workloads (which
tests/test_engine_e2e.py runs for every workload): timers frozen for longer than they had
left, a restored tree dumped and restored again, an epoll shared by two processes, and
every refusal, at dump and at restore.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from workloads import Workload, make_subreaper, reaping, workloads_fixture  # noqa: F401

from cpt.sys.task import KCMP_FILE, kcmp

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="checkpoint/restore needs root"),
]


def checkpoint(cpt: Callable[..., tuple[int, str, str]], wl: Workload, img: Path) -> None:
    with reaping(wl):
        rc, _, err = cpt("chkpnt", "--pid", wl.pid, "--dumpfile", img)
    assert rc == 0, err


def restore(cpt: Callable[..., tuple[int, str, str]], wl: Workload, img: Path) -> None:
    rc, _, err = cpt("restore", "--dumpfile", img)
    assert rc == 0, err
    wl.refresh()


@pytest.fixture
def holders(tmp_path: Path) -> Iterator[Callable[[str], tuple[Workload, str]]]:
    """Start `python -c CODE READY`; CODE writes READY once set up (its content is returned).
    Every process started, and its descendants, is killed by PID at teardown."""
    started: list[Workload] = []

    def start(code: str) -> tuple[Workload, str]:
        make_subreaper()
        ready = tmp_path / f"ready{len(started)}"
        argv = [sys.executable, "-c", code, str(ready)]
        with open(tmp_path / "log", "ab") as log:
            p = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=log)  # fmt: skip
        wl = Workload("holder", tmp_path, argv, p)
        started.append(wl)
        deadline = time.monotonic() + 10
        while not (ready.exists() and ready.read_text()):
            assert p.poll() is None, f"the holder exited: {wl.log()}"
            assert time.monotonic() < deadline, "the holder was not ready within 10 s"
            time.sleep(0.01)
        wl.refresh()
        return wl, ready.read_text()

    yield start
    for wl in started:
        wl.kill_tree()


def traced_by(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    return 0


# --------------------------------------------------------------------------- restores


@pytest.mark.parametrize("name", ["eventfds", "ptimers"])
def test_timers_frozen_longer_than_they_had_left(workloads, cpt, tmp_path, name) -> None:
    """Both workloads hold a 1.5 s one-shot (a timerfd, a POSIX timer): checkpointed for
    longer than that, it must fire after the restore, not be lost; periodic timers tick on."""
    wl = workloads.start(name)
    wl.wait_counter()
    img = tmp_path / "t.img"
    checkpoint(cpt, wl, img)
    time.sleep(2.0)
    restore(cpt, wl, img)
    c = wl.wait_counter()
    wl.wait_counter(above=c)
    with reaping(wl):
        assert wl.finish() == "PASS"


@pytest.mark.parametrize("name", ["epoll", "inotify"])
def test_restored_tree_checkpoints_again(workloads, cpt, tmp_path, name) -> None:
    """What a restore builds (epoll items registered by injection, watches at stepped wds)
    is itself dumped and restored the same."""
    wl = workloads.start(name)
    wl.wait_counter()
    for i in (1, 2):
        img = tmp_path / f"r{i}.img"
        checkpoint(cpt, wl, img)
        c = wl.counter()
        restore(cpt, wl, img)
        assert wl.wait_counter(above=c) > c
    with reaping(wl):
        assert wl.finish() == "PASS"


SHARED_EPOLL = """
import os, select, sys, time
ep = select.epoll(); r, w = os.pipe(); os.write(w, b"x")
ep.register(r, select.EPOLLIN | select.EPOLLET)
ep.register(w, select.EPOLLOUT)
child = os.fork()
if child == 0:
    time.sleep(600)
    os._exit(0)
open(sys.argv[1], "w").write(f"{child} {ep.fileno()} {r} {w}")
time.sleep(600)
"""


def epoll_items(pid: int, epfd: int) -> list[str]:
    info = Path(f"/proc/{pid}/fdinfo/{epfd}").read_text().splitlines()
    return sorted(" ".join(line.split()[:6]) for line in info if line.startswith("tfd:"))


def test_epoll_shared_by_two_processes_is_registered_once(holders, cpt, tmp_path) -> None:
    wl, ready = holders(SHARED_EPOLL)
    child, epfd, _r, _w = map(int, ready.split())
    before = epoll_items(wl.pid, epfd)
    assert len(before) == 2 and epoll_items(child, epfd) == before
    img = tmp_path / "s.img"
    checkpoint(cpt, wl, img)
    restore(cpt, wl, img)
    assert wl.pids == {wl.pid, child}
    assert epoll_items(wl.pid, epfd) == before, "each item once, with its events and data"
    assert kcmp(wl.pid, child, KCMP_FILE, epfd, epfd) == 0, "still one epoll for both"


SOCKET_EPOLL = """
import os, select, signal, socket, sys, time
ep = select.epoll(); a, b = socket.socketpair()
ep.register(a.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
b.send(b"hello")
def check(*_):
    got = ep.poll(0)
    ok = got == [(a.fileno(), select.EPOLLIN)] and a.recv(5) == b"hello"
    open(sys.argv[1] + ".result", "w").write("PASS" if ok else f"FAIL: {got}")
    os._exit(0)
signal.signal(signal.SIGTERM, check)
open(sys.argv[1], "w").write("x")
while True:
    time.sleep(1)
"""


def test_epoll_watching_a_unix_socket(holders, cpt, tmp_path) -> None:
    """A socket target: its queued data makes the item ready again after the restore."""
    wl, _ = holders(SOCKET_EPOLL)
    img = tmp_path / "u.img"
    checkpoint(cpt, wl, img)
    restore(cpt, wl, img)
    os.kill(wl.pid, signal.SIGTERM)
    result = tmp_path / "ready0.result"
    deadline = time.monotonic() + 10
    while not (result.exists() and result.read_text()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert result.read_text() == "PASS"


# --------------------------------------------------------------------------- refusals

# each: (python code that sets up the state, then writes argv[1]; what the refusal says)
REFUSED = {
    "epoll-target-closed": (
        "import os, select, sys, time\n"
        "ep = select.epoll(); r, w = os.pipe(); d = os.dup(r)\n"
        "ep.register(r, select.EPOLLIN); os.close(r)\n"
        "open(sys.argv[1], 'w').write('x'); time.sleep(600)\n",
        "was closed (the watched file lives on elsewhere)",
    ),
    "epoll-target-reused": (
        "import os, select, sys, time\n"
        "ep = select.epoll(); r, w = os.pipe(); d = os.dup(r)\n"
        "ep.register(r, select.EPOLLIN); os.close(r); os.dup2(w, r)\n"
        "open(sys.argv[1], 'w').write('x'); time.sleep(600)\n",
        "is another file now",
    ),
    "inotify-unread-events": (
        "import ctypes, os, sys, time\n"
        "c = ctypes.CDLL(None); d = sys.argv[1] + '.d'; os.mkdir(d)\n"
        "fd = c.inotify_init1(0); c.inotify_add_watch(fd, d.encode(), 0x100)\n"
        "open(d + '/new', 'w').close()\n"
        "open(sys.argv[1], 'w').write('x'); time.sleep(600)\n",
        "bytes of events are queued unread",
    ),
    "inotify-no-path": (
        "import ctypes, sys, time\n"
        "c = ctypes.CDLL(None); fd = c.inotify_init1(0)\n"
        "assert c.inotify_add_watch(fd, b'/proc/self', 4) == 1\n"
        "open(sys.argv[1], 'w').write('x'); time.sleep(600)\n",
        "the path of watch 1 (inode",
    ),
    "inotify-wd-too-high": (
        "import ctypes, os, sys, time\n"
        "c = ctypes.CDLL(None); fd = c.inotify_init1(os.O_NONBLOCK); d = os.path.dirname(sys.argv[1]).encode()\n"
        "for _ in range(100_000): c.inotify_rm_watch(fd, c.inotify_add_watch(fd, d, 4))\n"
        "assert c.inotify_add_watch(fd, d, 4) == 100_001\n"
        "try:\n    while os.read(fd, 65536): pass\nexcept BlockingIOError: pass\n"
        "open(sys.argv[1], 'w').write('x'); time.sleep(600)\n",
        "watch descriptor 100001 is above 100000",
    ),
    "timer-cpu-clock-of-another-process": (
        "import ctypes, os, sys, time\n"
        "c = ctypes.CDLL(None); t = ctypes.c_int(-1)\n"
        "assert c.syscall(222, (~os.getppid() << 3) | 2, None, ctypes.byref(t)) == 0\n"
        "open(sys.argv[1], 'w').write('x'); time.sleep(600)\n",
        "counts the CPU time of process",  # (the pid: the test, not itself)
    ),
    "timer-thread-clock-of-one-of-two-threads": (
        "import ctypes, sys, threading, time\n"
        "c = ctypes.CDLL(None); t = ctypes.c_int(-1)\n"
        "threading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n"
        "assert c.syscall(222, 3, None, ctypes.byref(t)) == 0\n"
        "open(sys.argv[1], 'w').write('x'); time.sleep(600)\n",
        "the thread that created it",
    ),
    "timer-of-an-exited-thread": (
        "import ctypes, struct, sys, threading, time\n"
        "c = ctypes.CDLL(None); t = ctypes.c_int(-1); go = threading.Event()\n"
        "th = threading.Thread(target=go.wait); th.start()\n"
        "sev = ctypes.create_string_buffer(struct.pack('<QiiI44x', 0, 10, 4, th.native_id))\n"
        "assert c.syscall(222, 1, sev, ctypes.byref(t)) == 0\n"
        "go.set(); th.join()\n"
        "open(sys.argv[1], 'w').write('x'); time.sleep(600)\n",
        "which has exited",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_at_dump_and_left_running(holders, cpt, tmp_path, case) -> None:
    code, expect = REFUSED[case]
    wl, _ = holders(code)
    img = tmp_path / "no.img"
    rc, _, err = cpt("chkpnt", "--pid", wl.pid, "--dumpfile", img)
    assert rc == 16, err
    assert expect in err and f"process {wl.pid}" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not img.exists()
    assert wl.alive() and traced_by(wl.pid) == 0
    state = Path(f"/proc/{wl.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    assert state == "S", "still running, not stopped"


def test_restore_refuses_a_replaced_watched_path(workloads, cpt, tmp_path) -> None:
    wl = workloads.start("inotify")
    wl.wait_counter()
    img = tmp_path / "i.img"
    checkpoint(cpt, wl, img)
    sub = wl.dir / "watched" / "sub"
    (wl.dir / "sub2").mkdir()  # made while sub exists: another inode
    sub.rmdir()
    (wl.dir / "sub2").rename(sub)
    rc, _, err = cpt("restore", "--dumpfile", img)
    assert rc == 17, err
    assert str(sub) in err and "names another file now" in err, err
    assert not os.path.exists(f"/proc/{wl.pid}"), "nothing was left alive"
