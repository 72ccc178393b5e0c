"""Open-file descriptions and fd tables.

Every description is created ONCE, in the restorer, by the opener of its record type
(OPENERS); each process then pulls the ones it holds with an injected pidfd_getfd()
through a pidfd of the restorer that every stub inherited at fd `pidfd_slot`: the same
struct file, so descriptions shared across fork stay shared (one offset, one set of
flags).  Openers finish per-process state by injection once the fds are in place.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable

from cptimage.records import Fd, PidFd, RegFile, ShareFlags

from ..errors import RestoreError
from ..procfs.paths import pid_of_path
from ..sys.syscalls import NR
from . import (
    epoll,
    eventfds,
    files,
    inet,
    inotify,
    ipc,
    locks,
    netlink,
    owners,
    packet,
    pidfds,
    pipes,
    shmem,
    sockets,
    tty,
)
from .fdbase import Opener
from .model import ImageModel, ProcImage
from .pstree import Task

OPENERS: tuple[type, ...] = (
    files.Files,
    pipes.Pipes,
    shmem.Memfds,
    ipc.MessageQueues,
    eventfds.EventFds,
    inotify.Inotifies,
    epoll.Epolls,
    sockets.UnixSockets,
    inet.InetSockets,
    packet.PacketSockets,
    netlink.NetlinkSockets,
    tty.Ttys,
    pidfds.PidFds,
    locks.Locks,  # see locks.py: nothing after it closes fds
    owners.Owners,  # after the leases (taking one makes its taker the owner)
)


class FileRestorer:
    def __init__(self, model: ImageModel) -> None:
        self.model = model
        self.local: dict[int, int] = {}  # description id -> fd in this process
        self.openers: list[Opener] = [cls() for cls in OPENERS]
        self._by_type = {rt: op for op in self.openers for rt in op.records}
        # description id -> PID, for the /proc/PID files of the tree's own processes and
        # the pidfds
        self.own_proc: dict[int, int] = {}
        # pidfds of threads other than a leader: opened once their process has its threads
        # (install_late), the fds that hold them installed then
        self.late: set[int] = set()
        self._pending: dict[int, list[Fd]] = {}  # pid -> its fds of `late` descriptions
        # processes sharing one fd table (CLONE_FILES with a parent): the inherited pidfd
        # stays open in it until the last of them, in restore order, is restored
        owner: dict[int, int] = {}
        for pid in model.order:
            pi = model.procs[pid]
            owner[pid] = owner.get(pi.proc.ppid, pid) if _shares_table(pi) else pid
        last = {o: p for p, o in owner.items()}  # the last in order wins
        self._keep_slot = {p for p, o in owner.items() if last[o] != p}

    def open_all(self) -> None:
        """Open every description but those of /proc/PID files of the tree's own processes
        and pidfds, which exist once the tree is built: open_own_proc() opens them then."""
        used = {fd.file_id for pi in self.model.procs.values() for fd in pi.fds}
        used |= self.model.in_flight()  # carried in a unix socket's queue
        for ident in sorted(used):
            desc = self.model.files.get(ident)
            if desc is None:
                raise RestoreError(f"the image has no open-file description {ident}")
            op = self._by_type.get(type(desc))
            if op is None:
                raise RestoreError(f"cannot restore a {type(desc).__name__} yet")
            pid = desc.pid if isinstance(desc, PidFd) else self._own_proc_pid(desc)
            if pid is not None:
                self.own_proc[ident] = pid
                continue
            self.local[ident] = op.open(self.model, desc)

    def after_build(self, host_pid: Callable[[int], int]) -> None:
        """The tree's processes exist (stubs): openers with an `after_build` (unix sockets:
        their queues carry files and credentials naming processes) complete their
        descriptions.  `host_pid` maps a pid of the image to this host's."""
        for op in self.openers:
            fin = getattr(op, "after_build", None)
            if fin is not None:
                fin(self.model, self.local, host_pid)

    def _own_proc_pid(self, desc: object) -> int | None:
        if not isinstance(desc, RegFile):
            return None
        pid = pid_of_path(self.model.path(desc.path_id).path)
        return pid if pid in self.model.procs else None

    def open_own_proc(self, host_pids: dict[int, int]) -> None:
        """Open the /proc/PID files of the tree's own processes, now that the tree is built
        (`host_pids`: image PID -> PID on this host). Outside a VE, under --pidns the host
        /proc shows the copy under another PID: refused rather than opening the original's."""
        for ident, pid in self.own_proc.items():
            desc = self.model.files[ident]
            if isinstance(desc, PidFd):
                if pid != pidfds.REAPED and pid not in self.model.procs:
                    self.late.add(ident)  # a thread: it does not exist yet
                    continue
                op = self._by_type[PidFd]
                assert isinstance(op, pidfds.PidFds)
                self.local[ident] = op.open_built(desc, lambda p: host_pids.get(p, p))
                continue
            if not self.model.root_prefix and host_pids.get(pid, pid) != pid:
                raise RestoreError(
                    f"{self.model.path(desc.path_id).path}: a file of the tree's own process in "
                    "procfs cannot be reopened under --pidns; restore without --pidns"
                )
            self.local[ident] = self._by_type[type(desc)].open(self.model, desc)

    def install(self, task: Task, pidfd_slot: int) -> None:
        """Give the task exactly its dumped fd table; closes the inherited pidfd last.  A
        process sharing its parent's table (CLONE_FILES) has it already."""
        t = task.leader
        call = t.syscall_checked
        if _shares_table(task.img):
            if task.pid not in self._keep_slot:
                call(NR.close, pidfd_slot)
            for op in self.openers:
                op.after_install(self.model, task, self.local)
            return
        if pidfd_slot > 0:
            call(NR.close_range, 0, pidfd_slot - 1, 0)
        call(NR.close_range, pidfd_slot + 1, 0xFFFFFFFF, 0)
        for fd in task.img.fds:
            if fd.file_id in self.late:
                self._pending.setdefault(task.pid, []).append(fd)
                continue
            self._pull(task, pidfd_slot, fd)
        if task.pid not in self._pending and task.pid not in self._keep_slot:
            call(NR.close, pidfd_slot)
        for op in self.openers:
            op.after_install(self.model, task, self.local)

    def _pull(self, task: Task, pidfd_slot: int, fd: Fd) -> None:
        call = task.leader.syscall_checked
        got = call(NR.pidfd_getfd, pidfd_slot, self.local[fd.file_id], 0)
        cloexec = fd.flags & fcntl.FD_CLOEXEC
        if got != fd.fd:
            call(NR.dup3, got, fd.fd, os.O_CLOEXEC if cloexec else 0)
            call(NR.close, got)
        elif not cloexec:
            call(NR.fcntl, got, fcntl.F_SETFD, 0)  # pidfd_getfd always sets FD_CLOEXEC

    def install_late(self, task: Task, pidfd_slot: int, host_tid: Callable[[int], int]) -> None:
        """The task's threads exist: its pidfds of threads, then the inherited pidfd closed.
        A thread of a process restored later does not exist yet: refused."""
        pending = self._pending.pop(task.pid, None)
        if pending is None:
            return
        op = self._by_type[PidFd]
        assert isinstance(op, pidfds.PidFds)
        for fd in pending:
            if fd.file_id not in self.local:
                desc = self.model.files[fd.file_id]
                try:
                    self.local[fd.file_id] = op.open_built(desc, host_tid)
                except RestoreError:
                    raise RestoreError(
                        f"process {task.pid} fd {fd.fd}: a pidfd of thread {desc.pid}, which "
                        "does not exist yet (a thread of a process restored after it): not "
                        "supported",
                        pid=task.pid,
                    ) from None
            self._pull(task, pidfd_slot, fd)
        if task.pid not in self._keep_slot:
            task.leader.syscall_checked(NR.close, pidfd_slot)

    def finish(self) -> None:
        """The whole tree is restored and about to run: openers with a `finish` (TCP
        connections leaving repair mode) complete their work."""
        for op in self.openers:
            fin = getattr(op, "finish", None)
            if fin is not None:
                fin()

    def close(self) -> None:
        for fd in set(self.local.values()):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.local.clear()
        for op in self.openers:
            op.close()


def max_fd(model: ImageModel) -> int:
    return max((fd.fd for pi in model.procs.values() for fd in pi.fds), default=2)


def _shares_table(pi: ProcImage) -> bool:
    return pi.shares is not None and bool(pi.shares.flags & ShareFlags.FILES)
