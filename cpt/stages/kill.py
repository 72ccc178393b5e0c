"""Stage kill: SIGKILL a suspended (or undumped) tree and wait until its PIDs are gone
(chkpnt --kill, restore --kill); and the kill that ends a full checkpoint, of a tree
whose threads sit in ptrace stops.

A kill is done when every process of the tree has exited: a zombie its parent has not
reaped yet counts as exited (the workload is gone; a restore that needs the PID waits a
bounded time for the parent, and names it).  A VE's PIDs were its own namespace's: its
kill waits until its cgroup is empty, and its connections die silently first (their
peers wait for the restore).  Once a kill began, no signal stops the command: the
journal says "killing", and a command killed half-way is finished by the next.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable

from .. import fault, interrupts
from ..dump.inet import silence
from ..dump.pstree import TaskInfo
from ..errors import NotRunning, SystemError_
from ..procfs import Proc
from ..trace.seize import reap_traced
from .store import KILLING
from .tree import Tree

KILL_TIMEOUT = 30.0


def kill(tree: Tree) -> None:
    """Kill the suspended (or undumped) tree and wait until its processes have exited
    (a VE: until its cgroup is empty; its PIDs were its own namespace's)."""
    st = tree.suspended()
    if st is None:
        raise NotRunning(f"{tree.label} is not suspended; nothing to kill", pid=tree.root)
    interrupts.no_return()  # the tree dies now, whatever signal comes
    tree.note(KILLING, st.origins)
    fault.point("kill:signal")
    if tree.ve_id:
        # its connections die silently (their peers wait for the restore), then it
        held = silence(tree.freezer.procs(), tree.proc)
        try:
            tree.freezer.kill_all()
        finally:
            for s in held:
                s.close()
        forget_ve(tree)
        return
    tree.freezer.kill_all(timeout=KILL_TIMEOUT)
    wait_exited(tree, st.origins)
    tree.freezer.remove()
    tree.store.drop()


def forget_ve(tree: Tree) -> None:
    """A killed VE: its cgroup (empty once its init is gone) and its state go."""
    tree.freezer.kill_all()  # what the kill left (nothing, normally): gone before rmdir
    tree.freezer.remove(timeout=10.0)
    tree.store.drop()


def kill_traced(live: list[TaskInfo]) -> None:
    """SIGKILL a tree while its threads sit in ptrace stops (they never run again), then
    collect the exit of every traced thread: until the tracer has, the real parent cannot
    reap the process and its PID stays in use."""
    for info in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(info.pid, signal.SIGKILL)
    reap_traced([t for info in live for t in info.tracees])


def wait_exited(tree: Tree, pids: Iterable[int]) -> None:
    """Wait until every process of the killed tree has exited.  A zombie its parent has
    not reaped yet has exited: the kill is done (ENGINE-NOTES, "PID 1 reaps orphans
    late"); a restore that needs its PID waits for it, and names that parent."""
    pids = set(pids)
    deadline = time.monotonic() + KILL_TIMEOUT
    delay = 0.0005
    proc = Proc()
    while True:
        left = [p for p in pids if proc.state(p) not in (None, "Z", "X")]
        if not left:
            return
        if time.monotonic() > deadline:
            held = ", ".join(f"{p} (state {proc.state(p)})" for p in left[:5])
            raise SystemError_(
                f"{tree.label} was killed but its processes did not exit within "
                f"{KILL_TIMEOUT:.0f} s: {held}",
                pid=tree.root,
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.01)
