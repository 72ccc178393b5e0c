"""Pipes and FIFOs: created (or opened behind a holder) once per inode, refilled with the
pending bytes at their dumped capacity; one description per dumped end.

A FIFO's descriptions are opened with the credentials of a process holding them
(creds.py), and its pending bytes are written back through a write end opened the same
way: the restorer's own holder (O_RDWR, so that no open blocks and the buffer lives while
the tree is built) never carries data into a FIFO its processes could not write to."""

from __future__ import annotations

import fcntl
import os
from typing import Any

from cptimage.records import Fifo, Pipe

from ..errors import RestoreError
from ..procfs import fd_path
from .creds import as_holders, open_held
from .fdbase import O_ACCMODE, OPEN_IGNORE, SETFL_MASK
from .model import ImageModel
from .pstree import Task


class Pipes:
    records = (Pipe, Fifo)

    def __init__(self) -> None:
        self._pipes: dict[int, tuple[int, int]] = {}  # ino -> (read end, write end)
        self._holders: list[int] = []
        self._ends_used: set[int] = set()

    def open(self, model: ImageModel, desc: Any) -> int:
        if isinstance(desc, Pipe):
            if desc.ino not in self._pipes:
                r, w = os.pipe2(os.O_CLOEXEC)
                self._pipes[desc.ino] = (r, w)
                self._refill(model, desc.ino, w)
            r, w = self._pipes[desc.ino]
            return self._claim(w if desc.flags & O_ACCMODE == os.O_WRONLY else r, desc.flags)
        p = model.path(desc.path_id)
        holders = model.holders_of_file(desc.id)
        where = f"FIFO {p.path}"
        try:
            if desc.ino not in self._pipes:
                # O_RDWR never blocks on a FIFO and keeps its buffer alive while we work
                holder = model.open_path(p, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
                self._holders.append(holder)
                self._pipes[desc.ino] = (holder, holder)
                pd = model.pipe_data.get(desc.ino)
                if pd is not None and pd.capacity:
                    fcntl.fcntl(holder, fcntl.F_SETPIPE_SZ, pd.capacity)
                if pd is not None and pd.data:
                    w = as_holders(
                        model, holders, f"cannot refill {where}",
                        lambda: model.open_path(p, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC),
                    )  # fmt: skip
                    try:
                        self._refill(model, desc.ino, w)
                    finally:
                        os.close(w)
            flags = (desc.flags & ~OPEN_IGNORE) | os.O_NONBLOCK | os.O_CLOEXEC
            fd = open_held(model, holders, p, flags, f"cannot open {where}")
        except OSError as e:
            raise RestoreError(f"cannot open {where}: {e.strerror}") from None
        fcntl.fcntl(fd, fcntl.F_SETFL, desc.flags & SETFL_MASK)
        return fd

    def _refill(self, model: ImageModel, ino: int, w: int) -> None:
        pd = model.pipe_data.get(ino)
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
            fd = os.open(fd_path("self", end), (flags & O_ACCMODE) | os.O_CLOEXEC)
        else:
            self._ends_used.add(end)
            fd = end
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & SETFL_MASK)
        return fd

    def after_install(self, model: ImageModel, task: Task, local: dict[int, int]) -> None:
        pass

    def close(self) -> None:
        fds = set(self._holders)
        for r, w in self._pipes.values():
            fds |= {r, w}
        for fd in fds - self._ends_used:
            os.close(fd)
        self._pipes.clear()
        self._holders.clear()
        self._ends_used.clear()
