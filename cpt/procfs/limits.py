"""/proc/PID/limits.

Grammar: a header line, then "%-25s %-20s %-20s %-10s" per resource (name, soft, hard,
units); "unlimited" = RLIM_INFINITY.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._common import dec

RLIM_INFINITY = 2**64 - 1

# the names fs/proc/base.c prints, in RLIMIT_* order (asm-generic/resource.h)
RLIMIT_NAMES = (
    "Max cpu time",
    "Max file size",
    "Max data size",
    "Max stack size",
    "Max core file size",
    "Max resident set",
    "Max processes",
    "Max open files",
    "Max locked memory",
    "Max address space",
    "Max file locks",
    "Max pending signals",
    "Max msgqueue size",
    "Max nice priority",
    "Max realtime priority",
    "Max realtime timeout",
)
_RLIMIT_BY_NAME = {n: i for i, n in enumerate(RLIMIT_NAMES)}


@dataclass(frozen=True, slots=True)
class RLimit:
    resource: int | None  # RLIMIT_* number; None for a name this table does not know yet
    name: str
    soft: int  # RLIM_INFINITY for "unlimited"
    hard: int
    units: str


def _rlim(v: bytes) -> int:
    return RLIM_INFINITY if v == b"unlimited" else int(v)


def parse_limits(data: bytes) -> list[RLimit]:
    out = []
    for line in data.split(b"\n")[1:]:  # line 0 is the column header
        if not line.strip():
            continue
        name = dec(line[:25]).rstrip()  # "%-25s": names hold spaces, values never do
        v = line[25:].split()
        out.append(
            RLimit(
                _RLIMIT_BY_NAME.get(name),
                name,
                _rlim(v[0]),
                _rlim(v[1]),
                dec(v[2]) if len(v) > 2 else "",
            )
        )
    return out
