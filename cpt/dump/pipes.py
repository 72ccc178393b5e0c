"""Pipes and FIFOs: one description per end, the pending bytes once per pipe inode."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from typing import Any

from cptimage.records import Fifo, Pipe, PipeData

from ..procfs import FdInfo, FdKind, FdTarget, fd_path
from ..sys.files import SPLICE_F_NONBLOCK, tee
from .fdbase import FdContext, file_flags
from .options import DumpOptions


class Pipes:
    kinds = frozenset({FdKind.PIPE})

    def unsupported(self, pid: int, fd: int, ft: FdTarget, opts: DumpOptions) -> str | None:
        return None

    def key(self, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> tuple[Any, ...]:
        return ("pipe", ft.inode)

    def dump(self, ctx: FdContext, ident: int, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> Any:
        assert ft.inode is not None
        pipe_data(ctx, pid, fd, ft.inode)
        return Pipe(id=ident, flags=file_flags(fi), ino=ft.inode)


def dump_fifo(
    ctx: FdContext, ident: int, pid: int, fd: int, ft: FdTarget, fi: FdInfo, st: os.stat_result
) -> Fifo:
    """A FIFO (reached through files.py: it is a path)."""
    assert ft.path is not None and stat.S_ISFIFO(st.st_mode)
    path_id = ctx.paths.add(
        ft.path,
        st,
        mnt_id=fi.mnt_id,
        what=ctx.where(pid, fd),
        link=fd_path(pid, fd),
        pid=pid,
    )
    pipe_data(ctx, pid, fd, st.st_ino)
    return Fifo(id=ident, path_id=path_id, flags=file_flags(fi), ino=st.st_ino)


def pipe_data(ctx: FdContext, pid: int, fd: int, ino: int) -> None:
    """One PipeData record per pipe inode: its capacity and pending bytes."""
    seen: set[int] = ctx.cache.setdefault("pipes", set())
    if ino in seen:
        return
    seen.add(ino)
    cap, data = read_pipe(pid, fd)
    ctx.extra.append(PipeData(capacity=cap, ino=ino, data=data))


def read_pipe(pid: int, fd: int) -> tuple[int, bytes]:
    """Capacity and pending bytes of a pipe or FIFO, without consuming them.

    Opening /proc/PID/fd/N read-only gives a new reader of the same pipe, whichever end N
    is; tee(2) duplicates its buffers into a private pipe of the same capacity.
    """
    rfd = os.open(fd_path(pid, fd), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
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


HANDLER = Pipes()
