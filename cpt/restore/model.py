"""The image as the restorer needs it: records indexed by process, file and path id."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Protocol

from cptimage.container import ImageReader
from cptimage.records import (
    Creds,
    EpollTarget,
    Fd,
    FileLock,
    FileOwner,
    GuardRegion,
    Header,
    HeaderFlags,
    InotifyWatch,
    Itimers,
    Mm,
    Mount,
    MountData,
    Namespace,
    NetAddr,
    NetLink,
    NetRoute,
    NsCreds,
    NsKind,
    OwnerKind,
    OwnerType,
    PagemapRun,
    PathObj,
    PendingSignal,
    PidFd,
    PipeData,
    PosixMq,
    PosixMqMsg,
    PosixTimer,
    Process,
    ProcessState,
    PtyState,
    Rlimits,
    SeccompFilter,
    SeccompStrict,
    SectionType,
    ShmemObject,
    Sigactions,
    SockOpts,
    SysvMsg,
    SysvMsq,
    SysvSem,
    SysvShm,
    TaskExtra,
    TaskShares,
    TaskState,
    Thread,
    ThreadSched,
    TtyInfo,
    UnixBind,
    UnixScm,
    UserNs,
    Uts,
    Vma,
)

from ..sys.files import RESOLVE_IN_ROOT, openat2


class NsOpener(Protocol):
    """Opens a file as a process of a user namespace would (userns.Donor)."""

    def open(self, ref: int, path: str, flags: int, ids: NsCreds, cap_eff: int) -> int: ...


@dataclasses.dataclass
class ProcImage:
    """Everything the image holds about one process."""

    proc: Process
    threads: list[Thread] = dataclasses.field(default_factory=list)
    creds: Creds | None = None
    ns_creds: NsCreds | None = None  # a VE with a user namespace: the ids inside it
    setgroups_denied: bool = False  # its user namespace denies setgroups(2)
    rlimits: Rlimits | None = None
    sigactions: Sigactions | None = None
    task: TaskState | None = None
    itimers: Itimers | None = None
    extra: TaskExtra | None = None
    shares: TaskShares | None = None  # its parent's fd table or fs struct (1.7)
    sched: list[ThreadSched] = dataclasses.field(default_factory=list)
    seccomp: list[SeccompFilter] = dataclasses.field(default_factory=list)
    strict: list[SeccompStrict] = dataclasses.field(default_factory=list)  # threads
    pending: list[PendingSignal] = dataclasses.field(default_factory=list)
    timers: list[PosixTimer] = dataclasses.field(default_factory=list)
    mm: Mm | None = None
    vmas: list[Vma] = dataclasses.field(default_factory=list)
    guards: list[GuardRegion] = dataclasses.field(default_factory=list)
    runs: list[PagemapRun] = dataclasses.field(default_factory=list)
    fds: list[Fd] = dataclasses.field(default_factory=list)
    children: list[int] = dataclasses.field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def zombie(self) -> bool:
        return self.proc.state == ProcessState.ZOMBIE


_PER_PROCESS = {
    Creds: "creds",
    NsCreds: "ns_creds",
    Rlimits: "rlimits",
    Sigactions: "sigactions",
    TaskState: "task",
    Itimers: "itimers",
    TaskExtra: "extra",
    TaskShares: "shares",
    Mm: "mm",
}
_LISTS = {
    Thread: "threads",
    ThreadSched: "sched",
    SeccompFilter: "seccomp",
    SeccompStrict: "strict",
    PendingSignal: "pending",
    PosixTimer: "timers",
    Vma: "vmas",
    GuardRegion: "guards",
    Fd: "fds",
}


class ImageModel:
    def __init__(self, reader: ImageReader) -> None:
        self.reader = reader
        self.header: Header = reader.header
        self.procs: dict[int, ProcImage] = {}
        self.paths: dict[int, PathObj] = {}
        self.files: dict[int, Any] = {}  # open-file descriptions by id
        self.pipe_data: dict[int, PipeData] = {}
        self.ttys: dict[int, TtyInfo] = {}  # terminals, by TtyInfo id (their own id space)
        self.pty_states: dict[int, PtyState] = {}  # by TtyInfo id (1.7)
        self.locks: list[FileLock] = []
        self.owners: list[FileOwner] = []  # F_SETOWN_EX/F_SETSIG of descriptions
        self.epoll_targets: dict[int, list[EpollTarget]] = {}  # by epoll id
        self.inotify_watches: dict[int, list[InotifyWatch]] = {}  # by inotify id
        self.shmem: dict[int, ShmemObject] = {}
        self.shmem_runs: dict[int, list[PagemapRun]] = {}
        self.shmem_fds: dict[int, int] = {}  # object id -> its fd in the restorer (filled there)
        self.sysv_shm: dict[int, SysvShm] = {}  # by shmem_id (its contents' object)
        self.sysv_sem: list[SysvSem] = []
        self.sysv_msq: list[SysvMsq] = []
        self.sysv_msg: list[SysvMsg] = []
        self.mq_msgs: dict[int, list[PosixMqMsg]] = {}
        self.ipc_own = False  # the tree had an IPC namespace of its own
        self.order: list[int] = []  # pids, parents before children
        # a VE: its namespaces are recreated, its processes get the ids they had inside
        self.ve = bool(self.header.flags & HeaderFlags.VE)
        self.mounts: list[Mount] = []
        self.mount_data: dict[int, bytes] = {}
        self.uts: Uts | None = None
        self.net: list[NetLink | NetAddr | NetRoute] = []
        self.userns: UserNs | None = None  # a VE that contains its root: its user namespace
        # where the restorer reaches the tree's root: "" (its own), or /proc/<init>/root
        # once a VE's root is built
        self.root_prefix = ""
        self.root_fd: int | None = None  # that root, open (O_PATH), once it is built
        # a VE that contains its root: who opens its files (userns.Donor), while it lives
        self.ns_opener: NsOpener | None = None
        self.trust = False  # --trust: the operator vouches for the image (creds.py)
        self._file_pids: dict[int, list[int]] | None = None
        self._path_pids: dict[int, list[int]] | None = None
        self.ghost_fds: dict[int, int] = {}  # ghost PathObj id -> its fd in the restorer
        self.sock_opts: dict[int, SockOpts] = {}  # by socket description id
        self.unix_bind: dict[int, UnixBind] = {}  # by unix socket description id
        self.unix_scm: dict[int, list[UnixScm]] = {}  # by receiving socket's description id
        self.tcp_close = False  # restore --tcp-close: TCP connections come back closed
        self.image_pids: dict[int, int] = {}  # a VE's pid -> the image's (its records')
        self._load()

    def _load(self) -> None:
        r = self.reader
        view = _NsView(r) if self.ve else None
        records = view.records if view else r.records
        if view is not None:
            self.image_pids = {ve: image for image, ve in view.pids.items()}
        for rec in records(SectionType.PROCESS):
            if isinstance(rec, Process):
                self.procs[rec.pid] = ProcImage(rec)
                self.order.append(rec.pid)
        for stype in (SectionType.PROCESS, SectionType.MM, SectionType.FDS):
            for rec in records(stype):
                if isinstance(rec, ShmemObject):
                    self.shmem[rec.id] = rec
                    continue
                pi = self.procs.get(getattr(rec, "pid", -1))
                if pi is None:
                    continue
                attr = _PER_PROCESS.get(type(rec))
                if attr:
                    setattr(pi, attr, rec)
                    continue
                lst = _LISTS.get(type(rec))
                if lst:
                    getattr(pi, lst).append(rec)
        for rec in records(SectionType.PAGEMAP):
            if not isinstance(rec, PagemapRun):
                continue
            if rec.owner_kind == OwnerKind.SHMEM:
                self.shmem_runs.setdefault(rec.owner, []).append(rec)
            elif rec.owner in self.procs:
                self.procs[rec.owner].runs.append(rec)
        for rec in records(SectionType.IPC):
            if isinstance(rec, SysvShm):
                self.sysv_shm[rec.shmem_id] = rec
            elif isinstance(rec, SysvSem):
                self.sysv_sem.append(rec)
            elif isinstance(rec, SysvMsq):
                self.sysv_msq.append(rec)
            elif isinstance(rec, SysvMsg):
                self.sysv_msg.append(rec)
            elif isinstance(rec, PosixMqMsg):
                self.mq_msgs.setdefault(rec.mq_id, []).append(rec)
            elif isinstance(rec, PosixMq):
                self.files[rec.id] = rec
        for rec in records(SectionType.NAMESPACES):
            if isinstance(rec, Namespace) and rec.kind == NsKind.IPC:
                self.ipc_own = bool(rec.flags & 1)
            elif isinstance(rec, Mount):
                self.mounts.append(rec)
            elif isinstance(rec, MountData):
                self.mount_data[rec.mnt_id] = rec.data
            elif isinstance(rec, Uts):
                self.uts = rec
            elif isinstance(rec, UserNs):
                self.userns = rec
            elif isinstance(rec, (NetLink, NetAddr, NetRoute)):
                self.net.append(rec)
        for rec in records(SectionType.FILES):
            if isinstance(rec, PathObj):
                self.paths[rec.id] = rec
            elif isinstance(rec, PipeData):
                self.pipe_data[rec.ino] = rec
            elif isinstance(rec, TtyInfo):
                self.ttys[rec.id] = rec
            elif isinstance(rec, PtyState):
                self.pty_states[rec.tty_id] = rec
            elif isinstance(rec, FileLock):
                self.locks.append(rec)
            elif isinstance(rec, FileOwner):
                self.owners.append(rec)
            elif isinstance(rec, EpollTarget):
                self.epoll_targets.setdefault(rec.epoll_id, []).append(rec)
            elif isinstance(rec, InotifyWatch):
                self.inotify_watches.setdefault(rec.inotify_id, []).append(rec)
            elif isinstance(rec, SockOpts):
                self.sock_opts[rec.file_id] = rec
            elif isinstance(rec, UnixBind):
                self.unix_bind[rec.file_id] = rec
            elif isinstance(rec, UnixScm):
                self.unix_scm.setdefault(rec.file_id, []).append(rec)
            elif hasattr(rec, "id"):
                self.files[rec.id] = rec
        for pi in self.procs.values():
            pi.setgroups_denied = self.userns is not None and not self.userns.setgroups
            pi.vmas.sort(key=lambda v: v.start)
            pi.runs.sort(key=lambda x: x.vaddr)
            pi.fds.sort(key=lambda f: f.fd)
            parent = self.procs.get(pi.proc.ppid)
            if parent is not None and pi.pid != self.root:
                parent.children.append(pi.pid)

    @property
    def root(self) -> int:
        return self.order[0]

    def all_ids(self) -> list[int]:
        """Every pid and tid the restore will claim."""
        ids = []
        for pi in self.procs.values():
            ids.append(pi.pid)
            ids += [t.tid for t in pi.threads if t.tid != pi.pid]
        return ids + sorted(self.dead_leaders())

    def dead_leaders(self) -> set[int]:
        """Sessions and groups whose leader had exited (the root's own outside ones
        excepted): restore makes a temporary leader with that PID."""
        root = self.procs[self.root].proc
        out = set()
        for pi in self.procs.values():
            if pi.proc.sid not in self.procs and pi.proc.sid != root.sid:
                out.add(pi.proc.sid)
            if pi.proc.pgid not in self.procs and pi.proc.pgid != root.pgid:
                out.add(pi.proc.pgid)
        return out

    def in_flight(self) -> set[int]:
        """Descriptions held by no process, only carried in a unix socket's queue."""
        return {f for scms in self.unix_scm.values() for m in scms for f in m.fds}

    def holders(self, file_id: int) -> list[int]:
        """The processes holding a description: by an fd, or (a file in flight) those
        holding a socket it travels in."""
        todo, seen = [file_id], {file_id}
        out: list[int] = []
        while todo and not out:
            ids, todo = todo, []
            for i in ids:
                out += [pi.pid for pi in self.procs.values() if any(f.file_id == i for f in pi.fds)]
                for sid, scms in self.unix_scm.items():
                    if sid not in seen and any(i in m.fds for m in scms):
                        seen.add(sid)
                        todo.append(sid)
        return sorted(set(out))

    def path(self, ident: int) -> PathObj:
        return self.paths[ident]

    def set_root(self, prefix: str) -> None:
        """The tree's root is the directory `prefix` names (a VE's, /proc/<init>/root):
        its paths resolve inside it from now on."""
        self.root_prefix = prefix
        self.root_fd = os.open(prefix, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        if self.root_fd is not None:
            os.close(self.root_fd)
            self.root_fd = None

    def open(self, path: str, flags: int, mode: int = 0) -> int:
        """Open the tree's absolute `path` as its processes see it: inside a VE's root
        (openat2 RESOLVE_IN_ROOT from the root's fd: neither ".." nor a symlink leaves it,
        and no /proc/<init>/root lookup, which needs the right to trace the init), else
        here."""
        if self.root_fd is None:
            return os.open(path, flags, mode)
        return openat2(self.root_fd, path, flags, mode, RESOLVE_IN_ROOT)

    def open_path(self, p: PathObj, flags: int, mode: int = 0) -> int:
        """open() of a PathObj; a ghost is the restorer's own fd (/proc/<restorer>/fd/N)."""
        if p.id in self.ghost_fds:
            return os.open(p.path, flags, mode)
        return self.open(p.path, flags, mode)

    # -- who holds what: whose credentials open it (restore/creds.py)

    def holders_of_file(self, ident: int) -> list[int]:
        """The live processes with an fd of open-file description `ident`, tree order."""
        if self._file_pids is None:
            fp: dict[int, list[int]] = {}
            for pid in self.order:
                for fd in self.procs[pid].fds:
                    pids = fp.setdefault(fd.file_id, [])
                    if pid not in pids:
                        pids.append(pid)
            self._file_pids = fp
        return self._file_pids.get(ident, [])

    def holders_of_path(self, ident: int) -> list[int]:
        """The live processes that open, map, run or stand in PathObj `ident` (through an
        open-file description, a VMA, their executable, cwd or root), tree order."""
        if self._path_pids is None:
            pp: dict[int, set[int]] = {}
            for desc in self.files.values():
                path_id = getattr(desc, "path_id", 0)
                if path_id:
                    pp.setdefault(path_id, set()).update(self.holders_of_file(desc.id))
            for pid in self.order:
                pi = self.procs[pid]
                ids = [v.file_id for v in pi.vmas if v.file_id]
                if pi.mm is not None and pi.mm.exe_id:
                    ids.append(pi.mm.exe_id)
                if pi.task is not None:
                    ids += [i for i in (pi.task.cwd_id, pi.task.root_id) if i]
                for i in ids:
                    pp.setdefault(i, set()).add(pid)
            rank = {pid: n for n, pid in enumerate(self.order)}
            self._path_pids = {k: sorted(v, key=rank.__getitem__) for k, v in pp.items()}
        return self._path_pids.get(ident, [])

    def host_path(self, p: PathObj) -> str:
        """Where the restorer opens `p`: inside a VE's root through /proc/<init>/root (a
        ghost is the restorer's own fd, named as such)."""
        if p.id in self.ghost_fds or not self.root_prefix:
            return p.path
        return self.root_prefix + p.path

    def mqueues(self) -> list[PosixMq]:
        """One description per POSIX queue (the one carrying its messages)."""
        seen: dict[int, PosixMq] = {}
        for rec in self.files.values():
            if isinstance(rec, PosixMq) and rec.ino not in seen:
                seen[rec.ino] = rec
        return list(seen.values())


class _NsView:
    """A VE image's records with process and thread ids as the VE saw them.

    The dump names processes by their PIDs in the dumper's namespace (Process.pid); a VE
    is restored into a new PID namespace where each gets the innermost id of its NSpid
    chain.  Every record that names a process or thread is translated once, here, so the
    restore works with the VE's own ids throughout (as a --pidns restore does)."""

    def __init__(self, reader: ImageReader) -> None:
        self.reader = reader
        self.pids: dict[int, int] = {}
        self.tids: dict[int, int] = {}
        for rec in reader.records(SectionType.PROCESS):
            if isinstance(rec, Process) and rec.nspid:
                self.pids[rec.pid] = rec.nspid[-1]
            elif isinstance(rec, Thread) and rec.nstid:
                self.tids[rec.tid] = rec.nstid[-1]

    def records(self, stype: SectionType) -> list[Any]:
        return [self._translate(rec) for rec in self.reader.records(stype)]

    def _pid(self, pid: int) -> int:
        return self.pids.get(pid, pid)

    def _translate(self, rec: Any) -> Any:
        changes: dict[str, int] = {}
        if isinstance(rec, Process):
            changes = dict(
                pid=self._pid(rec.pid),
                ppid=self._pid(rec.ppid) if rec.ppid else 0,
                pgid=rec.nspgid[-1] if rec.nspgid else rec.pgid,
                sid=rec.nssid[-1] if rec.nssid else rec.sid,
            )
        elif isinstance(rec, PagemapRun):
            if rec.owner_kind == OwnerKind.PROCESS:
                changes["owner"] = self._pid(rec.owner)
        elif isinstance(rec, TtyInfo):
            changes = dict(sid=self._pid(rec.sid), pgrp=self._pid(rec.pgrp))
        elif isinstance(rec, PidFd):
            changes["pid"] = self.pids.get(rec.pid, self.tids.get(rec.pid, rec.pid))
        elif isinstance(rec, FileOwner):
            owner = rec.owner
            if rec.owner_type == OwnerType.TID:
                owner = self.tids.get(owner, self.pids.get(owner, owner))
            else:
                owner = self._pid(owner)
            changes = dict(pid=self._pid(rec.pid), owner=owner)
        else:
            if hasattr(rec, "pid"):
                changes["pid"] = self._pid(rec.pid)
            if getattr(rec, "tid", 0):
                changes["tid"] = self.tids.get(rec.tid, rec.tid)
            fown = getattr(rec, "fown_pid", 0)
            if fown:
                changes["fown_pid"] = self._pid(fown) if fown > 0 else -self._pid(-fown)
        return dataclasses.replace(rec, **changes) if changes else rec
