"""cpt/procfs: limits, timers, mountinfo, auxv, ns links, the small files, and net sockets."""

from __future__ import annotations

import resource
import time

import pytest
from helpers_procfs import (
    FD,
    FIX,
    MANY,
    PG,
    PID,
    WD,
    ZOO,
    vma_at,
)

from cpt.procfs import (
    RLIM_INFINITY,
    SIGEV_NONE,
    SIGEV_SIGNAL,
    SIGEV_THREAD_ID,
    Proc,
    VmaKind,
    parse_auxv,
    parse_limits,
    parse_mountinfo,
    parse_ns_link,
    parse_timers,
    parse_unix_sockets,
)

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


def test_id_maps_parse_map_and_format() -> None:
    from cpt.procfs import IdMapping, format_id_map, map_id, parse_id_map

    text = b"         0     300000      65536\n     65536     900000          1\n"
    maps = parse_id_map(text)
    assert maps == (IdMapping(0, 300000, 65536), IdMapping(65536, 900000, 1))
    assert map_id(maps, 300000) == 0 and map_id(maps, 365535) == 65535
    assert map_id(maps, 900000) == 65536
    assert map_id(maps, 0) is None and map_id(maps, 365536) is None
    assert format_id_map(maps) == "0 300000 65536\n65536 900000 1\n"
    assert parse_id_map(b"") == ()


def test_id_maps_of_this_process() -> None:
    """This process lives in the initial user namespace (or a test's): a map that maps
    its own ids, and setgroups allow or deny."""
    import os

    from cpt.procfs import map_id

    p = Proc()
    assert map_id(p.uid_map(os.getpid()), os.getuid()) is not None
    assert map_id(p.gid_map(os.getpid()), os.getgid()) is not None
    assert p.setgroups(os.getpid()) in ("allow", "deny")
