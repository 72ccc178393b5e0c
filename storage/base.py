"""The interface every filesystem backend implements, and the values it returns.

An *area* is the private filesystem of a VE (a btrfs subvolume, a thin LV mounted at a
directory, or a plain directory). A *snapshot* is a frozen copy of an area at a path. Every
path a method returns or reports (changed files) is relative to the area root, with "/"
separators, "." for the root itself.

Change reports agree across backends: a path is *added* when only the newer tree has it,
*removed* when only the older one has it, *changed* when both have it and its content,
type, mode, owner, xattrs, mtime, link target or device number differ. What cannot be seen
does not count: atime, ctime, the link count, the inode number (a file replaced by an
identical one is unchanged). A directory whose only change is its mtime is reported only
when nothing below it is: adding or removing an entry bumps its parent's mtime, and the
entry already names the change. One difference: btrfs trusts its send stream for a file it
saw written, so bytes rewritten identically (mtime restored) count as a change there.
"""

from __future__ import annotations

import abc
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Self
from uuid import UUID

from cpt.errors import CommandError
from cpt.sys.reflink import syncfs
from cptimage.records import FsBackend
from storage.errors import FsError
from storage.mounts import refuse_mounts_below

log = logging.getLogger("cpt.snapshot")

ROOT = "."

StrPath = str | os.PathLike[str]


@dataclass(frozen=True)
class SnapshotInfo:
    """What the image records of a snapshot (FsSnapshot), and what the catalog lists."""

    backend: FsBackend
    path: Path  # the snapshot
    subvolume: Path | None  # the area it was taken of, where it is now (None: not found)
    uuid: UUID
    parent_uuid: UUID | None  # btrfs: the area's subvolume UUID
    # btrfs: ctransid, the transaction of the area's last change the snapshot holds;
    # lvm: the thin pool's transaction id; copy: 0
    generation: int
    created_ns: int
    read_only: bool
    manifest_digest: bytes = b""  # copy backends: sha256 of the manifest


