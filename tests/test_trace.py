"""cpt.trace: freezing threads and injecting syscalls into real processes.

Helper programs follow the ZDTM protocol: set up state, print READY, wait for SIGUSR1, check
themselves and print PASS or FAIL. A test that touched a process lets it finish that way, so
"the process still runs correctly after we left" is checked by the process itself.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers_proc import Procs, compile_c, proc_state, wait_until

from cpt.errors import InjectionError, NoSuchProcess
from cpt.sys import mem, ptrace
from cpt.sys.syscalls import NR
from cpt.trace import guard
from cpt.trace.inject import ALL_SIGNALS, find_vdso_syscall
from cpt.trace.seize import detach_all, freeze_process
from cpt.trace.tracee import DEFAULT_OPTIONS, Tracee

PAGE = 4096

# argv[1] worker threads bump counters[i] every 200 us; main bumps counters[63] around a 1 ms
# sigtimedwait for SIGUSR1 (blocked everywhere). SIGUSR2 is counted by a handler.
# On SIGUSR1: every worker must still advance within 50 ms -> PASS.
MT_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static volatile unsigned long counters[64];
static volatile int usr2;
static void on_usr2(int s) { (void)s; usr2++; }
static void *worker(void *a) {
    long i = (long)a; struct timespec ts = {0, 200000};
    for (;;) { counters[i]++; nanosleep(&ts, NULL); }
}
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 0;
    struct sigaction sa = {0}; sa.sa_handler = on_usr2; sigaction(SIGUSR2, &sa, NULL);
    sigset_t set; sigemptyset(&set); sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL);
    pthread_t t;
    for (long i = 0; i < n; i++) pthread_create(&t, NULL, worker, (void *)i);
    printf("READY %lx %d\n", (unsigned long)counters, n); fflush(stdout);
    struct timespec ms = {0, 1000000};
    for (;;) {
        counters[63]++;
        int s = sigtimedwait(&set, NULL, &ms);
        if (s == SIGUSR1) break;
        if (s < 0 && errno != EAGAIN && errno != EINTR) { printf("FAIL errno %d\n", errno); return 1; }
    }
    unsigned long snap[64];
    for (int i = 0; i < 64; i++) snap[i] = counters[i];
    usleep(50000);
    int ok = counters[63] > 0;
    for (int i = 0; i < n; i++) ok &= counters[i] > snap[i];
    printf("%s usr2=%d\n", ok ? "PASS" : "FAIL", usr2); fflush(stdout);
    return ok ? 0 : 1;
}
"""

# Creates and joins short-lived threads without pause: the thread list never stands still.
CHURN_C = r"""
#include <pthread.h>
#include <stdio.h>
static void *noop(void *a) { return a; }
int main(void) {
    printf("READY\n"); fflush(stdout);
    for (;;) {
        pthread_t t[4];
        for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, noop, NULL);
        for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    }
}
"""


@pytest.fixture(scope="module")
def bins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tracer-bin")
    return {"mt": compile_c(d, "mt", MT_C), "churn": compile_c(d, "churn", CHURN_C)}


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.cleanup()


def _finish(p: subprocess.Popen[bytes]) -> bytes:
    """Ask a ZDTM-style helper to check itself; return its verdict line."""
    os.kill(p.pid, signal.SIGUSR1)
    assert p.stdout is not None
    line = p.stdout.readline()
    assert p.wait(10) == 0, line
    return line


def _counters(t: Tracee, addr: int, n: int) -> list[int]:
    raw = t.read_mem(addr, 64 * 8)
    vals = [int.from_bytes(raw[i * 8 : i * 8 + 8], "little") for i in range(64)]
    return [*vals[:n], vals[63]]


