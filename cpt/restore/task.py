"""Per-process state: cwd and root, umask, personality, prctl values, itimers, rlimits,
oom_score_adj and timer slack; the login uid, membarrier registrations, each thread's
scheduling and a job-control stop."""

from __future__ import annotations

import os
import resource
import signal

from cptimage.records import MmFlags

from ..errors import NoSuchProcess, RestoreError
from ..procfs import Proc, pid_dir, write_pid_file
from ..sys.syscalls import NR
from ..sys.task import (
    ITIMERVAL,
    PR_SET_CHILD_SUBREAPER,
    PR_SET_PDEATHSIG,
    PR_SET_THP_DISABLE,
    SCHED_NORMAL,
    SchedAttr,
    sched_setattr,
)
from .model import ImageModel
from .pstree import Task

RLIMIT_NAMES = {
    0: "RLIMIT_CPU", 1: "RLIMIT_FSIZE", 2: "RLIMIT_DATA", 3: "RLIMIT_STACK", 4: "RLIMIT_CORE",
    5: "RLIMIT_RSS", 6: "RLIMIT_NPROC", 7: "RLIMIT_NOFILE", 8: "RLIMIT_MEMLOCK",
    9: "RLIMIT_AS", 10: "RLIMIT_LOCKS", 11: "RLIMIT_SIGPENDING", 12: "RLIMIT_MSGQUEUE",
    13: "RLIMIT_NICE", 14: "RLIMIT_RTPRIO", 15: "RLIMIT_RTTIME",
}  # fmt: skip


def restore_task_state(task: Task, model: ImageModel) -> None:
    ts = task.img.task
    if ts is None:
        return
    t = task.leader
    sc = task.scratch
    assert sc is not None
    call = t.syscall_checked
    cwd = model.path(ts.cwd_id).path if ts.cwd_id else "/"
    root = model.path(ts.root_id).path if ts.root_id else "/"
    if call_err := t.syscall(NR.chdir, sc.push_str(cwd)):
        raise RestoreError(f"process {task.pid}: cannot chdir to {cwd} (errno {-call_err})")
    if root != "/":
        call(NR.chroot, sc.push_str(root))
    sc.reset()
    call(NR.umask, ts.umask)
    call(NR.personality, ts.personality)
    call(NR.prctl, PR_SET_PDEATHSIG, ts.pdeath_sig)
    if ts.child_subreaper:
        call(NR.prctl, PR_SET_CHILD_SUBREAPER, 1)
    mm = task.img.mm
    if mm is not None and mm.flags & MmFlags.THP_DISABLE:
        call(NR.prctl, PR_SET_THP_DISABLE, 1, 0, 0, 0)
    if mm is not None and mm.flags & MmFlags.LOCK_FUTURE:
        # only the mm's default for later mappings (the existing ones are locked or not
        # as each was); before the credentials drop, under the rlimits of the restorer
        how = MCL_FUTURE | (MCL_ONFAULT if mm.flags & MmFlags.LOCK_ONFAULT else 0)
        if (err := t.syscall(NR.mlockall, how)) < 0:
            raise RestoreError(
                f"process {task.pid}: mlockall(MCL_FUTURE) failed ({os.strerror(-err)})",
                pid=task.pid,
            )
    it = task.img.itimers
    if it is not None:
        for which, (interval, value) in enumerate(
            [
                (it.real_interval_us, it.real_value_us),
                (it.virt_interval_us, it.virt_value_us),
                (it.prof_interval_us, it.prof_value_us),
            ]
        ):
            if interval and not value:
                # it expired while frozen: ITIMER_REAL re-arms only when its SIGALRM is
                # dequeued, and setitimer with a zero value would disarm it: due at once
                value = 1
            if interval or value:
                arg = ITIMERVAL.pack(*divmod(interval, 1_000_000), *divmod(value, 1_000_000))
                call(NR.setitimer, which, sc.push(arg), 0)
        sc.reset()
    _restore_extra(task, model)


O_WRONLY = 0o1
MCL_FUTURE, MCL_ONFAULT = 2, 4


