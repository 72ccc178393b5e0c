"""cpt/procfs: the host-wide files (system.py), the cheap one-field parsers, and the reader's
namespace and thread helpers."""

from __future__ import annotations

import os
import threading

import pytest
from helpers_procfs import FIX, NOT_A_PID, PID, ZOO

from cpt.errors import NoSuchProcess
from cpt.procfs import (
    Proc,
    cpu_flags,
    filesystems,
    parse_cpu_flags,
    parse_filesystems,
    parse_table,
    read_sysctl_int,
    stat_processor,
    status_tgid,
    sysctl_path,
    sysvipc,
)
from cpt.sys import ipc as I


def test_parse_table() -> None:
    text = (
        "       key      shmid perms                  size  cpid  lpid nattch\n"
        "         0         17   600                  4096  1234  1234      1\n"
        "\n"
    )
    assert parse_table(text) == [["0", "17", "600", "4096", "1234", "1234", "1"]]
    assert parse_table("       key      semid perms\n") == []


def test_parse_filesystems_and_cpu_flags() -> None:
    fs = parse_filesystems("nodev\tsysfs\nnodev\tproc\n\text4\n\tbtrfs\n")
    assert fs == {"sysfs", "proc", "ext4", "btrfs"}
    info = "processor\t: 0\nflags\t\t: fpu sse2 avx2\nbugs\t\t: x\n\nprocessor\t: 1\nflags\t: fpu\n"
    assert parse_cpu_flags(info) == {"fpu", "sse2", "avx2"}
    assert parse_cpu_flags("processor\t: 0\n") == frozenset()


def test_sysctl_path() -> None:
    assert sysctl_path("kernel.pid_max") == "/proc/sys/kernel/pid_max"
    assert sysctl_path("net/ipv4/conf/eth0.1/forwarding").endswith("/conf/eth0.1/forwarding")


def test_one_field_parsers_agree_with_the_full_ones() -> None:
    for tid in ZOO["tids"]:
        task = FIX / "zoo" / str(PID) / "task" / str(tid)
        assert status_tgid((task / "status").read_bytes()) == PID
        stat = (task / "stat").read_bytes()
        assert stat_processor(stat) == Proc(str(FIX / "zoo")).stat(PID, tid).processor


def test_live_host_files() -> None:
    with open("/proc/sys/kernel/pid_max") as f:
        assert read_sysctl_int("kernel.pid_max") == int(f.read())
    assert "proc" in filesystems()
    with open("/proc/cpuinfo") as f:
        assert cpu_flags() and cpu_flags() == parse_cpu_flags(f.read())


def test_live_sysvipc_shows_a_new_segment() -> None:
    shmid = I.shmget(0, 4096, I.IPC_CREAT | 0o600)
    try:
        row = next(r for r in sysvipc("shm") if int(r[1]) == shmid)
        assert (int(row[2], 8), int(row[3])) == (0o600, 4096)
    finally:
        I.shm_rmid(shmid)
    assert shmid not in {int(r[1]) for r in sysvipc("shm")}


def test_live_reader_threads_and_namespaces() -> None:
    proc, me = Proc(), os.getpid()
    tids: list[int] = []
    started, leave = threading.Event(), threading.Event()

    def thread() -> None:
        tids.append(threading.get_native_id())
        started.set()
        leave.wait(10)

    t = threading.Thread(target=thread)
    t.start()
    try:
        assert started.wait(10)
        assert tids[0] != me and proc.tgid(tids[0]) == proc.tgid(me) == me
    finally:
        leave.set()
        t.join(10)
    with pytest.raises(NoSuchProcess):
        proc.tgid(NOT_A_PID)
    assert 0 <= proc.current_cpu() < (os.cpu_count() or 1)
    assert proc.ns_inode(me, "net") == os.stat("/proc/self/ns/net").st_ino
    fd = proc.open_ns(me, "uts")
    try:
        assert os.fstat(fd).st_ino == os.stat("/proc/self/ns/uts").st_ino
    finally:
        os.close(fd)
    with pytest.raises(NoSuchProcess) as e:
        proc.open_ns(NOT_A_PID, "net")
    assert e.value.pid == NOT_A_PID and e.value.path == f"/proc/{NOT_A_PID}/ns/net"
