"""cpt/dump/ranges.py against sets of integers: every operation, random inputs."""

from __future__ import annotations

import itertools
import random

import pytest

from cpt.dump.ranges import covers, intersect, normalize, subtract, total, union


def _set(ranges: list[tuple[int, int]]) -> set[int]:
    return {i for s, e in ranges for i in range(s, e)}


def _random(rng: random.Random) -> list[tuple[int, int]]:
    out = []
    for _ in range(rng.randint(0, 8)):
        s = rng.randint(0, 60)
        out.append((s, s + rng.randint(0, 12)))
    return out


@pytest.mark.parametrize("seed", range(300))
def test_operations_agree_with_sets(seed: int) -> None:
    rng = random.Random(seed)
    a, b = normalize(_random(rng)), normalize(_random(rng))
    for r in (a, b):
        assert all(s < e for s, e in r)
        assert all(x[1] < y[0] for x, y in itertools.pairwise(r)), r  # disjoint, apart
    assert _set(union(a, b)) == _set(a) | _set(b)
    assert _set(intersect(a, b)) == _set(a) & _set(b)
    assert _set(subtract(a, b)) == _set(a) - _set(b)
    assert total(a) == len(_set(a))
    assert covers(a, b) == (_set(b) <= _set(a))
    assert normalize(subtract(a, b)) == subtract(a, b)
    assert normalize(intersect(a, b)) == intersect(a, b)
