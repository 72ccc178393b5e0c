"""Seccomp filters of every thread, oldest first (PTRACE_SECCOMP_GET_FILTER index 0), and
the threads in strict mode (each thread's own: /proc/PID/task/TID/status)."""

from __future__ import annotations

from typing import Any

from cptimage.records import SeccompFilter, SeccompStrict

from ..procfs import Proc
from ..sys import ptrace
from ..trace.tracee import Tracee

SECCOMP_MODE_STRICT, SECCOMP_MODE_FILTER = 1, 2


def dump_seccomp(pid: int, tracees: list[Tracee], mode: int, proc: Proc) -> list[Any]:
    """`mode`: the leader's; strict mode is per thread, so each thread's is read.  (The
    tracer's PTRACE_O_SUSPEND_SECCOMP lets the dump inject into a strict thread.)"""
    if mode == 0 and len(tracees) == 1:
        return []
    out: list[Any] = []
    for t in tracees:
        own = mode if t.tid == pid else proc.status(pid, t.tid).seccomp
        if own == SECCOMP_MODE_STRICT:
            out.append(SeccompStrict(pid=pid, tid=t.tid))
        elif own == SECCOMP_MODE_FILTER:
            for idx, prog in enumerate(ptrace.seccomp_get_filters(t.tid)):
                out.append(
                    SeccompFilter(
                        pid=pid,
                        tid=t.tid,
                        index=idx,
                        flags=ptrace.seccomp_get_metadata(t.tid, idx),
                        program=prog,
                    )
                )
    return out
