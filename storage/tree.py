"""A directory tree as a list of entries (what a manifest holds), compared and recreated.

Used by the backends that have no snapshot-aware diff: the copy fallback (manifests) and LVM
(a mounted snapshot against the live area). A scan stays on one filesystem, like a btrfs
snapshot: a mount point inside is recorded as a directory, never entered.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from storage.base import ROOT, Changes, drop_time_echoes

_KINDS = {
    stat.S_IFREG: "f",
    stat.S_IFDIR: "d",
    stat.S_IFLNK: "l",
    stat.S_IFCHR: "c",
    stat.S_IFBLK: "b",
    stat.S_IFIFO: "p",
    stat.S_IFSOCK: "s",
}
_NODE_TYPES = {"c": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO, "s": stat.S_IFSOCK}
# Filesystems without xattrs (or without this namespace) answer these.
_NO_XATTRS = {errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM}


@dataclass
class Entry:
    """One path of a tree: its type and metadata, and for regular files the sha256 of the
    content where known. `link` is the first path of a hard-linked inode; atime is not kept."""

    path: str
    kind: str  # f d l c b p s
    mode: int  # permission bits, setuid/setgid/sticky included
    uid: int
    gid: int
    size: int
    mtime_ns: int
    target: str = ""  # symlink
    rdev: int = 0  # device node
    link: str = ""
    xattrs: dict[str, str] = field(default_factory=dict)  # name -> hex value
    sha256: str = ""

    def to_json(self) -> dict[str, Any]:
        """Only the fields that differ from their default, to keep manifests small."""
        return {k: v for k, v in asdict(self).items() if v or k in ("mode", "uid", "gid")}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Entry:
        return cls(**{"size": 0, "mtime_ns": 0, **doc})

    def same_metadata(self, other: Entry) -> bool:
        """Equal in everything but the path, the times and the content digest."""
        mine = (self.kind, self.mode, self.uid, self.gid, self.target, self.rdev, self.link)
        theirs = (
            other.kind,
            other.mode,
            other.uid,
            other.gid,
            other.target,
            other.rdev,
            other.link,
        )
        sized = self.kind in "fl"
        return (
            mine == theirs
            and self.xattrs == other.xattrs
            and (not sized or self.size == other.size)
        )


def _xattrs(path: str) -> dict[str, str]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
        return {n: os.getxattr(path, n, follow_symlinks=False).hex() for n in sorted(names)}
    except OSError as e:
        if e.errno in _NO_XATTRS:
            return {}
        raise


def _entry(rel: str, full: str, st: os.stat_result, links: dict[int, str]) -> Entry:
    kind = _KINDS[stat.S_IFMT(st.st_mode)]
    e = Entry(
        rel,
        kind,
        stat.S_IMODE(st.st_mode),
        st.st_uid,
        st.st_gid,
        st.st_size if kind in "fl" else 0,
        st.st_mtime_ns,
    )
    if kind == "l":
        e.target = os.readlink(full)
    elif kind in "cb":
        e.rdev = st.st_rdev
    elif kind == "f" and st.st_nlink > 1:
        e.link = links.setdefault(st.st_ino, rel)
        if e.link == rel:
            e.link = ""
    e.xattrs = _xattrs(full)
    return e


def entry_at(root: Path, rel: str) -> Entry:
    """The entry of one path of a tree (hard links not grouped)."""
    full = str(root / rel)
    return _entry(rel, full, os.lstat(full), {})


def scan(root: Path) -> dict[str, Entry]:
    """Every path of the tree at `root`, parents before children, in sorted order."""
    top = os.lstat(root)
    links: dict[int, str] = {}
    entries = {ROOT: _entry(ROOT, str(root), top, links)}
    todo = [("", str(root))]
    while todo:
        rel_dir, full_dir = todo.pop()
        with os.scandir(full_dir) as it:
            children = sorted(it, key=lambda d: d.name)
        subdirs = []
        for d in children:
            rel = f"{rel_dir}/{d.name}" if rel_dir else d.name
            st = d.stat(follow_symlinks=False)
            entries[rel] = _entry(rel, d.path, st, links)
            # Another filesystem mounted here: recorded as a directory, not entered.
            if d.is_dir(follow_symlinks=False) and st.st_dev == top.st_dev:
                subdirs.append((rel, d.path))
        todo.extend(reversed(subdirs))
    return entries


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def compare(
    old: Mapping[str, Entry], new: Mapping[str, Entry], same_content: Callable[[str], bool]
) -> Changes:
    """How tree `new` differs from tree `old`. Content is asked of `same_content(path)` only
    for regular files whose metadata and mtime agree (see copy.py for the trade-off)."""
    added = sorted(new.keys() - old.keys())
    removed = sorted(old.keys() - new.keys())
    changed: list[str] = []
    times_only: list[str] = []
    for path in old.keys() & new.keys():
        o, n = old[path], new[path]
        if not o.same_metadata(n):
            changed.append(path)
        elif o.mtime_ns != n.mtime_ns:
            (times_only if o.kind == "d" else changed).append(path)
        elif o.kind == "f" and not same_content(path):
            changed.append(path)
    return Changes(added, removed, drop_time_echoes(changed, times_only, added + removed))


PlaceFile = Callable[[Entry, Path], None]


def materialize(entries: Iterable[Entry], dest: Path, place_file: PlaceFile) -> None:
    """Recreate a scanned tree at `dest` (which must not exist). `place_file(entry, path)`
    creates each regular file with its content; hard links, symlinks, device nodes, fifos,
    then owners, modes, xattrs and mtimes (atime = mtime) come from the entries."""
    ordered = list(entries)
    for e in ordered:
        _create(e, dest / e.path if e.path != ROOT else dest, dest, place_file)
    for e in ordered:
        _set_attributes(e, dest / e.path if e.path != ROOT else dest)
    # Children first: creating an entry bumps its directory's mtime.
    for e in reversed(ordered):
        target = dest / e.path if e.path != ROOT else dest
        os.utime(target, ns=(e.mtime_ns, e.mtime_ns), follow_symlinks=False)


def _create(e: Entry, target: Path, dest: Path, place_file: PlaceFile) -> None:
    if e.kind == "d":
        target.mkdir(mode=0o700)
    elif e.kind == "f" and e.link:
        os.link(dest / e.link, target)
    elif e.kind == "f":
        place_file(e, target)
    elif e.kind == "l":
        os.symlink(e.target, target)
    else:
        os.mknod(target, 0o600 | _NODE_TYPES[e.kind], e.rdev)


def _set_attributes(e: Entry, target: Path) -> None:
    os.chown(target, e.uid, e.gid, follow_symlinks=False)
    if e.kind != "l":
        # After chown, which clears setuid and setgid.
        os.chmod(target, e.mode)
    for name, value in e.xattrs.items():
        os.setxattr(target, name, bytes.fromhex(value), follow_symlinks=False)


def regular_files(entries: Iterable[Entry]) -> Iterator[Entry]:
    """The regular files that own their content (hard-link followers excluded)."""
    return (e for e in entries if e.kind == "f" and not e.link)
