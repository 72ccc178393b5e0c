"""cpt.restore.stub: the generated static ELF, tasks with exact PIDs and TIDs."""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers_proc import Procs, free_pids, proc_state, wait_until

from cpt.restore.stub import (
    STUB_BASE,
    STUB_PAUSE_RIP,
    STUB_SIZE,
    STUB_SYSCALL,
    build_stub,
    clone_stub,
    spawn_stub,
    start_stub,
    stub_exec_path,
)
from cpt.sys import mem, ptrace
from cpt.sys.clone import clone3_execve
from cpt.sys.syscalls import NR
from cpt.trace.tracee import Tracee

PAGE = 4096


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.cleanup()


def _status(pid: int, key: bytes) -> bytes:
    for line in Path(f"/proc/{pid}/status").read_bytes().splitlines():
        if line.startswith(key + b":"):
            return line.split(b":", 1)[1].strip()
    raise KeyError(key)


def _spawn_at_free_pid(procs: Procs, count: int = 1) -> tuple[Tracee, list[int]]:
    """spawn_stub at the first of `count` free PIDs (retried: other tests run in parallel)."""
    for _ in range(10):
        pids = free_pids(count)
        try:
            t = spawn_stub([pids[0]])
        except OSError as e:
            if e.errno == errno.EEXIST:
                continue
            raise
        procs.add(t.pid)
        return t, pids
    raise RuntimeError("could not spawn a stub at a free pid")


def _in_pause(tid: int) -> bool:
    """Asleep in syscall 34 (/proc/TID/syscall needs the task blocked in a syscall)."""
    if proc_state(tid) != "S":
        return False
    return Path(f"/proc/{tid}/syscall").read_text().split()[0] == "34"


def _wait_in_pause(tid: int) -> None:
    wait_until(lambda: _in_pause(tid), what=f"{tid} asleep in pause()")


def test_stub_elf_image() -> None:
    image = build_stub()
    assert len(image) == STUB_SIZE == 185
    ident, e_type, machine, _ver, entry, phoff, _sh, _fl, ehsize, phentsize, phnum = (
        struct.unpack_from("<16sHHIQQQIHHH", image)
    )
    assert ident[:4] == b"\x7fELF" and ident[4] == 2 and ident[5] == 1
    assert (e_type, machine, phoff, ehsize, phentsize, phnum) == (2, 62, 64, 64, 56, 2)
    p_type, p_flags, off, vaddr, _pa, filesz, memsz, align = struct.unpack_from(
        "<IIQQQQQQ", image, 64
    )
    assert (p_type, p_flags, off, vaddr, filesz, memsz, align) == (
        1,
        5,
        0,
        STUB_BASE,
        185,
        185,
        4096,
    )
    code = image[entry - STUB_BASE :]
    assert code == bytes.fromhex("b8220000000f05ebf7")  # mov eax,34; syscall; jmp back
    assert image[STUB_SYSCALL - STUB_BASE : STUB_SYSCALL - STUB_BASE + 2] == b"\x0f\x05"
    with pytest.raises(ValueError):
        build_stub(0x10001)


@pytest.mark.root
def test_start_stub_idles_in_pause(procs: Procs) -> None:
    pid = procs.add(start_stub())
    _wait_in_pause(pid)
    maps = Path(f"/proc/{pid}/maps").read_text()
    names = [line.split()[5] if len(line.split()) > 5 else "" for line in maps.splitlines()]
    assert names[0].startswith("/memfd:cpt-stub")
    # Nothing but the stub page, the stack and the kernel's special mappings: no libc, no ld.so.
    assert set(names[1:]) <= {
        "[vvar]",
        "[vvar_vclock]",
        "[vdso]",
        "[stack]",
        "[vsyscall]",
        "[heap]",
    }
    assert int(maps.split("-", 1)[0], 16) == STUB_BASE
    assert os.readlink(f"/proc/{pid}/exe").startswith("/memfd:cpt-stub")
    assert stub_exec_path() == stub_exec_path()


@pytest.mark.root
def test_clone3_execve_failures(procs: Procs) -> None:
    with pytest.raises(OSError) as ei:
        clone3_execve(stub_exec_path(), ["x"], set_tid=[os.getpid()])
    assert ei.value.errno == errno.EEXIST and str(os.getpid()) in str(ei.value)
    pid = procs.add(clone3_execve("/nonexistent/cpt", ["x"]))
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 127


