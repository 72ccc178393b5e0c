"""Files whose name is gone while the tree holds them (an fd, a mapping, the exe).

A regular file unlinked while open (st_nlink 0) is a ghost: its contents go into the image
(PathObj DELETED|GHOST) up to --ghost-limit, and restore recreates it as an unlinked file
(restore/ghost.py).  A file whose name was removed but that is still linked elsewhere (it
was opened through a hard link since removed) is recorded under a name that still leads
to the same inode: one the tree opened it by, or another entry of the same directory.
"""

from __future__ import annotations

import os
import stat

from ..errors import CptError
from ..procfs import Proc, split_deleted


def problem(what: str, link: str, path: str, limit: int, pid: int, root: str = "") -> str | None:
    """Why the object behind /proc `link`, whose name `path` is gone, cannot be dumped
    (`root`: how this process reaches the tree's paths, DumpOptions.root)."""
    try:
        st = os.stat(link)
    except OSError as e:
        return f"{what}: cannot stat {path}: {e.strerror}"
    if st.st_nlink:
        return None if other_name(pid, path, st, root) else unfound_link(what, path, st.st_nlink)
    if stat.S_ISDIR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        return None  # recreated empty (a removed directory is; a FIFO's data is the pipe's)
    if not stat.S_ISREG(st.st_mode):
        kind = "device node" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "file"
        return f"{what}: {path} is a deleted {kind} (not a regular file); not supported"
    if st.st_size > limit:
        return (
            f"{what}: {path} is a deleted file of {st.st_size} bytes, above --ghost-limit "
            f"{limit}: raise the limit to carry it in the image"
        )
    return None


def unfound_link(what: str, path: str, nlink: int) -> str:
    return (
        f"{what}: {path} was removed but its inode still has {nlink} other link(s), none "
        f"found in its directory nor among the tree's open files; not supported"
    )


def other_name(pid: int, path: str, st: os.stat_result, root: str = "") -> str | None:
    """A live name of st's inode: another fd of `pid` opened through one, or an entry of the
    directory `path` was in."""
    same = (st.st_dev, st.st_ino)
    try:
        links = [target for _, target in Proc().fds(pid)]
    except (OSError, CptError):
        links = []
    candidates = [p for p, gone in map(split_deleted, links) if not gone and p.startswith("/")]
    d = os.path.dirname(path)
    try:
        with os.scandir(root + d) as it:
            candidates += [os.path.join(d, e.name) for e in it if e.inode() == st.st_ino]
    except OSError:
        pass
    for c in candidates:
        try:
            now = os.stat(root + c)
        except OSError:
            continue
        if (now.st_dev, now.st_ino) == same:
            return c
    return None


def contents(link: str, size: int) -> bytes:
    """The bytes of a ghost, read through its /proc link (fd/N or map_files/A-B)."""
    fd = os.open(link, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        off = 0
        while off < size:
            b = os.pread(fd, size - off, off)
            if not b:
                break
            chunks.append(b)
            off += len(b)
        return b"".join(chunks)
    finally:
        os.close(fd)
