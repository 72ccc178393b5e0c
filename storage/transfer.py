"""Moving a private area to another node: `btrfs send` of a read-only snapshot GROUP
(the area's snapshot and one per nested subvolume, btrfs.py) on one side, `btrfs receive`
on the other, and the area rebuilt there from what was received.

    parts(snapshot, parent)   what to send: (path in the area, snapshot, parent snapshot or
                              None) for the area ("") and each nested subvolume
    sender / receiver         the `btrfs send` / `btrfs receive` processes (pipes)
    received(dir)             the subvolume a receive into an empty directory made
    build_area(area, parts)   the writable area made of received read-only snapshots:
                              each a writable snapshot in its place (a received snapshot
                              itself is never made writable: its received UUID would lie)

A later send with a parent (`btrfs send -p`) carries only what changed; the receiving
side finds the parent by its received UUID.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import btrfsutil

from cpt.sys import runner
from storage.btrfs import _call, _group, nested_subvolumes
from storage.errors import FsError

AREA = ""  # the area itself among a group's parts


def parts(snapshot: Path, parent: Path | None = None) -> list[tuple[str, Path, Path | None]]:
    """The subvolumes of a snapshot group to send, the area first, then the nested ones
    (parents first), each with its counterpart in `parent`'s group (None: sent whole)."""
    old = _group(parent) if parent is not None else {}
    out: list[tuple[str, Path, Path | None]] = [(AREA, snapshot, parent)]
    for rel, snap in sorted(_group(snapshot).items(), key=lambda kv: (kv[0].count("/"), kv[0])):
        out.append((rel, snap, old.get(rel)))
    return out


def sender(snapshot: Path, parent: Path | None = None) -> runner.Stream:
    """`btrfs send` of `snapshot` (incremental on `parent`), its stream on stdout."""
    argv = ["btrfs", "send", "-q", *(["-p", str(parent)] if parent else []), str(snapshot)]
    return runner.stream(argv)


def receiver(directory: Path) -> runner.Stream:
    """`btrfs receive` into `directory`, its stream on stdin."""
    return runner.stream(["btrfs", "receive", "-q", str(directory)], stdin=True)


def received(directory: Path) -> Path:
    """The one subvolume a receive made in `directory`."""
    names = os.listdir(directory)
    if len(names) != 1:
        raise FsError(f"{directory}: {len(names)} entries after a receive, not one", path=directory)
    return directory / names[0]


def received_uuid(path: Path) -> bytes:
    """The UUID of the subvolume `path` was received from (zeros: not received)."""
    return bytes(_call("subvolume info", path, btrfsutil.subvolume_info, path).received_uuid)


def delete(path: Path) -> None:
    """Delete subvolume `path`, and every subvolume nested in it."""
    if os.path.lexists(path):
        _call("delete subvolume", path, btrfsutil.delete_subvolume, path, recursive=True)


def build_area(area: Path, pieces: dict[str, Path]) -> None:
    """Make the writable area `area` of the received snapshots `pieces` (path in the area
    -> received subvolume; AREA: the area's own): each nested one replaces the empty
    directory that stands for it.  On failure nothing of `area` is left."""
    if os.path.lexists(area):
        raise FsError(f"{area} exists: an area is never written over", path=area)
    _call("snapshot", area, btrfsutil.create_snapshot, pieces[AREA], area)
    try:
        for rel in sorted((r for r in pieces if r), key=lambda r: (r.count("/"), r)):
            target = area / rel
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(target)  # the empty directory standing for the subvolume
            _call("snapshot", target, btrfsutil.create_snapshot, pieces[rel], target)
    except BaseException:
        delete(area)
        raise


__all__ = [
    "AREA",
    "build_area",
    "delete",
    "nested_subvolumes",
    "parts",
    "received",
    "received_uuid",
    "receiver",
    "sender",
]