@pytest.mark.root
def test_spawn_stub_exact_pid(procs: Procs) -> None:
    t, (pid,) = _spawn_at_free_pid(procs)
    assert t.pid == t.tid == pid
    assert int(_status(pid, b"PPid")) == os.getpid()
    assert int(_status(pid, b"TracerPid")) == os.getpid()
    regs = t.get_regs()
    assert STUB_BASE <= regs.rip < STUB_BASE + STUB_SIZE
    assert t.syscall_addr == STUB_SYSCALL
    assert t.syscall(NR.getpid) == pid
    # glibc never ran: no rseq area, no robust list.
    assert ptrace.get_rseq_configuration(pid) == (0, 0, 0, 0)
    t.detach()
    _wait_in_pause(pid)


@pytest.mark.root
def test_injected_clone3_child_and_thread_exact_ids(procs: Procs) -> None:
    parent, (pid, child_pid, thread_tid) = _spawn_at_free_pid(procs, 3)
    with parent.session():
        scratch = parent.syscall_checked(
            NR.mmap,
            0,
            PAGE,
            mem.PROT_READ | mem.PROT_WRITE,
            mem.MAP_PRIVATE | mem.MAP_ANONYMOUS,
            -1,
            0,
        )
        # A child process with an exact PID, auto-attached through PTRACE_O_TRACEFORK.
        child = clone_stub(parent, scratch, [child_pid])
        procs.add(child.pid)
        assert parent.last_events == [(ptrace.PTRACE_EVENT_FORK, child_pid)]
        # A thread with an exact TID, auto-attached through PTRACE_O_TRACECLONE.
        thread = clone_stub(parent, scratch, [thread_tid], thread=True)
        assert parent.last_events == [(ptrace.PTRACE_EVENT_CLONE, thread_tid)]
    assert (child.tid, child.pid) == (child_pid, child_pid)
    assert (thread.tid, thread.pid) == (thread_tid, pid)
    assert int(_status(child_pid, b"PPid")) == pid
    assert int(_status(child_pid, b"TracerPid")) == os.getpid()
    assert int(_status(thread_tid, b"Tgid")) == pid
    assert sorted(map(int, os.listdir(f"/proc/{pid}/task"))) == [pid, thread_tid]
    # Both continue in the stub's code right after the syscall: the jmp back to pause().
    for t in (child, thread):
        r = t.get_regs()
        assert r.rip == STUB_PAUSE_RIP and r.rax == 0 and not r.eflags & 0x100  # no TF
        assert t.syscall_addr == STUB_SYSCALL
    assert child.syscall(NR.getpid) == child_pid and child.syscall(NR.getppid) == pid
    assert thread.syscall(NR.gettid) == thread_tid and thread.syscall(NR.getpid) == pid
    # The thread shares the parent's memory, the child has its own copy.
    parent.write_mem(scratch, b"parent")
    assert thread.read_mem(scratch, 6) == b"parent"
    assert child.read_mem(scratch, 6) != b"parent"
    # The session pinned the parent to one CPU; the new tasks got its real affinity back.
    assert os.sched_getaffinity(child_pid) == os.sched_getaffinity(pid) == os.sched_getaffinity(0)
    assert os.sched_getaffinity(thread_tid) == os.sched_getaffinity(pid)
    for t in (thread, child, parent):
        t.detach()
    for tid in (pid, child_pid, thread_tid):
        _wait_in_pause(tid)


@pytest.mark.root
def test_clone_stub_requires_auto_attach(procs: Procs) -> None:
    t, _ = _spawn_at_free_pid(procs)
    t.setoptions(0)
    with pytest.raises(ValueError):
        clone_stub(t, 0, None)
    t.detach()


@pytest.mark.root
def test_stub_as_pidns_init_with_child(procs: Procs) -> None:
    from cpt.sys.ns import CLONE_NEWPID

    for _ in range(10):
        outer, child_outer = free_pids(2)
        try:
            init = spawn_stub([1, outer], flags=CLONE_NEWPID)
            break
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise
    else:
        raise RuntimeError("no free pid")
    procs.add(init.pid)
    assert init.pid == outer and init.syscall(NR.getpid) == 1
    assert _status(outer, b"NSpid").split() == [str(outer).encode(), b"1"]
    scratch = init.syscall_checked(
        NR.mmap, 0, PAGE, mem.PROT_READ | mem.PROT_WRITE, mem.MAP_PRIVATE | mem.MAP_ANONYMOUS, -1, 0
    )
    # Inside the namespace the child gets 7, outside child_outer: one set_tid entry per level.
    child = clone_stub(init, scratch, [7, child_outer])
    procs.add(child.pid)
    assert child.pid == child_outer and child.syscall(NR.getpid) == 7
    assert child.syscall(NR.getppid) == 1
    assert _status(child_outer, b"NSpid").split() == [str(child_outer).encode(), b"7"]
