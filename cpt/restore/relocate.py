"""A VE image restored on another node: its private area is a copy received there
(btrfs send/receive), at another path, whose files have other inode numbers.

`relocate(reader, old, new, snapshot)` gives a reader whose records say so: the mounts
bound from the old area are bound from the new one, the filesystem proof (FsSnapshot)
names the received snapshot, and every path of the image inside the area whose file on
the destination is the same (kind, mode, size, modification time: what a send/receive
keeps) takes that file's device and inode number, so that the identity checks of the
restore (host/verify.py, restore/creds.py) compare with the copy.  A file that differs
keeps the numbers it had and is refused as changed, as on the source.  The caller has
proven the copy to be the snapshot the image was dumped with (its received UUID).
"""

from __future__ import annotations

import dataclasses
import os
import stat
from typing import Any

from cptimage.container import ImageReader
from cptimage.records import FsSnapshot, Mount, PathFlags, PathKind, PathObj, SectionType

from . import mounts as vemounts


def _moved(path: str, old: str, new: str) -> str | None:
    if path == old:
        return new
    if path.startswith(old + "/"):
        return new + path[len(old) :]
    return None


class Relocated(ImageReader):
    """The records of `base` as they are on this node (see the module text)."""

    def __init__(self, base: ImageReader, old: str, new: str, snapshot: str) -> None:
        self.__dict__.update(base.__dict__)  # the same open file, index and sections
        self._old, self._new, self._snapshot = old, new, snapshot
        self._mounts: list[Mount] | None = None

    def records(self, stype: int, *, plain: bool = False) -> list[Any]:
        recs = super().records(stype, plain=plain)
        if plain:
            return recs
        if stype == SectionType.NAMESPACES:
            return [self._mount(r) if isinstance(r, Mount) else r for r in recs]
        if stype == SectionType.FSSNAP:
            return [
                dataclasses.replace(r, subvolume=self._new, snapshot_path=self._snapshot)
                if isinstance(r, FsSnapshot)
                else r
                for r in recs
            ]
        if stype == SectionType.FILES:
            return [self._path(r) if isinstance(r, PathObj) else r for r in recs]
        return recs

    def _mount(self, m: Mount) -> Mount:
        if not m.external:
            return m
        moved = _moved(m.source, self._old, self._new)
        return m if moved is None else dataclasses.replace(m, source=moved)

    def _path(self, p: PathObj) -> PathObj:
        if p.flags & PathFlags.GHOST:
            return p
        if self._mounts is None:
            self._mounts = [r for r in self.records(SectionType.NAMESPACES) if isinstance(r, Mount)]
        where = vemounts.host_path(self._mounts, p.path)
        if where is None or _moved(where, self._new, self._new) is None:
            return p  # not in the moved area (a host directory bound in, a recreated fs)
        try:
            st = os.lstat(where) if p.kind == PathKind.LNK else os.stat(where)
        except OSError:
            return p
        same = stat.S_IFMT(st.st_mode) == stat.S_IFMT(p.mode) and st.st_mode == p.mode
        if p.kind == PathKind.REG:
            same = same and st.st_size == p.size and st.st_mtime_ns == p.mtime_ns
        if not same:
            return p
        return dataclasses.replace(p, ino=st.st_ino, dev=st.st_dev)


def relocate(reader: ImageReader, old: str, new: str, snapshot: str) -> ImageReader:
    """`reader`'s image as restored from the area `new` of this node (it was dumped with
    the area `old`), whose proof is the received snapshot `snapshot`.  The returned
    reader owns the file: close it, not `reader`."""
    return Relocated(reader, os.path.normpath(old), os.path.normpath(new), snapshot)
