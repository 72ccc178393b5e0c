"""The generated codec (cptimage/_codec.py) against its construct declaration (schema.py).

The generated code is what every command runs; construct is the reference.  For every
record type, item and container structure: the same bytes on encode, the same values on
decode, the same verdict (accept or refuse) on arbitrary and mutated input, so that
verify may decode untrusted images with the generated code.  The committed file must be
what the generator writes now, and importing the image library must not load construct.
"""

from __future__ import annotations

import dataclasses
import inspect
import struct
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import construct as cs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_image_records import record_strategy

from cptimage import _codec, codegen, schema
from cptimage import records as R
from cptimage.container import ImageReader
from cptimage.errors import ImageError, MagicError
from cptimage.fields import (
    BY_NAME,
    REGISTRY,
    FixedSpec,
    Record,
    decode_records,
    fields_of,
    record,
    text,
    u32,
)
from cptimage.jsonio import record_to_json

GOLDEN = Path(__file__).resolve().parent.parent / "fixtures" / "images"
TAGS = sorted(REGISTRY)
IDS = [REGISTRY[t].name for t in TAGS]
ITEMS = sorted(
    {s.item for c in REGISTRY.values() for _, s in c.var if s.item is not None},
    key=lambda c: c.__name__,
)
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- the file


def test_committed_codec_is_what_the_generator_writes() -> None:
    """Stale after a records.py / fields.py / schema.py change: run `make codec`."""
    assert codegen.TARGET.read_text() == codegen.render()


def test_every_type_runs_generated_code() -> None:
    assert [c.name for c in REGISTRY.values() if not c.generated] == []
    assert [i.__name__ for i in ITEMS if not i.__codec__.generated] == []


def test_python_m_cptimage_codegen_check() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "cptimage.codegen", "--check"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr


def test_importing_the_library_loads_no_construct() -> None:
    """The import budget of every command that reads or writes an image (issue 13)."""
    code = (
        "import sys\n"
        "import cptimage.container, cptimage.records\n"
        "assert 'construct' not in sys.modules, 'construct'\n"
        "assert 'dataclasses' not in sys.modules, 'dataclasses'\n"
        "assert 'zstandard' not in sys.modules, 'zstandard'\n"
        "import cptimage.show, cptimage.jsonio, cptimage.verify, cptimage.pagestore\n"
        "import cptimage.diff, cptimage.atomic, cptimage.spec\n"
        "assert 'construct' not in sys.modules, 'construct'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------- helpers


def _con(tag: int) -> cs.Construct:
    return schema.record(REGISTRY[tag])


def _outcome(fn: Callable[[], list[Any]]) -> Any:
    """What a decoder made of some bytes, comparable across decoders: every field, the
    extension bytes of records and items, or just "refused"."""
    try:
        recs = fn()
    except ImageError:
        return "refused"
    return [record_to_json(r) for r in recs]


def _both(raw: bytes) -> tuple[Any, Any]:
    return _outcome(lambda: decode_records(raw)), _outcome(lambda: decode_records(raw, plain=True))


@st.composite
def extended(draw: st.DrawFn, tag: int) -> Any:
    """A record, sometimes carrying a newer minor version's bytes (fixed, var, items)."""
    rec = draw(record_strategy(REGISTRY[tag].cls))
    ext = (draw(st.binary(max_size=12)), draw(st.binary(max_size=12)))
    if any(ext):  # a decoder sets _ext only when there are such bytes
        rec._ext = ext
    for name, spec in REGISTRY[tag].var:
        its = getattr(rec, name)
        if spec.item is not None and its and draw(st.booleans()):
            ext = draw(st.binary(min_size=1, max_size=6))
            for it in its:
                it._ext = ext
    return rec


@st.composite
def mutated(draw: st.DrawFn, raw: bytes) -> bytes:
    """A record's bytes with a few edits: flipped bytes, rewritten lengths and counts (small,
    exact and huge), cut short or grown."""
    b = bytearray(raw)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "u32", "u16", "cut", "grow"]))
        if op == "flip" and b:
            b[draw(st.integers(0, len(b) - 1))] ^= draw(st.integers(1, 255))
        elif op in ("u32", "u16") and len(b) >= 4:
            fmt = "<I" if op == "u32" else "<H"
            hi = (1 << (8 * struct.calcsize(fmt))) - 1
            v = draw(st.one_of(st.integers(0, 80), st.integers(0, hi), st.just(hi)))
            struct.pack_into(fmt, b, draw(st.integers(0, len(b) - struct.calcsize(fmt))), v)
        elif op == "cut":
            b = b[: draw(st.integers(0, len(b)))]
        elif op == "grow":
            b += draw(st.binary(min_size=1, max_size=24))
    return bytes(b)


# --------------------------------------------------------------------------- records


