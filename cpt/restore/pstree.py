"""Recreate the process tree (its pstree) as stubs with the dumped PIDs, sessions and groups.

The root stub is cloned by the restorer with clone3(set_tid); every other process is
cloned by its parent's stub through an injected clone3(set_tid), so parentage is native.
Sessions come from setsid() in their leader and inheritance at fork: a child that kept its
parent's old session is forked before the parent's setsid().  Groups are joined with
setpgid() once every process exists, leaders first.  Zombies then exit with their status.

A session or group whose leader had exited gets a temporary leader with its PID, as in
CRIU: a session's is forked by the parent of its members (they share one, the dump
checks), calls setsid() and forks them with CLONE_PARENT (their parent is then its
parent, their session its); a group's is forked by a member and calls setpgid(0, 0).  Once
the members joined their groups the temporary leaders exit and are reaped by their parent.
"""

from __future__ import annotations

import dataclasses
import errno
import signal
from collections.abc import Callable

from cptimage.records import Process, ShareFlags

from ..errors import NoSuchProcess, RestoreError
from ..procfs import Proc
from ..sys.clone import CLONE_FILES, CLONE_FS
from ..sys.syscalls import NR
from ..sys.task import PR_SET_NAME, SIGACTION
from ..trace.scratch import Scratch
from ..trace.tracee import Tracee
from .model import ImageModel, ProcImage
from .stub import STUB_OPTIONS, clone_stub, spawn_stub

SIG_DFL = 0
WALL = 0x40000000
RLIMIT_CORE = 4


@dataclasses.dataclass
class Task:
    img: ProcImage
    leader: Tracee
    threads: dict[int, Tracee] = dataclasses.field(default_factory=dict)
    scratch: Scratch | None = None

    @property
    def pid(self) -> int:
        """The PID the image gives it (what the process sees, in its namespace)."""
        return self.img.pid

    @property
    def host_pid(self) -> int:
        """Its PID where the restorer runs (differs under --pidns): for /proc, prlimit, ..."""
        return self.leader.pid

    def tracees(self) -> list[Tracee]:
        return [self.leader, *(t for tid, t in self.threads.items() if tid != self.pid)]


