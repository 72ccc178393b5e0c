"""Filesystem backends behind one interface (base.Filesystem), and the factory.

base.py        Filesystem, SnapshotInfo, Changes: the interface and its values
btrfs.py       subvolumes and read-only snapshots (btrfsutil); send streams for diffs
lvm.py         thin LVs and thin snapshots (lvm2 commands through the runner)
copy.py        the fallback: reflink copies, else a content-addressed store
sendstream.py  the btrfs send stream, parsed and replayed into added/removed/changed
tree.py        scan, compare and recreate a directory tree (copy and LVM)
objstore.py    the content-addressed store of the copy fallback
mounts.py      the mount table
"""

from __future__ import annotations

import os
from pathlib import Path

from snapshot.errors import UnsupportedFs
from snapshot.fs.base import Changes, Filesystem, SnapshotInfo
from snapshot.fs.btrfs import BtrfsFilesystem
from snapshot.fs.copy import CopyFilesystem
from snapshot.fs.lvm import LvmFilesystem

# Probed in this order; the copy fallback takes anything.
BACKENDS: tuple[type[Filesystem], ...] = (BtrfsFilesystem, LvmFilesystem, CopyFilesystem)

__all__ = ["BACKENDS", "Changes", "Filesystem", "SnapshotInfo", "backend_for"]


def backend_for(path: str | os.PathLike[str]) -> Filesystem:
    """The backend for `path`, probed at its nearest existing ancestor (an area to create
    need not exist yet)."""
    probe_at = Path(os.path.abspath(path))
    while not probe_at.exists():
        probe_at = probe_at.parent
    for cls in BACKENDS:
        if cls.probe(probe_at):
            try:
                return cls.for_path(probe_at)
            except UnsupportedFs:
                continue  # e.g. an LV that is not thin: the next backend
    raise AssertionError("the copy fallback takes every path")