@pytest.mark.parametrize("tag", TAGS, ids=IDS)
@PROPS
@given(data=st.data())
def test_encode_gives_the_bytes_construct_builds(tag: int, data: st.DataObject) -> None:
    rec = data.draw(extended(tag))
    codec = REGISTRY[tag]
    try:
        built = _con(tag).build(schema.from_record(codec, rec))
    except cs.CheckError:
        # items of one record carry extensions of different lengths: both refuse
        with pytest.raises(ImageError):
            rec.encode()
        return
    assert rec.encode() == built


@pytest.mark.parametrize("tag", TAGS, ids=IDS)
@PROPS
@given(data=st.data())
def test_decode_gives_the_values_construct_parses(tag: int, data: st.DataObject) -> None:
    rec = data.draw(extended(tag))
    raw = rec.encode()
    (fast,) = decode_records(raw)
    (plain,) = decode_records(raw, plain=True)
    assert fast == plain == rec
    assert record_to_json(fast) == record_to_json(plain) == record_to_json(rec)


@pytest.mark.parametrize("tag", TAGS, ids=IDS)
@PROPS
@given(data=st.data())
def test_both_decoders_accept_and_refuse_the_same_mutated_bytes(
    tag: int, data: st.DataObject
) -> None:
    """What verify relies on: the generated decoder checks exactly what construct checks."""
    rec = data.draw(extended(tag))
    raw = data.draw(mutated(rec.encode()))
    fast, plain = _both(raw)
    assert fast == plain


@pytest.mark.parametrize("tag", TAGS, ids=IDS)
@PROPS
@given(data=st.data())
def test_both_decoders_agree_on_any_fixed_and_var_bytes(tag: int, data: st.DataObject) -> None:
    """Any stored fixed part (shorter, exact, longer) and any var bytes."""
    codec = REGISTRY[tag]
    fixed = data.draw(st.binary(max_size=codec.fixed.size + 8))
    var = data.draw(st.binary(max_size=64))
    size = 8 + len(fixed) + len(var)
    raw = struct.pack("<IHH", size, tag, len(fixed)) + fixed + var + bytes(-size % 8)
    fast, plain = _both(raw)
    assert fast == plain


@pytest.mark.parametrize("tag", TAGS, ids=IDS)
def test_out_of_range_values_are_refused_by_both(tag: int) -> None:
    codec = REGISTRY[tag]
    name, spec = codec.fixed.fields[0]
    assert isinstance(spec, FixedSpec)
    bad = b"x" if spec.is_bytes else 1 << 64
    rec = codec.cls(**{name: bad})
    with pytest.raises(ImageError, match=codec.name):
        rec.encode()
    with pytest.raises(cs.ConstructError):
        _con(tag).build(schema.from_record(codec, rec))


@pytest.mark.parametrize("name", [i.__name__ for i in ITEMS])
@PROPS
@given(data=st.data())
def test_items_agree_with_construct(name: str, data: st.DataObject) -> None:
    cls = next(i for i in ITEMS if i.__name__ == name)
    icodec = cls.__codec__
    it = data.draw(record_strategy(cls))
    con = schema.fixed_struct(icodec)
    assert icodec.encode(it) == con.build({n: getattr(it, n) for n in icodec.names})
    raw = data.draw(st.binary(max_size=icodec.size + 6))
    fast = icodec.decode(raw)
    plain = schema.item_decoder(icodec)(raw)
    assert fast == plain and getattr(fast, "_ext", b"") == getattr(plain, "_ext", b"")


# --------------------------------------------------------------------------- container


@pytest.mark.parametrize("name", sorted(schema.CONTAINER))
@PROPS
@given(data=st.data())
def test_container_structures_agree_with_construct(name: str, data: st.DataObject) -> None:
    st_ = schema.CONTAINER[name]
    low = name.lower()
    parse, build = getattr(_codec, f"parse_{low}"), getattr(_codec, f"build_{low}")
    values = {}
    for sc in st_.subcons:
        if not isinstance(sc.subcon, cs.Const):
            bits = 8 * sc.subcon.sizeof()
            values[sc.name] = data.draw(st.integers(0, (1 << bits) - 1))
    raw = build(**values)
    assert raw == st_.build(values)
    assert len(raw) == getattr(_codec, f"{name}_SIZE") == st_.sizeof()
    # any bytes: the same values, or both refuse the magic
    junk = data.draw(st.one_of(st.just(raw), st.binary(min_size=len(raw), max_size=len(raw))))
    try:
        c = st_.parse(junk)
    except cs.ConstError:
        with pytest.raises(MagicError):
            parse(junk)
        return
    assert parse(junk) == tuple(values_ for n, values_ in c.items() if n in values)


# --------------------------------------------------------------------------- goldens


