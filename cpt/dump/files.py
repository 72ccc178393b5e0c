"""File descriptors and the open-file descriptions they refer to.

Each open-file description becomes ONE record, shared by every fd (in any process of the
tree) that refers to it: candidates with the same inode are compared with
kcmp(KCMP_FILE), so a file opened before fork keeps one shared offset after restore.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from typing import Any

from cptimage.records import Fd, Fifo, Pipe, PipeData, RegFile

from ..errors import UnsupportedError
from ..proc import FdInfo, FdKind, FdTarget
from ..sys.files import tee
from ..sys.task import KCMP_FILE, kcmp
from .paths import PathTable

O_CLOEXEC = 0o2000000
FD_CLOEXEC = 1
SPLICE_F_NONBLOCK = 2

# character devices whose open files carry no state beyond flags and offset
SIMPLE_CHARDEVS = {
    (1, 3): "/dev/null",
    (1, 5): "/dev/zero",
    (1, 7): "/dev/full",
    (1, 8): "/dev/random",
    (1, 9): "/dev/urandom",
}


def unsupported_fd(pid: int, fd: int, ft: FdTarget) -> str | None:
    """Why this fd cannot be dumped yet, or None.  Also run before freezing."""
    where = f"process {pid} fd {fd}"
    if ft.kind not in (FdKind.FILE, FdKind.PIPE):
        return f"{where}: {ft.kind.value} ({ft.target}) is not supported yet"
    if ft.kind is FdKind.FILE:
        if ft.deleted:
            return f"{where}: {ft.path} is a deleted file; not supported yet"
        try:
            st = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError as e:
            return f"{where}: cannot stat {ft.target}: {e.strerror}"
        if stat.S_ISSOCK(st.st_mode) or stat.S_ISBLK(st.st_mode):
            return f"{where}: {ft.target} ({_kind_name(st.st_mode)}) is not supported yet"
        if stat.S_ISCHR(st.st_mode):
            dev = (os.major(st.st_rdev), os.minor(st.st_rdev))
            if dev not in SIMPLE_CHARDEVS:
                return (
                    f"{where}: character device {ft.target} ({dev[0]}:{dev[1]}) is not "
                    f"supported yet"
                )
    return None


def _kind_name(mode: int) -> str:
    return "socket" if stat.S_ISSOCK(mode) else "block device"


class FileTable:
    def __init__(self, paths: PathTable) -> None:
        self.paths = paths
        self.records: list[Any] = []
        self.pipe_data: dict[int, PipeData] = {}
        self._groups: dict[tuple[Any, ...], list[tuple[int, int, int]]] = {}
        self._next = 1

    def dump_fd(self, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> Fd:
        why = unsupported_fd(pid, fd, ft)
        if why:
            raise UnsupportedError(why, pid=pid)
        cloexec = FD_CLOEXEC if fi.flags & O_CLOEXEC else 0
        flags = fi.flags & ~O_CLOEXEC
        if ft.kind is FdKind.PIPE:
            assert ft.inode is not None
            key: tuple[Any, ...] = ("pipe", ft.inode)
        else:
            st = os.stat(f"/proc/{pid}/fd/{fd}")
            key = ("file", st.st_dev, st.st_ino)
        ident = self._shared(key, pid, fd)
        if ident is None:
            ident = self._next
            self._next += 1
            self._groups.setdefault(key, []).append((pid, fd, ident))
            if ft.kind is FdKind.PIPE:
                assert ft.inode is not None
                self.records.append(Pipe(id=ident, flags=flags, ino=ft.inode))
                self._pipe_data(pid, fd, ft.inode)
            elif stat.S_ISFIFO(st.st_mode):
                assert ft.path is not None
                path_id = self.paths.add(
                    ft.path, st, mnt_id=fi.mnt_id, what=f"process {pid} fd {fd}"
                )
                self.records.append(Fifo(id=ident, path_id=path_id, flags=flags, ino=st.st_ino))
                self._pipe_data(pid, fd, st.st_ino)
            else:
                assert ft.path is not None
                path_id = self.paths.add(
                    ft.path, st, mnt_id=fi.mnt_id, what=f"process {pid} fd {fd}"
                )
                self.records.append(RegFile(id=ident, path_id=path_id, flags=flags, pos=fi.pos))
        return Fd(pid=pid, fd=fd, file_id=ident, flags=cloexec)

    def _shared(self, key: tuple[Any, ...], pid: int, fd: int) -> int | None:
        for opid, ofd, ident in self._groups.get(key, ()):
            if kcmp(pid, opid, KCMP_FILE, fd, ofd) == 0:
                return ident
        return None

    def _pipe_data(self, pid: int, fd: int, ino: int) -> None:
        if ino in self.pipe_data:
            return
        cap, data = read_pipe(pid, fd)
        self.pipe_data[ino] = PipeData(capacity=cap, ino=ino, data=data)


def read_pipe(pid: int, fd: int) -> tuple[int, bytes]:
    """Capacity and pending bytes of a pipe or FIFO, without consuming them.

    Opening /proc/PID/fd/N read-only gives a new reader of the same pipe, whichever end N
    is; tee(2) duplicates its buffers into a private pipe of the same capacity.
    """
    rfd = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        cap = fcntl.fcntl(rfd, fcntl.F_GETPIPE_SZ)
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, cap)
            try:
                n = tee(rfd, w, cap, SPLICE_F_NONBLOCK)
            except OSError as e:
                if e.errno != errno.EAGAIN:  # EAGAIN: the pipe is empty
                    raise
                n = 0
            chunks = []
            while n > 0:
                b = os.read(r, n)
                chunks.append(b)
                n -= len(b)
            return cap, b"".join(chunks)
        finally:
            os.close(r)
            os.close(w)
    finally:
        os.close(rfd)
