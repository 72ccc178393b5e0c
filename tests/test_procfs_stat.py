"""cpt/procfs/stat.py and the reader's stat(), status(), comm(), tasks(), children(), on the
captured zoo (fixtures/proc/zoo)."""

from __future__ import annotations

import signal

from helpers_procfs import (
    FIX,
    NOT_A_PID,
    PID,
    ZOO,
    sigbit,
    vma_at,
)

from cpt.procfs import (
    Proc,
    VmaKind,
    parse_stat,
    parse_status,
)

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
