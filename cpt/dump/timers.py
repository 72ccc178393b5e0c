"""POSIX timers (timer_create): ids, clocks and notification from /proc/PID/timers; the
expiry, interval and overrun only the process can ask for (injected timer_gettime and
timer_getoverrun, in one session, only when the process has timers)."""

from __future__ import annotations

from collections.abc import Iterable

from cptimage.records import PosixTimer

from ..errors import UnsupportedError
from ..procfs import Proc
from ..sys.anonfd import ITIMERSPEC, unpack_itimerspec
from ..sys.syscalls import NR
from ..trace.scratch import Scratch
from ..trace.tracee import Tracee

CLOCK_PROCESS_CPUTIME_ID, CLOCK_THREAD_CPUTIME_ID = 2, 3
CPUCLOCK_PERTHREAD = 4


def cpu_clock(clockid: int) -> tuple[int, bool] | None:
    """(pid, per thread) of a CPU-time clock, pid 0 = the caller; None for other clocks.
    glibc passes its own encoding (MAKE_PROCESS_CPUCLOCK: ~pid << 3 | flags, negative)
    even for CLOCK_PROCESS_CPUTIME_ID (-6) and CLOCK_THREAD_CPUTIME_ID (-2)."""
    if clockid in (CLOCK_PROCESS_CPUTIME_ID, CLOCK_THREAD_CPUTIME_ID):
        return 0, clockid == CLOCK_THREAD_CPUTIME_ID
    if clockid >= 0:
        return None
    return ~(clockid >> 3), bool(clockid & CPUCLOCK_PERTHREAD)


def unsupported_timers(pid: int, proc: Proc) -> list[str]:
    """Why some timer of the process cannot be restored (empty: all can)."""
    out = []
    timers = proc.timers(pid)
    tids = proc.tasks(pid) if timers else []
    for t in timers:
        where = f"process {pid} POSIX timer {t.id}"
        cpu = cpu_clock(t.clock_id)
        if cpu is not None:
            why = _cpu_clock_problem(pid, proc, tids, *cpu)
            if why:
                out.append(f"{where} counts the CPU time of {why} (clock id {t.clock_id})")
        if t.target_kind == "tid" and t.target not in tids:
            out.append(f"{where} signals thread {t.target}, which has exited: not restorable")
    return out


def _cpu_clock_problem(
    pid: int, proc: Proc, tids: list[int], who: int, per_thread: bool
) -> str | None:
    """Why a CPU-time clock cannot be named again at restore: only the process itself or
    one of its threads can (the same pid and tids come back)."""
    if who == 0:
        if per_thread and len(tids) > 1:
            return (
                f"the thread that created it, which procfs does not name in a process of "
                f"{len(tids)} threads: not supported"
            )
        return None
    # the clock names a pid or tid as the process sees them (its own pid namespace)
    if per_thread:
        if who in {proc.status(pid, tid).nspid[-1] for tid in tids}:
            return None
        return f"thread {who}, not one of this process: not supported"
    if who == proc.status(pid).nspid[-1]:
        return None
    return f"process {who}, not this one: not supported"


def dump_timers(
    pid: int, tracees: list[Tracee], proc: Proc, occupied: Iterable[tuple[int, int]]
) -> list[PosixTimer]:
    """The process's timers, oldest id first; `tracees` are its stopped threads."""
    timers = sorted(proc.timers(pid), key=lambda t: t.id)
    if not timers:
        return []
    why = unsupported_timers(pid, proc)
    if why:
        raise UnsupportedError("; ".join(why), pid=pid)
    # a SIGEV_THREAD_ID target as the process sees it (its own pid namespace)
    nstid = {t.tid: proc.status(pid, t.tid).nspid[-1] for t in tracees}
    leader = tracees[0]
    out = []
    with leader.session():
        scratch = Scratch.map(leader, occupied)
        try:
            for t in timers:
                leader.syscall_checked(NR.timer_gettime, t.id, scratch.addr)
                value_ns, interval_ns = unpack_itimerspec(scratch.get(0, ITIMERSPEC.size))
                overrun = leader.syscall_checked(NR.timer_getoverrun, t.id)
                out.append(
                    PosixTimer(
                        pid=pid,
                        timer_id=t.id,
                        clockid=t.clock_id,
                        sigev_notify=t.sigev_notify,
                        signo=t.signo,
                        notify_tid=nstid[t.target] if t.target_kind == "tid" else 0,
                        overrun=overrun,
                        sigev_value=t.sigev_value,
                        interval_ns=interval_ns,
                        value_ns=value_ns,
                    )
                )
        finally:
            scratch.unmap()
    return out
