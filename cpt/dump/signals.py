"""Signal state of a process: dispositions and pending signals (with their siginfo)."""

from __future__ import annotations

import dataclasses
import signal
import struct

from cptimage.records import PendingSignal, Sigaction, Sigactions

from ..sys import ptrace
from ..trace.tracee import Tracee
from .probe import Probe

SIG_IGN = 1


def dump_sigactions(pid: int, probe: Probe) -> Sigactions:
    return Sigactions(pid=pid, actions=probe.sigactions)


def ignored_sigtrap(sigign: int, probe: Probe) -> Sigaction | None:
    """SIGTRAP's action when the process ignores it (SigIgn, read before any injection),
    else None.  The probe's own injections reset an ignored SIGTRAP to SIG_DFL (their
    single-step trap is a forced signal): the probe's record is corrected here, and the
    caller gives the process its SIG_IGN back after its last injection."""
    if not sigign >> (signal.SIGTRAP - 1) & 1:
        return None
    for i, a in enumerate(probe.sigactions):
        if a.signo == signal.SIGTRAP:
            a = dataclasses.replace(a, handler=SIG_IGN)
            probe.sigactions[i] = a
            return a
    return None


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
