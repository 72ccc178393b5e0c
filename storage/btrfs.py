"""btrfs: areas are subvolumes, snapshots are read-only snapshots (btrfsutil).

Facts this backend is built on (ENGINE-NOTES "Filesystem facts", measured on kernel 6.18):
- sync() before the freeze: a snapshot then costs ~1-4 ms instead of ~110 ms with dirty
  data. NEVER fsfreeze a btrfs: a snapshot on a frozen btrfs hangs unkillably.
- A snapshot is not recursive: a subvolume nested in an area is an empty directory in the
  snapshot. So a snapshot of an area here is a GROUP: the area's snapshot at DEST, and one
  snapshot per nested subvolume in the directory DEST.nested, named by its path in the
  area ("/" written %2F), taken together (all or none). Every operation on a snapshot
  works on its group: changes and diffs compare subvolume by subvolume, a rollback puts
  each nested snapshot back in its place (and moves the live nested subvolumes out of the
  kept contents into KEEP.nested), a delete removes them all.
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

import contextlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import btrfsutil

from cpt.sys import runner
from cptimage.records import FsBackend
from storage import sendstream
from storage.base import ROOT, Changes, Filesystem, SnapshotInfo
from storage.errors import FsError, UnsupportedFs
from storage.mounts import mount_of

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
        group = _nested_dir(dest)
        nested = nested_subvolumes(area)
        if nested and os.path.lexists(group):
            raise FsError(f"{group} exists: a snapshot is never written over", path=group)
        _call("snapshot", area, btrfsutil.create_snapshot, area, dest, read_only=readonly)
        made: list[Path] = [dest]
        try:
            if nested:
                group.mkdir()
            for rel in nested:
                target = group / _escape(rel)
                _call("snapshot", area / rel, btrfsutil.create_snapshot, area / rel, target,
                      read_only=readonly)  # fmt: skip
                made.append(target)
        except BaseException:
            for path in reversed(made):
                with contextlib.suppress(FsError):
                    _call("delete snapshot", path, btrfsutil.delete_subvolume, path)
            with contextlib.suppress(OSError):
                group.rmdir()
            raise
        return _info(dest, area)

    def _info(self, path: Path) -> SnapshotInfo:
        _require_subvolume(path)
        return _info(path, None)

    def _delete_snapshot(self, path: Path) -> None:
        _require_subvolume(path)
        _call("delete snapshot", path, btrfsutil.delete_subvolume, path)
        for target in _group(path).values():
            _call("delete snapshot", target, btrfsutil.delete_subvolume, target)
        with contextlib.suppress(FileNotFoundError):
            _nested_dir(path).rmdir()

    def _changes_since(self, area: Path, snapshot: Path) -> Changes:
        _require_subvolume(area)
        _require_read_only(snapshot)
        live = set(nested_subvolumes(area))
        group = _group(snapshot)
        pairs = {r: (area / r, group[r]) for r in live & group.keys()}
        pairs[ROOT] = (area, snapshot)
        return _compare_group(
            pairs,
            {r: area / r for r in live - group.keys()},
            {r: group[r] for r in group.keys() - live},
            self._changes_one,
        )

    def _changes_one(self, area: Path, snapshot: Path, others: set[str] | None = None) -> Changes:
        """One subvolume against its snapshot (nested subvolumes are empty directories;
        `others`: the paths reported in them, see sendstream.changes)."""
        _require_read_only(snapshot)
        if _unchanged(area, snapshot):
            return Changes()
        # send needs a read-only source: freeze the live area in a temporary snapshot.
        tmp = area.with_name(f".{area.name}.cpt-check-{uuid.uuid4().hex[:12]}")
        _call("snapshot", area, btrfsutil.create_snapshot, area, tmp, read_only=True)
        try:
            return self._diff_one(snapshot, tmp, others)
        finally:
            _call("delete snapshot", tmp, btrfsutil.delete_subvolume, tmp)

    def _diff(self, a: Path, b: Path) -> Changes:
        ga, gb = _group(a), _group(b)
        pairs = {r: (ga[r], gb[r]) for r in ga.keys() & gb.keys()}
        pairs[ROOT] = (a, b)
        return _compare_group(
            pairs,
            {r: gb[r] for r in gb.keys() - ga.keys()},
            {r: ga[r] for r in ga.keys() - gb.keys()},
            self._diff_one,
        )

    def _diff_one(self, a: Path, b: Path, others: set[str] | None = None) -> Changes:
        _require_read_only(a)
        _require_read_only(b)
        stream = runner.run(["btrfs", "-q", "send", "--no-data", "--proto", "1", "-p", a, b])
        return sendstream.changes(stream.stdout, a, b, others or ())

    def _rollback(self, area: Path, snapshot: Path, keep: Path) -> None:
        _require_subvolume(area)
        _require_read_only(snapshot)
        group = _group(snapshot)
        live = nested_subvolumes(area)
        kept = _nested_dir(keep)
        if live and os.path.lexists(kept):
            raise FsError(f"{kept} exists: a snapshot is never written over", path=kept)
        # The live subvolume moves away untouched; a writable snapshot of the read-only one
        # takes its place (a read-only or received snapshot is never made writable), then
        # each nested snapshot, writable, takes the place of its empty directory.
        _rename(area, keep)
        try:
            _call("snapshot", snapshot, btrfsutil.create_snapshot, snapshot, area)
            for rel in sorted(group, key=lambda r: r.count("/")):
                place = area / rel
                if os.path.isdir(place) and not os.path.islink(place):
                    os.rmdir(place)  # the empty directory a snapshot holds for it
                place.parent.mkdir(parents=True, exist_ok=True)
                _call("snapshot", group[rel], btrfsutil.create_snapshot, group[rel], place)
        except BaseException:
            with contextlib.suppress(FsError, btrfsutil.BtrfsUtilError):
                if os.path.lexists(area):
                    btrfsutil.delete_subvolume(area, recursive=True)
            _rename(keep, area)
            raise
        # The kept contents become a group too: the live nested subvolumes move out of
        # them (deepest first), leaving the empty directory a snapshot would hold.
        if live:
            kept.mkdir()
        for rel in sorted(live, key=lambda r: -r.count("/")):
            target = kept / _escape(rel)
            _rename(keep / rel, target)
            (keep / rel).mkdir()
            _call("set read-only", target, btrfsutil.set_subvolume_read_only, target, True)
        _call("set read-only", keep, btrfsutil.set_subvolume_read_only, keep, True)

    def _size(self, path: Path) -> int:
        # Exclusive bytes without quotas: `filesystem du` walks the extents' sharing.
        total = 0
        for p in (path, *_group(path).values()):
            out = runner.run(["btrfs", "filesystem", "du", "-s", "--raw", p]).stdout.decode()
            total += int(out.splitlines()[-1].split()[1])
        return total


def nested_subvolumes(area: Path | str) -> list[str]:
    """The paths, relative to `area`, of the btrfs subvolumes below it, parents first."""
    with btrfsutil.SubvolumeIterator(str(area)) as it:
        return sorted((rel for rel, _ in it), key=lambda r: (r.count("/"), r))


def _nested_dir(snapshot: Path) -> Path:
    """Where the snapshots of the subvolumes nested in a snapshot's area are."""
    return snapshot.with_name(snapshot.name + ".nested")


