"""Files opened by path: regular files, directories, FIFOs (see pipes.py) and the
character devices whose open files carry no state beyond flags and offset.  A deleted
file is carried in the image (ghost.py); one opened through a hard link since removed is
recorded under another of its names."""

from __future__ import annotations

import os
import stat
from typing import Any

from cptimage.records import RegFile

from ..procfs import FdInfo, FdKind, FdTarget, fd_path
from . import ghost
from .fdbase import FdContext, file_flags
from .options import DumpOptions
from .pipes import dump_fifo

SIMPLE_CHARDEVS = {
    (1, 3): "/dev/null",
    (1, 5): "/dev/zero",
    (1, 7): "/dev/full",
    (1, 8): "/dev/random",
    (1, 9): "/dev/urandom",
}


class Files:
    kinds = frozenset({FdKind.FILE})

    def unsupported(self, pid: int, fd: int, ft: FdTarget, opts: DumpOptions) -> str | None:
        where = f"process {pid} fd {fd}"
        link = fd_path(pid, fd)
        if ft.deleted:
            assert ft.path is not None
            why = ghost.problem(where, link, ft.path, opts.ghost_limit, pid, opts.root)
            if why:
                return why
        try:
            st = os.stat(link)
        except OSError as e:
            return f"{where}: cannot stat {ft.target}: {e.strerror}"
        if stat.S_ISSOCK(st.st_mode) or stat.S_ISBLK(st.st_mode):
            kind = "socket" if stat.S_ISSOCK(st.st_mode) else "block device"
            return f"{where}: {ft.target} ({kind}) is not supported yet"
        if stat.S_ISCHR(st.st_mode):
            dev = (os.major(st.st_rdev), os.minor(st.st_rdev))
            if dev not in SIMPLE_CHARDEVS:
                return (
                    f"{where}: character device {ft.target} ({dev[0]}:{dev[1]}) is not "
                    f"supported yet"
                )
        return None

    def key(self, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> tuple[Any, ...]:
        st = os.stat(fd_path(pid, fd))
        return ("file", st.st_dev, st.st_ino)

    def dump(self, ctx: FdContext, ident: int, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> Any:
        st = os.stat(fd_path(pid, fd))
        if stat.S_ISFIFO(st.st_mode):
            return dump_fifo(ctx, ident, pid, fd, ft, fi, st)
        assert ft.path is not None
        path_id = ctx.paths.add(
            ft.path,
            st,
            mnt_id=fi.mnt_id,
            what=ctx.where(pid, fd),
            link=fd_path(pid, fd),
            pid=pid,
        )
        return RegFile(id=ident, path_id=path_id, flags=file_flags(fi), pos=fi.pos)


HANDLER = Files()
