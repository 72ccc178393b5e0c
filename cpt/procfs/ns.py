"""Namespaces and mounts: the /proc/PID/ns/* links and /proc/PID/mountinfo.

Grammar:
  ns/KIND     a link "KIND:[INODE]"
  uid_map, gid_map
              lines "INSIDE OUTSIDE COUNT" (right-aligned in 10-wide columns): COUNT ids
              from INSIDE in the process's user namespace are OUTSIDE.. in the READER's
  setgroups   "allow" or "deny"
  mountinfo   ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS,
              " \\t\\n\\\\" octal-escaped (\\040)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._common import c_unescape, dec

_INODE_LINK_RE = re.compile(r"([a-z_]+):\[(\d+)\]")


@dataclass(frozen=True, slots=True)
class MountInfo:
    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str  # path of the mount's root inside its filesystem
    mount_point: str  # relative to the READER's root
    options: str  # per-mount options: "rw,nosuid,relatime"
    optional: tuple[str, ...]  # "shared:1", "master:2", "propagate_from:3", "unbindable"
    fstype: str
    source: str
    super_options: str

    def _tag(self, name: str) -> int | None:
        for o in self.optional:
            k, _, v = o.partition(":")
            if k == name:
                return int(v)
        return None

    @property
    def shared(self) -> int | None:
        return self._tag("shared")

    @property
    def master(self) -> int | None:
        return self._tag("master")

    @property
    def propagate_from(self) -> int | None:
        return self._tag("propagate_from")

    @property
    def unbindable(self) -> bool:
        return "unbindable" in self.optional


def parse_mountinfo(data: bytes) -> list[MountInfo]:
    out = []
    for line in data.split(b"\n"):
        if not line:
            continue
        # no field holds a raw space (mangle() writes \040), so split(' ') is exact
        f = line.split(b" ")
        sep = f.index(b"-", 6)
        maj, _, mnr = f[2].partition(b":")

        def u(b: bytes) -> str:
            return dec(c_unescape(b))

        out.append(
            MountInfo(
                mount_id=int(f[0]),
                parent_id=int(f[1]),
                major=int(maj),
                minor=int(mnr),
                root=u(f[3]),
                mount_point=u(f[4]),
                options=u(f[5]),
                optional=tuple(u(x) for x in f[6:sep]),
                fstype=u(f[sep + 1]),
                source=u(f[sep + 2]),
                super_options=u(f[sep + 3]) if len(f) > sep + 3 else "",
            )
        )
    return out


def parse_ns_link(target: str) -> tuple[str, int]:
    """ "net:[4026531833]" -> ("net", 4026531833)"""
    m = _INODE_LINK_RE.fullmatch(target)
    if not m:
        raise ValueError(f"not a namespace link: {target!r}")
    return m.group(1), int(m.group(2))


@dataclass(frozen=True, slots=True)
class IdMapping:
    """One line of uid_map or gid_map."""

    inside: int  # first id in the process's user namespace
    outside: int  # the id it is in the reader's user namespace
    count: int


def parse_id_map(data: bytes) -> tuple[IdMapping, ...]:
    out = []
    for line in data.split(b"\n"):
        f = line.split()
        if f:
            out.append(IdMapping(int(f[0]), int(f[1]), int(f[2])))
    return tuple(out)


def map_id(maps: tuple[IdMapping, ...], outside: int) -> int | None:
    """The id inside the namespace of the reader's id `outside`; None if unmapped (the
    kernel shows it as the overflow id, 65534)."""
    for m in maps:
        if m.outside <= outside < m.outside + m.count:
            return m.inside + outside - m.outside
    return None


def format_id_map(maps: tuple[IdMapping, ...] | list[IdMapping]) -> str:
    """The text to write to uid_map or gid_map (one write(2) of every line)."""
    return "".join(f"{m.inside} {m.outside} {m.count}\n" for m in maps)