def _escape(rel: str) -> str:
    return rel.replace("%", "%25").replace("/", "%2F")


def _unescape(name: str) -> str:
    return name.replace("%2F", "/").replace("%25", "%")


def _group(snapshot: Path) -> dict[str, Path]:
    """The nested snapshots of a snapshot's group: path in the area -> snapshot."""
    d = _nested_dir(snapshot)
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return {}
    return {_unescape(n): d / n for n in names}


def _compare_group(
    pairs: dict[str, tuple[Path, Path]],
    added: dict[str, Path],
    removed: dict[str, Path],
    one: Callable[[Path, Path, set[str]], Changes],
) -> Changes:
    """The report of a group: `one(old, new, others)` compares each subvolume present on
    both sides (ROOT: the area itself), deepest first; `added`/`removed`: the nested
    subvolumes on one side only (path in the area -> where to list their contents).  In a
    parent's report the empty directories standing for nested subvolumes are left out,
    and the time changes they and the paths reported inside them cause in its
    directories are echoes (see base.drop_time_echoes)."""
    parts = [
        Changes(added=_with_contents(added), removed=_with_contents(removed)),
    ]
    points = (pairs.keys() - {ROOT}) | added.keys() | removed.keys()
    for rel in sorted(pairs, key=lambda r: -1 if r == ROOT else r.count("/"), reverse=True):
        inner = _below(rel, points)
        reported = _below(rel, {p for c in parts for p in c.paths()})
        parts.append(_under(rel, _without(inner, one(*pairs[rel], inner | reported))))
    return _merge(parts)


def _with_contents(roots: dict[str, Path]) -> list[str]:
    """Each path, with every path below it (as a report names an added directory's)."""
    found = set(roots)
    for rel, root in roots.items():
        found.update(f"{rel}/{p}" for p in sendstream.descendants(root, ""))
    return sorted(found)


def _below(rel: str, paths: set[str]) -> set[str]:
    """The paths strictly below `rel`, relative to it."""
    if rel == ROOT:
        return set(paths)
    return {p[len(rel) + 1 :] for p in paths if p.startswith(rel + "/")}


def _under(rel: str, c: Changes) -> Changes:
    """`c` (paths relative to the nested subvolume at `rel`) relative to the area."""

    if rel == ROOT:
        return c
    return c.map(lambda paths: [rel if p == ROOT else f"{rel}/{p}" for p in paths])


def _without(points: set[str], c: Changes) -> Changes:
    """A parent subvolume's report without the empty directories standing for its nested
    subvolumes (whose own snapshots tell what changed; a rollback replaces them)."""

    return c.map(lambda paths: [p for p in paths if p not in points])


def _merge(parts: list[Changes]) -> Changes:
    return Changes(
        added=sorted({p for c in parts for p in c.added}),
        removed=sorted({p for c in parts for p in c.removed}),
        changed=sorted({p for c in parts for p in c.changed}),
    )


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
