"""What the VE layer tells the keeper of its filesystem snapshots, and asks of it.

A VE's dump snapshots its private area in the frozen window (fssnap.py), and a restore
proves the area unchanged against that snapshot, or rolls the area back to it; the VE
layer does that work.  Where such a snapshot goes and what is remembered of it belongs to
the layer above: snapshot/ implements these hooks with its catalog
(snapshot.hooks.CatalogHooks) and builds the VE layer with them (snapshot.hooks.ve_manager).
Every hook is called with the VE's lock held.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from cptimage.records import FsSnapshot

from .fssnap import FsCapture


class SnapshotHooks(Protocol):
    def place(self, veid: str) -> Path:
        """A new path for a filesystem snapshot of the VE's private area (nothing is there
        yet; the parent may not exist).  A place given is never given again, even if the
        snapshot fails."""
        ...

    def dumped(self, veid: str, image: str, capture: FsCapture) -> None:
        """A dump to the dump file `image` is complete; `capture` holds the filesystem
        snapshot taken with it (at a path `place` gave), which is the hook's from now on:
        it keeps it, or removes it (capture.discard()) and raises.  A dump that replaced
        `image` replaces the snapshot that went with the old one."""
        ...

    def spent(self, veid: str, image: str) -> None:
        """The VE runs again from the dump file `image`, which a full restore removed: the
        snapshot that went with it is no longer needed."""
        ...

    def rolled_back(self, veid: str, rec: FsSnapshot, kept: Path) -> None:
        """The private area was rolled back to the snapshot `rec` records; its live
        contents are kept, read-only, at `kept` (a path `place` gave)."""
        ...

    def destroyed(self, veid: str) -> None:
        """The VE is being destroyed (stopped; its private area goes next): every snapshot
        of it goes."""
        ...
