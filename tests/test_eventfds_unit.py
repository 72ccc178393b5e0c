"""The pieces behind eventfd/signalfd/timerfd, epoll, inotify and POSIX timer
checkpointing, on this process's own files: clock-id decoding, kcmp of epoll targets,
file handles, the timerfd dump read, and the openers that recreate each kind."""

from __future__ import annotations

import os
import select
import signal
import time

import pytest
from fake_model import fake_model

from cpt.dump.epoll import numbered
from cpt.dump.eventfds import TIMERFD
from cpt.dump.fdbase import FdContext
from cpt.dump.inotify import Unresolvable, watch_path
from cpt.dump.options import DumpOptions
from cpt.dump.paths import PathTable
from cpt.dump.timers import cpu_clock
from cpt.procfs import EpollTarget, Proc, parse_fd_target
from cpt.restore.eventfds import EventFds
from cpt.restore.inotify import Inotifies
from cpt.sys.anonfd import (
    TFD_NONBLOCK,
    TFD_TIMER_ABSTIME,
    kcmp_epoll_tfd,
    pack_itimerspec,
    timerfd_create,
    timerfd_gettime,
    timerfd_settime,
    unpack_itimerspec,
)
from cpt.sys.fsnotify import inotify_add_watch, inotify_init1, name_to_handle_at, open_by_handle_at
from cptimage.records import EventFd, Inotify, InotifyWatch, SignalFd, TimerFd

ME = os.getpid()
root = pytest.mark.skipif(os.geteuid() != 0, reason="file handles need CAP_DAC_READ_SEARCH")


def fdinfo(fd: int) -> str:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return f.read()


@pytest.fixture
def fds():
    """Fds opened by a test, closed afterwards."""
    opened: list[int] = []
    yield opened
    for fd in opened:
        os.close(fd)


def test_cpu_clock_ids_as_glibc_and_the_kernel_write_them() -> None:
    assert cpu_clock(1) is None and cpu_clock(7) is None
    assert cpu_clock(2) == (0, False) and cpu_clock(3) == (0, True)
    assert cpu_clock(-6) == (0, False)  # glibc's CLOCK_PROCESS_CPUTIME_ID
    assert cpu_clock(-2) == (0, True)  # glibc's CLOCK_THREAD_CPUTIME_ID
    assert cpu_clock((~1234 << 3) | 2) == (1234, False)
    assert cpu_clock((~77 << 3) | 4 | 1) == (77, True)


def test_itimerspec_round_trip() -> None:
    data = pack_itimerspec(3_000_000_007, 1_500_000_000)
    assert unpack_itimerspec(data) == (3_000_000_007, 1_500_000_000)


def test_epoll_items_numbered_per_fd_number() -> None:
    t = [EpollTarget(tfd=n, events=1, data=0, pos=0, ino=1, sdev=0) for n in (5, 7, 5, 5)]
    assert [toff for _, toff in numbered(tuple(t))] == [0, 0, 1, 2]


def test_kcmp_epoll_tfd_tells_the_registered_file(fds) -> None:
    ep = select.epoll()
    r, w = os.pipe()
    fds += [r, w]
    ep.register(r, select.EPOLLIN)
    try:
        assert kcmp_epoll_tfd(ME, r, ME, ep.fileno(), r, 0) == 0
        assert kcmp_epoll_tfd(ME, w, ME, ep.fileno(), r, 0) != 0
        with pytest.raises(OSError):  # no item with fd number w
            kcmp_epoll_tfd(ME, w, ME, ep.fileno(), w, 0)
    finally:
        ep.close()


def test_timerfd_dump_counts_missed_expirations(fds) -> None:
    """fdinfo alone shows an expired, unread interval timer as disarmed with 1 tick; the
    dump reads it through timerfd_gettime on a duplicate, which counts them all."""
    fd = timerfd_create(time.CLOCK_MONOTONIC, TFD_NONBLOCK)
    fds.append(fd)
    timerfd_settime(fd, 0, 1_000_000, 10_000_000)
    time.sleep(0.1)
    fi = Proc().fdinfo(ME, fd)
    assert fi.timerfd is not None and fi.timerfd.ticks == 1 and fi.timerfd.it_value == (0, 0)
    ctx = FdContext(opts=DumpOptions(), paths=PathTable())
    rec = TIMERFD.dump(ctx, 1, ME, fd, parse_fd_target("anon_inode:[timerfd]"), fi)
    assert rec.ticks >= 9 and 0 < rec.value_ns <= 10_000_000
    assert rec.interval_ns == 10_000_000 and rec.clockid == time.CLOCK_MONOTONIC
    assert rec.flags & os.O_NONBLOCK
    assert int.from_bytes(os.read(fd, 8), "little") == rec.ticks, "nothing was consumed"