@dataclass(frozen=True)
class Changes:
    """Paths added, removed and changed between two trees, each list sorted."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def paths(self) -> list[str]:
        """Every path named, sorted."""
        return sorted({*self.added, *self.removed, *self.changed})

    def map(self, fn: Callable[[list[str]], list[str]]) -> Changes:
        """The same report with `fn` applied to each of its three lists."""
        return Changes(added=fn(self.added), removed=fn(self.removed), changed=fn(self.changed))

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def _ancestors(paths: Iterable[str]) -> set[str]:
    """Every directory that holds one of `paths` (ROOT included)."""
    found: set[str] = set()
    for path in paths:
        if path == ROOT:
            continue
        found.add(ROOT)
        while "/" in path:
            path = path.rsplit("/", 1)[0]
            if path in found:
                break  # its own ancestors are in already
            found.add(path)
    return found


def drop_time_echoes(
    changed: Iterable[str], times_only: Iterable[str], others: Iterable[str]
) -> list[str]:
    """The changed list: `changed` plus each directory of `times_only` (changed in its times
    alone) that has nothing reported below it, in `changed` or `others`."""
    changed = set(changed)
    holders = _ancestors(changed | set(others))
    return sorted(changed | {d for d in times_only if d not in holders})


class Filesystem(abc.ABC):
    """A snapshot backend. Subclasses: BtrfsFilesystem, LvmFilesystem, CopyFilesystem.

    The public methods are the interface: they take str or Path, do the checks common to
    every backend and call the backend's `_` method with Paths.
    """

    name: ClassVar[str]

    @classmethod
    @abc.abstractmethod
    def probe(cls, path: Path) -> bool:
        """Does this backend handle `path` (an existing path)?"""

    @classmethod
    def for_path(cls, path: Path) -> Self:
        """The backend instance for `path` (backends with configuration override this)."""
        return cls()

    def create_area(self, path: StrPath) -> None:
        """Create an empty private area at `path` (its parent is created if missing)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._create_area(path)

    def delete_area(self, path: StrPath) -> None:
        """Delete the area at `path` and everything in it. Refused when a mount lies inside."""
        path = Path(path)
        refuse_mounts_below(path)
        self._delete_area(path)

    def snapshot(self, area: StrPath, dest: StrPath, *, readonly: bool = True) -> SnapshotInfo:
        """Snapshot `area` at `dest` (which must not exist; its parent is created)."""
        area, dest = Path(area), Path(dest)
        if not area.is_dir():
            raise FsError(f"area {area} does not exist", path=area)
        _require_free(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        return self._snapshot(area, dest, readonly)

    def snapshot_many(
        self, areas: Sequence[StrPath], dests: Sequence[StrPath]
    ) -> list[SnapshotInfo]:
        """Snapshot every area (a VE's subvolumes, in its frozen window): all or none. A
        failure removes the snapshots already made and raises the first error."""
        if len(areas) != len(dests):
            raise ValueError("snapshot_many: one destination per area")
        # Refuse before creating anything: cheaper than undoing.
        for dest in dests:
            _require_free(Path(dest))
        made: list[SnapshotInfo] = []
        try:
            for area, dest in zip(areas, dests, strict=True):
                made.append(self.snapshot(area, dest))
        except BaseException:
            for info in reversed(made):
                try:
                    self.delete_snapshot(info.path)
                except (FsError, CommandError) as e:
                    log.error("cannot remove snapshot %s after a failed group: %s", info.path, e)
            raise
        return made

    def info(self, path: StrPath) -> SnapshotInfo:
        """What is known of the snapshot at `path`."""
        return self._info(Path(path))

    def delete_snapshot(self, path: StrPath) -> None:
        """Delete the snapshot at `path`."""
        self._delete_snapshot(Path(path))

    def changes_since(self, area: StrPath, snapshot: StrPath) -> Changes:
        """How the live `area` differs from `snapshot` (snapshot older, area newer)."""
        return self._changes_since(Path(area), Path(snapshot))

    def changed_since(self, area: StrPath, snapshot: StrPath) -> list[str]:
        """Every path of `area` that differs from `snapshot`; empty when identical."""
        return self.changes_since(area, snapshot).paths()

    def diff(self, a: StrPath, b: StrPath) -> Changes:
        """How snapshot `b` differs from snapshot `a` (a older, b newer)."""
        return self._diff(Path(a), Path(b))

    def rollback(self, area: StrPath, snapshot: StrPath, *, keep: StrPath | None = None) -> Path:
        """Make `area` exactly `snapshot` again, leaving `snapshot` untouched; the live
        contents become a read-only snapshot at `keep` (default: beside the snapshot,
        named SNAPSHOT.pre-rollback-TIME), whose path is returned. Processes must no longer
        use the area."""
        area, snapshot = Path(area), Path(snapshot)
        keep = Path(keep) if keep is not None else _pre_rollback_path(snapshot, time.time_ns())
        _require_free(keep)
        keep.parent.mkdir(parents=True, exist_ok=True)
        self._rollback(area, snapshot, keep)
        return keep

    def sync(self, area: StrPath) -> None:
        """Write back the filesystem holding `area` (before a freeze: see ENGINE-NOTES)."""
        fd = os.open(area, os.O_RDONLY | os.O_DIRECTORY)
        try:
            syncfs(fd)
        finally:
            os.close(fd)

    def size(self, path: StrPath) -> int:
        """Bytes used by `path` (a snapshot or an area) alone, best effort."""
        return self._size(Path(path))

    @abc.abstractmethod
    def _create_area(self, path: Path) -> None: ...

    @abc.abstractmethod
    def _delete_area(self, path: Path) -> None: ...

    @abc.abstractmethod
    def _snapshot(self, area: Path, dest: Path, readonly: bool) -> SnapshotInfo: ...

    @abc.abstractmethod
    def _info(self, path: Path) -> SnapshotInfo: ...

    @abc.abstractmethod
    def _delete_snapshot(self, path: Path) -> None: ...

    @abc.abstractmethod
    def _changes_since(self, area: Path, snapshot: Path) -> Changes: ...

    @abc.abstractmethod
    def _diff(self, a: Path, b: Path) -> Changes: ...

    @abc.abstractmethod
    def _rollback(self, area: Path, snapshot: Path, keep: Path) -> None: ...

    @abc.abstractmethod
    def _size(self, path: Path) -> int: ...


def _require_free(dest: Path) -> None:
    if os.path.lexists(dest):
        raise FsError(f"{dest} exists: a snapshot is never written over", path=dest)


def _pre_rollback_path(snapshot: Path, now_ns: int) -> Path:
    """Where a rollback keeps the live contents by default: beside `snapshot`."""
    stamp = f"{now_ns // 1_000_000_000}.{now_ns % 1_000_000_000:09d}"
    return snapshot.with_name(f"{snapshot.name}.pre-rollback-{stamp}")
