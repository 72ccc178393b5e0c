"""Open-file descriptions and fd tables.

Every description is created ONCE, in the restorer: files opened and positioned, pipes
created, sized and refilled, FIFOs opened behind a holder that keeps their buffer alive.
Each process then pulls the ones it holds with an injected pidfd_getfd() through a pidfd
of the restorer that every stub inherited at fd PIDFD_SLOT: the same struct file, so
descriptions shared across fork stay shared (one offset, one set of flags).
"""

from __future__ import annotations

import fcntl
import os

from cptimage.records import Fifo, Pipe, RegFile

from ..errors import RestoreError
from ..sys.syscalls import NR
from .model import ImageModel
from .tree import Task

O_ACCMODE = 0o3
# flags F_SETFL can change; the rest are fixed at open
SETFL_MASK = os.O_APPEND | os.O_NONBLOCK | os.O_ASYNC | os.O_DIRECT | os.O_NOATIME
OPEN_IGNORE = os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_NOCTTY
F_SETFD = 2
FD_CLOEXEC = 1


class FileRestorer:
    def __init__(self, model: ImageModel) -> None:
        self.model = model
        self.local: dict[int, int] = {}  # description id -> fd in this process
        self._holders: list[int] = []
        self._pipes: dict[int, tuple[int, int]] = {}
        self._ends_used: set[int] = set()

    def open_all(self) -> None:
        used = {fd.file_id for pi in self.model.procs.values() for fd in pi.fds}
        for ident in sorted(used):
            desc = self.model.files.get(ident)
            if desc is None:
                raise RestoreError(f"the image has no open-file description {ident}")
            self.local[ident] = self._open(desc)

    def _open(self, desc: object) -> int:
        if isinstance(desc, RegFile):
            path = self.model.path(desc.path_id).path
            try:
                fd = os.open(path, (desc.flags & ~OPEN_IGNORE) | os.O_CLOEXEC)
            except OSError as e:
                raise RestoreError(f"cannot open {path}: {e.strerror}") from None
            try:
                os.lseek(fd, desc.pos, os.SEEK_SET)
            except OSError:
                pass  # not seekable (a character device): nothing to restore
            return fd
        if isinstance(desc, Pipe):
            r, w = self._pipe(desc.ino)
            end = w if desc.flags & O_ACCMODE == os.O_WRONLY else r
            return self._claim(end, desc.flags)
        if isinstance(desc, Fifo):
            path = self.model.path(desc.path_id).path
            if desc.ino not in self._pipes:
                # O_RDWR never blocks on a FIFO and keeps its buffer alive while we work
                holder = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
                self._holders.append(holder)
                self._refill(desc.ino, holder, holder)
                self._pipes[desc.ino] = (holder, holder)
            fd = os.open(path, (desc.flags & ~OPEN_IGNORE) | os.O_NONBLOCK | os.O_CLOEXEC)
            fcntl.fcntl(fd, fcntl.F_SETFL, desc.flags & SETFL_MASK)
            return fd
        raise RestoreError(f"cannot restore a {type(desc).__name__} yet")

    def _pipe(self, ino: int) -> tuple[int, int]:
        if ino not in self._pipes:
            r, w = os.pipe2(os.O_CLOEXEC)
            self._pipes[ino] = (r, w)
            self._refill(ino, r, w)
        return self._pipes[ino]

    def _refill(self, ino: int, r: int, w: int) -> None:
        pd = self.model.pipe_data.get(ino)
        if pd is None:
            return
        if pd.capacity:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, pd.capacity)
        if pd.data:
            fl = fcntl.fcntl(w, fcntl.F_GETFL)
            fcntl.fcntl(w, fcntl.F_SETFL, fl | os.O_NONBLOCK)
            if os.write(w, pd.data) != len(pd.data):
                raise RestoreError(f"pipe {ino}: cannot refill {len(pd.data)} pending bytes")
            fcntl.fcntl(w, fcntl.F_SETFL, fl)

    def _claim(self, end: int, flags: int) -> int:
        """A description of this pipe end: the end itself once, new ones after that."""
        if end in self._ends_used:
            fd = os.open(f"/proc/self/fd/{end}", (flags & O_ACCMODE) | os.O_CLOEXEC)
        else:
            self._ends_used.add(end)
            fd = end
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & SETFL_MASK)
        return fd

    def install(self, task: Task, pidfd_slot: int) -> None:
        """Give the task exactly its dumped fd table; closes the inherited pidfd last."""
        t = task.leader
        call = t.syscall_checked
        if pidfd_slot > 0:
            call(NR.close_range, 0, pidfd_slot - 1, 0)
        call(NR.close_range, pidfd_slot + 1, 0xFFFFFFFF, 0)
        for fd in task.img.fds:
            src = self.local[fd.file_id]
            got = call(NR.pidfd_getfd, pidfd_slot, src, 0)
            cloexec = fd.flags & FD_CLOEXEC
            if got != fd.fd:
                call(NR.dup3, got, fd.fd, os.O_CLOEXEC if cloexec else 0)
                call(NR.close, got)
            elif not cloexec:
                call(NR.fcntl, got, F_SETFD, 0)  # pidfd_getfd always sets FD_CLOEXEC
        call(NR.close, pidfd_slot)

    def close(self) -> None:
        fds = set(self.local.values()) | set(self._holders)
        for r, w in self._pipes.values():
            fds |= {r, w}
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.local.clear()
        self._pipes.clear()


def max_fd(model: ImageModel) -> int:
    return max((fd.fd for pi in model.procs.values() for fd in pi.fds), default=2)
