"""Seccomp filters of every thread, oldest first (PTRACE_SECCOMP_GET_FILTER index 0)."""

from __future__ import annotations

from cptimage.records import SeccompFilter

from ..sys import ptrace
from ..trace.tracee import Tracee


def dump_seccomp(pid: int, tracees: list[Tracee], mode: int) -> list[SeccompFilter]:
    if mode != 2:  # 0 off; 1 strict mode cannot be re-entered by injection, refused earlier
        return []
    out = []
    for t in tracees:
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
