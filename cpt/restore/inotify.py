"""inotify: recreated in the restorer with every watch at its dumped watch descriptor.

The kernel hands out wds cyclically (idr_alloc_cyclic): each new watch gets the lowest
free wd above the last one given, never one below until the numbers wrap.  So the watches
are added in wd order, and before each one the allocator is stepped to its wd by adding
and removing a placeholder watch (on a private memfd) once per missing number.  Each
removal queues an IN_IGNORED event: the queue is drained before the fd is handed over,
and it is left empty, as it was at the dump.  The watches count against the restorer's
user (root), not the process's.  Each watch is added with the credentials of a process
holding the instance (creds.py; inotify_add_watch needs read permission on the inode),
inside a VE's root for a VE.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from typing import Any

from cptimage.records import Inotify, InotifyWatch

from ..errors import RestoreError
from ..procfs import fd_path
from ..sys.fsnotify import (
    IN_CLOEXEC,
    IN_DONT_FOLLOW,
    IN_NONBLOCK,
    inotify_add_watch,
    inotify_init1,
    inotify_rm_watch,
)
from .creds import as_holders, in_root_as_holders
from .fdbase import SETFL_MASK
from .model import ImageModel
from .pstree import Task

IN_MODIFY = 0x2
_DRAIN_EVERY = 1024  # placeholder steps between drains: the queue holds 16384 events


class Inotifies:
    records = (Inotify,)

    def __init__(self) -> None:
        self._placeholder: int | None = None  # a memfd, watched through /proc/self/fd

    def open(self, model: ImageModel, desc: Any) -> int:
        fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK)
        try:
            next_wd = 1  # what a new instance gives first
            for w in sorted(model.inotify_watches.get(desc.id, []), key=lambda w: w.wd):
                self._skip(fd, w.wd - next_wd)
                self._watch(model, fd, desc.id, w)
                next_wd = w.wd + 1
            _drain(fd)
            fcntl.fcntl(fd, fcntl.F_SETFL, desc.flags & SETFL_MASK)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _skip(self, fd: int, count: int) -> None:
        """Let the kernel give out (and take back) the next `count` watch descriptors."""
        if self._placeholder is None:
            self._placeholder = os.memfd_create("cpt-inotify-placeholder", os.MFD_CLOEXEC)
        path = fd_path("self", self._placeholder)
        for i in range(1, count + 1):
            inotify_rm_watch(fd, inotify_add_watch(fd, path, IN_MODIFY))
            if i % _DRAIN_EVERY == 0:
                _drain(fd)

    def _watch(self, model: ImageModel, fd: int, ident: int, w: InotifyWatch) -> None:
        """Add watch `w` as a process holding the instance would, where the tree's paths
        resolve (a VE: in a child chrooted into its root)."""
        where = f"inotify {ident} watch {w.wd} ({w.path})"
        holders = model.holders_of_file(ident)
        try:
            if model.root_prefix:
                in_root_as_holders(
                    model, holders, where, lambda: _add(fd, w, w.path), model.root_prefix
                )
            else:
                as_holders(model, holders, where, lambda: _add(fd, w, w.path))
        except (_Changed, RuntimeError) as e:  # RuntimeError: a _Changed in the child
            raise RestoreError(f"{where}: {e}") from None
        except OSError as e:
            raise RestoreError(f"{where}: {e.strerror}") from None

    def after_install(self, model: ImageModel, task: Task, local: dict[int, int]) -> None:
        pass

    def close(self) -> None:
        if self._placeholder is not None:
            os.close(self._placeholder)
            self._placeholder = None


class _Changed(Exception):
    """The watch cannot be put back as it was (the message says why)."""


def _add(fd: int, w: InotifyWatch, path: str) -> None:
    """Add watch `w` on `path`, which must still name the watched inode."""
    st = os.lstat(path)
    if st.st_ino != w.ino:
        raise _Changed(f"the path names another file now (inode {st.st_ino}, was {w.ino})")
    # the watched inode itself is a symlink: it was added with IN_DONT_FOLLOW
    mask = w.mask | (IN_DONT_FOLLOW if stat.S_ISLNK(st.st_mode) else 0)
    got = inotify_add_watch(fd, path, mask)
    if got != w.wd:
        raise _Changed(f"the kernel gave watch descriptor {got}")


def _drain(fd: int) -> None:
    """Read away the queued events (IN_IGNORED of the placeholders); fd is non-blocking."""
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 1 << 16):
            pass
