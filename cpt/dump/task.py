"""Per-process state that is neither memory nor files: rlimits, itimers, cwd/root, umask,
personality, oom_score_adj, timer slack and a few prctl values; each thread's scheduling,
the login uid, a job-control stop in effect and membarrier registrations."""

from __future__ import annotations

from cptimage.records import Itimers, Rlimit, Rlimits, TaskExtra, TaskState, ThreadSched

from ..procfs import Proc, ProcStatus
from ..sys.task import sched_getattr
from ..trace.tracee import Tracee
from .paths import PathTable
from .probe import Probe


def dump_rlimits(pid: int, proc: Proc) -> Rlimits:
    # /proc/PID/limits, not prlimit(): prlimit on a process of another uid needs
    # CAP_SYS_RESOURCE, which root lacks on these machines (CRIU 4.2 fails there).
    # A limit this kernel names but we do not know (newer kernel) cannot be restored by
    # number: it is left at the restorer's value.
    return Rlimits(
        pid=pid,
        limits=[
            Rlimit(resource=r.resource, cur=r.soft, max=r.hard)
            for r in proc.limits(pid)
            if r.resource is not None
        ],
    )


def dump_itimers(pid: int, probe: Probe) -> Itimers:
    (ri, rv), (vi, vv), (pi, pv) = probe.itimers
    return Itimers(
        pid=pid,
        real_interval_us=ri,
        real_value_us=rv,
        virt_interval_us=vi,
        virt_value_us=vv,
        prof_interval_us=pi,
        prof_value_us=pv,
    )


def dump_task_state(
    pid: int, status: ProcStatus, probe: Probe, proc: Proc, paths: PathTable
) -> TaskState:
    return TaskState(
        pid=pid,
        umask=status.umask or 0,
        personality=proc.personality(pid),
        cwd_id=paths.add_link(pid, "cwd"),
        root_id=paths.add_link(pid, "root"),
        oom_score_adj=proc.oom_score_adj(pid),
        timerslack_ns=proc.timerslack_ns(pid),
        pdeath_sig=probe.pdeath_sig,
        dumpable=probe.dumpable,
        child_subreaper=probe.child_subreaper,
    )


def dump_sched(pid: int, tracees: list[Tracee]) -> list[ThreadSched]:
    """Each thread's sched_getattr(2), read from outside."""
    out = []
    for t in tracees:
        a = sched_getattr(t.tid)
        out.append(
            ThreadSched(
                pid=pid,
                tid=t.tid,
                policy=a.policy,
                flags=a.flags,
                nice=a.nice,
                priority=a.priority,
                runtime_ns=a.runtime,
                deadline_ns=a.deadline,
                period_ns=a.period,
            )
        )
    return out


def dump_task_extra(pid: int, tracees: list[Tracee], probe: Probe, proc: Proc) -> TaskExtra:
    """The stop signal is the leader's: a group stop holds every thread of the process."""
    return TaskExtra(
        pid=pid,
        loginuid=proc.loginuid(pid),
        stop_signal=tracees[0].group_stop if tracees else 0,
        membarrier=probe.membarrier,
    )
