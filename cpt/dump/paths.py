"""Paths the tree depends on (open files, mapped files, exe, cwd, root): one PathObj each.

A path is recorded with the identity of what it named at dump time (device, inode, size,
mtime, mode); restore refuses when the path names something else.  The object is stat'ed
through /proc (fd/N, map_files/RANGE, cwd, ...), which reaches it even when its name is
gone; the name is then checked to still lead to the same inode.
"""

from __future__ import annotations

import os
import stat

from cptimage.records import PathKind, PathObj

from ..errors import UnsupportedError

_KINDS = {
    stat.S_IFREG: PathKind.REG,
    stat.S_IFDIR: PathKind.DIR,
    stat.S_IFCHR: PathKind.CHR,
    stat.S_IFBLK: PathKind.BLK,
    stat.S_IFIFO: PathKind.FIFO,
    stat.S_IFSOCK: PathKind.SOCK,
    stat.S_IFLNK: PathKind.LNK,
}


def path_kind(mode: int) -> int:
    return _KINDS.get(stat.S_IFMT(mode), 0)


class PathTable:
    def __init__(self) -> None:
        self.records: list[PathObj] = []
        self._by_key: dict[tuple[str, int, int], int] = {}

    def add(self, path: str, st: os.stat_result, *, mnt_id: int = 0, what: str = "") -> int:
        """The PathObj id of `path`, whose object `st` describes; refuses an unreachable one."""
        key = (path, st.st_dev, st.st_ino)
        pid_ = self._by_key.get(key)
        if pid_ is not None:
            return pid_
        try:
            now = os.stat(path)
            same = (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)
        except OSError:
            same = False
        if not same:
            raise UnsupportedError(
                f"{what or path}: {path} was deleted or replaced while open "
                f"(deleted files are not supported yet)"
            )
        ident = len(self.records) + 1
        self.records.append(
            PathObj(
                id=ident,
                kind=path_kind(st.st_mode),
                flags=0,
                mode=st.st_mode,
                uid=st.st_uid,
                gid=st.st_gid,
                nlink=st.st_nlink,
                mnt_id=mnt_id,
                size=st.st_size,
                mtime_ns=st.st_mtime_ns,
                ino=st.st_ino,
                dev=st.st_dev,
                rdev=st.st_rdev,
                path=path,
            )
        )
        self._by_key[key] = ident
        return ident

    def add_link(self, pid: int, name: str) -> int:
        """A /proc/PID/<name> link: cwd, root, exe, fd/N or map_files/A-B."""
        link = f"/proc/{pid}/{name}"
        path = os.readlink(link)
        if path.endswith(" (deleted)"):
            raise UnsupportedError(
                f"process {pid}: {name} is a deleted file ({path}); not supported yet", pid=pid
            )
        return self.add(path, os.stat(link), what=f"process {pid} {name}")
