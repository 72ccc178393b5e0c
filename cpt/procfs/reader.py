"""The reader: one method per file under ``<root>/<pid>/``, one error translator.

``Proc("/proc")`` reads the live /proc; ``Proc("fixtures/proc/zoo")`` reads captured files
and symlinks exactly the same way.  Every OSError of a read leaves through one translator
(``Proc._errors``, psutil's wrap_exceptions):
ENOENT/ESRCH -> NoSuchProcess, or ZombieProcess when <pid>/stat says Z, or the original
FileNotFoundError when the process is alive (the file or fd is what is missing);
EACCES/EPERM -> AccessDenied naming the pid and the path.  The exceptions carry ``pid``
and ``path``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

from cpt.errors import AccessDenied, NoSuchProcess, ZombieProcess

from ._common import dec, read_all, read_file
from .auxv import AuxvEntry, parse_auxv
from .fdinfo import FdInfo, parse_fdinfo
from .fds import FdTarget, parse_fd_target
from .limits import RLimit, parse_limits
from .maps import Vma, parse_maps, parse_smaps_vmflags
from .net import INET_FAMILY, InetSocket, UnixSocket, parse_inet_sockets, parse_unix_sockets
from .ns import IdMapping, MountInfo, parse_id_map, parse_mountinfo, parse_ns_link
from .paths import ROOT
from .stat import (
    ProcStat,
    ProcStatus,
    parse_children,
    parse_stat,
    parse_status,
    stat_processor,
    stat_state,
    status_sigcgt,
    status_tgid,
)
from .timers import PosixTimer, parse_timers


class Proc:
    """Reader of ``<root>/<pid>/...``; ``root`` is "/proc" or a captured fixture tree."""

    def __init__(self, root: str = ROOT) -> None:
        self.root = root.rstrip("/") or "/"

    def __repr__(self) -> str:
        return f"Proc({self.root!r})"

    # ---- error translation: the one place an OSError becomes a domain error ----

    def _path(self, pid: int, name: str, tid: int | None = None) -> str:
        if tid is None:
            return f"{self.root}/{pid}/{name}"
        return f"{self.root}/{pid}/task/{tid}/{name}"

    def _stat_or_none(self, pid: int) -> ProcStat | None:
        try:
            return parse_stat(read_file(f"{self.root}/{pid}/stat"))
        except (OSError, ValueError, IndexError):
            return None

    def state(self, pid: int) -> str | None:
        """The state letter of <pid>/stat (R, S, D, T, t, Z, X, ...); None if it cannot be read."""
        try:
            return stat_state(read_file(f"{self.root}/{pid}/stat"))
        except (OSError, ValueError, IndexError):
            return None

    def _zombie(self, pid: int, path: str) -> ZombieProcess:
        st = self._stat_or_none(pid)
        if st is not None and st.num_threads > 1:
            # the thread-group leader called pthread_exit() while other threads run: it shows
            # Z, and its exe, cwd, fd/, maps, ... are gone or EMPTY, though the process lives
            return ZombieProcess(
                pid,
                f"the main thread of process {pid} has exited while {st.num_threads - 1} other "
                f"thread(s) run; {path} is gone: read /proc/{pid}/task/<tid>/ instead",
                path=path,
            )
        return ZombieProcess(pid, f"process {pid} is a zombie: {path} is gone", path=path)

    def _raise_if_zombie(self, pid: int, path: str) -> None:
        """For files a zombie leaves EMPTY rather than missing (maps, smaps, fd/, auxv)."""
        if self.state(pid) == "Z":
            raise self._zombie(pid, path)

    def _translate(self, err: OSError, pid: int, path: str) -> Exception:
        if err.errno in (errno.EACCES, errno.EPERM):
            return AccessDenied(
                f"cannot read {path}: {err.strerror}; inspecting process {pid} needs root "
                "(CAP_SYS_PTRACE) or the same uid without a ptrace restriction",
                pid=pid,
                path=path,
            )
        if err.errno in (errno.ENOENT, errno.ESRCH):
            state = self.state(pid)
            if state is None:
                return NoSuchProcess(pid, path=path)
            if state == "Z":
                return self._zombie(pid, path)
            if err.errno == errno.ESRCH:  # the task is past exit_mm() but not yet a zombie
                return NoSuchProcess(pid, f"process {pid} is exiting ({path})", path=path)
            # the process lives: what is missing is the file, an fd or a task; like psutil,
            # hand the FileNotFoundError to the caller, who knows what it asked for
        return err

    @contextmanager
    def _errors(self, pid: int, path: str) -> Iterator[None]:
        try:
            yield
        except OSError as e:
            exc = self._translate(e, pid, path)
            if exc is e:
                raise
            raise exc from e

    def _read(self, pid: int, name: str, tid: int | None = None, hint: int = 4096) -> bytes:
        path = self._path(pid, name, tid)
        with self._errors(pid, path):
            return read_file(path, hint)

    def _read_seq(self, pid: int, name: str, tid: int | None = None) -> bytes:
        path = self._path(pid, name, tid)
        with self._errors(pid, path):
            data = read_all(path)
        if not data and name in ("maps", "smaps"):
            self._raise_if_zombie(pid, path)  # a zombie's maps reads as empty, not missing
        return data

    def _readlink(self, pid: int, name: str) -> str:
        path = self._path(pid, name)
        with self._errors(pid, path):
            return os.readlink(path)

    def _vanished(self, pid: int, path: str) -> None:
        """After an entry vanished mid-listing: raise if the whole process went with it."""
        state = self.state(pid)
        if state is None:
            raise NoSuchProcess(pid, path=path)
        if state == "Z":
            raise self._zombie(pid, path)

    def _listdir_ints(self, pid: int, name: str) -> list[int]:
        path = self._path(pid, name)
        with self._errors(pid, path):
            return sorted(int(x) for x in os.listdir(path) if x.isdigit())

    # ---- processes and tasks ----

    def pids(self) -> list[int]:
        return sorted(int(x) for x in os.listdir(self.root) if x.isdigit())

    def exists(self, pid: int) -> bool:
        return self.state(pid) is not None

    def tgid(self, tid: int) -> int:
        """The thread-group id (the process id) of a thread id."""
        return status_tgid(self._read(tid, "status"))

    def current_cpu(self) -> int:
        """The CPU the calling thread last ran on (field 39 of <root>/thread-self/stat)."""
        with open(f"{self.root}/thread-self/stat", "rb") as f:
            return stat_processor(f.read())

    def last_cpu(self, tid: int) -> int:
        """The CPU thread `tid` last ran on (field 39 of <root>/TID/stat)."""
        with open(f"{self.root}/{tid}/stat", "rb") as f:
            return stat_processor(f.read())

    def tasks(self, pid: int) -> list[int]:
        """TIDs of the thread group, sorted (the leader's tid is the pid)."""
        return self._listdir_ints(pid, "task")

    def children(self, pid: int) -> list[int]:
        """Children of every thread of the process (task/*/children), sorted."""
        out: list[int] = []
        for tid in self.tasks(pid):
            try:
                # a multi-record seq file: a short read is not the end, unlike stat
                out += parse_children(self._read_seq(pid, "children", tid))
            except FileNotFoundError:  # the thread exited since tasks()
                self._vanished(pid, self._path(pid, "children", tid))
        return sorted(out)

    # ---- single files ----

    def stat(self, pid: int, tid: int | None = None) -> ProcStat:
        return parse_stat(self._read(pid, "stat", tid))

    def caught_signals(self, tid: int) -> int:
        """SigCgt of thread `tid` (only that field of <root>/TID/status)."""
        return status_sigcgt(self._read(tid, "status"))

    def status(self, pid: int, tid: int | None = None) -> ProcStatus:
        return parse_status(self._read(pid, "status", tid))

    def comm(self, pid: int, tid: int | None = None) -> str:
        """Raw task name (the file adds one '\\n'; the name itself may hold one)."""
        data = self._read(pid, "comm", tid)
        return dec(data[:-1] if data.endswith(b"\n") else data)

    def maps(self, pid: int, tid: int | None = None) -> list[Vma]:
        """Mappings; ZombieProcess for a zombie (whose maps file reads as empty).  Pass a
        live ``tid`` when the thread-group leader has exited before its threads."""
        return parse_maps(self._read_seq(pid, "maps", tid))

    def pagemap_fd(self, pid: int) -> int:
        """An O_RDONLY fd on PID's pagemap (os.close it); NoSuchProcess if it went."""
        path = self._path(pid, "pagemap")
        with self._errors(pid, path):
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def smaps_vmflags(
        self, pid: int, tid: int | None = None
    ) -> dict[tuple[int, int], frozenset[str]]:
        return parse_smaps_vmflags(self._read_seq(pid, "smaps", tid))

    def limits(self, pid: int) -> list[RLimit]:
        """Rlimits as the kernel shows them: works where prlimit(pid) needs CAP_SYS_RESOURCE."""
        return parse_limits(self._read(pid, "limits"))

    def timers(self, pid: int) -> list[PosixTimer]:
        return parse_timers(self._read_seq(pid, "timers"))

    def mountinfo(self, pid: int) -> list[MountInfo]:
        return parse_mountinfo(self._read_seq(pid, "mountinfo"))

    def auxv(self, pid: int) -> list[AuxvEntry]:
        data = self._read(pid, "auxv")
        if not data:
            self._raise_if_zombie(pid, self._path(pid, "auxv"))
        return parse_auxv(data)

    def personality(self, pid: int) -> int:
        return int(self._read(pid, "personality"), 16)

    def oom_score_adj(self, pid: int) -> int:
        return int(self._read(pid, "oom_score_adj"))

    def timerslack_ns(self, pid: int) -> int:
        return int(self._read(pid, "timerslack_ns"))

    def loginuid(self, pid: int) -> int:
        """The audit login uid (4294967295: unset)."""
        return int(self._read(pid, "loginuid"))

    def cgroup2(self, pid: int) -> str:
        """The process's cgroup v2 path ("0::PATH" line), relative to the cgroup2 mount."""
        for line in self._read(pid, "cgroup").decode().splitlines():
            if line.startswith("0::"):
                return line[3:] or "/"
        return "/"

    # ---- links ----

    def exe(self, pid: int) -> str:
        """Link text; may end in " (deleted)": see split_deleted()."""
        return self._readlink(pid, "exe")

    def cwd(self, pid: int) -> str:
        return self._readlink(pid, "cwd")

    def root_dir(self, pid: int) -> str:
        """/proc/PID/root as the reader sees it (a chrooted process shows its chroot)."""
        return self._readlink(pid, "root")

    def ns(self, pid: int) -> dict[str, int]:
        """Namespace name (pid, mnt, pid_for_children, ...) -> inode."""
        path = self._path(pid, "ns")
        out = {}
        with self._errors(pid, path):
            for name in sorted(os.listdir(path)):
                out[name] = parse_ns_link(os.readlink(f"{path}/{name}"))[1]
        return out

    def uid_map(self, pid: int) -> tuple[IdMapping, ...]:
        """The process's user namespace's uid map, as the READER's namespace sees it (the
        initial namespace's identity map "0 0 4294967295" when it has none of its own)."""
        return parse_id_map(self._read(pid, "uid_map"))

    def gid_map(self, pid: int) -> tuple[IdMapping, ...]:
        return parse_id_map(self._read(pid, "gid_map"))

    def setgroups(self, pid: int) -> str:
        """ "allow" or "deny": may the process's user namespace call setgroups(2)?"""
        return dec(self._read(pid, "setgroups")).strip()

    def ns_inode(self, pid: int, kind: str) -> int:
        """The inode of one namespace of the process (``kind``: net, ipc, mnt, ...)."""
        path = self._path(pid, f"ns/{kind}")
        with self._errors(pid, path):
            return os.stat(path).st_ino

    def open_ns(self, pid: int, kind: str) -> int:
        """An O_RDONLY fd on the process's ``kind`` namespace, for setns(2)."""
        path = self._path(pid, f"ns/{kind}")
        with self._errors(pid, path):
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    # ---- fds ----

    def fds(self, pid: int) -> list[tuple[int, str]]:
        """(fd, link target) sorted by fd.  An fd closed while listing is left out;
        ZombieProcess for a zombie (whose fd/ lists as empty)."""
        path = self._path(pid, "fd")
        out = []
        lost = False
        with self._errors(pid, path):
            dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                for name in os.listdir(dfd):
                    try:
                        # relative to the directory fd: one path component to resolve
                        out.append((int(name), os.readlink(name, dir_fd=dfd)))
                    except FileNotFoundError:
                        lost = True
            finally:
                os.close(dfd)
        if lost:
            self._vanished(pid, path)
        elif not out:
            self._raise_if_zombie(pid, path)
        out.sort()
        return out

    def fd_targets(self, pid: int) -> dict[int, FdTarget]:
        return {fd: parse_fd_target(t) for fd, t in self.fds(pid)}

    def fdinfo(self, pid: int, fd: int) -> FdInfo:
        return parse_fdinfo(self._read(pid, f"fdinfo/{fd}"))

    def fdinfos(self, pid: int, fds: list[int] | None = None) -> dict[int, FdInfo]:
        """fdinfo of every fd (or of ``fds``), through one directory fd.  An fd closed
        while reading is left out."""
        path = self._path(pid, "fdinfo")
        out = {}
        lost = False
        with self._errors(pid, path):
            dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                names = [str(x) for x in fds] if fds is not None else os.listdir(dfd)
                for name in names:
                    try:
                        out[int(name)] = parse_fdinfo(read_file(name, 4096, dir_fd=dfd))
                    except FileNotFoundError:
                        lost = True
            finally:
                os.close(dfd)
        if lost:
            self._vanished(pid, path)
        return dict(sorted(out.items()))

    # ---- sockets of the process's network namespace ----

    def unix_sockets(self, pid: int) -> dict[int, UnixSocket]:
        return parse_unix_sockets(self._read_seq(pid, "net/unix"))

    def inet_sockets(self, pid: int, proto: str) -> dict[int, InetSocket]:
        """proto: "tcp", "tcp6", "udp", "udp6"."""
        return parse_inet_sockets(self._read_seq(pid, f"net/{proto}"), INET_FAMILY[proto])