class TreeBuilder:
    def __init__(
        self,
        model: ImageModel,
        on_spawn: Callable[[int], None] | None = None,
        parent: tuple[Tracee, int] | None = None,
        on_session: Callable[[Task, int], None] | None = None,
        root: Tracee | None = None,
    ) -> None:
        """`parent`: (a traced stub, a scratch address in it) to clone the root from, in
        its PID namespace; `root`: the root's stub, already created (a VE's init, in its
        new namespaces); by default the restorer creates the root itself.
        `on_session(task, scratch)`: called when a process's session is settled (a leader
        after setsid(), the root otherwise) and before it forks: controlling terminals."""
        self.model = model
        self.tasks: dict[int, Task] = {}
        self.on_spawn = on_spawn
        self.on_session = on_session
        self.parent = parent
        self.root = root
        self._cscratch: int = 0  # creation scratch, inherited by every forked stub
        self.external_session = False
        self._dead = model.dead_leaders()
        self._helpers: dict[int, tuple[Tracee, Task]] = {}  # temporary leader: (it, parent)

    def build(self) -> dict[int, Task]:
        root = self.model.procs[self.model.root]
        if self.root is not None:
            leader = self.root
        elif self.parent is not None:
            leader = clone_stub(self.parent[0], self.parent[1], set_tid=[root.pid])
        else:
            leader = spawn_stub([root.pid], options=STUB_OPTIONS)
        if self.on_spawn is not None and self.root is None:
            self.on_spawn(leader.pid)
        task = Task(root, leader, {root.pid: leader})
        self.tasks[root.pid] = task
        with leader.session():
            occupied = [(v.start, v.end) for v in Proc().maps(leader.pid)]
            sc = Scratch.map(leader, occupied, size=1 << 16)
            self._cscratch = sc.addr
        try:
            self._populate(task)
            self._groups()
        finally:
            self._end_helpers()
        self._zombies()
        return self.tasks

    def _populate(self, task: Task) -> None:
        """Fork the children of `task` (recursively), placing its setsid() right."""
        pi = task.img
        procs = self.model.procs
        kids = sorted(pi.children)
        heads: dict[int, list[int]] = {}  # a session whose leader exited -> its members here
        for c in kids:
            sid = procs[c].proc.sid
            if sid in self._dead and sid != pi.proc.sid:
                heads.setdefault(sid, []).append(c)
        own = [c for c in kids if not any(c in m for m in heads.values())]
        leader = pi.proc.sid == pi.pid
        early = [c for c in own if leader and procs[c].proc.sid not in (pi.pid, c)]
        for c in early:
            self._fork(task, c)
        if leader:
            task.leader.syscall_checked(NR.setsid)
        if self.on_session is not None and (leader or pi.pid == self.model.root):
            self.on_session(task, self._cscratch)
        for c in own:
            if c not in early:
                self._fork(task, c)
        for sid, members in sorted(heads.items()):
            helper = self._helper(task, sid)
            helper.syscall_checked(NR.setsid)
            if self.on_session is not None:  # its controlling terminal, if it had one
                fake = Process(pid=sid, ppid=pi.pid, pgid=sid, sid=sid)
                self.on_session(Task(ProcImage(fake), helper, {sid: helper}), self._cscratch)
            for c in members:
                self._fork(task, c, via=helper)

    def _helper(self, parent: Task, pid: int) -> Tracee:
        """A temporary leader with PID `pid`, forked by `parent`."""
        try:
            helper = clone_stub(parent.leader, self._cscratch, set_tid=[pid])
        except RestoreError as e:
            raise RestoreError(
                f"cannot create the temporary leader {pid} of a session or group whose "
                f"leader had exited: {e}",
                pid=pid,
            ) from e
        self._helpers[pid] = (helper, parent)
        return helper

    def _fork(self, parent: Task, pid: int, via: Tracee | None = None) -> None:
        """Fork process `pid` as a child of `parent`: by it, or `via` a temporary session
        leader that `parent` forked (CLONE_PARENT)."""
        img = self.model.procs[pid]
        share = 0
        if img.shares is not None and not img.zombie:
            share |= CLONE_FILES if img.shares.flags & ShareFlags.FILES else 0
            share |= CLONE_FS if img.shares.flags & ShareFlags.FS else 0
        if via is not None and share:
            raise RestoreError(
                f"process {pid}: shares its parent's fd table or fs struct and is in a "
                f"session whose leader had exited: not supported",
                pid=pid,
            )
        if via is None:
            child = clone_stub(parent.leader, self._cscratch, set_tid=[pid], share=share)
        else:
            child = clone_stub(via, self._cscratch, set_tid=[pid], sibling=True)
        task = Task(self.model.procs[pid], child, {pid: child})
        self.tasks[pid] = task
        self._populate(task)

    def _groups(self) -> None:
        root = self.model.root
        members = {t.img.proc.pgid: t for t in reversed(self.tasks.values())}
        for pgid in sorted(self._dead & set(members) - set(self._helpers)):
            # a group whose leader had exited: a temporary leader forked by a member
            self._helper(members[pgid], pgid).syscall_checked(NR.setpgid, 0, 0)
        # group leaders first, so the groups others join exist
        order = sorted(self.tasks.values(), key=lambda t: t.img.proc.pgid != t.pid)
        for task in order:
            want = task.img.proc.pgid
            if want == task.img.proc.sid and task.img.proc.sid == task.pid:
                continue  # a session leader leads its group already
            if task.pid == root and want not in self.tasks:
                # the root's group is outside the tree (a shell job): keep the restorer's
                self.external_session = True
                continue
            ret = task.leader.syscall(NR.setpgid, 0, want)
            if ret < 0:
                raise RestoreError(
                    f"process {task.pid}: setpgid to group {want} failed (errno {-ret})",
                    pid=task.pid,
                )

    def _end_helpers(self) -> None:
        """The temporary leaders exit (their members have joined) and their parents reap
        them, so that only the session or group ID stays."""
        for pid, (helper, parent) in list(self._helpers.items()):
            del self._helpers[pid]
            if helper.dead:
                continue
            with helper.session():
                helper.syscall(NR.exit_group, 0)
            _wait_dead(helper, pid)
            helper.close()
            if parent.leader.dead:
                continue  # a failed restore kills the tree
            ret = parent.leader.syscall(NR.wait4, pid, 0, WALL, 0)
            if ret != pid and ret != -errno.ECHILD:
                raise RestoreError(
                    f"process {parent.pid}: cannot reap the temporary leader {pid} (errno {-ret})",
                    pid=parent.pid,
                )

    def _zombies(self) -> None:
        for task in list(self.tasks.values()):
            if not task.img.zombie:
                continue
            t = task.leader
            status = task.img.proc.exit_status
            sig = status & 0x7F
            with t.session():
                comm = task.img.proc.comm.encode("utf-8", "surrogateescape")[:15] + b"\0"
                t.write_mem(self._cscratch, comm)
                t.syscall_checked(NR.prctl, PR_SET_NAME, self._cscratch)
                if not sig:
                    t.syscall(NR.exit_group, (status >> 8) & 0xFF)
                else:
                    # die of the same signal, without a core file (SIGKILL's action is
                    # always to kill and cannot be set: rt_sigaction(SIGKILL) is EINVAL)
                    t.write_mem(self._cscratch, SIGACTION.pack(SIG_DFL, 0, 0, 0) + bytes(16))
                    if sig not in (signal.SIGKILL, signal.SIGSTOP):
                        t.syscall_checked(NR.rt_sigaction, sig, self._cscratch, 0, 8)
                    t.syscall_checked(NR.prlimit64, 0, RLIMIT_CORE, self._cscratch + 32, 0)
            if sig:
                # a signal passed by a ptrace restart is requeued if blocked: unblock all
                t.set_sigmask(0)
                t.cont(sig)
            _wait_dead(t, task.pid)


def _wait_dead(t: Tracee, pid: int) -> None:
    """Collect the stub's exit as its tracer: the zombie then belongs to its parent."""
    for _ in range(100):
        if t.dead:  # the injector already collected the exit
            return
        try:
            status = t.wait(5.0)
        except NoSuchProcess:
            return
        except TimeoutError:
            break
        # a signal-delivery stop of the fatal signal, or an exit event: let it go on
        sig = (status >> 8) & 0xFF
        t.cont(sig if sig not in (signal.SIGTRAP, signal.SIGSTOP) else 0)
    raise RestoreError(f"zombie stub {pid} did not exit", pid=pid)
