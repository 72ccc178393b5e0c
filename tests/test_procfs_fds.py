"""cpt/procfs/fds.py and fdinfo.py: fd link targets and fdinfo of every kind."""

from __future__ import annotations

import os
import signal
import time

import pytest
from helpers_procfs import (
    FD,
    FIX,
    MAPS,
    PID,
    WD,
    ZOO,
    sigbit,
    vma_at,
)

from cpt.procfs import (
    EpollInfo,
    EventfdInfo,
    FanotifyInfo,
    FdInfo,
    FdKind,
    PidfdInfo,
    Proc,
    PtyMasterInfo,
    SignalfdInfo,
    TimerfdInfo,
    UnixSocketFdInfo,
    decode_kdev,
    parse_fd_target,
    parse_fdinfo,
    split_deleted,
)

# ----------------------------------------------------------------------------------- fds


def test_fd_targets_kinds(zoo: Proc) -> None:
    t = zoo.fd_targets(PID)
    expect = {
        "eventfd": FdKind.EVENTFD,
        "timerfd": FdKind.TIMERFD,
        "signalfd": FdKind.SIGNALFD,
        "epoll": FdKind.EPOLL,
        "inotify": FdKind.INOTIFY,
        "fanotify": FdKind.FANOTIFY,
        "pidfd": FdKind.PIDFD,
        "userfaultfd": FdKind.USERFAULTFD,
        "perf": FdKind.PERF_EVENT,
        "bpf": FdKind.BPF,
        "pipe_r": FdKind.PIPE,
        "pipe_w": FdKind.PIPE,
        "ptmx": FdKind.PTMX,
        "pts": FdKind.PTS,
        "memfd": FdKind.MEMFD,
        "netns": FdKind.NSFS,
        "deleted": FdKind.FILE,
        "flock": FdKind.FILE,
    }
    for name, kind in expect.items():
        assert t[FD[name]].kind is kind, name
    for name in ("sp0", "sp1", "unix_listen", "unix_dgram", "tcp_listen", "tcp_client",
                 "tcp_accepted", "tcp6_listen", "udp", "udp6"):  # fmt: skip
        assert t[FD[name]].kind is FdKind.SOCKET and t[FD[name]].inode, name
    assert t[FD["pipe_r"]].inode == t[FD["pipe_w"]].inode
    d = t[FD["deleted"]]
    assert (d.path, d.deleted) == (f"{WD}/del me (x)", True)
    assert (t[FD["flock"]].path, t[FD["flock"]].deleted) == (f"{WD}/flocked", False)
    assert (t[FD["memfd"]].name, t[FD["memfd"]].path) == ("cpt zoo", "/memfd:cpt zoo")
    assert t[FD["pts"]].index == ZOO["pts_rdev"][1]
    assert (t[FD["netns"]].name, t[FD["netns"]].inode) == ("net", zoo.ns(PID)["net"])
    assert t[FD["bpf"]].name == "bpf-map"
    assert sorted(t) == [fd for fd, _ in zoo.fds(PID)]
    assert max(t) == FD["fanotify"]  # nothing leaked into the zoo beyond what it opened


@pytest.mark.parametrize(
    ("target", "kind", "attrs"),
    [
        ("pipe:[123]", FdKind.PIPE, {"inode": 123}),
        ("socket:[4]", FdKind.SOCKET, {"inode": 4}),
        ("anon_inode:[eventfd]", FdKind.EVENTFD, {"name": "[eventfd]"}),
        ("anon_inode:[timerfd]", FdKind.TIMERFD, {}),
        ("anon_inode:[signalfd]", FdKind.SIGNALFD, {}),
        ("anon_inode:[eventpoll]", FdKind.EPOLL, {}),
        ("anon_inode:inotify", FdKind.INOTIFY, {}),
        ("anon_inode:[fanotify]", FdKind.FANOTIFY, {}),
        ("anon_inode:[pidfd]", FdKind.PIDFD, {}),
        ("anon_inode:[io_uring]", FdKind.IO_URING, {}),
        ("anon_inode:bpf-prog", FdKind.BPF, {"name": "bpf-prog"}),
        ("anon_inode:bpf_link", FdKind.BPF, {}),
        ("anon_inode:[perf_event]", FdKind.PERF_EVENT, {}),
        ("anon_inode:[userfaultfd]", FdKind.USERFAULTFD, {}),
        ("anon_inode:[fscontext]", FdKind.ANON_INODE, {"name": "[fscontext]"}),
        ("/dev/pts/17", FdKind.PTS, {"index": 17}),
        ("/dev/ptmx", FdKind.PTMX, {}),
        ("/dev/pts/ptmx", FdKind.PTMX, {}),
        ("/a b (deleted)", FdKind.FILE, {"path": "/a b", "deleted": True}),
        ("/memfd:x (deleted)", FdKind.MEMFD, {"name": "x"}),
        ("/memfd:not-deleted", FdKind.FILE, {"deleted": False}),
        ("mnt:[4026531841]", FdKind.NSFS, {"name": "mnt", "inode": 4026531841}),
        ("what:[1]", FdKind.UNKNOWN, {}),
        ("/dev/pts/1 (deleted)", FdKind.PTS, {"deleted": True, "index": 1}),
    ],
)
def test_parse_fd_target(target: str, kind: FdKind, attrs: dict) -> None:
    t = parse_fd_target(target)
    assert t.kind is kind and t.target == target
    for k, v in attrs.items():
        assert getattr(t, k) == v, k


