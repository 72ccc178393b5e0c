"""Signal dispositions (all 64: a stub inherits SIG_IGN from Python for SIGPIPE and
SIGXFSZ through execve) and pending signals with their siginfo."""

from __future__ import annotations

import signal

from ..sys.syscalls import NR
from ..sys.task import SIGACTION
from .pstree import Task

SIG_DFL, SIG_IGN = 0, 1


def restore_sigactions(task: Task) -> None:
    sa = task.img.sigactions
    if sa is None:
        return
    t = task.leader
    sc = task.scratch
    assert sc is not None
    for a in sa.actions:
        addr = sc.push(SIGACTION.pack(a.handler, a.flags, a.restorer, a.mask))
        t.syscall_checked(NR.rt_sigaction, a.signo, addr, 0, 8)
        if a.signo == signal.SIGTRAP and a.handler not in (SIG_DFL, SIG_IGN):
            t.keep_sigtrap_handler()  # else the next injection's trap resets it
    sc.reset()


def restore_pending(task: Task) -> None:
    """Queue the dumped pending signals again (all are blocked while we inject).

    The kernel lets a process queue a siginfo with si_code >= 0 only to itself, by its
    leader (the caller's tid must equal the tgid argument): inject from the leader.
    """
    t = task.leader
    sc = task.scratch
    assert sc is not None
    for p in task.img.pending:
        addr = sc.push(p.siginfo)
        if p.tid == 0:
            t.syscall_checked(NR.rt_sigqueueinfo, task.pid, p.signo, addr)
        else:
            t.syscall_checked(NR.rt_tgsigqueueinfo, task.pid, p.tid, p.signo, addr)
    sc.reset()
