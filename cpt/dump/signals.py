"""Signal state of a process: dispositions and pending signals (with their siginfo)."""

from __future__ import annotations

import struct

from cptimage.records import PendingSignal, Sigactions

from ..sys import ptrace
from ..trace.tracee import Tracee
from .probe import Probe


def dump_sigactions(pid: int, probe: Probe) -> Sigactions:
    return Sigactions(pid=pid, actions=probe.sigactions)


def dump_pending(pid: int, tracees: list[Tracee]) -> list[PendingSignal]:
    """Queued signals, per thread and process-wide (tid 0), oldest first."""
    out = []
    for t in tracees:
        for info in ptrace.peeksiginfo_all(t.tid, shared=False):
            out.append(PendingSignal(pid=pid, tid=t.tid, signo=_signo(info), siginfo=info))
    for info in ptrace.peeksiginfo_all(tracees[0].tid, shared=True):
        out.append(PendingSignal(pid=pid, tid=0, signo=_signo(info), siginfo=info))
    return out


def _signo(siginfo: bytes) -> int:
    return int(struct.unpack_from("<i", siginfo)[0])
