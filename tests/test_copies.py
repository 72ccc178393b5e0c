"""SlotMap (cpt/dump/copies.py): where the newest copy of each page is, as pages are copied
again in later rounds; checked against a dict of page -> offset."""

from __future__ import annotations

import random

from cpt.dump.copies import SlotMap

P = 4096


def _model(sm: SlotMap) -> dict[int, int]:
    return {a: off + (a - s) for s, e, off in sm.pieces for a in range(s, e, P)}


def test_newer_copies_win_and_pieces_stay_disjoint() -> None:
    rng = random.Random(7)
    sm = SlotMap()
    want: dict[int, int] = {}
    data = 0
    for _ in range(200):
        pages = sorted(rng.sample(range(0, 64 * P, P), rng.randint(1, 12)))
        new = []
        for a in pages:
            new.append((a, a + P, data))
            want[a] = data
            data += P
        sm.put(new)
        assert _model(sm) == want
        assert all(a[1] <= b[0] for a, b in zip(sm.pieces, sm.pieces[1:], strict=False))
    assert sm.bytes() == len(want) * P
    look = sm.lookup([(5 * P, 40 * P)])
    assert {a: o for s, e, o0 in look for a, o in [(x, o0 + x - s) for x in range(s, e, P)]} == {
        a: o for a, o in want.items() if 5 * P <= a < 40 * P
    }


def test_contiguous_copies_merge() -> None:
    sm = SlotMap()
    sm.put([(0, P, 0)])
    sm.put([(P, 2 * P, P)])
    assert sm.pieces == [(0, 2 * P, 0)]
    sm.put([(P, 2 * P, 10 * P)])  # copied again: its own piece now
    assert sm.pieces == [(0, P, 0), (P, 2 * P, 10 * P)]