@pytest.mark.parametrize("name", sorted(p.stem for p in GOLDEN.glob("*.img")))
def test_goldens_decode_alike_in_both(name: str) -> None:
    with ImageReader(GOLDEN / f"{name}.img") as r:
        fast, plain = r.all_records(), r.all_records(plain=True)
    assert sum(map(len, fast.values())) > 0
    assert {t: [record_to_json(x) for x in v] for t, v in fast.items()} == {
        t: [record_to_json(x) for x in v] for t, v in plain.items()
    }


# --------------------------------------------------------------------------- dataclass


def _twin(cls: type) -> type:
    """What the dataclass decorator makes of the same declaration."""
    return dataclasses.make_dataclass(
        cls.__name__, [(n, ann, f.dataclass_field()) for n, ann, f in cls.__codec__.decls]
    )


@pytest.mark.parametrize(
    "cls", [c.cls for c in REGISTRY.values()] + ITEMS, ids=lambda c: c.__name__
)
def test_generated_classes_are_the_dataclasses_they_declare(cls: type) -> None:
    twin = _twin(cls)
    assert dataclasses.is_dataclass(cls)
    fields = dataclasses.fields(cls)
    want = dataclasses.fields(twin)
    assert [(f.name, f.type, f.default, f.default_factory) for f in fields] == [
        (f.name, f.type, f.default, f.default_factory) for f in want
    ]
    assert [dict(f.metadata) for f in fields] == [dict(f.metadata) for f in want]
    assert [(n, s) for n, s in fields_of(cls)] == [(f.name, f.metadata["cpt"]) for f in fields]
    sig, tsig = inspect.signature(cls), inspect.signature(twin)
    assert [(p.name, p.kind, repr(p.default)) for p in sig.parameters.values()] == [
        (p.name, p.kind, repr(p.default)) for p in tsig.parameters.values()
    ]
    assert cls.__match_args__ == twin.__match_args__  # type: ignore[attr-defined]
    assert cls.__hash__ is None
    for f in fields:  # class attributes: the default, or none for a factory
        assert getattr(cls, f.name, "none") == (
            f.default if f.default is not dataclasses.MISSING else "none"
        )
    a, b = cls(), twin()
    assert repr(a) == repr(b)
    assert dataclasses.asdict(a) == dataclasses.asdict(b)
    assert a == cls() and a != b and dataclasses.replace(a) == a
    first = fields[0].name
    changed = dataclasses.replace(
        a,
        **{first: b"\1" * len(a.__dict__[first])}
        if isinstance(a.__dict__[first], bytes)
        else {first: 1},
    )
    assert changed != a and type(changed) is cls
    for f in fields:
        if f.default is dataclasses.MISSING:  # a fresh list, str, bytes for each instance
            assert getattr(a, f.name) == f.default_factory()
            if isinstance(getattr(a, f.name), list):
                assert getattr(a, f.name) is not getattr(cls(), f.name)


# --------------------------------------------------------------------------- fallback


def test_a_declaration_without_generated_code_falls_back_to_construct() -> None:
    """records.py edited, `make codec` not run yet: the class works, slower, with a warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:

            @record(0x01FD)
            class Probe(Record):
                pid: int = u32()
                comm: str = text()

            codec = REGISTRY[0x01FD]
            assert not codec.generated
            assert dataclasses.is_dataclass(Probe)
            rec = Probe(pid=7, comm="x")
            raw = rec.encode()
            assert raw == schema.record(codec).build(schema.from_record(codec, rec))
            assert decode_records(raw) == [rec] == decode_records(raw, plain=True)
            with pytest.raises(ImageError, match="Probe"):
                Probe(pid=-1).encode()
        finally:
            REGISTRY.pop(0x01FD, None)
            BY_NAME.pop("Probe", None)
    assert any("stale for Probe" in str(w.message) for w in caught)


def test_the_generator_refuses_a_construct_it_does_not_know() -> None:
    codec = R.Fd.__codec__
    saved = codec.__dict__.pop("_construct", None)
    try:
        codec._construct = cs.Aligned(4, cs.GreedyBytes)  # type: ignore[attr-defined]
        with pytest.raises(codegen.Unknown, match="Aligned"):
            codegen._record_parts(codec)
    finally:
        if saved is not None:
            codec._construct = saved  # type: ignore[attr-defined]
        else:
            del codec._construct  # type: ignore[attr-defined]


def test_verify_decodes_with_the_generated_code() -> None:
    """No construct on the verify path (the corruption tests of test_image_verify.py run it)."""
    code = (
        "import sys\n"
        "from cptimage.verify import verify\n"
        f"assert verify({str(GOLDEN / 'every-record.img')!r}) == []\n"
        "assert 'construct' not in sys.modules\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
