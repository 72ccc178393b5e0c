"""Paths the tree depends on (open files, mapped files, exe, cwd, root): one PathObj each.

A path is recorded with the identity of what it named at dump time (device, inode, size,
mtime, mode); restore refuses when the path names something else.  The object is stat'ed
through /proc (fd/N, map_files/RANGE, cwd, ...), which reaches it even when its name is
gone; the name is then checked to still lead to the same inode.  When it does not: a
deleted regular file becomes a ghost (its contents in the image, ghost.py), a file still
linked under another name is recorded under that name; anything else is refused.
"""

from __future__ import annotations

import os
import stat

from cptimage.records import PathFlags, PathKind, PathObj

from ..errors import UnsupportedError
from ..procfs import link_path, split_deleted
from . import ghost

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
    def __init__(self, ghost_limit: int = 1 << 20, root: str = "") -> None:
        """`root`: how this process reaches the tree's paths (DumpOptions.root)."""
        self.records: list[PathObj] = []
        self.ghost_limit = ghost_limit
        self.root = root
        self._by_key: dict[tuple[str, int, int], int] = {}
        self._ghosts: dict[tuple[int, int], int] = {}  # (dev, ino) -> PathObj id

    def add(
        self,
        path: str,
        st: os.stat_result,
        *,
        mnt_id: int = 0,
        what: str = "",
        link: str = "",
        pid: int = 0,
    ) -> int:
        """The PathObj id of `path`, whose object `st` describes (reached through the /proc
        `link` of process `pid`); refuses an unreachable one."""
        key = (path, st.st_dev, st.st_ino)
        pid_ = self._by_key.get(key)
        if pid_ is not None:
            return pid_
        if not _names(self.root + path, st):
            return self._unnamed(path, st, mnt_id=mnt_id, what=what, link=link, pid=pid)
        ident = self._record(path, st, mnt_id, 0)
        self._by_key[key] = ident
        return ident

    def _record(
        self,
        path: str,
        st: os.stat_result,
        mnt_id: int,
        flags: int,
        contents: bytes = b"",
        size: int | None = None,
    ) -> int:
        ident = len(self.records) + 1
        self.records.append(
            PathObj(
                id=ident,
                kind=path_kind(st.st_mode),
                flags=flags,
                mode=st.st_mode,
                uid=st.st_uid,
                gid=st.st_gid,
                nlink=st.st_nlink,
                mnt_id=mnt_id,
                size=st.st_size if size is None else size,
                mtime_ns=st.st_mtime_ns,
                ino=st.st_ino,
                dev=st.st_dev,
                rdev=st.st_rdev,
                path=path,
                contents=contents,
            )
        )
        return ident

    def _unnamed(
        self, path: str, st: os.stat_result, *, mnt_id: int, what: str, link: str, pid: int
    ) -> int:
        """`path` no longer names the object: a ghost, another hard link, or a refusal."""
        what = what or path
        if not link:
            raise UnsupportedError(f"{what}: {path} was deleted or replaced while open")
        if st.st_nlink:
            known = [p.path for p in self.records if (p.dev, p.ino) == (st.st_dev, st.st_ino)]
            name = next((n for n in known if _names(self.root + n, st)), None)
            name = name or ghost.other_name(pid, path, st, self.root)
            if name is None:
                raise UnsupportedError(ghost.unfound_link(what, path, st.st_nlink))
            return self.add(name, st, mnt_id=mnt_id, what=what, pid=pid)
        why = ghost.problem(what, link, path, self.ghost_limit, pid, self.root)
        if why:
            raise UnsupportedError(why)
        key = (st.st_dev, st.st_ino)
        if key not in self._ghosts:
            flags = PathFlags.DELETED | PathFlags.GHOST
            if stat.S_ISREG(st.st_mode):
                data = ghost.contents(link, st.st_size)
                self._ghosts[key] = self._record(path, st, mnt_id, flags, data)
            else:  # a removed directory or FIFO (1.7): recreated empty
                self._ghosts[key] = self._record(path, st, mnt_id, flags, size=0)
        return self._ghosts[key]

    def add_link(self, pid: int, name: str) -> int:
        """A /proc/PID/<name> link: cwd, root, exe, fd/N or map_files/A-B."""
        link = link_path(pid, name)
        path, _ = split_deleted(os.readlink(link))
        return self.add(path, os.stat(link), what=f"process {pid} {name}", link=link, pid=pid)


def _names(path: str, st: os.stat_result) -> bool:
    """Does `path` lead to the object `st` describes?"""
    try:
        now = os.stat(path)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)
