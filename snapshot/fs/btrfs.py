"""btrfs: areas are subvolumes, snapshots are read-only snapshots (btrfsutil).

Facts this backend is built on (ENGINE-NOTES "Filesystem facts", measured on kernel 6.18):
- sync() before the freeze: a snapshot then costs ~1-4 ms instead of ~110 ms with dirty
  data. NEVER fsfreeze a btrfs: a snapshot on a frozen btrfs hangs unkillably.
- A snapshot is not recursive: a subvolume nested in an area is an empty directory in the
  snapshot. A VE with several subvolumes snapshots each one (snapshot_many).
- ctransid (the transaction of the last change to a subvolume's files) is copied into its
  snapshots and bumps with every change (data, mode, owner, xattr, link, rename); the
  root item on disk is only updated at commit, so read it after a sync. `generation`
  bumps also when the subvolume is merely snapshotted: it cannot tell a change.
- `btrfs subvolume find-new AREA GEN` lists only data extents newer than GEN (inclusive),
  never deletions, renames, chmod, mkdir or xattrs: it cannot prove an area unchanged.
  The complete answer is `btrfs send --no-data -p SNAP TMP` against a temporary read-only
  snapshot TMP of the area (send refuses a writable subvolume), see sendstream.py.
- Mount the pool noatime: with relatime a read changes atime, send reports a utimes, and
  the file would count as changed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import btrfsutil

from cptimage.records import FsBackend
from snapshot import runner
from snapshot.errors import FsError, UnsupportedFs
from snapshot.fs import sendstream
from snapshot.fs.base import Changes, Filesystem, SnapshotInfo
from snapshot.fs.mounts import mount_of

FS_TREE = 5  # BTRFS_FS_TREE_OBJECTID: the top-level subvolume
_RO = 1  # BTRFS_SUBVOL_RDONLY in SubvolumeInfo.flags
_NO_UUID = bytes(16)


def _call(what: str, path: Path, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A btrfsutil call; its errors become FsError naming `path`."""
    try:
        return fn(*args, **kwargs)
    except btrfsutil.BtrfsUtilError as e:
        raise FsError(f"btrfs {what} {path}: {e.strerror}", path=path) from None


class BtrfsFilesystem(Filesystem):
    name = "btrfs"

    @classmethod
    def probe(cls, path: Path) -> bool:
        return mount_of(path).fstype == "btrfs"

    def _create_area(self, path: Path) -> None:
        _call("create subvolume", path, btrfsutil.create_subvolume, path)

    def _delete_area(self, path: Path) -> None:
        _require_subvolume(path)
        # Subvolumes nested in the area go with it.
        _call("delete subvolume", path, btrfsutil.delete_subvolume, path, recursive=True)

    def _snapshot(self, area: Path, dest: Path, readonly: bool) -> SnapshotInfo:
        _require_subvolume(area)
        _call("snapshot", area, btrfsutil.create_snapshot, area, dest, read_only=readonly)
        return _info(dest, area)

    def _info(self, path: Path) -> SnapshotInfo:
        _require_subvolume(path)
        return _info(path, None)

    def _delete_snapshot(self, path: Path) -> None:
        _require_subvolume(path)
        _call("delete snapshot", path, btrfsutil.delete_subvolume, path)

    def _changes_since(self, area: Path, snapshot: Path) -> Changes:
        _require_subvolume(area)
        _require_read_only(snapshot)
        if _unchanged(area, snapshot):
            return Changes()
        # send needs a read-only source: freeze the live area in a temporary snapshot.
        tmp = area.with_name(f".{area.name}.cpt-check-{uuid.uuid4().hex[:12]}")
        _call("snapshot", area, btrfsutil.create_snapshot, area, tmp, read_only=True)
        try:
            return self._diff(snapshot, tmp)
        finally:
            _call("delete snapshot", tmp, btrfsutil.delete_subvolume, tmp)

    def _diff(self, a: Path, b: Path) -> Changes:
        _require_read_only(a)
        _require_read_only(b)
        stream = runner.run(["btrfs", "-q", "send", "--no-data", "--proto", "1", "-p", a, b])
        return sendstream.changes(stream.stdout, a, b)

    def _rollback(self, area: Path, snapshot: Path, keep: Path) -> None:
        _require_subvolume(area)
        _require_read_only(snapshot)
        # The live subvolume moves away untouched; a writable snapshot of the read-only one
        # takes its place (a read-only or received snapshot is never made writable).
        _rename(area, keep)
        try:
            _call("snapshot", snapshot, btrfsutil.create_snapshot, snapshot, area)
        except BaseException:
            _rename(keep, area)
            raise
        _call("set read-only", keep, btrfsutil.set_subvolume_read_only, keep, True)

    def _size(self, path: Path) -> int:
        # Exclusive bytes without quotas: `filesystem du` walks the extents' sharing.
        out = runner.run(["btrfs", "filesystem", "du", "-s", "--raw", path]).stdout.decode()
        return int(out.splitlines()[-1].split()[1])


