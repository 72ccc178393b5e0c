"""Tracer and tracee on one CPU while an injection session runs.

A ptrace round trip (singlestep, waitpid) across CPUs costs 60-70 us in this VM, on one
CPU ~16 us: a session pins both to a CPU they may both use, and puts both affinity masks
back at its end.  Tasks an injected clone3 creates inherit the tracee's one-CPU mask;
the session gives them `theirs`, the tracee's own mask.
"""

from __future__ import annotations

import os

from cpt.procfs import Proc

_PROC = Proc()


class Pinned:
    """Tracer and thread `tid` pinned to one CPU; undo() gives both their masks back."""

    def __init__(self, tid: int, mine: set[int], theirs: set[int]) -> None:
        self.tid = tid
        self.mine = mine
        self.theirs = theirs

    def undo(self, *, tracee_alive: bool = True) -> None:
        os.sched_setaffinity(0, self.mine)
        if tracee_alive:
            try:
                os.sched_setaffinity(self.tid, self.theirs)
            except OSError:
                pass  # the thread exited meanwhile (ESRCH)


def pin_together(tid: int) -> Pinned | None:
    """Pin this thread and `tid` to one CPU both may use; None if that is impossible."""
    try:
        mine = os.sched_getaffinity(0)
        theirs = os.sched_getaffinity(tid)
    except OSError:
        return None
    common = mine & theirs
    if not common or (len(mine) == 1 and mine == theirs):
        return None  # no CPU both may use, or both already share their only one
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
