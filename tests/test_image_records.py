"""Every record type round-trips: build -> parse -> equal, generated == plain, JSON too.

The hypothesis strategies are derived from the field declarations, so a record type
added to records.py is covered without touching this file.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cptimage.fields import REGISTRY, FixedSpec, VarSpec, decode_records, fields_of
from cptimage.jsonio import record_from_json, record_to_json

_INTS = {
    "u8": st.integers(0, 2**8 - 1),
    "u16": st.integers(0, 2**16 - 1),
    "u32": st.integers(0, 2**32 - 1),
    "u64": st.integers(0, 2**64 - 1),
    "i32": st.integers(-(2**31), 2**31 - 1),
    "i64": st.integers(-(2**63), 2**63 - 1),
}
# valid text, and arbitrary bytes as the codec decodes them (surrogateescape)
TEXT = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=12),
    st.binary(max_size=12).map(lambda b: b.decode("utf-8", "surrogateescape")),
)
BLOB = st.binary(max_size=48)


def fixed_strategy(spec: FixedSpec) -> st.SearchStrategy[Any]:
    if spec.is_bytes:
        return st.binary(min_size=spec.size, max_size=spec.size)
    ints = _INTS[spec.wire]
    named = spec.enum or spec.flags
    return st.one_of(st.sampled_from([int(m) for m in named]), ints) if named else ints


def var_strategy(spec: VarSpec) -> st.SearchStrategy[Any]:
    k = spec.kind
    if k == "items":
        assert spec.item is not None
        return st.lists(record_strategy(spec.item), max_size=4)
    return {
        "text": TEXT,
        "blob": BLOB,
        "u32s": st.lists(_INTS["u32"], max_size=6),
        "u64s": st.lists(_INTS["u64"], max_size=6),
        "strs": st.lists(TEXT, max_size=4),
        "blobs": st.lists(BLOB, max_size=4),
    }[k]


def record_strategy(cls: type) -> st.SearchStrategy[Any]:
    """Any instance of a record (or item) class, derived from its field specs."""
    return st.builds(
        cls,
        **{
            name: fixed_strategy(spec) if isinstance(spec, FixedSpec) else var_strategy(spec)
            for name, spec in fields_of(cls)
        },
    )


def records_of_section(stype: int) -> st.SearchStrategy[Any]:
    tags = sorted(t for t in REGISTRY if t >> 8 == stype)
    return st.sampled_from(tags).flatmap(lambda t: record_strategy(REGISTRY[t].cls))


TAGS = sorted(REGISTRY)
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("tag", TAGS, ids=[REGISTRY[t].name for t in TAGS])
@FAST
@given(data=st.data())
def test_round_trip(tag: int, data: st.DataObject) -> None:
    rec = data.draw(record_strategy(REGISTRY[tag].cls))
    raw = rec.encode()
    assert len(raw) % 8 == 0
    (back,) = decode_records(raw)
    assert back == rec
    assert not hasattr(back, "_ext")
    (plain,) = decode_records(raw, plain=True)
    assert plain == back
    assert back.encode() == raw


@pytest.mark.parametrize("tag", TAGS, ids=[REGISTRY[t].name for t in TAGS])
@FAST
@given(data=st.data())
def test_compiled_and_plain_parsers_agree_on_any_bytes(tag: int, data: st.DataObject) -> None:
    codec = REGISTRY[tag].fixed
    raw = data.draw(st.binary(min_size=codec.size, max_size=codec.size))
    size = 8 + len(raw)
    framed = struct.pack("<IHH", size, tag, len(raw)) + raw + bytes(-size % 8)
    assert decode_records(framed) == decode_records(framed, plain=True)


@pytest.mark.parametrize("tag", TAGS, ids=[REGISTRY[t].name for t in TAGS])
@FAST
@given(data=st.data())
def test_json_round_trip(tag: int, data: st.DataObject) -> None:
    rec = data.draw(record_strategy(REGISTRY[tag].cls))
    doc = json.loads(json.dumps(record_to_json(rec)))
    back = record_from_json(doc)
    assert back == rec and back.encode() == rec.encode()
