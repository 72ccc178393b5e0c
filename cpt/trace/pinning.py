"""Tracer and tracee on one CPU while an injection session runs.

A ptrace round trip (singlestep, waitpid) across CPUs costs 60-70 us in this VM, on one
CPU ~16 us: a session pins both to a CPU they may both use, and puts both affinity masks
back at its end.  Tasks an injected clone3 creates inherit the tracee's one-CPU mask;
the session gives them `theirs`, the tracee's own mask.

A tracee that must outlive its tracer is not pinned (a killed tracer could not give it its
mask back): the tracer alone moves to the CPU the tracee last ran on, where the scheduler
wakes it again.
"""

from __future__ import annotations

import os

from cpt.procfs import Proc

_PROC = Proc()


class Pinned:
    """Tracer and thread `tid` pinned to one CPU; undo() gives both their masks back."""

    def __init__(
        self, tid: int, mine: set[int], theirs: set[int], *, tracee_pinned: bool = True
    ) -> None:
        self.tid = tid
        self.mine = mine
        self.theirs = theirs
        self.tracee_pinned = tracee_pinned

    def undo(self, *, tracee_alive: bool = True) -> None:
        os.sched_setaffinity(0, self.mine)
        if tracee_alive and self.tracee_pinned:
            try:
                os.sched_setaffinity(self.tid, self.theirs)
            except OSError:
                pass  # the thread exited meanwhile (ESRCH)


def pin_together(tid: int, *, tracee_too: bool = True) -> Pinned | None:
    """Pin this thread and `tid` to one CPU both may use; None if that is impossible.
    With `tracee_too` False only this thread moves, to the CPU `tid` last ran on."""
    try:
        mine = os.sched_getaffinity(0)
        theirs = os.sched_getaffinity(tid)
    except OSError:
        return None
    common = mine & theirs
    if not common or (len(mine) == 1 and mine == theirs):
        return None  # no CPU both may use, or both already share their only one
    if not tracee_too:
        try:
            cpu = _PROC.last_cpu(tid)
        except (OSError, ValueError, IndexError):
            return None
        if cpu not in mine:
            return None
        os.sched_setaffinity(0, {cpu})
        return Pinned(tid, mine, theirs, tracee_pinned=False)
    cpu = _PROC.current_cpu()
    if cpu not in common:
        cpu = min(common)
    try:
        os.sched_setaffinity(tid, {cpu})
    except OSError:
        # A cpuset cgroup may forbid the CPU (EINVAL): inject unpinned.
        return None
    os.sched_setaffinity(0, {cpu})
    return Pinned(tid, mine, theirs)