def test_split_deleted() -> None:
    assert split_deleted("/x (deleted)") == ("/x", True)
    assert split_deleted("/x") == ("/x", False)


# -------------------------------------------------------------------------------- fdinfo


def test_fdinfo_eventfd_count_is_hex(zoo: Proc) -> None:
    fi = zoo.fdinfo(PID, FD["eventfd"])
    assert isinstance(fi.details, EventfdInfo)
    assert fi.eventfd == EventfdInfo(count=26, id=fi.details.id, semaphore=True)
    assert fi.flags == os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC


def test_fdinfo_timerfd(zoo: Proc) -> None:
    t = zoo.fdinfo(PID, FD["timerfd"]).timerfd
    assert isinstance(t, TimerfdInfo)
    assert (t.clockid, t.ticks, t.settime_flags) == (time.CLOCK_MONOTONIC, 0, 0)
    assert t.it_interval == (3, 250_000_000)
    assert 990 <= t.it_value[0] <= 999 and 0 <= t.it_value[1] < 10**9


def test_fdinfo_signalfd(zoo: Proc) -> None:
    fi = zoo.fdinfo(PID, FD["signalfd"])
    assert fi.details == SignalfdInfo(sigbit(signal.SIGUSR1, signal.SIGUSR2))
    assert fi.signalfd_mask == 0xA00


def test_fdinfo_epoll(zoo: Proc) -> None:
    fi = zoo.fdinfo(PID, FD["epoll"])
    assert isinstance(fi.details, EpollInfo)
    by = {t.tfd: t for t in fi.epoll}
    assert set(by) == {FD["eventfd"], FD["pipe_r"]}
    e, p = by[FD["eventfd"]], by[FD["pipe_r"]]
    # the kernel adds EPOLLERR | EPOLLHUP to every registration
    assert e.events == 0x1 | 0x8 | 0x10 and e.data == 0x1122334455667788
    assert p.events == 0x1 | 0x8 | 0x10 | 0x2000 | 0x80000000 and p.data == 42  # RDHUP, ET
    targets = zoo.fd_targets(PID)
    assert p.ino == targets[FD["pipe_r"]].inode
    assert e.ino == zoo.fdinfo(PID, FD["eventfd"]).ino


def test_fdinfo_inotify(zoo: Proc) -> None:
    watches = {w.wd: w for w in zoo.fdinfo(PID, FD["inotify"]).inotify}
    wd_dir, wd_file = ZOO["inotify_wd"]
    assert (wd_dir, wd_file) == (12, 13)  # printed as c and d: wd is hex
    assert set(watches) == {wd_dir, wd_file}
    d, f = watches[wd_dir], watches[wd_file]
    assert (d.ino, d.mask, d.ignored_mask) == (ZOO["watched_ino"][0], 0x100 | 0x200, 0)
    assert (f.ino, f.mask) == (ZOO["watched_ino"][1], 0x2 | 0x8)  # IN_MODIFY | IN_CLOSE_WRITE
    assert decode_kdev(d.sdev) == tuple(ZOO["lock_dev"])
    assert d.f_handle is not None and len(d.f_handle) == 8 and d.fhandle_type == 1


def test_fdinfo_fanotify(zoo: Proc) -> None:
    fi = zoo.fdinfo(PID, FD["fanotify"])
    fa = fi.fanotify
    assert isinstance(fa, FanotifyInfo)
    assert fa.flags == 0x2  # FAN_CLASS_NOTIF | FAN_NONBLOCK
    assert fa.event_flags & 0o3 == os.O_RDONLY
    (mark,) = fa.marks
    assert (mark.kind, mark.ino, mark.mask) == ("inode", ZOO["watched_ino"][0], 0x20 | 0x08)
    assert decode_kdev(mark.sdev or 0) == tuple(ZOO["lock_dev"])


