"""The mount table (/proc/self/mountinfo): which mount holds a path, what is mounted where.

A line is `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS`;
the kernel escapes space, tab, newline and backslash in paths as octal (`\\040`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from storage.errors import FsError

PROC = Path("/proc")

_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    mount_id: int
    dev: tuple[int, int]
    root: str
    mount_point: str
    options: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse the text of a mountinfo file, in its order (later mounts cover earlier ones)."""
    result = []
    for line in text.splitlines():
        fields = line.split(" ")
        # The optional fields end at a lone "-".
        sep = fields.index("-", 6)
        major, minor = fields[2].split(":")
        result.append(
            Mount(
                mount_id=int(fields[0]),
                dev=(int(major), int(minor)),
                root=_unescape(fields[3]),
                mount_point=_unescape(fields[4]),
                options=fields[5],
                fstype=fields[sep + 1],
                source=_unescape(fields[sep + 2]),
            )
        )
    return result


def mounts(proc: Path = PROC) -> list[Mount]:
    """The mount table of this process's mount namespace."""
    return parse_mountinfo((proc / "self" / "mountinfo").read_text())


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
