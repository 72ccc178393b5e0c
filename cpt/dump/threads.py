"""Per-thread state: registers, FPU/xstate, signal mask, rseq, robust list, alt stack."""

from __future__ import annotations

from cptimage.records import Thread

from ..procfs import Proc
from ..sys import ptrace
from ..sys.task import get_robust_list
from ..trace.tracee import Tracee
from .probe import Probe


def dump_thread(pid: int, t: Tracee, probe: Probe, proc: Proc) -> Thread:
    """Everything of one stopped thread; registers are read outside any injection."""
    rseq_ptr, rseq_len, rseq_sig, rseq_flags = ptrace.get_rseq_configuration(t.tid)
    robust_head, robust_len = get_robust_list(t.tid)
    tp = probe.threads[t.tid]
    status = proc.status(pid, t.tid)
    return Thread(
        pid=pid,
        tid=t.tid,
        sigmask=t.get_sigmask(),
        # a thread stopped right after pthread_create may not have registered rseq yet: (0, 0)
        rseq_ptr=rseq_ptr,
        rseq_len=rseq_len,
        rseq_sig=rseq_sig,
        rseq_flags=rseq_flags,
        robust_head=robust_head,
        robust_len=robust_len,
        clear_child_tid=tp.clear_child_tid,
        sas_sp=tp.sas_sp,
        sas_size=tp.sas_size,
        sas_flags=tp.sas_flags,
        nstid=list(status.nspid),
        regs=t.get_regs().to_bytes(),
        fpregs=t.get_fpregs(),
        xstate=t.get_xstate(),
        comm=proc.comm(pid, t.tid),
    )