def _rename(src: Path, dst: Path) -> None:
    try:
        os.rename(src, dst)
    except OSError as e:
        raise FsError(f"cannot move {src} to {dst}: {e.strerror}", path=src) from None


def _require_subvolume(path: Path) -> None:
    try:
        ok = btrfsutil.is_subvolume(path)
    except btrfsutil.BtrfsUtilError as e:
        raise UnsupportedFs(f"{path} is not a btrfs subvolume: {e.strerror}", path=path) from None
    if not ok:
        raise UnsupportedFs(f"{path} is not a btrfs subvolume", path=path)


def _require_read_only(path: Path) -> None:
    _require_subvolume(path)
    if not _call("read-only flag of", path, btrfsutil.get_subvolume_read_only, path):
        raise UnsupportedFs(f"{path} is not a read-only snapshot", path=path)


def _unchanged(area: Path, snapshot: Path) -> bool:
    """True when the area provably did not change since `snapshot`: one is a snapshot of the
    other and the area's ctransid is still the one the snapshot copied."""
    # The root items hold the new ctransid only after a commit.
    _call("sync", area, btrfsutil.sync, area)
    a = _call("subvolume info", area, btrfsutil.subvolume_info, area)
    s = _call("subvolume info", snapshot, btrfsutil.subvolume_info, snapshot)
    related = s.parent_uuid == a.uuid or a.parent_uuid == s.uuid
    return bool(related and a.ctransid == s.ctransid)


def _info(path: Path, area: Path | None) -> SnapshotInfo:
    i = _call("subvolume info", path, btrfsutil.subvolume_info, path)
    parent = uuid.UUID(bytes=i.parent_uuid) if i.parent_uuid != _NO_UUID else None
    return SnapshotInfo(
        backend=FsBackend.BTRFS,
        path=path,
        subvolume=area if area is not None else _find_uuid(path, i.parent_uuid),
        uuid=uuid.UUID(bytes=i.uuid),
        parent_uuid=parent,
        generation=i.ctransid,
        created_ns=int(i.otime * 1_000_000_000),
        read_only=bool(i.flags & _RO),
    )


def _find_uuid(path: Path, wanted: bytes) -> Path | None:
    """Where the subvolume with UUID `wanted` is visible through the mount of `path`."""
    if wanted == _NO_UUID:
        return None
    mount = mount_of(path)
    iterator = btrfsutil.SubvolumeIterator(mount.mount_point, top=FS_TREE, info=True)
    for rel, info in iterator:
        if info.uuid == wanted:
            # Paths are relative to the top level; the mount shows the subtree at its root.
            top_path = "/" + rel
            if top_path == mount.root or top_path.startswith(mount.root.rstrip("/") + "/"):
                return Path(mount.mount_point) / os.path.relpath(top_path, mount.root)
            return None
    return None
