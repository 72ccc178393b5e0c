"""Deleted-but-open files carried in the image (PathObj GHOST), recreated before anything
is opened or mapped.

Each ghost becomes a new unlinked file with the dumped contents, mode, owner and mtime:
created under its old name when that is free and unlinked at once (so /proc/PID/fd and
/proc/PID/maps show "<old name> (deleted)" as before), else as an O_TMPFILE in the same
directory, else under a temporary name there (or in the temporary directory when its own
is gone or refuses), unlinked right after opening: as a process that holds it would
(creds.py), so it belongs to that process unless the chown to its dumped owner is one the
process could make, and it is made where that process may write.  The restorer keeps it open read-only
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
import functools
import os
import stat
import tempfile

from cptimage.records import PathFlags, PathKind, PathObj

from ..errors import RestoreError
from ..procfs import fd_path
from .creds import as_holders
from .model import ImageModel

O_NEW = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


class Ghosts:
    def __init__(self, model: ImageModel) -> None:
        self.model = model
        self.fds: list[int] = []

    def create(self) -> None:
        """Recreate every ghost as a process that holds it (creds.py): in a directory it
        may write to, owned by it; a chown to another owner it could not make is skipped."""
        model = self.model
        for p in list(model.paths.values()):
            if p.flags & PathFlags.GHOST:
                holders = model.holders_of_path(p.id)
                what = f"cannot recreate the deleted file {p.path}"
                fd = as_holders(model, holders, what, functools.partial(recreate, p, model))
                self.fds.append(fd)
                model.paths[p.id] = dataclasses.replace(p, path=fd_path(os.getpid(), fd))
                model.ghost_fds[p.id] = fd

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


def recreate(p: PathObj, model: ImageModel | None = None) -> int:
    """The ghost `p` as a new unlinked file near its path (where `model`'s processes see
    it; this host's root without one); returns a read-only fd of it.  Its owner and mode
    are set on the fd (never through a path), after it is reopened read-only.  A removed
    directory or FIFO (1.7) is made empty, opened and removed the same way."""
    if p.kind in (PathKind.DIR, PathKind.FIFO):
        try:
            fd = _removed_node(p, model)
        except PermissionError:
            raise
        except OSError as e:
            raise RestoreError(f"cannot recreate the removed {p.path}: {e.strerror}") from None
        try:
            with contextlib.suppress(PermissionError):
                os.fchown(fd, p.uid, p.gid)
            os.fchmod(fd, stat.S_IMODE(p.mode))
            os.utime(fd, ns=(p.mtime_ns, p.mtime_ns))
        except BaseException:
            os.close(fd)
            raise
        return fd
    try:
        fd = _unlinked(p.path, model)
    except PermissionError:
        raise
    except OSError as e:
        raise RestoreError(f"cannot recreate the deleted file {p.path}: {e.strerror}") from None
    try:
        view = memoryview(p.contents)
        while view:
            view = view[os.write(fd, view) :]
        ro = os.open(fd_path("self", fd), os.O_RDONLY | os.O_CLOEXEC)
        try:
            with contextlib.suppress(PermissionError):  # not the process's to give away
                os.fchown(fd, p.uid, p.gid)
            os.fchmod(fd, stat.S_IMODE(p.mode))  # after chown, which clears set-id bits
            os.utime(fd, ns=(p.mtime_ns, p.mtime_ns))
        except BaseException:
            os.close(ro)
            raise
        return ro
    finally:
        os.close(fd)


def _removed_node(p: PathObj, model: ImageModel | None) -> int:
    """An empty directory or FIFO made near `p.path` (under that name when free, else a
    temporary one there or in the temporary directory), opened and removed again."""
    d, name = os.path.split(p.path)
    is_dir = p.kind == PathKind.DIR
    # O_RDWR never blocks on a FIFO; a directory opens read-only
    flags = (os.O_RDONLY | os.O_DIRECTORY if is_dir else os.O_RDWR | os.O_NONBLOCK) | os.O_CLOEXEC
    for i, directory in enumerate((d, tempfile.gettempdir())):
        try:
            if i == 0 and model is not None:
                dfd = model.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            else:
                dfd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            for n in (
                name if i == 0 else None,
                *(f".{name}.cpt{os.getpid()}.{k}" for k in range(8)),
            ):
                if not n:
                    continue
                try:
                    if is_dir:
                        os.mkdir(n, 0o700, dir_fd=dfd)
                    else:
                        os.mkfifo(n, 0o600, dir_fd=dfd)
                except OSError:
                    continue  # taken, or not writable: another name or place
                try:
                    return os.open(n, flags, dir_fd=dfd)
                finally:
                    if is_dir:
                        os.rmdir(n, dir_fd=dfd)
                    else:
                        os.unlink(n, dir_fd=dfd)
        finally:
            os.close(dfd)
    raise OSError(errno.ENOENT, "no directory to recreate it in")


def _unlinked(path: str, model: ImageModel | None) -> int:
    """A new empty file, already unlinked, near `path`: under that very name when it is
    free, else an O_TMPFILE or a temporary name in its directory, else in the temporary
    directory."""
    d, name = os.path.split(path)
    where: list[tuple[str, str | None]] = [(d, name), (tempfile.gettempdir(), None)]
    for i, (directory, own) in enumerate(where):
        try:
            if i == 0 and model is not None:
                dfd = model.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            else:
                dfd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue  # gone, or not a directory now
        try:
            fd = _in_dir(dfd, own)
        finally:
            os.close(dfd)
        if fd is not None:
            return fd
    raise OSError(errno.ENOENT, "no directory to recreate it in")


def _in_dir(dfd: int, name: str | None) -> int | None:
    if name:
        try:
            fd = os.open(name, O_NEW, 0o600, dir_fd=dfd)
        except OSError:
            pass  # taken by a new file, or not writable: another way
        else:
            os.unlink(name, dir_fd=dfd)
            return fd
    with contextlib.suppress(OSError):
        return os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=dfd)
    with contextlib.suppress(OSError):
        fd, tmp = tempfile.mkstemp(prefix=f".{name or 'ghost'}.", dir=fd_path("self", dfd))
        os.unlink(tmp)
        return fd
    return None
