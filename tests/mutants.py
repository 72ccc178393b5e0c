"""Mutated images: what the hostile-input tests and bench/hostile_bench.py feed the tools.

Two families, each a function ``(rng, base) -> bytes | None`` (None: this mutation does
not apply to this base, draw another):

* raw mutations change bytes of the file (a flipped bit, junk, a cut, bytes appended, a
  section header field): checksums and the digest catch them;
* sealed mutations change the image's JSON document (a field of a record set to a
  boundary value, a record dropped or duplicated, a reference pointed at another record,
  hostile text, a section dropped) and encode it again, so every checksum and the digest
  are right: only the invariants of SPEC.md section 11 (and restore) can catch them.

Test data, not library.  A sealed mutation never names a path outside the image's own:
text fields get nonexistent names under /nonexistent, references point at records of the
image, so restoring a mutant of an image of a workload whose files all live in its own
directory can only touch that directory.
"""

from __future__ import annotations

import copy
import io
import random
import struct
from collections.abc import Callable
from typing import Any

from cptimage import jsonio
from cptimage.container import SECTION_HEADER_SIZE, walk
from cptimage.errors import ImageError
from cptimage.fields import BY_NAME, FixedSpec, VarSpec, fields_of

Doc = dict[str, Any]


class Base:
    """An image to mutate: its bytes, its JSON document, where its sections are."""

    def __init__(self, name: str, raw: bytes) -> None:
        self.name = name
        self.raw = raw
        self.doc = jsonio.decode(io.BytesIO(raw))
        self.section_offsets = [v.info.offset for k, v in walk(io.BytesIO(raw)) if k == "section"]
        # (section index, record index) of every record, and the ids per reference space
        self.records = [
            (si, ri)
            for si, sec in enumerate(self.doc["sections"])
            for ri, _ in enumerate(sec.get("records", []))
        ]
        self.values: dict[str, list[Any]] = {}
        for si, ri in self.records:
            for k, v in self.doc["sections"][si]["records"][ri].items():
                if isinstance(v, int) and not isinstance(v, bool):
                    self.values.setdefault(k, []).append(v)


# --------------------------------------------------------------------------- raw


def flip(rng: random.Random, b: Base) -> bytes:
    raw = bytearray(b.raw)
    raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    return bytes(raw)


def overwrite(rng: random.Random, b: Base) -> bytes:
    raw = bytearray(b.raw)
    at = rng.randrange(len(raw))
    junk = rng.randbytes(rng.randint(1, 64))
    raw[at : at + len(junk)] = junk[: len(raw) - at]
    return bytes(raw)


def truncate(rng: random.Random, b: Base) -> bytes:
    return b.raw[: rng.randrange(len(b.raw))]


def append(rng: random.Random, b: Base) -> bytes:
    return b.raw + rng.randbytes(rng.randint(1, 300))


SECTION_FIELDS = {  # offset in a section header, struct format
    "type": (4, "<H"),
    "version": (6, "<H"),
    "hdr_len": (8, "<I"),
    "compression": (12, "<B"),
    "level": (13, "<B"),
    "algo": (14, "<B"),
    "count": (16, "<I"),
    "payload_len": (24, "<Q"),
    "raw_len": (32, "<Q"),
    "checksum": (40, "<Q"),
    "base": (48, "<Q"),
}


def section_header(rng: random.Random, b: Base) -> bytes:
    raw = bytearray(b.raw)
    at, fmt = SECTION_FIELDS[rng.choice(sorted(SECTION_FIELDS))]
    pos = rng.choice(b.section_offsets) + at
    assert at + struct.calcsize(fmt) <= SECTION_HEADER_SIZE
    bits = 8 * struct.calcsize(fmt)
    value = rng.choice([0, 1, 8, (1 << bits) - 1, rng.getrandbits(bits)])
    struct.pack_into(fmt, raw, pos, value)
    return bytes(raw)


RAW: dict[str, Callable[[random.Random, Base], bytes | None]] = {
    "flip": flip,
    "overwrite": overwrite,
    "truncate": truncate,
    "append": append,
    "section-header": section_header,
}

# --------------------------------------------------------------------------- sealed

_RANGES = jsonio._RANGES  # what each wire type holds
HOSTILE_TEXT = [
    "",
    "x" * 5000,
    "a\nb",
    "[/x]",
    "\x1b[2J",
    "\udcff\udcfe",
    "/nonexistent/\n",
    "/nonexistent/a/../b",
    "nonexistent-relative",
    "/nonexistent/" + "d" * 300,
]