def _restore_extra(task: Task, model: ImageModel) -> None:
    """The login uid (only the process itself may write /proc/self/loginuid) and the
    membarrier registrations, by injection, while the process still has the restorer's
    credentials."""
    ex = task.img.extra
    if ex is None:
        return
    t = task.leader
    sc = task.scratch
    assert sc is not None
    # a VE in a user namespace of its own: CAP_AUDIT_CONTROL is the host's; its processes
    # keep the login uid they inherit from the restorer, as ones started there would
    if model.userns is None and Proc().loginuid(task.host_pid) != ex.loginuid:
        text = str(ex.loginuid).encode()
        fd = t.syscall(NR.open, sc.push_str(pid_dir("self") + "/loginuid"), O_WRONLY, 0)
        err = fd if fd < 0 else t.syscall(NR.write, fd, sc.push(text), len(text))
        if fd >= 0:
            t.syscall(NR.close, fd)
        sc.reset()
        if err < 0:
            raise RestoreError(
                f"process {task.pid}: cannot set its login uid to {ex.loginuid} "
                f"({os.strerror(-err)}): changing a set login uid needs CAP_AUDIT_CONTROL",
                pid=task.pid,
            )
    bit = 1
    while bit <= ex.membarrier:
        if ex.membarrier & bit and (err := t.syscall(NR.membarrier, bit, 0, 0)) < 0:
            raise RestoreError(
                f"process {task.pid}: membarrier registration {bit:#x} failed "
                f"({os.strerror(-err)})",
                pid=task.pid,
            )
        bit <<= 1


def restore_sched(task: Task) -> None:
    """Each thread's scheduling policy, flags, nice and priority, from outside; the last
    step before the tree runs (a SCHED_IDLE thread injected into would crawl)."""
    for rec in task.img.sched:
        tr = task.threads.get(rec.tid)
        if tr is None:
            continue
        attr = SchedAttr(
            rec.policy, rec.flags, rec.nice, rec.priority,
            rec.runtime_ns, rec.deadline_ns, rec.period_ns,
        )  # fmt: skip
        try:
            if attr.policy != SCHED_NORMAL:
                # sched_setattr sets nice only for SCHED_NORMAL/BATCH: an idle thread keeps
                # the nice it had before (sched_getattr reports it), so it goes first
                sched_setattr(tr.tid, SchedAttr(SCHED_NORMAL, 0, rec.nice))
            sched_setattr(tr.tid, attr)
        except OSError as e:
            raise RestoreError(
                f"process {task.pid} thread {rec.tid}: cannot set scheduling policy "
                f"{rec.policy} priority {rec.priority} nice {rec.nice} "
                f"({os.strerror(e.errno or 0)})",
                pid=task.pid,
            ) from None


def stop_signal(task: Task, model: ImageModel) -> int:
    """The signal that stops a process that was stopped by job control at the dump
    (queued before the detach: it stops as soon as it runs), 0 for a running one.
    A stop by SIGTSTP/SIGTTIN/SIGTTOU is discarded in an orphaned process group: the
    root's group (its leader's parent is outside) gets SIGSTOP instead."""
    ex = task.img.extra
    if ex is None or not ex.stop_signal:
        return 0
    if ex.stop_signal != signal.SIGSTOP:
        root = model.procs[model.root].proc
        if task.img.proc.pgid == root.pgid:
            return signal.SIGSTOP
    return ex.stop_signal


def queue_stop(task: Task, sig: int) -> None:
    try:
        os.kill(task.host_pid, sig)
    except ProcessLookupError:
        raise NoSuchProcess(task.host_pid) from None


def restore_outside(task: Task) -> None:
    """What the restorer sets through /proc and prlimit, before credentials change."""
    pid = task.host_pid
    rl = task.img.rlimits
    if rl is not None:
        for lim in rl.limits:
            try:
                resource.prlimit(pid, lim.resource, (_py(lim.cur), _py(lim.max)))
            except (PermissionError, ValueError):
                name = RLIMIT_NAMES.get(lim.resource, str(lim.resource))
                cur = resource.prlimit(pid, lim.resource)
                raise RestoreError(
                    f"process {pid}: cannot set {name} to ({_lim(lim.cur)}, {_lim(lim.max)}); "
                    f"this restorer's hard limit is {_lim(cur[1])} and raising a hard limit "
                    f"needs CAP_SYS_RESOURCE",
                    pid=pid,
                ) from None
    ts = task.img.task
    if ts is None:
        return
    write_pid_file(pid, "timerslack_ns", ts.timerslack_ns)
    try:
        write_pid_file(pid, "oom_score_adj", ts.oom_score_adj)
    except PermissionError:
        raise RestoreError(
            f"process {pid}: cannot set oom_score_adj {ts.oom_score_adj}: a negative value "
            f"needs CAP_SYS_RESOURCE",
            pid=pid,
        ) from None


def _py(v: int) -> int:
    """Python's resource module spells RLIM_INFINITY (2**64 - 1) as -1."""
    return resource.RLIM_INFINITY if v >= 2**63 else v


def _lim(v: int) -> str:
    # the image has 2**64 - 1, Python's resource module -1 (RLIM_INFINITY)
    return "unlimited" if v == resource.RLIM_INFINITY or v >= 2**63 else str(v)