def test_eventfd_signalfd_timerfd_openers(fds) -> None:
    op = EventFds()
    ev = op.open(None, EventFd(id=1, flags=os.O_RDWR, semaphore=1, count=(1 << 40) + 3))
    fds.append(ev)
    assert "eventfd-count:      10000000003" in fdinfo(ev)
    assert "eventfd-semaphore: 1" in fdinfo(ev)
    mask = (1 << (signal.SIGUSR1 - 1)) | (1 << 63)
    sfd = op.open(None, SignalFd(id=2, flags=os.O_RDWR | os.O_NONBLOCK, sigmask=mask))
    fds.append(sfd)
    assert f"sigmask:\t{mask:016x}" in fdinfo(sfd)
    assert os.get_blocking(sfd) is False
    hour = 3600 * 10**9
    tfd = op.open(
        None,
        TimerFd(id=3, flags=os.O_RDWR, clockid=time.CLOCK_REALTIME,
                settime_flags=TFD_TIMER_ABSTIME, ticks=42, value_ns=hour, interval_ns=10**9),
    )  # fmt: skip
    fds.append(tfd)
    info = fdinfo(tfd)
    assert "clockid: 0" in info and "ticks: 42" in info and "settime flags: 01" in info
    value, interval = timerfd_gettime(tfd)
    assert hour - 10**9 < value <= hour and interval == 10**9, "remaining counts from now"
    assert int.from_bytes(os.read(tfd, 8), "little") == 42


@root
def test_file_handle_round_trip(tmp_path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    htype, handle, _ = name_to_handle_at(-100, str(f))
    mfd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = open_by_handle_at(mfd, htype, handle, os.O_PATH)
    finally:
        os.close(mfd)
    try:
        assert os.readlink(f"/proc/self/fd/{fd}") == str(f)
    finally:
        os.close(fd)


@root
def test_watch_path_from_fdinfo(tmp_path, fds) -> None:
    ino = inotify_init1()
    fds.append(ino)
    (tmp_path / "d").mkdir()
    wd = inotify_add_watch(ino, str(tmp_path / "d"), 0x100)
    (w,) = Proc().fdinfo(ME, ino).inotify
    assert w.wd == wd
    mounts = Proc().mountinfo(ME)
    path, st = watch_path(w, mounts, "")
    assert path == str(tmp_path / "d") and st.st_ino == w.ino
    (tmp_path / "d").rename(tmp_path / "e")
    assert watch_path(w, mounts, "")[0] == str(tmp_path / "e"), "the path it has now"
    with pytest.raises(Unresolvable):
        watch_path(type(w)(w.wd, w.ino, w.sdev, w.mask, 0, None, None), mounts, "")


def test_inotify_opener_reproduces_watch_descriptors(tmp_path, fds) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()

    def watch(wd: int, name: str) -> InotifyWatch:
        p = tmp_path / name
        return InotifyWatch(inotify_id=1, wd=wd, mask=0x300, ino=p.stat().st_ino,
                            dev=p.stat().st_dev, path=str(p))  # fmt: skip

    model = fake_model(inotify_watches={1: [watch(9, "c"), watch(2, "a"), watch(3, "b")]})
    op = Inotifies()
    try:
        fd = op.open(model, Inotify(id=1, flags=0))
    finally:
        op.close()
    fds.append(fd)
    wds = {w.wd: w.ino for w in Proc().fdinfo(ME, fd).inotify}
    assert wds == {2: (tmp_path / "a").stat().st_ino, 3: (tmp_path / "b").stat().st_ino,
                   9: (tmp_path / "c").stat().st_ino}  # fmt: skip
    assert os.get_blocking(fd), "flags as dumped"
    os.set_blocking(fd, False)
    with pytest.raises(BlockingIOError):
        os.read(fd, 4096)  # the placeholders' IN_IGNORED events were drained
    assert inotify_add_watch(fd, str(tmp_path), 0x100) == 10
