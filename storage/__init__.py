"""Storage: what VEs stand on.  Filesystem backends behind one interface
(base.Filesystem), the factory (backend_for, here), and the node's embedded pool.

base.py        Filesystem, SnapshotInfo, Changes: the interface and its values
btrfs.py       subvolumes and read-only snapshots (btrfsutil); send streams for diffs
lvm.py         thin LVs and thin snapshots (lvm2 commands through the runner)
copy.py        the fallback: reflink copies, else a content-addressed store
sendstream.py  the btrfs send stream, parsed and replayed into added/removed/changed
tree.py        scan, compare and recreate a directory tree (copy and LVM)
objstore.py    the content-addressed store of the copy fallback
mounts.py      the mount table
pool.py        the node's embedded storage: a loop-file btrfs in the state directory
errors.py      FsError and its kinds (exit 3 for the CLI)
atomic.py      metadata written atomically (temp, fsync, rename)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from storage.errors import UnsupportedFs

if TYPE_CHECKING:
    from storage.base import Filesystem

__all__ = ["backend_for", "backends"]


def backends() -> tuple[type[Filesystem], ...]:
    """The backends, in the order they are probed; the copy fallback takes anything."""
    # Imported here, not at package import, for start-up speed: `from storage import pool`
    # (every VE command) must not load btrfsutil, the record schemas and lvm with it.
    from storage.btrfs import BtrfsFilesystem
    from storage.copy import CopyFilesystem
    from storage.lvm import LvmFilesystem

    return (BtrfsFilesystem, LvmFilesystem, CopyFilesystem)


def backend_for(path: str | os.PathLike[str]) -> Filesystem:
    """The backend for `path`, probed at its nearest existing ancestor (an area to create
    need not exist yet)."""
    probe_at = Path(os.path.abspath(path))
    while not probe_at.exists():
        probe_at = probe_at.parent
    for cls in backends():
        if cls.probe(probe_at):
            try:
                return cls.for_path(probe_at)
            except UnsupportedFs:
                continue  # e.g. an LV that is not thin: the next backend
    raise AssertionError("the copy fallback takes every path")
