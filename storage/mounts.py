"""The mount table of this process's mount namespace (read through the /proc layer,
cpt.procfs): which mount holds a path, what is mounted where."""

from __future__ import annotations

import os
from dataclasses import dataclass

from cpt.procfs import Proc
from storage.errors import FsError


@dataclass(frozen=True)
class Mount:
    mount_id: int
    dev: tuple[int, int]
    root: str
    mount_point: str
    options: str
    fstype: str
    source: str


def mounts() -> list[Mount]:
    """The mount table of this process's mount namespace, in its order (later mounts
    cover earlier ones)."""
    return [
        Mount(
            mount_id=m.mount_id,
            dev=(m.major, m.minor),
            root=m.root,
            mount_point=m.mount_point,
            options=m.options,
            fstype=m.fstype,
            source=m.source,
        )
        for m in Proc().mountinfo(os.getpid())
    ]


def _inside(path: str, mount_point: str) -> bool:
    return path == mount_point or mount_point == "/" or path.startswith(mount_point + "/")


def mount_of(path: str | os.PathLike[str], table: list[Mount] | None = None) -> Mount:
    """The mount that holds `path` (symlinks resolved; it need not exist yet): the one with
    the longest mount point above it, the latest of several on the same point."""
    real = os.path.realpath(path)
    best: Mount | None = None
    for m in mounts() if table is None else table:
        if _inside(real, m.mount_point) and (
            best is None or len(m.mount_point) >= len(best.mount_point)
        ):
            best = m
    if best is None:
        raise FileNotFoundError(f"no mount holds {real}")
    return best


def is_mount_point(path: str | os.PathLike[str], table: list[Mount] | None = None) -> bool:
    real = os.path.realpath(path)
    return any(m.mount_point == real for m in (mounts() if table is None else table))


def mounts_below(path: str | os.PathLike[str], table: list[Mount] | None = None) -> list[Mount]:
    """Mounts strictly inside `path` (what a recursive delete would walk into)."""
    real = os.path.realpath(path)
    return [
        m
        for m in (mounts() if table is None else table)
        if m.mount_point != real and _inside(m.mount_point, real)
    ]


def refuse_mounts_below(path: str | os.PathLike[str]) -> None:
    """Raise FsError when something is mounted inside `path` (before deleting it)."""
    inside = mounts_below(path)
    if inside:
        raise FsError(
            f"{path} holds a mount at {inside[0].mount_point}: unmount it first", path=path
        )
