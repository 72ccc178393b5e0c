"""Tests of cpt/proc.py.

Unit tests run the parsers on files captured from real processes (fixtures/proc, written by
fixtures/proc/capture.py) and assert the values the capture programs set up, either constants
of fixtures/proc/src/zoo.c or values it reported in expected.json.  Root tests read the live
/proc of processes they start, and kill and reap them by PID.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cpt.errors import AccessDenied, NoSuchProcess, ZombieProcess
from cpt.proc import (
    RLIM_INFINITY,
    SIGEV_NONE,
    SIGEV_SIGNAL,
    SIGEV_THREAD_ID,
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
    Vma,
    VmaKind,
    _new_vma,
    decode_kdev,
    parse_auxv,
    parse_fd_target,
    parse_fdinfo,
    parse_limits,
    parse_maps,
    parse_mountinfo,
    parse_ns_link,
    parse_smaps_vmflags,
    parse_stat,
    parse_status,
    parse_timers,
    parse_unix_sockets,
    split_deleted,
)

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "proc"
SRC = FIX / "src"
ZOO = json.loads((FIX / "zoo" / "expected.json").read_text())
MANY = json.loads((FIX / "manyvmas" / "expected.json").read_text())
PID = ZOO["pid"]
WD = ZOO["workdir"]
FD = ZOO["fd"]
MAPS = ZOO["maps"]
PG = 4096
NOT_A_PID = 2**22 + 1  # above the largest possible pid_max: never a process


def sigbit(*sigs: int) -> int:
    return sum(1 << (s - 1) for s in sigs)


@pytest.fixture(scope="module")
def zoo() -> Proc:
    return Proc(str(FIX / "zoo"))


@pytest.fixture(scope="module")
def zoo_maps(zoo: Proc) -> dict[int, Vma]:
    return {v.start: v for v in zoo.maps(PID)}


def vma_at(maps: list[Vma], addr: int) -> Vma:
    (v,) = [v for v in maps if v.start <= addr < v.end]
    return v


def best_ms(fn, n: int = 5) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


# ---------------------------------------------------------------------------------- stat


def test_stat_comm_with_space_and_parentheses(zoo: Proc) -> None:
    st = zoo.stat(PID)
    assert st.pid == PID
    assert st.comm == "a) b (c"
    assert st.state == "S"
    assert st.ppid == ZOO["ppid"]
    assert st.pgrp == st.session == PID  # setsid()
    # the pty slave opened without O_NOCTTY became the controlling tty
    assert st.tty == (ZOO["pts_rdev"][0], ZOO["pts_rdev"][1])
    assert st.tpgid == PID
    assert (st.nice, st.priority) == (5, 25)
    assert st.num_threads == 3
    assert st.exit_signal == signal.SIGCHLD
    assert (st.policy, st.rt_priority) == (0, 0)
    assert st.exit_code == 0
    assert not st.mm_hidden


def test_stat_mm_fields_match_maps(zoo: Proc) -> None:
    st = zoo.stat(PID)
    maps = zoo.maps(PID)
    text = vma_at(maps, st.start_code)
    assert text.path == ZOO["exe"] and text.perms == "r-xp"
    assert st.end_code - 1 < text.end
    assert vma_at(maps, st.start_data).path == ZOO["exe"]
    (heap,) = [v for v in maps if v.kind is VmaKind.HEAP]
    assert heap.start == st.start_brk
    (stack,) = [v for v in maps if v.kind is VmaKind.STACK]
    for addr in (st.start_stack, st.arg_start, st.arg_end, st.env_start, st.env_end - 1):
        assert stack.start <= addr < stack.end
    assert st.arg_start < st.arg_end <= st.env_start < st.env_end


def test_stat_zombie(zoo: Proc) -> None:
    st = zoo.stat(ZOO["zombie"])
    assert (st.comm, st.state, st.ppid) == ("zchild", "Z", PID)
    assert st.exit_code == 7 << 8  # a waitpid() status: _exit(7)
    assert st.start_code == st.start_brk == st.arg_start == 0  # the mm is gone


def test_stat_children_parents(zoo: Proc) -> None:
    assert zoo.stat(ZOO["sleeper"]).ppid == PID
    # forked by a non-leader thread: the parent is still reported as the thread group
    assert zoo.stat(ZOO["thread_child"]).ppid == PID


def test_parse_stat_hostile_comms() -> None:
    tail = b" S 1 2 3 0 -1 0" + b" 0" * 42 + b" 256\n"
    for comm in (b")", b") (", b"a) S 1 (", b"x\ny", b"", b"(((", b"a ) )"):
        st = parse_stat(b"42 (" + comm + b")" + tail)
        assert (st.pid, st.comm, st.state, st.ppid, st.exit_code) == (
            42,
            comm.decode(),
            "S",
            1,
            256,
        )


def test_parse_stat_old_kernel_without_mm_fields() -> None:
    st = parse_stat(b"7 (old) R 1 7 7 0 -1 0" + b" 0" * 36 + b"\n")  # stops at field 44
    assert (st.pid, st.state, st.start_data, st.exit_code) == (7, "R", 0, 0)


# -------------------------------------------------------------------------------- status


def test_status(zoo: Proc) -> None:
    s = zoo.status(PID)
    assert s.name == "a) b (c"
    assert s.state == "S"
    assert (s.tgid, s.pid, s.ppid, s.tracer_pid) == (PID, PID, ZOO["ppid"], 0)
    assert s.uid == (0, 0, 1000, 0)  # setresuid(0, 0, 1000)
    assert s.gid == (0, 100, 50, 100)  # setresgid(0, 100, 50); fsgid follows egid
    assert s.groups == (4, 27, 100)
    assert s.nspid == s.nstgid == s.nspgid == s.nssid == (PID,)
    assert s.threads == 3
    assert s.sigpnd == sigbit(signal.SIGUSR1)  # raise(): thread-directed
    assert s.shdpnd == sigbit(signal.SIGUSR2)  # kill(getpid()): process-wide
    assert s.sigblk == sigbit(signal.SIGUSR1, signal.SIGUSR2)
    assert s.sigign == sigbit(signal.SIGPIPE)
    assert s.sigcgt & sigbit(signal.SIGHUP, signal.SIGINT) == sigbit(signal.SIGHUP, signal.SIGINT)
    assert s.sigq[0] >= 2 and s.sigq[1] > 0
    assert s.capinh == s.capamb == 1 << 10  # CAP_NET_BIND_SERVICE
    assert not s.capbnd & (1 << 22)  # CAP_SYS_BOOT dropped from the bounding set
    assert s.capbnd | (1 << 22) == s.capprm
    assert (s.no_new_privs, s.seccomp, s.seccomp_filters) == (1, 2, 1)
    assert s.umask == 0o027
    assert s.vm_kb["VmLck"] == 4  # one mlock()ed page
    assert s.vm_kb["VmRSS"] > 0
    assert s.fields["Name"] == "a) b (c" and s.fields["Kthread"] == "0"


def test_thread_status_and_comm_escapes(zoo: Proc) -> None:
    t0, t1 = ZOO["tids"]
    assert zoo.comm(PID) == "a) b (c"
    assert zoo.comm(PID, t0) == "worker 0"
    s = zoo.status(PID, t1)
    # the kernel prints the name as w\\1\nx; comm gives the raw bytes
    assert s.name == zoo.comm(PID, t1) == "w\\1\nx"
    assert (s.pid, s.tgid) == (t1, PID)
    assert zoo.stat(PID, t1).comm == "w\\1\nx"


def test_parse_status_name_edge_cases() -> None:
    base = (FIX / "zoo" / str(PID) / "status").read_bytes()
    rest = base[base.index(b"\n") :]
    for printed, name in ((b" lead", " lead"), (b"trail ", "trail "), (b"a\\\\n", "a\\n")):
        assert parse_status(b"Name:\t" + printed + rest).name == name


# -------------------------------------------------------------------------- tasks, children


def test_tasks_children_pids(zoo: Proc) -> None:
    assert zoo.tasks(PID) == sorted([PID, *ZOO["tids"]])
    assert zoo.children(PID) == sorted([ZOO["zombie"], ZOO["sleeper"], ZOO["thread_child"]])
    assert zoo.pids() == sorted([PID, ZOO["zombie"], ZOO["sleeper"], ZOO["thread_child"]])
    assert zoo.exists(PID) and not zoo.exists(NOT_A_PID)


# ---------------------------------------------------------------------------------- maps


def test_maps_mappings_set_up_by_zoo(zoo_maps: dict[int, Vma]) -> None:
    m = zoo_maps
    v = m[MAPS["filemap"]]  # mmap(2 pages of "map me (1).bin" at offset 1 page, PRIVATE)
    assert (v.path, v.deleted, v.perms, v.pgoff, v.size) == (
        f"{WD}/map me (1).bin",
        False,
        "r--p",
        PG,
        2 * PG,
    )
    assert (v.major, v.minor) == tuple(ZOO["lock_dev"]) and v.kind is VmaKind.FILE
    v = m[MAPS["nlmap"]]  # a '\n' in the name: printed as \012
    assert (v.path, v.perms, v.shared) == (f"{WD}/nl\nname", "rw-s", True)
    v = m[MAPS["delmap"]]  # a deleted file whose name holds a space and parentheses
    assert (v.path, v.deleted, v.kind) == (f"{WD}/del me (x)", True, VmaKind.FILE)
    v = m[MAPS["memfd"]]
    assert (v.path, v.deleted, v.kind, v.name, v.size) == (
        "/memfd:cpt zoo",
        True,
        VmaKind.MEMFD,
        "cpt zoo",
        2 * PG,
    )
    v = m[MAPS["sysv"]]
    assert (v.path, v.kind, v.shared) == (f"/SYSV{0:08x}", VmaKind.SYSV, True)
    for key, pages in (("shm_anon", 1), ("shm_named", 2)):
        v = m[MAPS[key]]
        if ZOO["anon_names"]:
            assert v.kind is VmaKind.SHMEM
        else:  # CONFIG_ANON_VMA_NAME is not set on this kernel: no [anon_shmem:...]
            assert (v.path, v.deleted, v.kind, v.size) == (
                "/dev/zero",
                True,
                VmaKind.SHMEM,
                pages * PG,
            )
    v = m[MAPS["named"]]
    if ZOO["anon_names"]:
        assert (v.kind, v.name) == (VmaKind.ANON_NAMED, "cpt zoo anon")
    else:
        assert (v.path, v.kind, v.perms, v.inode) == ("", VmaKind.ANON, "rw-p", 0)
    v = m[MAPS["guard"]]
    assert (v.perms, v.read, v.write, v.exec, v.size) == ("---p", False, False, False, 2 * PG)
    assert m[MAPS["sealed"]].perms == "r--p"


def test_maps_special_mappings(zoo: Proc) -> None:
    maps = zoo.maps(PID)
    kinds = [v.kind for v in maps]
    for k in (
        VmaKind.HEAP,
        VmaKind.STACK,
        VmaKind.VDSO,
        VmaKind.VVAR,
        VmaKind.VVAR_VCLOCK,
        VmaKind.VSYSCALL,
    ):
        assert kinds.count(k) == 1, k
    by = {v.kind: v for v in maps}
    vvar, vclock, vdso = by[VmaKind.VVAR], by[VmaKind.VVAR_VCLOCK], by[VmaKind.VDSO]
    # the 6.13+ layout ENGINE-NOTES relies on: [vvar] 4 pages, [vvar_vclock] 2, [vdso] 2, contiguous
    assert (vvar.size, vclock.size, vdso.size) == (4 * PG, 2 * PG, 2 * PG)
    assert vvar.end == vclock.start and vclock.end == vdso.start
    assert vdso.perms == "r-xp" and vdso.name == "vdso"
    vs = by[VmaKind.VSYSCALL]
    assert (vs.start, vs.perms) == (0xFFFFFFFFFF600000, "--xp")
    assert maps == sorted(maps, key=lambda v: v.start)


def test_parse_maps_synthetic_names() -> None:
    data = (
        b"7f0000000000-7f0000001000 rw-p 00000000 00:00 0                          [anon:my name]\n"
        b"7f0000001000-7f0000003000 rw-s 00000000 00:01 7                          [anon_shmem:shm x]\n"
        b"7f0000003000-7f0000004000 r--p 00000000 00:00 0                          [uprobes]\n"
        b"7f0000004000-7f0000005000 r--p 0000a000 103:05 99                        /a b/c (deleted) (deleted)\n"
        b"7f0000005000-7f0000006000 r--p 00000000 00:00 0 \n"
    )
    a, b, c, d, e = parse_maps(data)
    assert (a.kind, a.name, a.path) == (VmaKind.ANON_NAMED, "my name", "[anon:my name]")
    assert (b.kind, b.name, b.shared, b.inode) == (VmaKind.SHMEM, "shm x", True, 7)
    assert (c.kind, c.name) == (VmaKind.SPECIAL, "uprobes")
    assert (d.path, d.deleted, d.major, d.minor, d.pgoff) == (
        "/a b/c (deleted)",
        True,
        0x103,
        5,
        0xA000,
    )
    assert (e.path, e.kind, e.start, e.end) == ("", VmaKind.ANON, 0x7F0000005000, 0x7F0000006000)


def test_fast_vma_constructor_builds_equal_frozen_objects() -> None:
    args = (1, 2, "rw-p", 3, 4, 5, 6, "/x", True)
    fast, slow = _new_vma(*args), Vma(*args)
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.start = 9  # type: ignore[misc]
    assert [getattr(fast, f.name) for f in dataclasses.fields(Vma)] == list(args)


def test_manyvmas_fixture() -> None:
    p = Proc(str(FIX / "manyvmas"))
    pid, base, n = MANY["pid"], MANY["base"], MANY["nvmas"]
    maps = p.maps(pid)
    mine = [v for v in maps if base <= v.start < base + n * PG]
    assert len(mine) == n == 200
    for i, v in enumerate(mine):
        assert (v.start, v.size, v.kind) == (base + i * PG, PG, VmaKind.ANON)
        assert v.perms == ("r--p" if i & 1 else "rw-p")
    # the PROT_NONE guard pages either side
    assert vma_at(maps, base - PG).perms == vma_at(maps, base + n * PG).perms == "---p"


def _synthetic_maps(n: int) -> bytes:
    """n lines shaped like the captured ones: 2 anonymous lines for each file line."""
    lines = (FIX / "zoo" / str(PID) / "maps").read_bytes().split(b"\n")
    file_tail = lines[0].split(None, 2)[2]  # "00000000 fe:00 INODE   PATH" of the exe
    out = []
    for i in range(n):
        s = 0x7F0000000000 + i * PG
        tail = file_tail if i % 3 == 0 else b"00000000 00:00 0 "
        out.append(b"%x-%x %s %s" % (s, s + PG, b"r-xp" if i % 3 == 0 else b"rw-p", tail))
    return b"\n".join(out) + b"\n"


def test_parse_maps_10k_lines_under_50ms() -> None:
    data = _synthetic_maps(10_000)
    maps = parse_maps(data)
    assert len(maps) == 10_000 and maps[3].path == ZOO["exe"] and maps[4].path == ""
    ms = best_ms(lambda: parse_maps(data))
    print(f"\nparse_maps, 10,000 lines: {ms:.1f} ms")
    assert ms < 50


# --------------------------------------------------------------------------------- smaps


def test_smaps_vmflags(zoo: Proc) -> None:
    flags = zoo.smaps_vmflags(PID)
    maps = zoo.maps(PID)
    assert list(flags) == [(v.start, v.end) for v in maps]

    def at(addr: int) -> frozenset[str]:
        v = vma_at(maps, addr)
        return flags[(v.start, v.end)]

    f = MAPS["flags"]
    assert {"dc", "nr"} <= at(f)  # MADV_DONTFORK, MAP_NORESERVE
    assert "dd" in at(f + 2 * PG)  # MADV_DONTDUMP
    assert "wf" in at(f + 4 * PG)  # MADV_WIPEONFORK
    assert "rr" in at(f + 6 * PG)  # MADV_RANDOM
    assert "dc" not in at(f + PG)
    assert {"gd", "rd", "wr"} <= at(MAPS["growsdown"])
    assert "hg" in at(MAPS["huge"])
    assert "nh" in at(MAPS["nohuge"])
    assert "lo" in at(MAPS["locked"])
    assert "sl" in at(MAPS["sealed"])  # mseal()
    assert {"sh", "ms"} <= at(MAPS["memfd"])
    (vvar,) = [v for v in maps if v.kind is VmaKind.VVAR]
    assert {"pf", "io", "dd"} <= flags[(vvar.start, vvar.end)]


def test_parse_smaps_vmflags_synthetic() -> None:
    data = (
        b"00400000-00401000 r--p 00000000 fe:00 1                /bin/x\n"
        b"Size:                  4 kB\nRss:                   4 kB\nVmFlags: rd mr mw me \n"
        b"7f0000000000-7f0000002000 rw-p 00000000 00:00 0 \n"
        b"Size:                  8 kB\nVmFlags: rd wr mr mw me ac dd \n"
    )
    assert parse_smaps_vmflags(data) == {
        (0x400000, 0x401000): {"rd", "mr", "mw", "me"},
        (0x7F0000000000, 0x7F0000002000): {"rd", "wr", "mr", "mw", "me", "ac", "dd"},
    }
    with pytest.raises(ValueError):
        parse_smaps_vmflags(b"00400000-00401000 r--p 00000000 fe:00 1 /bin/x\nSize: 4 kB\n")


# -------------------------------------------------------------------------------- limits


def test_limits(zoo: Proc) -> None:
    lim = zoo.limits(PID)
    assert [r.resource for r in lim] == list(range(16))
    by = {r.resource: r for r in lim}
    assert (by[resource.RLIMIT_NOFILE].soft, by[resource.RLIMIT_NOFILE].hard) == (1000, 2000)
    assert (by[resource.RLIMIT_CORE].soft, by[resource.RLIMIT_CORE].hard) == (4096, RLIM_INFINITY)
    assert (by[resource.RLIMIT_MSGQUEUE].soft, by[resource.RLIMIT_MSGQUEUE].hard) == (4096, 8192)
    assert by[resource.RLIMIT_CPU].soft == by[resource.RLIMIT_CPU].hard == RLIM_INFINITY
    assert RLIM_INFINITY == resource.RLIM_INFINITY & (2**64 - 1)
    assert by[resource.RLIMIT_NOFILE].name == "Max open files"
    assert by[resource.RLIMIT_NOFILE].units == "files"
    assert by[resource.RLIMIT_NICE].units == ""


def test_parse_limits_unknown_name() -> None:
    data = (
        b"Limit                     Soft Limit           Hard Limit           Units     \n"
        b"Max open files            1                    unlimited            files     \n"
        b"Max future thing          5                    6                    things    \n"
    )
    a, b = parse_limits(data)
    assert (a.resource, a.soft, a.hard) == (7, 1, RLIM_INFINITY)
    assert (b.resource, b.name, b.soft, b.hard) == (None, "Max future thing", 5, 6)


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


def test_parse_fdinfo_10k_under_50ms(zoo: Proc) -> None:
    def raw(fd: int) -> bytes:
        return (FIX / "zoo" / str(PID) / "fdinfo" / str(fd)).read_bytes()

    # what a big process holds: files, pipes and sockets (the 4-line fast path + scm_fds)
    common = [raw(0), raw(FD["deleted"]), raw(FD["tcp_accepted"]), raw(FD["sp0"])] * 2_500
    ms = best_ms(lambda: [parse_fdinfo(d) for d in common])
    # every kind the zoo holds, in equal shares: epoll, inotify, locks, bpf, ... cost more
    fds = [fd for fd, _ in zoo.fds(PID)]
    mix = [raw(fd) for fd in fds] * (10_000 // len(fds) + 1)
    ms_mix = best_ms(lambda: [parse_fdinfo(d) for d in mix[:10_000]])
    print(
        f"\nparse_fdinfo x 10,000: {ms:.1f} ms (files/pipes/sockets), {ms_mix:.1f} ms (zoo's mix)"
    )
    assert ms < 50
    assert ms_mix < 150


# -------------------------------------------------------------------------------- timers


def test_timers(zoo: Proc) -> None:
    timers = zoo.timers(PID)
    assert [t.id for t in timers] == [2, 1, 0]  # the kernel lists the newest first
    assert sorted(t.id for t in timers) == ZOO["timer_ids"]
    t0, t1, t2 = sorted(timers, key=lambda t: t.id)
    sigrtmin = 34  # glibc's SIGRTMIN
    assert (t0.signo, t0.sigev_value, t0.notify, t0.target_kind, t0.target) == (
        sigrtmin + 2,
        0x1234,
        "signal",
        "pid",
        PID,
    )
    assert (t0.clock_id, t0.sigev_notify) == (time.CLOCK_MONOTONIC, SIGEV_SIGNAL)
    assert (t1.notify, t1.target, t1.clock_id, t1.sigev_notify) == (
        "none",
        PID,
        time.CLOCK_REALTIME,
        SIGEV_NONE,
    )
    assert (t2.signo, t2.sigev_value, t2.target_kind, t2.target) == (
        sigrtmin + 3,
        77,
        "tid",
        ZOO["tids"][0],
    )
    assert (t2.clock_id, t2.sigev_notify) == (time.CLOCK_BOOTTIME, SIGEV_THREAD_ID | SIGEV_SIGNAL)


def test_parse_timers_empty() -> None:
    assert parse_timers(b"") == []


# ----------------------------------------------------------------------------- mountinfo


def test_mountinfo_escapes_and_propagation(zoo: Proc) -> None:
    # the zoo is chrooted into WD, so it sees only the two mounts it made under it
    a, b = zoo.mountinfo(PID)
    assert (a.mount_point, b.mount_point) == ("/mnt point", "/bind\ttab")
    for m in (a, b):
        assert (m.fstype, m.source, m.root) == ("tmpfs", "cpt src", "/")
        assert {"nosuid", "nodev"} <= set(m.options.split(","))
        assert {"size=1024k", "mode=700"} <= set(m.super_options.split(","))
    assert (a.major, a.minor) == (b.major, b.minor)
    assert a.shared is not None and a.master is None
    assert b.master == a.shared and b.shared is None  # MS_SLAVE of a's peer group
    assert a.parent_id == b.parent_id and not a.unbindable


def test_mountinfo_host() -> None:
    mounts = Proc(str(FIX / "manyvmas")).mountinfo(MANY["pid"])
    ids = [m.mount_id for m in mounts]
    assert len(ids) == len(set(ids))
    by_mp = {m.mount_point: m for m in mounts}
    assert by_mp["/proc"].fstype == "proc" and "/" in by_mp
    assert sum(m.parent_id not in ids for m in mounts) == 1  # only the root's parent is unseen


def test_parse_mountinfo_synthetic() -> None:
    (m,) = parse_mountinfo(
        b"36 35 98:0 /mnt1 /mnt/a\\134b\\012c rw,noatime master:1 propagate_from:2 unbindable"
        b" - ext3 /dev/root rw,errors=continue\n"
    )
    assert (m.mount_point, m.root, m.master, m.propagate_from, m.unbindable) == (
        "/mnt/a\\b\nc",
        "/mnt1",
        1,
        2,
        True,
    )
    assert (m.mount_id, m.parent_id, m.major, m.minor, m.fstype, m.source) == (
        36,
        35,
        98,
        0,
        "ext3",
        "/dev/root",
    )


# ------------------------------------------------------------------- auxv, ns, links, misc


def test_auxv(zoo: Proc) -> None:
    aux = dict(zoo.auxv(PID))
    maps = zoo.maps(PID)
    assert aux[6] == PG  # AT_PAGESZ
    (vdso,) = [v for v in maps if v.kind is VmaKind.VDSO]
    assert aux[33] == vdso.start  # AT_SYSINFO_EHDR
    entry = vma_at(maps, aux[9])  # AT_ENTRY
    assert entry.path == ZOO["exe"] and entry.exec
    assert vma_at(maps, aux[3]).path == ZOO["exe"]  # AT_PHDR
    assert (aux[11], aux[12], aux[13], aux[14], aux[23]) == (0, 0, 0, 0, 0)  # ids, AT_SECURE
    for at in (25, 31):  # AT_RANDOM, AT_EXECFN point into the stack
        assert vma_at(maps, aux[at]).kind is VmaKind.STACK


def test_parse_auxv_stops_at_at_null() -> None:
    import struct

    data = struct.pack("=6Q", 6, 4096, 0, 0, 99, 99)
    assert parse_auxv(data) == [(6, 4096)]
    assert parse_auxv(struct.pack("=4I", 6, 4096, 0, 0), word_size=4) == [(6, 4096)]


def test_ns(zoo: Proc) -> None:
    ns = zoo.ns(PID)
    assert set(ns) == {"cgroup", "ipc", "mnt", "net", "pid", "pid_for_children", "time",
                       "time_for_children", "user", "uts"}  # fmt: skip
    assert ns["pid"] == ns["pid_for_children"] and ns["time"] == ns["time_for_children"]
    # the zoo unshared its mount namespace: a new one gets an inode from 0xF0000000 up (the
    # initial namespaces have fixed inodes just below)
    assert ns["mnt"] >= 0xF0000000 and all(v > 0 for v in ns.values())
    assert parse_ns_link("mnt:[4026531841]") == ("mnt", 4026531841)
    with pytest.raises(ValueError):
        parse_ns_link("/x")


def test_links_and_small_files(zoo: Proc) -> None:
    assert zoo.exe(PID) == ZOO["exe"]
    assert zoo.cwd(PID) == f"{WD}/work"  # chdir("/work") inside the chroot
    assert zoo.root_dir(PID) == WD  # chroot(WD), as the reader sees it
    assert zoo.personality(PID) == 0x0040000  # ADDR_NO_RANDOMIZE
    assert zoo.oom_score_adj(PID) == 123
    assert zoo.timerslack_ns(PID) == 123456


# ------------------------------------------------------------------------------ sockets


def test_unix_sockets(zoo: Proc) -> None:
    socks = zoo.unix_sockets(PID)
    t = zoo.fd_targets(PID)

    def sock(name: str):
        return socks[t[FD[name]].inode or 0]

    for name in ("sp0", "sp1"):
        s = sock(name)
        assert (s.type, s.state, s.path, s.listening) == (1, 3, None, False)
    s = sock("unix_listen")
    assert (s.type, s.state, s.path, s.abstract, s.listening) == (
        1,
        1,
        f"{WD}/listen sock",
        False,
        True,
    )
    s = sock("unix_dgram")
    assert (s.type, s.path, s.abstract) == (2, "@cpt-zoo-abstract", True)
    assert parse_unix_sockets(b"Num RefCount\n") == {}


def test_inet_sockets(zoo: Proc) -> None:
    t = zoo.fd_targets(PID)
    ports = ZOO["ports"]

    def sock(proto: str, name: str):
        return zoo.inet_sockets(PID, proto)[t[FD[name]].inode or 0]

    s = sock("tcp", "tcp_listen")
    assert (s.family, s.local, s.remote, s.state) == (
        2,
        ("127.0.0.1", ports["tcp"]),
        ("0.0.0.0", 0),
        10,
    )
    s = sock("tcp", "tcp_client")
    assert (s.local, s.remote, s.state) == (
        ("127.0.0.1", ports["tcp_client"]),
        ("127.0.0.1", ports["tcp"]),
        1,
    )
    s = sock("tcp", "tcp_accepted")
    assert (s.local, s.remote, s.state) == (
        ("127.0.0.1", ports["tcp"]),
        ("127.0.0.1", ports["tcp_client"]),
        1,
    )
    s = sock("tcp6", "tcp6_listen")
    assert (s.family, s.local, s.state) == (10, ("::1", ports["tcp6"]), 10)
    s = sock("udp", "udp")
    assert (s.local, s.state, s.tx_queue, s.rx_queue, s.uid) == (
        ("127.0.0.1", ports["udp"]),
        7,
        0,
        0,
        0,
    )
    s = sock("udp6", "udp6")
    assert (s.family, s.local, s.remote) == (10, ("::1", ports["udp6"]), ("::", 0))


# ------------------------------------------------------------------------ error mapping


def test_nonexistent_pid_is_no_such_process(zoo: Proc) -> None:
    for call in (zoo.stat, zoo.status, zoo.maps, zoo.fds, zoo.exe, zoo.ns, zoo.limits, zoo.tasks):
        with pytest.raises(NoSuchProcess) as ei:
            call(NOT_A_PID)
        assert ei.value.pid == NOT_A_PID and not isinstance(ei.value, ZombieProcess)
    with pytest.raises(NoSuchProcess):
        zoo.fdinfo(NOT_A_PID, 0)


def test_zombie_is_zombie_process(zoo: Proc) -> None:
    z = ZOO["zombie"]
    for call in (zoo.exe, zoo.cwd, zoo.fds, zoo.maps, zoo.ns):
        with pytest.raises(ZombieProcess) as ei:
            call(z)
        assert ei.value.pid == z and isinstance(ei.value, NoSuchProcess)
    assert zoo.status(z).state == "Z"


def test_missing_file_of_a_live_process_is_not_no_such_process(zoo: Proc) -> None:
    # the sleeper's capture holds only stat: the process "lives", the file is what is missing
    with pytest.raises(FileNotFoundError):
        zoo.status(ZOO["sleeper"])
    with pytest.raises(FileNotFoundError):
        zoo.fdinfo(PID, 9999)


def test_access_denied_translation(zoo: Proc) -> None:
    for code in (errno.EACCES, errno.EPERM):
        path = f"{zoo.root}/{PID}/mem"
        err = zoo._translate(OSError(code, os.strerror(code), path), PID, path)
        assert isinstance(err, AccessDenied) and err.pid == PID and path in err.msg
    other = OSError(errno.EIO, "I/O error")
    assert zoo._translate(other, PID, "x") is other


# -------------------------------------------------------------------------- live (root)

root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture(scope="module")
def helpers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fixtures/proc/src/{manyvmas,leaderexit}.c, compiled."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    out = {}
    tmp = tmp_path_factory.mktemp("proc")
    for name in ("manyvmas", "leaderexit"):
        out[name] = tmp / name
        cmd = ["gcc", "-O2", "-pthread", "-o", str(out[name]), str(SRC / f"{name}.c")]
        subprocess.run(cmd, check=True)
    return out


def start(argv: list[str]) -> tuple[subprocess.Popen, dict]:
    """Start a helper; it prints one JSON line, then runs until stdin closes."""
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdout is not None
    line = p.stdout.readline()
    if not line:
        p.wait()
        pytest.fail(f"{argv[0]} exited {p.returncode}")
    return p, json.loads(line)


def stop(p: subprocess.Popen) -> None:
    try:
        os.kill(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


@pytest.mark.root
@root
def test_live_10k_vmas_and_10k_fds(helpers: dict[str, Path]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if min(soft, hard) < 10_100:
        pytest.skip(f"RLIMIT_NOFILE {soft}/{hard} < 10,100")
    p, info = start([str(helpers["manyvmas"]), "10000", "10000"])
    try:
        pid, base = info["pid"], info["base"]
        proc = Proc()
        maps = proc.maps(pid)
        mine = [v for v in maps if base <= v.start < base + 10_000 * PG]
        assert len(mine) == 10_000
        assert [v.perms for v in mine[:4]] == ["rw-p", "r--p", "rw-p", "r--p"]
        flags = proc.smaps_vmflags(pid)
        assert list(flags) == [(v.start, v.end) for v in maps]
        fds = proc.fds(pid)
        stdin = dict(fds)[0]
        dups = [fd for fd, t in fds if fd >= info["first_fd"]]
        assert len(dups) == 10_000 and all(dict(fds)[fd] == stdin for fd in dups)
        infos = proc.fdinfos(pid)
        assert len(infos) == len(fds) and infos[dups[-1]].ino == infos[0].ino
        t_maps = best_ms(lambda: proc.maps(pid))
        t_smaps = best_ms(lambda: proc.smaps_vmflags(pid), 3)
        t_fds = best_ms(lambda: proc.fds(pid))
        t_targets = best_ms(lambda: proc.fd_targets(pid))
        t_infos = best_ms(lambda: proc.fdinfos(pid), 3)
        print(
            f"\nlive, 10,000 VMAs / 10,000 fds: maps() {t_maps:.1f} ms, smaps_vmflags() "
            f"{t_smaps:.1f} ms, fds() {t_fds:.1f} ms, fd_targets() {t_targets:.1f} ms, "
            f"fdinfos() {t_infos:.1f} ms"
        )
        assert t_maps < 50
    finally:
        stop(p)


@pytest.mark.root
@root
def test_live_self() -> None:
    proc, me = Proc(), os.getpid()
    st = proc.stat(me)
    assert (st.pid, st.ppid, st.pgrp, st.session) == (me, os.getppid(), os.getpgrp(), os.getsid(0))
    s = proc.status(me)
    assert s.uid[:3] == os.getresuid() and s.gid[:3] == os.getresgid()
    assert s.threads == st.num_threads >= 1
    assert me in proc.tasks(me)
    lim = {r.resource: r for r in proc.limits(me)}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert (lim[resource.RLIMIT_NOFILE].soft, lim[resource.RLIMIT_NOFILE].hard) == (soft, hard)
    assert dict(proc.auxv(me))[6] == os.sysconf("SC_PAGE_SIZE")
    assert proc.exe(me) == os.path.realpath(sys.executable) or proc.exe(me).startswith("/")
    assert proc.cwd(me) == os.getcwd()
    assert proc.ns(me)["pid"] == os.stat(f"/proc/{me}/ns/pid").st_ino
    r, w = os.pipe()
    try:
        t = proc.fd_targets(me)
        assert t[r].kind is FdKind.PIPE and t[r].inode == t[w].inode == os.fstat(r).st_ino
        fi = proc.fdinfo(me, w)
        assert fi.flags & 0o3 == os.O_WRONLY and fi.ino == os.fstat(w).st_ino
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.root
@root
def test_live_zombie_and_vanished() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    proc = Proc()
    try:
        deadline = time.monotonic() + 5
        while proc.stat(pid).state != "Z":
            assert time.monotonic() < deadline, "child never became a zombie"
            time.sleep(0.001)
        st = proc.stat(pid)
        assert st.exit_code == 3 << 8 and st.ppid == os.getpid()
        with pytest.raises(ZombieProcess) as ei:
            proc.exe(pid)
        assert ei.value.pid == pid
        with pytest.raises(ZombieProcess):
            proc.cwd(pid)
        # a live zombie's fd/ lists as empty and its maps and auxv read as empty: still
        # ZombieProcess, not an empty answer a dump would take at face value
        for call in (proc.fds, proc.maps, proc.smaps_vmflags, proc.auxv):
            with pytest.raises(ZombieProcess):
                call(pid)
        assert proc.status(pid).state == "Z"
    finally:
        os.waitpid(pid, 0)
    with pytest.raises(NoSuchProcess) as ei2:
        proc.stat(pid)
    assert ei2.value.pid == pid and not isinstance(ei2.value, ZombieProcess)
    with pytest.raises(NoSuchProcess):
        Proc().stat(NOT_A_PID)


@pytest.mark.root
@root
def test_live_leader_exited_before_its_threads(helpers: dict[str, Path]) -> None:
    p, info = start([str(helpers["leaderexit"])])
    try:
        pid, tid = info["pid"], info["tid"]
        proc = Proc()
        deadline = time.monotonic() + 5
        while proc.stat(pid).state != "Z":
            assert time.monotonic() < deadline, "leader never showed Z"
            time.sleep(0.001)
        assert proc.stat(pid).num_threads == 2 and proc.tasks(pid) == [pid, tid]
        for call in (proc.maps, proc.exe, proc.fds):
            with pytest.raises(ZombieProcess) as ei:
                call(pid)
            assert "/task/<tid>/" in ei.value.msg
        maps = proc.maps(pid, tid)  # the live thread still shows the mm
        assert any(v.kind is VmaKind.STACK for v in maps)
        assert proc.smaps_vmflags(pid, tid).keys() == {(v.start, v.end) for v in maps}
        assert proc.stat(pid, tid).state in "SR"
    finally:
        stop(p)


@pytest.mark.root
@root
def test_live_access_denied_and_hidden_mm_fields() -> None:
    """As nobody, PID 1's exe is EACCES, and its stat hides the mm fields."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            result: dict[str, object] = {"hidden": Proc().stat(1).mm_hidden}
            try:
                Proc().exe(1)
                result["error"] = None
            except AccessDenied as e:
                result["error"] = [type(e).__name__, e.pid, e.msg]
            os.write(w, json.dumps(result).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            out = f.read()
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    got = json.loads(out)
    assert got["hidden"] is True
    name, epid, msg = got["error"]
    assert (name, epid) == ("AccessDenied", 1) and "/proc/1/exe" in msg
