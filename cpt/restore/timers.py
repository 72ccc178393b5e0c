"""POSIX timers with their dumped ids: prctl(PR_TIMER_CREATE_RESTORE_IDS) makes
timer_create take the id from *created_timer_id; then timer_settime re-arms each.

Injected in the process once its threads exist (a SIGEV_THREAD_ID timer names one) and
before credentials are dropped (alarm clocks need CAP_WAKE_ALARM).  The remaining time
counts from the restore (the time spent checkpointed does not count: /proc and
timer_gettime cannot tell an absolute timer from a relative one).  The overrun count is
in the image but cannot be set: timer_getoverrun() returns 0 until the next expiry.
Timers are created in id order, so the next timer the process creates gets max id + 1.
"""

from __future__ import annotations

import struct

from ..errors import RestoreError
from ..sys.anonfd import pack_itimerspec
from ..sys.syscalls import NR
from ..sys.task import PR_TIMER_CREATE_RESTORE_IDS
from .pstree import Task

_SIGEVENT = struct.Struct("<QiiI44x")  # sigev_value, signo, notify, _tid, padding to 64


def restore_timers(task: Task) -> None:
    timers = sorted(task.img.timers, key=lambda t: t.timer_id)
    if not timers:
        return
    t = task.leader
    sc = task.scratch
    assert sc is not None
    try:
        t.syscall_checked(NR.prctl, PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0)
    except OSError as e:
        raise RestoreError(
            f"process {task.pid} has POSIX timers, whose ids this kernel cannot restore "
            f"(prctl PR_TIMER_CREATE_RESTORE_IDS, Linux 6.14+): {e.strerror}"
        ) from None
    for tm in timers:
        sev = sc.push(_SIGEVENT.pack(tm.sigev_value, tm.signo, tm.sigev_notify, tm.notify_tid))
        idp = sc.push(struct.pack("<i", tm.timer_id))
        try:
            t.syscall_checked(NR.timer_create, tm.clockid, sev, idp)
        except OSError as e:
            raise RestoreError(
                f"process {task.pid}: cannot recreate POSIX timer {tm.timer_id} (clock "
                f"{tm.clockid}, notify {tm.sigev_notify}): {e.strerror}"
            ) from None
        got = int(struct.unpack("<i", t.read_mem(idp, 4))[0])
        if got != tm.timer_id:
            raise RestoreError(f"process {task.pid}: POSIX timer {tm.timer_id} came back as {got}")
        its = sc.push(pack_itimerspec(tm.value_ns, tm.interval_ns))
        t.syscall_checked(NR.timer_settime, tm.timer_id, 0, its, 0)
        sc.reset()
    t.syscall_checked(NR.prctl, PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0)
