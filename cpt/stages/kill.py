"""Stage kill: SIGKILL a suspended (or undumped) tree and wait until its PIDs are gone
(chkpnt --kill, restore --kill); and the kill that ends a full checkpoint, of a tree
whose threads sit in ptrace stops.

A kill is not done while a restore of the same PIDs would fail: it waits until every
PID of the tree is free (zombies reaped by their parents).  A VE's PIDs were its own
namespace's: its kill waits until its cgroup is empty, and its connections die silently
first (their peers wait for the restore).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable

from ..dump.inet import silence
from ..dump.pstree import TaskInfo
from ..errors import CptError, NotRunning, SystemError_
from ..procfs import Proc, pid_exists
from ..trace.seize import reap_traced
from .tree import Tree

KILL_TIMEOUT = 30.0


def kill(tree: Tree) -> None:
    """Kill the suspended (or undumped) tree and wait until its PIDs are gone (a VE:
    until its cgroup is empty; its PIDs were its own namespace's)."""
    st = tree.suspended()
    if st is None:
        raise NotRunning(f"{tree.label} is not suspended; nothing to kill", pid=tree.root)
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
    for pid in tree.freezer.procs():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_gone(tree, st.origins)
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


def wait_gone(tree: Tree, pids: Iterable[int]) -> None:
    """Wait until every PID of the tree is gone (zombies reaped by their parents)."""
    pids = set(pids)
    deadline = time.monotonic() + KILL_TIMEOUT
    delay = 0.0005
    while True:
        left = [p for p in pids if pid_exists(p)]
        if not left:
            return
        if time.monotonic() > deadline:
            held = ", ".join(f"{p} ({_holder(p)})" for p in left[:5])
            raise SystemError_(
                f"tree {tree.root} was killed but PIDs are still in use: {held}",
                pid=tree.root,
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.01)


def _holder(pid: int) -> str:
    try:
        st = Proc().stat(pid)
    except CptError:
        return "gone"
    if st.state == "Z":
        return f"a zombie not yet reaped by its parent {st.ppid}"
    return f"state {st.state}"
