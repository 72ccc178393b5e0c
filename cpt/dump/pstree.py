"""The process tree to dump (its pstree, as CRIU calls it): who is in it, in which order,
and its Process records."""

from __future__ import annotations

import dataclasses

from cptimage.records import Process, ProcessState

from ..errors import DumpError, NoSuchProcess, ZombieProcess
from ..procfs import Proc
from ..trace.tracee import Tracee


@dataclasses.dataclass
class TaskInfo:
    """One process of the dumped tree as the dump sees it."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    zombie: bool
    exit_status: int
    comm: str
    nspid: list[int]
    nspgid: list[int]
    nssid: list[int]
    children: list[int] = dataclasses.field(default_factory=list)
    tids: list[int] = dataclasses.field(default_factory=list)
    tracees: list[Tracee] = dataclasses.field(default_factory=list)

    @property
    def leader(self) -> Tracee:
        return self.tracees[0]


def collect_tree(root: int, proc: Proc) -> dict[int, TaskInfo]:
    """Every process of the tree rooted at `root`, parents before children.

    Children are read from /proc/PID/task/*/children (any thread may have forked them).
    """
    out: dict[int, TaskInfo] = {}
    todo = [root]
    while todo:
        pid = todo.pop(0)
        if pid in out:
            continue
        try:
            info = _task_info(pid, proc)
        except NoSuchProcess:
            if pid == root:
                raise
            continue  # exited and reaped meanwhile
        if pid == root:
            info.ppid = 0
        out[pid] = info
        if not info.zombie:
            try:
                info.children = proc.children(pid)
                info.tids = proc.tasks(pid)
            except ZombieProcess:
                info.children, info.tids = [], []
            except NoSuchProcess:
                del out[pid]
                continue
            todo.extend(info.children)
    return out


def _task_info(pid: int, proc: Proc) -> TaskInfo:
    st = proc.stat(pid)
    status = proc.status(pid)
    zombie = st.state in ("Z", "X")
    return TaskInfo(
        pid=pid,
        ppid=st.ppid,
        pgid=st.pgrp,
        sid=st.session,
        zombie=zombie,
        exit_status=st.exit_code if zombie else 0,
        comm=st.comm,
        nspid=list(status.nspid),
        nspgid=list(status.nspgid),
        nssid=list(status.nssid),
    )


def process_record(info: TaskInfo) -> Process:
    return Process(
        pid=info.pid,
        ppid=info.ppid,
        pgid=info.pgid,
        sid=info.sid,
        state=ProcessState.ZOMBIE if info.zombie else ProcessState.ALIVE,
        exit_status=info.exit_status,
        nspid=info.nspid,
        nspgid=info.nspgid,
        nssid=info.nssid,
        comm=info.comm,
    )


def check_sessions(tree: dict[int, TaskInfo], root: int) -> None:
    """Refuse session and group layouts restore cannot rebuild (before anything is frozen).

    Restore recreates sessions by setsid() in the leader and inheritance at fork, and
    groups by setpgid() once every process exists.  A session or group whose leader is not
    in the tree is either the root's own, inherited from outside (a shell job), or one
    whose leader exited: restore makes a temporary leader with its PID (as CRIU does).  A
    session's temporary leader forks, with CLONE_PARENT, the members whose parent is in
    another session, so they must share one parent.
    """
    rootinfo = tree[root]
    heads: dict[int, set[int]] = {}  # a session whose leader exited -> its members' parents
    for info in tree.values():
        if info.pid == root:
            continue
        parent = tree.get(info.ppid)
        if parent is None or info.sid == parent.sid or info.sid == info.pid:
            continue
        if info.sid not in tree and info.sid != rootinfo.sid:
            heads.setdefault(info.sid, set()).add(parent.pid)
            continue
        grand = tree.get(parent.ppid)
        parent_old_sid = grand.sid if grand else rootinfo.sid
        if info.sid != parent_old_sid or parent.sid != parent.pid:
            raise DumpError(
                f"process {info.pid} is in session {info.sid}, neither its own nor its "
                f"parent's ({parent.sid}): restore cannot rebuild it",
                pid=info.pid,
            )
    for sid, parents in sorted(heads.items()):
        if len(parents) > 1:
            raise DumpError(
                f"session {sid}, whose leader exited, has members whose parents "
                f"{sorted(parents)} are outside it: restore can rebuild such a session "
                f"only when they share one parent",
                pid=min(parents),
            )