def _int_value(rng: random.Random, wire: str, old: int, b: Base, field: str) -> int:
    lo, hi = _RANGES[wire]
    choices = [0, 1, 2, 7, 64, 4096, lo, hi, hi - 1, old + 1, old - 1, old * 2, old ^ 1]
    choices += [(1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 63, rng.randint(lo, hi)]
    choices += b.values.get(field, [])[:20]  # another record's value of this field
    return rng.choice([c for c in choices if lo <= c <= hi] or [old])


def _record(rng: random.Random, doc: Doc) -> tuple[dict[str, Any], str] | None:
    recs = [
        (r, s["type"]) for s in doc["sections"] for r in s.get("records", []) if r.get("record")
    ]
    if not recs or rng.random() < 0.05:
        return {**doc["header"], "record": "Header"}, "header"
    return rng.choice(recs)


def _set_header(doc: Doc, rec: dict[str, Any]) -> None:
    rec = dict(rec)
    rec.pop("record", None)
    doc["header"] = rec


def field(rng: random.Random, b: Base) -> Doc | None:
    """One field of one record (or of the header) set to a boundary or borrowed value."""
    doc = copy.deepcopy(b.doc)
    got = _record(rng, doc)
    if got is None:
        return None
    rec, where = got
    specs = dict(fields_of(BY_NAME[rec["record"]].cls))
    name = rng.choice(sorted(specs))
    spec = specs[name]
    old = rec.get(name)
    if isinstance(spec, FixedSpec):
        if spec.is_bytes:
            rec[name] = rng.randbytes(spec.size).hex()
        elif spec.enum is not None and rng.random() < 0.5:
            rec[name] = rng.choice([m.name for m in spec.enum])
        else:
            cur = old if isinstance(old, int) else 0
            rec[name] = _int_value(rng, spec.wire, cur, b, name)
    else:
        rec[name] = _var_value(rng, spec, old)
    if where == "header":
        _set_header(doc, rec)
    return doc


def _var_value(rng: random.Random, spec: VarSpec, old: Any) -> Any:
    import base64

    k = spec.kind
    if k == "text":
        return rng.choice(HOSTILE_TEXT)
    if k == "blob":
        raw = base64.b64decode(old or "")
        choice = rng.choice(["empty", "cut", "grow", "random"])
        new = {
            "empty": b"",
            "cut": raw[: len(raw) // 2],
            "grow": raw + rng.randbytes(rng.randint(1, 64)),
            "random": rng.randbytes(len(raw) or 8),
        }[choice]
        return base64.b64encode(new).decode()
    if k in ("u32s", "u64s"):
        bits = 32 if k == "u32s" else 64
        vals = list(old or [])
        op = rng.choice(["empty", "drop", "add", "change"])
        if op == "empty":
            return []
        if op == "drop" and vals:
            vals.pop(rng.randrange(len(vals)))
        elif op == "add":
            vals.append(rng.choice([0, 1, (1 << bits) - 1, rng.getrandbits(bits)]))
        elif vals:
            vals[rng.randrange(len(vals))] = rng.choice([0, 1, (1 << bits) - 1])
        return vals
    if k == "strs":
        return rng.choice([[], [rng.choice(HOSTILE_TEXT)], list(old or []) * 2])
    if k == "blobs":
        return rng.choice([[], list(old or []) * 2, ["AAAA"]])
    if k == "items":
        items = copy.deepcopy(old or [])
        if items and rng.random() < 0.5:
            it = rng.choice(items)
            key = rng.choice(sorted(k for k in it if k != "_ext"))
            it[key] = rng.choice([0, 1, 9, 19, 64, 99, (1 << 32) - 1])
        elif items:
            items.append(copy.deepcopy(items[0]))
        return items
    return old


def drop(rng: random.Random, b: Base) -> Doc | None:
    if not b.records:
        return None
    doc = copy.deepcopy(b.doc)
    si, ri = rng.choice(b.records)
    del doc["sections"][si]["records"][ri]
    return doc


def duplicate(rng: random.Random, b: Base) -> Doc | None:
    if not b.records:
        return None
    doc = copy.deepcopy(b.doc)
    si, ri = rng.choice(b.records)
    recs = doc["sections"][si]["records"]
    recs.insert(rng.randrange(len(recs) + 1), copy.deepcopy(recs[ri]))
    return doc


def drop_section(rng: random.Random, b: Base) -> Doc | None:
    doc = copy.deepcopy(b.doc)
    if not doc["sections"]:
        return None
    del doc["sections"][rng.randrange(len(doc["sections"]))]
    return doc


def pages(rng: random.Random, b: Base) -> Doc | None:
    """Page data changed: sealed, so only restore (the workload's checks) can tell."""
    import base64

    doc = copy.deepcopy(b.doc)
    blocks = [s for s in doc["sections"] if s["type"] == "PAGES"]
    if not blocks:
        return None
    blk = rng.choice(blocks)
    data = bytearray(base64.b64decode(blk["data"]))
    if not data:
        return None
    for _ in range(rng.randint(1, 16)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    blk["data"] = base64.b64encode(bytes(data)).decode()
    return doc


SEALED: dict[str, Callable[[random.Random, Base], Doc | None]] = {
    "field": field,
    "drop": drop,
    "duplicate": duplicate,
    "drop-section": drop_section,
    "pages": pages,
}


def seal(doc: Doc) -> bytes | None:
    """The image a mutated document describes, or None when encode refuses it (a value the
    document form cannot carry: that mutation is `image encode`'s to refuse, not a mutant)."""
    out = io.BytesIO()
    try:
        jsonio.encode(doc, out)
    except ImageError:
        return None
    return out.getvalue()


# how often each sealed mutation is drawn: a changed field is the one most likely to get
# past verify and reach what comes after it
WEIGHTS = {"field": 50, "drop": 15, "duplicate": 10, "drop-section": 5, "pages": 20}


def mutant(
    rng: random.Random, b: Base, *, sealed_share: float = 0.6, tries: int = 50
) -> tuple[str, bytes]:
    """(kind, bytes) of one mutant of ``b`` that differs from it."""
    kinds = sorted(SEALED)
    for _ in range(tries):
        if rng.random() < sealed_share:
            kind = rng.choices(kinds, weights=[WEIGHTS[k] for k in kinds])[0]
            doc = SEALED[kind](rng, b)
            raw = seal(doc) if doc is not None else None
            kind = f"sealed {kind}"
        else:
            kind = rng.choice(sorted(RAW))
            raw = RAW[kind](rng, b)
        if raw is not None and raw != b.raw:
            return kind, raw
    raise RuntimeError(f"no mutant of {b.name} in {tries} tries")
