"""Per-process state: cwd and root, umask, personality, prctl values, itimers, rlimits,
oom_score_adj and timer slack."""

from __future__ import annotations

import resource

from ..errors import RestoreError
from ..procfs import write_pid_file
from ..sys.syscalls import NR
from ..sys.task import ITIMERVAL, PR_SET_CHILD_SUBREAPER, PR_SET_PDEATHSIG, PR_SET_THP_DISABLE
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
    if mm is not None and mm.flags & 1:
        call(NR.prctl, PR_SET_THP_DISABLE, 1, 0, 0, 0)
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
