"""Sets of address ranges: sorted, disjoint, non-adjacent [start, end) pairs.

The tracker and the incremental dump speak in them: the pages a process has, those written
since the last round, those a parent image holds.  Every function takes and returns the
normal form (`normalize` makes it from any list).
"""

from __future__ import annotations

from collections.abc import Iterable

Range = tuple[int, int]


def normalize(ranges: Iterable[Range]) -> list[Range]:
    """Sorted, merged, empty ranges dropped."""
    out: list[Range] = []
    for s, e in sorted(r for r in ranges if r[0] < r[1]):
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def union(a: list[Range], b: list[Range]) -> list[Range]:
    return normalize([*a, *b])


def intersect(a: list[Range], b: list[Range]) -> list[Range]:
    out: list[Range] = []
    i = j = 0
    while i < len(a) and j < len(b):
        s = max(a[i][0], b[j][0])
        e = min(a[i][1], b[j][1])
        if s < e:
            out.append((s, e))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def subtract(a: list[Range], b: list[Range]) -> list[Range]:
    """What of `a` is not in `b`."""
    out: list[Range] = []
    j = 0
    for s, e in a:
        cur = s
        while j < len(b) and b[j][1] <= cur:
            j += 1
        k = j
        while k < len(b) and b[k][0] < e:
            if b[k][0] > cur:
                out.append((cur, b[k][0]))
            cur = max(cur, b[k][1])
            if cur >= e:
                break
            k += 1
        if cur < e:
            out.append((cur, e))
    return out


def total(ranges: Iterable[Range]) -> int:
    """Bytes covered."""
    return sum(e - s for s, e in ranges)


def covers(a: list[Range], b: list[Range]) -> bool:
    """Is every byte of `b` in `a`?"""
    return not subtract(b, a)


__all__ = ["Range", "covers", "intersect", "normalize", "subtract", "total", "union"]