@pytest.mark.root
def test_single_thread_attach_inject_detach(procs: Procs, bins: dict[str, Path]) -> None:
    p, _ = procs.start_ready([str(bins["mt"]), "0"])
    t = Tracee.attach(p.pid)
    try:
        assert t.stopped and proc_state(p.pid) == "t"
        regs = t.get_regs()
        mask = t.get_sigmask()
        assert mask & (1 << (signal.SIGUSR1 - 1))
        assert t.syscall(NR.getpid) == p.pid
        assert t.syscall(NR.gettid) == p.pid
        assert t.syscall(NR.getppid) == os.getpid()
        # Registers and mask are back exactly as they were.
        assert t.get_regs() == regs
        assert t.get_sigmask() == mask
        with t.session():
            # Each injected syscall runs with every signal blocked (the kernel keeps SIGKILL
            # and SIGSTOP out of any mask)...
            buf = t.syscall_checked(NR.mmap, 0, PAGE, 3, 0x22, -1, 0)
            assert t.syscall(NR.rt_sigprocmask, 0, 0, buf, 8) == 0
            seen = int.from_bytes(t.read_mem(buf, 8), "little")
            assert seen == ALL_SIGNALS & ~(1 << 8) & ~(1 << 18)
            assert t.syscall(NR.munmap, buf, PAGE) == 0
            # ... and between two of them the thread sits at a `syscall; ret` of its libc
            # with its stack pointer at the sigreturn guard's frame (a tracer killed there
            # leaves it as it was: test_tracer_killed_inside_a_session_...).
            between = t.get_regs()
            assert t.read_mem(between.rip - 2, 3) == b"\x0f\x05\xc3"
            assert between.rsp < regs.rsp - 128
            assert t.syscall(NR.getpid) == p.pid
        assert t.get_regs() == regs and t.get_sigmask() == mask
    finally:
        t.detach()
    assert _finish(p).startswith(b"PASS")


@pytest.mark.root
def test_injected_mmap_and_mem_access(procs: Procs, bins: dict[str, Path]) -> None:
    p, _ = procs.start_ready([str(bins["mt"]), "1"])
    t = Tracee.attach(p.pid)
    try:
        with t.session():
            addr = t.syscall_checked(
                NR.mmap,
                0,
                4 * PAGE,
                mem.PROT_READ | mem.PROT_WRITE,
                mem.MAP_PRIVATE | mem.MAP_ANONYMOUS,
                -1,
                0,
            )
            assert addr % PAGE == 0
            t.write_mem(addr + 100, b"hello from the tracer")
            assert t.read_mem(addr + 100, 21) == b"hello from the tracer"
            # The injected process sees the same bytes: write(2) them into a pipe we read.
            r, w = os.pipe()
            try:
                pidfd_path = f"/proc/{os.getpid()}/fd/{w}"
                t.write_mem(addr + 1000, pidfd_path.encode() + b"\0")
                fd = t.syscall_checked(NR.openat, -100, addr + 1000, os.O_WRONLY)
                assert t.syscall_checked(NR.write, fd, addr + 100, 21) == 21
                t.syscall_checked(NR.close, fd)
                assert os.read(r, 100) == b"hello from the tracer"
            finally:
                os.close(r)
                os.close(w)
            # /proc/PID/mem reaches PROT_NONE and read-only pages (FOLL_FORCE) ...
            t.syscall_checked(NR.mprotect, addr, PAGE, mem.PROT_NONE)
            t.syscall_checked(NR.mprotect, addr + PAGE, PAGE, mem.PROT_READ)
            t.write_mem(addr + PAGE, b"ro page")
            assert t.read_mem(addr + 100, 5) == b"hello"
            assert t.read_mem(addr + PAGE, 7) == b"ro page"
            # ... process_vm_readv does not.
            with pytest.raises(mem.MemoryFault):
                mem.process_vm_readv(p.pid, [(addr, 16)], bytearray(16))
            assert t.syscall_checked(NR.munmap, addr, 4 * PAGE) == 0
            with pytest.raises(OSError):
                t.read_mem(addr, 1)
    finally:
        t.detach()
    assert _finish(p).startswith(b"PASS")


@pytest.mark.root
def test_syscall_checked_errors(procs: Procs, bins: dict[str, Path]) -> None:
    p, _ = procs.start_ready([str(bins["mt"]), "0"])
    t = Tracee.attach(p.pid)
    try:
        assert t.syscall(NR.close, 4321) == -errno.EBADF
        with pytest.raises(OSError) as ei:
            t.syscall_checked(NR.close, 4321)
        assert ei.value.errno == errno.EBADF
        assert str(p.pid) in str(ei.value) and "close" in str(ei.value)
    finally:
        t.detach()
    assert _finish(p).startswith(b"PASS")