def test_fdinfo_locks(zoo: Proc) -> None:
    fl = zoo.fdinfo(PID, FD["flock"])
    assert fl.flags & os.O_APPEND and fl.ino == ZOO["lock_ino"][0]
    (lk,) = fl.locks
    assert (lk.kind, lk.mode, lk.access, lk.pid, lk.blocked) == (
        "FLOCK",
        "ADVISORY",
        "WRITE",
        PID,
        False,
    )
    assert (lk.major, lk.minor, lk.ino, lk.start, lk.end) == (
        *ZOO["lock_dev"],
        ZOO["lock_ino"][0],
        0,
        None,
    )
    (pl,) = zoo.fdinfo(PID, FD["posixlock"]).locks
    assert (pl.kind, pl.access, pl.ino, pl.start, pl.end) == (
        "POSIX",
        "WRITE",
        ZOO["lock_ino"][1],
        10,
        29,
    )


def test_fdinfo_misc_kinds(zoo: Proc) -> None:
    assert zoo.fdinfo(PID, FD["pidfd"]).details == PidfdInfo(ZOO["sleeper"], (ZOO["sleeper"],))
    assert zoo.fdinfo(PID, FD["ptmx"]).details == PtyMasterInfo(ZOO["pts_rdev"][1])
    assert zoo.fdinfo(PID, FD["sp0"]).details == UnixSocketFdInfo(0)
    d = zoo.fdinfo(PID, FD["deleted"])
    assert (d.pos, d.flags & 0o3, d.details, d.locks) == (7, os.O_RDWR, None, ())
    assert d.ino == vma_at(zoo.maps(PID), MAPS["delmap"]).inode
    assert zoo.fdinfo(PID, FD["userfaultfd"]).extra["API"].startswith("aa:")
    bpf = zoo.fdinfo(PID, FD["bpf"]).extra
    assert (bpf["map_type"], bpf["key_size"], bpf["value_size"], bpf["max_entries"]) == (
        "2",
        "4",
        "8",
        "1",
    )
    assert zoo.fdinfo(PID, FD["netns"]).ino == zoo.ns(PID)["net"]


def test_fdinfos_equals_fdinfo(zoo: Proc) -> None:
    all_ = zoo.fdinfos(PID)
    assert list(all_) == [fd for fd, _ in zoo.fds(PID)]
    assert all_ == {fd: zoo.fdinfo(PID, fd) for fd in all_}
    assert zoo.fdinfos(PID, [FD["eventfd"]]) == {FD["eventfd"]: all_[FD["eventfd"]]}


def test_parse_fdinfo_synthetic_lines() -> None:
    head = b"pos:\t5\nflags:\t0100002\nmnt_id:\t9\nino:\t77\n"
    fi = parse_fdinfo(head)
    assert fi == FdInfo(5, 0o100002, 9, 77) and fi.extra == {} and fi.epoll == ()
    ev = parse_fdinfo(head + b"eventfd-count:               ff\neventfd-id: 3\n")
    assert ev.eventfd == EventfdInfo(255, 3, False)
    lk = parse_fdinfo(
        head + b"lock:\t1: OFDLCK ADVISORY  READ -1 08:02:77 0 EOF\n"
        b"lock:\t1: -> POSIX  ADVISORY  WRITE 4242 08:02:77 100 199\n"
    ).locks
    assert (lk[0].kind, lk[0].pid, lk[0].blocked, lk[0].access) == ("OFDLCK", -1, False, "READ")
    assert (lk[1].kind, lk[1].pid, lk[1].blocked, lk[1].start, lk[1].end) == (
        "POSIX",
        4242,
        True,
        100,
        199,
    )
    fan = parse_fdinfo(
        head
        + b"fanotify flags:10 event-flags:0\nfanotify mnt_id:1f mflags:0 mask:3b ignored_mask:0\n"
        b"fanotify sdev:800002 mflags:1 mask:1 ignored_mask:0\n"
    ).fanotify
    assert fan is not None and fan.flags == 0x10
    assert [(m.kind, m.mnt_id, m.sdev, m.mask) for m in fan.marks] == [
        ("mount", 0x1F, None, 0x3B),
        ("sb", None, 0x800002, 1),
    ]
    reaped = parse_fdinfo(head + b"Pid:\t-1\nNSpid:\t-1\n")
    assert reaped.pidfd == PidfdInfo(-1, (-1,))
    with pytest.raises(ValueError):
        parse_fdinfo(b"flags:\t02\n")


def test_parse_fdinfo_10k(zoo: Proc) -> None:
    """10,000 fdinfo files of every kind the zoo holds parse as each does alone (their
    speed: bench/procfs_bench.py)."""
    fds = [fd for fd, _ in zoo.fds(PID)]
    raws = {fd: (FIX / "zoo" / str(PID) / "fdinfo" / str(fd)).read_bytes() for fd in fds}
    one = {fd: parse_fdinfo(raws[fd]) for fd in fds}
    order = (fds * (10_000 // len(fds) + 1))[:10_000]
    got = [parse_fdinfo(raws[fd]) for fd in order]
    assert got == [one[fd] for fd in order]
