"""Whole processes under ptrace: seize and stop every thread of one, detach a set of
threads, and collect the exit of killed traced threads."""

from __future__ import annotations

import contextlib
import errno
import signal
import time
from collections.abc import Iterable

from cpt.errors import NoSuchProcess
from cpt.procfs import Proc
from cpt.sys import ptrace

from .tracee import DEFAULT_OPTIONS, Tracee

_AUTO_ATTACH_OPTIONS = (
    ptrace.PTRACE_O_TRACEFORK | ptrace.PTRACE_O_TRACEVFORK | ptrace.PTRACE_O_TRACECLONE
)
_PROC = Proc()


def list_tids(pid: int) -> list[int]:
    """Thread ids of `pid` from /proc/PID/task, the leader first."""
    tids = _PROC.tasks(pid)
    if pid in tids:
        tids.remove(pid)
        tids.insert(0, pid)
    return tids


def freeze_process(
    pid: int, options: int = DEFAULT_OPTIONS, timeout: float | None = 5.0
) -> list[Tracee]:
    """Seize and interrupt every thread of `pid`, re-reading /proc/PID/task until no new
    thread appears; returns the stopped Tracees, the leader first (if it is not a zombie).

    Threads are seized without fork/clone auto-attach (a thread created meanwhile is found
    by the re-read instead); `options` are applied in full once all threads are stopped.
    On failure every thread seized so far is detached again.
    """
    seize_opts = options & ~_AUTO_ATTACH_OPTIONS
    tracees: dict[int, Tracee] = {}
    gone: set[int] = set()
    try:
        while True:
            new = [t for t in list_tids(pid) if t not in tracees and t not in gone]
            if not new:
                break
            batch: list[Tracee] = []
            for tid in new:
                # A zombie leader (it called pthread_exit) cannot be seized (EPERM).
                if _PROC.state(tid) in (None, "Z", "X"):
                    gone.add(tid)
                    continue
                t = Tracee(tid, pid=pid)
                try:
                    t.seize(seize_opts)
                except NoSuchProcess:
                    gone.add(tid)
                    continue
                except OSError as e:
                    # A thread past exit_notify() refuses PTRACE_SEIZE with EPERM, not ESRCH.
                    if e.errno == errno.EPERM and _PROC.state(tid) in (None, "Z", "X"):
                        gone.add(tid)
                        continue
                    raise
                tracees[tid] = t
                batch.append(t)
                try:
                    ptrace.interrupt(tid)
                except NoSuchProcess:
                    pass  # it died after the seize: the wait below collects its exit
            for t in batch:
                try:
                    status = t.wait_interrupted(timeout)
                except NoSuchProcess:
                    del tracees[t.tid]
                    gone.add(t.tid)
                    continue
                # a thread seized in a group stop traps with the stop's signal, any
                # other with SIGTRAP (kernel do_jobctl_trap)
                sig = ptrace.stop_signal(status)
                t.group_stop = sig if sig != signal.SIGTRAP else 0
        if not tracees:
            raise NoSuchProcess(pid)
        if options != seize_opts:
            for t in tracees.values():
                t.setoptions(options)
    except BaseException:
        detach_all(tracees.values())
        raise
    return sorted(tracees.values(), key=lambda t: (t.tid != pid, t.tid))


def detach_all(tracees: Iterable[Tracee]) -> None:
    """Detach every tracee still attached; threads that died meanwhile are skipped."""
    first: BaseException | None = None
    for t in tracees:
        try:
            t.detach_quietly()
        except OSError as e:
            first = first or e
    if first is not None:
        raise first


def reap_traced(tracees: Iterable[Tracee], timeout: float = 5.0) -> None:
    """Collect the exit of killed traced threads, so their real parents can reap them.

    All of them are polled together, not one after another: the kernel reports a
    thread-group leader's exit only once every other thread of the group has been reaped,
    and the init of a PID namespace exits only once every process of its namespace is
    gone, each of which waits for us first.
    """
    pending = [t for t in tracees if not t.dead]
    deadline = time.monotonic() + timeout
    delay = 0.0002
    while pending:
        progressed = False
        for t in list(pending):
            try:
                t.wait(0)
            except NoSuchProcess:
                pending.remove(t)
                progressed = True
                continue
            except TimeoutError:
                continue
            progressed = True  # a stop on the way out (an exit event): let it go on
            with contextlib.suppress(OSError, NoSuchProcess):
                t.cont()
        if not pending or time.monotonic() > deadline:
            return
        if not progressed:
            time.sleep(delay)
            delay = min(delay * 2, 0.002)
        else:
            delay = 0.0002
