"""Deleted-but-open files carried in the image (PathObj GHOST), recreated before anything
is opened or mapped.

Each ghost becomes a new unlinked file with the dumped contents, mode, owner and mtime:
created under its old name when that is free and unlinked at once (so /proc/PID/fd and
/proc/PID/maps show "<old name> (deleted)" as before), else as an O_TMPFILE in the same
directory, else under a temporary name there (or in the temporary directory when its own
is gone or refuses), unlinked right after opening.  The restorer keeps it open read-only
(a writer would make PR_SET_MM_MAP refuse it as an executable: ETXTBSY) for as long as it
runs, and THIS is the one place a ghost path resolves: the model's PathObj then names
/proc/<restorer>/fd/N, which the restorer's openers (Files.open) open by path; a stub
(mm.open_in_target) takes the restorer's fd instead (pidfd_getfd: a VE's stub cannot see
the restorer in its /proc) and reopens it through its own /proc/self/fd.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import stat
import tempfile

from cptimage.records import PathFlags, PathObj

from ..errors import RestoreError
from ..procfs import fd_path
from .model import ImageModel

O_NEW = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


class Ghosts:
    def __init__(self, model: ImageModel) -> None:
        self.model = model
        self.fds: list[int] = []

    def create(self) -> None:
        for p in list(self.model.paths.values()):
            if p.flags & PathFlags.GHOST:
                fd = recreate(p, self.model.root_prefix + p.path)
                self.fds.append(fd)
                self.model.paths[p.id] = dataclasses.replace(p, path=fd_path(os.getpid(), fd))
                self.model.ghost_fds[p.id] = fd

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


def recreate(p: PathObj, where: str | None = None) -> int:
    """The ghost `p` as a new unlinked file near `where` (its path where the restorer
    reaches it; p.path by default); returns a read-only fd of it."""
    try:
        fd = _unlinked(where or p.path)
    except OSError as e:
        raise RestoreError(f"cannot recreate the deleted file {p.path}: {e.strerror}") from None
    try:
        view = memoryview(p.contents)
        while view:
            view = view[os.write(fd, view) :]
        os.fchown(fd, p.uid, p.gid)
        os.fchmod(fd, stat.S_IMODE(p.mode))  # after chown, which clears set-id bits
        os.utime(fd, ns=(p.mtime_ns, p.mtime_ns))
        return os.open(fd_path("self", fd), os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(fd)


def _unlinked(path: str) -> int:
    """A new empty file, already unlinked, near `path`."""
    d, name = os.path.split(path)
    if os.path.isdir(d):
        try:
            fd = os.open(path, O_NEW, 0o600)
        except OSError:
            pass  # taken by a new file, or not writable: another way
        else:
            os.unlink(path)
            return fd
    for where in (d, tempfile.gettempdir()):
        if not os.path.isdir(where):
            continue
        with contextlib.suppress(OSError):
            return os.open(where, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        with contextlib.suppress(OSError):
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=where)
            os.unlink(tmp)
            return fd
    raise OSError(errno.ENOENT, "no directory to recreate it in")
