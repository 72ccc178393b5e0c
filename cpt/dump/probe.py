"""State only the process itself can tell: read by injected syscalls, in one session.

Sigactions, the current brk, itimers, securebits and a few prctl values per process;
whether mlockall(MCL_FUTURE) is in effect (no call reads it: the scratch mapping itself
shows it, counted in VmLck, and populated unless MCL_ONFAULT);
clear_child_tid and the signal alternate stack per thread.  About 70 syscalls per process,
their result buffers in a scratch mapping that is unmapped before the pages are read.
"""

from __future__ import annotations

import dataclasses
import signal
import struct
from collections.abc import Iterable

from cptimage.records import MmFlags, Sigaction

from ..procfs import Proc
from ..sys.arch import PAGE_SIZE
from ..sys.syscalls import NR
from ..sys.task import (
    ITIMERVAL,
    MEMBARRIER_CMD_GET_REGISTRATIONS,
    MEMBARRIER_REGISTRATIONS,
    PR_GET_CHILD_SUBREAPER,
    PR_GET_DUMPABLE,
    PR_GET_PDEATHSIG,
    PR_GET_SECUREBITS,
    PR_GET_THP_DISABLE,
    PR_GET_TID_ADDRESS,
    SIGACTION,
)
from ..trace.scratch import Scratch
from ..trace.tracee import Tracee

# every signal whose disposition can be read and set (SIGKILL and SIGSTOP cannot)
SIGNALS = [s for s in range(1, 65) if s not in (signal.SIGKILL, signal.SIGSTOP)]
_STACK_T = struct.Struct("<QiiQ")  # ss_sp, ss_flags, pad, ss_size


@dataclasses.dataclass
class ThreadProbe:
    clear_child_tid: int
    sas_sp: int
    sas_flags: int
    sas_size: int


@dataclasses.dataclass
class Probe:
    sigactions: list[Sigaction]
    brk: int
    itimers: list[tuple[int, int]]  # (interval_us, value_us) for REAL, VIRTUAL, PROF
    securebits: int
    pdeath_sig: int
    child_subreaper: int
    dumpable: int
    thp_disable: int
    membarrier: int  # MEMBARRIER_CMD_REGISTER_* bits of the process's mm
    lock_future: MmFlags  # LOCK_FUTURE, LOCK_ONFAULT or nothing
    threads: dict[int, ThreadProbe]


def _usec(sec: int, usec: int) -> int:
    return sec * 1_000_000 + usec


def probe(tracees: list[Tracee], occupied: Iterable[tuple[int, int]]) -> Probe:
    """Run the probe in a stopped process; `tracees` are its threads, the leader first."""
    leader = tracees[0]
    proc = Proc()
    with leader.session():
        locked_kb = proc.status(leader.pid).vm_kb.get("VmLck", 0)
        scratch = Scratch.map(leader, occupied)
        try:
            call = leader.syscall_checked
            buf = scratch.addr
            future = MmFlags(0)
            if proc.status(leader.pid).vm_kb.get("VmLck", 0) - locked_kb >= scratch.size >> 10:
                # the new mapping was locked: mlockall(MCL_FUTURE); not populated at mmap
                # (its last page, never touched, is not resident): MCL_ONFAULT too
                call(NR.mincore, buf + scratch.size - PAGE_SIZE, PAGE_SIZE, buf + 8)
                future = MmFlags.LOCK_FUTURE
                if not scratch.get(8, 1)[0] & 1:
                    future |= MmFlags.LOCK_ONFAULT
            actions = []
            for sig in SIGNALS:
                call(NR.rt_sigaction, sig, 0, buf, 8)
                h, fl, rest, mask = SIGACTION.unpack(scratch.get(0, SIGACTION.size))
                actions.append(Sigaction(signo=sig, handler=h, flags=fl, restorer=rest, mask=mask))
            brk = call(NR.brk, 0)
            timers = []
            for which in (0, 1, 2):
                call(NR.getitimer, which, buf)
                isec, iusec, vsec, vusec = ITIMERVAL.unpack(scratch.get(0, ITIMERVAL.size))
                timers.append((_usec(isec, iusec), _usec(vsec, vusec)))
            securebits = call(NR.prctl, PR_GET_SECUREBITS)
            call(NR.prctl, PR_GET_PDEATHSIG, buf)
            pdeath = scratch.i32()
            call(NR.prctl, PR_GET_CHILD_SUBREAPER, buf)
            subreaper = scratch.i32()
            dumpable = call(NR.prctl, PR_GET_DUMPABLE)
            thp = call(NR.prctl, PR_GET_THP_DISABLE)
            # a kernel without GET_REGISTRATIONS (before 6.3) answers EINVAL: none known
            barrier = max(leader.syscall(NR.membarrier, MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0), 0)
            threads = {}
            for t in tracees:
                with t.session():
                    t.syscall_checked(NR.prctl, PR_GET_TID_ADDRESS, buf)
                    ctid = scratch.u64()
                    t.syscall_checked(NR.sigaltstack, 0, buf + 64)
                    sp, flags, _pad, size = _STACK_T.unpack(scratch.get(64, _STACK_T.size))
                    threads[t.tid] = ThreadProbe(ctid, sp, flags, size)
        finally:
            scratch.unmap()
    return Probe(
        sigactions=actions,
        brk=brk,
        itimers=timers,
        securebits=securebits,
        pdeath_sig=pdeath,
        child_subreaper=subreaper,
        dumpable=dumpable,
        thp_disable=thp,
        membarrier=barrier & MEMBARRIER_REGISTRATIONS,
        lock_future=future,
        threads=threads,
    )