@pytest.mark.root
@pytest.mark.parametrize("mode", ["plain", "guarded"])
def test_fatal_signal_during_injection(
    procs: Procs, bins: dict[str, Path], mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An injected syscall whose instruction faults: InjectionError naming the signal, and
    nothing of the failed injection remains.  Plain: a thread of ours (traced with
    EXITKILL, as restore's), at a `syscall` on a page that is not executable; guarded: a
    workload's thread (guard.py), at a `syscall; ret` on such a page."""
    p, _ = procs.start_ready([str(bins["mt"]), "1"])
    options = DEFAULT_OPTIONS | (ptrace.PTRACE_O_EXITKILL if mode == "plain" else 0)
    t = Tracee.attach(p.pid, options=options)
    try:
        regs = t.get_regs()
        mask = t.get_sigmask()
        with t.session():
            page = t.syscall_checked(
                NR.mmap,
                0,
                PAGE,
                mem.PROT_READ | mem.PROT_WRITE,
                mem.MAP_PRIVATE | mem.MAP_ANONYMOUS,
                -1,
                0,
            )
        t.write_mem(page, b"\x0f\x05\xc3")
        vdso = t.syscall_addr
        t.syscall_addr = page  # `syscall` bytes on a page that is not executable
        real = guard.find_gadgets(p.pid)
        assert real is not None
        monkeypatch.setattr(
            guard,
            "find_gadgets",
            lambda pid: guard.Gadgets(page, real.restorer, real.restorer_bytes),
        )
        with pytest.raises(InjectionError) as ei:
            t.syscall(NR.getpid)
        assert ei.value.signal == signal.SIGSEGV and ei.value.pid == p.pid
        # Nothing of the failed injection remains.
        assert t.get_regs() == regs and t.get_sigmask() == mask
        monkeypatch.undo()
        t.syscall_addr = vdso
        assert t.syscall_checked(NR.munmap, page, PAGE) == 0
    finally:
        t.detach()
    assert _finish(p).startswith(b"PASS")


@pytest.mark.root
def test_interrupt_redelivers_racing_signal(procs: Procs, bins: dict[str, Path]) -> None:
    p, _ = procs.start_ready([str(bins["mt"]), "0"])
    t = Tracee(p.pid)
    t.seize()
    try:
        os.kill(p.pid, signal.SIGUSR2)
        # The signal-delivery-stop is reported before we interrupt: interrupt() must hand
        # SIGUSR2 to the process (PTRACE_CONT(sig)), then stop it for good.
        wait_until(lambda: proc_state(p.pid) == "t", what="signal-delivery-stop")
        status = t.interrupt(5.0)
        assert ptrace.is_event_stop(status)
        assert t.syscall(NR.getpid) == p.pid
    finally:
        t.detach()
    assert _finish(p) == b"PASS usr2=1\n"


@pytest.mark.root
def test_freeze_multithreaded_process(procs: Procs, bins: dict[str, Path]) -> None:
    n = 4
    p, line = procs.start_ready([str(bins["mt"]), str(n)])
    counters = int(line.split()[1], 16)
    # Every worker has run its loop (so glibc's start_thread registered its rseq area).
    wait_until(lambda: all(_proc_counters(p.pid, counters, n)), what="threads running")
    tracees = freeze_process(p.pid)
    try:
        tids = [t.tid for t in tracees]
        assert tids[0] == p.pid and sorted(tids) == sorted(
            map(int, os.listdir(f"/proc/{p.pid}/task"))
        )
        assert all(proc_state(tid) == "t" for tid in tids)
        before = _counters(tracees[0], counters, n)
        time.sleep(0.02)
        assert _counters(tracees[0], counters, n) == before  # really frozen
        for t in tracees:
            assert t.syscall(NR.gettid) == t.tid
            assert t.syscall(NR.getpid) == p.pid
            # The dump's per-thread state is readable in the stop.
            assert ptrace.get_rseq_configuration(t.tid)[1] == 32
            assert len(t.get_xstate()) == ptrace.xstate_size(t.tid)
    finally:
        detach_all(tracees)
    wait_until(lambda: _proc_counters(p.pid, counters, n) != before, what="threads to resume")
    assert _finish(p).startswith(b"PASS")


def _proc_counters(pid: int, addr: int, n: int) -> list[int]:
    with open(f"/proc/{pid}/mem", "rb") as f:
        f.seek(addr)
        raw = f.read(64 * 8)
    vals = [int.from_bytes(raw[i * 8 : i * 8 + 8], "little") for i in range(64)]
    return [*vals[:n], vals[63]]


@pytest.mark.root
def test_freeze_while_threads_churn(procs: Procs, bins: dict[str, Path]) -> None:
    p, _ = procs.start_ready([str(bins["churn"])])
    for _ in range(5):
        tracees = freeze_process(p.pid)
        try:
            live = {int(x) for x in os.listdir(f"/proc/{p.pid}/task")}
            live = {tid for tid in live if proc_state(tid) not in (None, "Z", "X")}
            # Every live thread is ours and stopped; nothing runs behind our back.
            assert {t.tid for t in tracees} == live
            assert all(proc_state(t.tid) == "t" for t in tracees)
        finally:
            detach_all(tracees)
        time.sleep(0.01)
    assert proc_state(p.pid) in ("R", "S")


@pytest.mark.root
def test_vdso_syscall_address_and_dead_tracee(procs: Procs) -> None:
    p = procs.popen(["sleep", "30"])
    wait_until(lambda: proc_state(p.pid) == "S", what="sleep")
    addr = find_vdso_syscall(p.pid)
    with open(f"/proc/{p.pid}/mem", "rb") as f:
        f.seek(addr)
        assert f.read(2) == b"\x0f\x05"
    t = Tracee.attach(p.pid)
    assert t.syscall_addr == addr
    os.kill(p.pid, signal.SIGKILL)
    with pytest.raises(NoSuchProcess):
        t.wait(5.0)
    assert t.dead
    p.returncode = -9  # reaped by the tracer's waitpid


@pytest.mark.root
def test_injection_cost(procs: Procs, capsys: pytest.CaptureFixture[str]) -> None:
    p = procs.popen(["sleep", "30"])
    wait_until(lambda: proc_state(p.pid) == "S", what="sleep")
    mine, theirs = os.sched_getaffinity(0), os.sched_getaffinity(p.pid)
    t = Tracee.attach(p.pid)
    try:
        n = 2000
        with t.session():
            t0 = time.perf_counter()
            for _ in range(n):
                t.syscall(NR.getppid)
            pinned = (time.perf_counter() - t0) / n
        with t.session(pin_cpu=False):
            t0 = time.perf_counter()
            for _ in range(n):
                t.syscall(NR.getppid)
            free = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for _ in range(200):
            t.syscall(NR.getppid)
        single = (time.perf_counter() - t0) / 200
    finally:
        t.detach()
    with capsys.disabled():
        print(
            f"\ninjected syscall: {pinned * 1e6:.1f} us in a pinned session, "
            f"{free * 1e6:.1f} us unpinned, {single * 1e6:.1f} us one-shot"
        )
    assert pinned < 0.005  # generous: catches a pathological regression only
    # Pinning is undone: both affinities are what they were.
    assert os.sched_getaffinity(0) == mine and os.sched_getaffinity(p.pid) == theirs


@pytest.mark.root
def test_freeze_group_stopped_process_stays_stopped(procs: Procs) -> None:
    p = procs.popen(["sleep", "30"])
    wait_until(lambda: proc_state(p.pid) == "S", what="sleep")
    os.kill(p.pid, signal.SIGSTOP)
    wait_until(lambda: proc_state(p.pid) == "T", what="group stop")
    (t,) = freeze_process(p.pid)
    try:
        assert ptrace.is_group_stop(t.stop_status)
        assert t.syscall(NR.getpid) == p.pid
    finally:
        detach_all([t])
    # Detaching hands the task back to its group stop; SIGCONT resumes it as usual.
    wait_until(lambda: proc_state(p.pid) == "T", what="still stopped")
    os.kill(p.pid, signal.SIGCONT)
    wait_until(lambda: proc_state(p.pid) == "S", what="continued")


def _tracer_child(work: Callable[[], None]) -> tuple[int, int]:
    """Fork a child that does `work` (seize and inject, as the engine does), then tells the
    parent on a pipe and sleeps: (its pid, the read end)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the tracer: its tracees are detached by the kernel when it dies
        try:
            os.close(r)
            _TOLD[:] = [w]
            work()
            os.write(w, b"k")
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(w)
    return pid, r


@pytest.mark.root
@pytest.mark.parametrize("how", ["one-shot", "session", "probe"])
def test_tracer_killed_after_injecting_leaves_tracee_running(
    procs: Procs, bins: dict[str, Path], how: str
) -> None:
    """SIGKILL of the tracer between injections (as of a `cpt chkpnt` copying pages):
    the kernel detaches the tracees, which run on with their own registers and mask; a
    thread left in the single-step SIGTRAP stop of its last injection would die of it."""
    p, _ = procs.start_ready([str(bins["mt"]), "2"])

    def work() -> None:
        tracees = freeze_process(p.pid)
        if how == "one-shot":
            for t in tracees:
                t.syscall(NR.getpid)
        elif how == "session":
            with tracees[0].session():
                for _ in range(10):
                    tracees[0].syscall(NR.getppid)
        else:
            from cpt.dump.probe import probe
            from cpt.procfs import Proc

            probe(tracees, [(v.start, v.end) for v in Proc().maps(p.pid)])

    tracer, r = _tracer_child(work)
    try:
        assert os.read(r, 1) == b"k"
        os.kill(tracer, signal.SIGKILL)
        os.waitpid(tracer, 0)
    finally:
        os.close(r)
    wait_until(lambda: proc_state(p.pid) in ("S", "R"), what="the tracee running again")
    time.sleep(0.05)
    assert proc_state(p.pid) in ("S", "R")
    assert _finish(p).startswith(b"PASS")


def _sigblk_and_cpus(pid: int) -> dict[int, tuple[str, set[int]]]:
    """Each thread's blocked mask (but SIGUSR1, which the workload's sigtimedwait takes
    out of it while it waits) and CPU mask."""
    out = {}
    for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
        status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        blk = next(ln.split()[1] for ln in status.splitlines() if ln.startswith("SigBlk:"))
        out[tid] = (f"{int(blk, 16) | 1 << (signal.SIGUSR1 - 1):016x}", os.sched_getaffinity(tid))
    return out


@pytest.mark.root
@pytest.mark.parametrize("how", ["session", "probe", "in-a-syscall"])
def test_tracer_killed_inside_a_session_leaves_mask_registers_and_cpus(
    procs: Procs, bins: dict[str, Path], how: str
) -> None:
    """SIGKILL of the tracer in the MIDDLE of an injection session (between two of its
    syscalls, as a killed `cpt chkpnt` in its probe, or while an injected syscall runs):
    every thread runs on from its own registers with its own signal mask and CPU mask.  The session used to block every
    signal for its whole length and leave the injected registers between syscalls: the
    thread then ran on from the injected state and never again received SIGTERM
    (tests/test_kill.py lost a VE's workload that way)."""
    p, _ = procs.start_ready([str(bins["mt"]), "2"])
    # A new thread starts with every signal blocked until glibc's start_thread unblocks them.
    wait_until(
        lambda: all(
            b == f"{1 << (signal.SIGUSR1 - 1):016x}" for b, _ in _sigblk_and_cpus(p.pid).values()
        ),
        what="the workers' masks settled",
    )
    before = _sigblk_and_cpus(p.pid)

    def work() -> None:
        tracees = freeze_process(p.pid)
        if how == "in-a-syscall":
            with tracees[0].session():
                tracees[0].syscall(NR.getpid)
                os.write(_TOLD[0], b"k")  # killed while the next one sleeps in the kernel
                tracees[0].syscall(NR.poll, 0, 0, 700)
                time.sleep(60)
        elif how == "session":
            with tracees[1].session():
                tracees[1].syscall(NR.getppid)
                tracees[0].syscall(NR.getpid)  # and one of another thread, in its own session
                with tracees[0].session():
                    tracees[0].syscall(NR.getppid)
                    _tell_and_wait()
        else:
            from cpt.dump import probe as probe_mod
            from cpt.procfs import Proc

            real = probe_mod.Scratch.map

            def map_then_wait(*a: object, **kw: object) -> object:
                scratch = real(*a, **kw)  # type: ignore[arg-type]
                _tell_and_wait()  # killed here: the probe's session is open, one syscall done
                return scratch

            probe_mod.Scratch.map = map_then_wait  # type: ignore[method-assign]
            probe_mod.probe(tracees, [(v.start, v.end) for v in Proc().maps(p.pid)])

    tracer, r = _tracer_child(work)
    try:
        assert os.read(r, 1) == b"k"
        if how == "in-a-syscall":
            time.sleep(0.2)  # well inside the 700 ms the injected poll sleeps
        os.kill(tracer, signal.SIGKILL)
        os.waitpid(tracer, 0)
    finally:
        os.close(r)
    wait_until(lambda: proc_state(p.pid) in ("S", "R"), what="the tracee running again")
    time.sleep(0.8 if how == "in-a-syscall" else 0.05)  # the poll ends, rt_sigreturn
    assert proc_state(p.pid) in ("S", "R")
    assert _sigblk_and_cpus(p.pid) == before
    os.kill(p.pid, signal.SIGUSR2)  # caught by a handler: the mask lets it in
    line = _finish(p)
    assert line.startswith(b"PASS") and b"usr2=1" in line, line


_TOLD: list[int] = []


def _tell_and_wait() -> None:
    """In the tracer child: tell the parent (on _tracer_child's pipe) and wait to be killed."""
    os.write(_TOLD[0], b"k")
    time.sleep(60)


def test_a_ve_init_carries_what_the_guard_needs() -> None:
    """A VE's init is a static program without libc: its code carries the `syscall; ret`
    and the rt_sigreturn restorer the sigreturn guard injects with, in its text."""
    from cpt.restore.stub import build_reaper

    elf = build_reaper()
    assert guard.SYSCALL_RET in elf
    assert any(seq in elf for seq in guard.RESTORERS)
