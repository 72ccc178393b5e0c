"""The image format declared in construct: the reference of every byte (SPEC.md 3-4).

    record(codec)   Aligned(8, Prefixed(Int32ul, Struct(tag, fixed, var), includelength))
    PREAMBLE  SECTION_HEADER  TRAILER   the container's fixed structures

The field helpers of records.py map to construct here (WIRE, TEXT, BLOB, ...), so every
record type has a construct declaration of its whole encoding: framing, the fixed part
with its version rule, the var part with its own, the padding.  From these declarations
``python -m cptimage.codegen`` generates cptimage/_codec.py, plain Python that every
command runs; tests/test_codec.py checks the two against each other on every record type
and on arbitrary bytes, so that the generated decoder accepts exactly what this one does.

This module is the only one that imports construct, and only the code generator, the
plain parser (``decode_records(..., plain=True)``), tests, and a class whose generated
code is stale (a records.py edit without ``make codec``) import it.  It imports nothing
of the library but errors.py: fields.py calls it, and passes it what it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

import construct as cs
from construct.core import stream_iseof, stream_read_entire, stream_write

from .errors import ImageError

if TYPE_CHECKING:  # fields imports this module (plain parser, fallback), never the reverse
    from .fields import FixedSpec, ItemCodec, RecordCodec, VarSpec

MAGIC = b"\x89CPT\r\n\x1a\n"
SECT_MAGIC = b"CPTS"
END_MAGIC = b"CPTEND\r\n"

# --------------------------------------------------------------------------- container

PREAMBLE = cs.Struct(
    "magic" / cs.Const(MAGIC),
    "major" / cs.Int16ul,
    "minor" / cs.Int16ul,
    "hdr_len" / cs.Int32ul,
)

SECTION_HEADER = cs.Struct(
    "magic" / cs.Const(SECT_MAGIC),
    "type" / cs.Int16ul,
    "version" / cs.Int16ul,
    "hdr_len" / cs.Int32ul,
    "compression" / cs.Int8ul,
    "level" / cs.Int8ul,
    "checksum_algo" / cs.Int8ul,
    "flags" / cs.Int8ul,
    "count" / cs.Int32ul,
    "reserved" / cs.Int32ul,
    "payload_len" / cs.Int64ul,
    "raw_len" / cs.Int64ul,
    "checksum" / cs.Int64ul,
    "base" / cs.Int64ul,
)

TRAILER = cs.Struct(
    "index_offset" / cs.Int64ul,
    "file_size" / cs.Int64ul,
    "digest" / cs.Int64ul,
    "magic" / cs.Const(END_MAGIC),
)

# name in the generated module -> declaration
CONTAINER: dict[str, cs.Struct] = {
    "PREAMBLE": PREAMBLE,
    "SECTION_HEADER": SECTION_HEADER,
    "TRAILER": TRAILER,
}

# --------------------------------------------------------------------------- fields

WIRE: dict[str, cs.Construct] = {
    "u8": cs.Int8ul,
    "u16": cs.Int16ul,
    "u32": cs.Int32ul,
    "u64": cs.Int64ul,
    "i32": cs.Int32sl,
    "i64": cs.Int64sl,
}


def fixed_field(spec: FixedSpec) -> cs.Construct:
    return cs.Bytes(spec.size) if spec.is_bytes else WIRE[spec.wire]


def fixed_struct(layout: ItemCodec) -> cs.Struct:
    return cs.Struct(*[n / fixed_field(spec) for n, spec in layout.fields])


class Versioned(cs.Subconstruct):
    """A fixed part as every minor version reads it: the stored bytes, however many, are
    the fields zero-filled (an older writer) or followed by bytes kept as ``ext`` (a newer
    one).  Parses to Container(values=..., ext=...)."""

    def __init__(self, subcon: cs.Struct) -> None:
        super().__init__(subcon)
        self.size = subcon.sizeof()

    def _parse(self, stream: Any, context: Any, path: str) -> Any:
        data = stream_read_entire(stream, path)
        ext = data[self.size :]
        values = self.subcon.parse(data[: self.size].ljust(self.size, b"\0"))
        return cs.Container(values=values, ext=ext)

    def _build(self, obj: Any, stream: Any, context: Any, path: str) -> Any:
        data = self.subcon.build(obj["values"]) + obj["ext"]
        stream_write(stream, data, len(data), path)
        return obj


class Tail(cs.Subconstruct):
    """A var field: absent (its empty default) when the record's bytes end before it."""

    def __init__(self, subcon: cs.Construct, default: Callable[[], Any]) -> None:
        super().__init__(subcon)
        self.default = default

    def _parse(self, stream: Any, context: Any, path: str) -> Any:
        if stream_iseof(stream):
            return self.default()
        return self.subcon._parsereport(stream, context, path)

    def _build(self, obj: Any, stream: Any, context: Any, path: str) -> Any:
        return self.subcon._build(obj, stream, context, path)


class Utf8(cs.Adapter):
    """UTF-8 with surrogateescape: any bytes read back as the same bytes."""

    def _decode(self, obj: bytes, context: Any, path: str) -> str:
        return obj.decode("utf-8", "surrogateescape")

    def _encode(self, obj: str, context: Any, path: str) -> bytes:
        return obj.encode("utf-8", "surrogateescape")


TEXT = cs.Prefixed(cs.Int32ul, Utf8(cs.GreedyBytes))
BLOB = cs.Prefixed(cs.Int32ul, cs.GreedyBytes)
U32S = cs.PrefixedArray(cs.Int32ul, cs.Int32ul)
U64S = cs.PrefixedArray(cs.Int32ul, cs.Int64ul)
STRS = cs.PrefixedArray(cs.Int32ul, TEXT)
BLOBS = cs.PrefixedArray(cs.Int32ul, BLOB)
VAR: dict[str, cs.Construct] = {
    "text": TEXT,
    "blob": BLOB,
    "u32s": U32S,
    "u64s": U64S,
    "strs": STRS,
    "blobs": BLOBS,
}
DEFAULTS: dict[str, Callable[[], Any]] = {
    "text": str,
    "blob": bytes,
    "u32s": list,
    "u64s": list,
    "strs": list,
    "blobs": list,
    "items": list,
}


def _same_ext(ctx: Any) -> bool:
    return len({len(i["ext"]) for i in ctx["items"]}) <= 1


class Items(cs.Struct):
    """count:u32 esize:u16 0:u16, then count items of esize bytes each (Versioned)."""

    def __init__(self, item: cs.Struct) -> None:
        self.item = item
        size = item.sizeof()

        def esize(ctx: Any) -> int:  # a newer minor's items: every one carries the same ext
            return size + (len(ctx["items"][0]["ext"]) if ctx["items"] else 0)

        super().__init__(
            "count" / cs.Rebuild(cs.Int32ul, cs.len_(cs.this["items"])),
            "esize" / cs.Rebuild(cs.Int16ul, esize),
            "reserved" / cs.Default(cs.Int16ul, 0),
            # esize 0 would read count empty items out of nothing
            cs.Check((cs.this.count == 0) | (cs.this.esize != 0)),
            "items" / cs.Array(cs.this.count, cs.FixedSized(cs.this.esize, Versioned(item))),
            cs.Check(_same_ext),
        )


def var_field(spec: VarSpec) -> cs.Construct:
    if spec.kind == "items":
        assert spec.item is not None
        return Items(fixed_struct(spec.item.__codec__))  # type: ignore[attr-defined]
    return VAR[spec.kind]


def var_struct(var: list[tuple[str, VarSpec]]) -> cs.Struct:
    return cs.Struct(
        *[n / Tail(var_field(spec), DEFAULTS[spec.kind]) for n, spec in var],
        "ext" / cs.GreedyBytes,
    )


def frame(tag: cs.Construct, fixed: cs.Construct, var: cs.Construct) -> cs.Construct:
    return cs.Aligned(
        8,
        cs.Prefixed(
            cs.Int32ul,
            cs.Struct("tag" / tag, "fixed" / cs.Prefixed(cs.Int16ul, fixed), "var" / var),
            includelength=True,
        ),
    )


def record(codec: RecordCodec) -> cs.Construct:
    """The construct of one record type, framing and padding included."""
    con = codec.__dict__.get("_construct")
    if con is None:
        con = frame(
            cs.Const(codec.tag, cs.Int16ul),
            Versioned(fixed_struct(codec.fixed)),
            var_struct(codec.var),
        )
        codec._construct = con  # type: ignore[attr-defined]
    return con


# a record of a tag this version does not know: kept raw, header included
UNKNOWN = cs.Aligned(
    8,
    cs.RawCopy(
        cs.Prefixed(
            cs.Int32ul,
            cs.Struct(
                "tag" / cs.Int16ul,
                "fixed" / cs.Prefixed(cs.Int16ul, cs.GreedyBytes),
                "var" / cs.GreedyBytes,
            ),
            includelength=True,
        )
    ),
)

# --------------------------------------------------------------------------- values


def _item_value(codec: ItemCodec, c: Any) -> Any:
    it = codec.cls(*[c["values"][n] for n in codec.names])  # type: ignore[attr-defined]
    if c["ext"]:
        it._ext = bytes(c["ext"])
    return it


def _var_value(spec: VarSpec, v: Any) -> Any:
    if spec.kind == "items":
        assert spec.item is not None
        its = v["items"] if isinstance(v, dict) else v  # a Tail's default: []
        return [_item_value(spec.item.__codec__, c) for c in its]  # type: ignore[attr-defined]
    return list(v) if isinstance(v, list) else v


def to_record(codec: RecordCodec, c: Any) -> Any:
    """The record a parsed construct Container describes."""
    fixed, var = c["fixed"], c["var"]
    kw = {n: fixed["values"][n] for n in codec.fixed.names}
    for n, spec in codec.var:
        kw[n] = _var_value(spec, var[n])
    rec = codec.cls(**kw)
    if fixed["ext"] or var["ext"]:
        rec._ext = (bytes(fixed["ext"]), bytes(var["ext"]))
    return rec


def _item_obj(codec: ItemCodec, it: Any) -> dict[str, Any]:
    return {"values": {n: getattr(it, n) for n in codec.names}, "ext": getattr(it, "_ext", b"")}


def from_record(codec: RecordCodec, rec: Any) -> dict[str, Any]:
    """The Container a record builds from."""
    ext_fixed, ext_var = getattr(rec, "_ext", (b"", b""))
    var: dict[str, Any] = {"ext": ext_var}
    for n, spec in codec.var:
        v = getattr(rec, n)
        if spec.kind == "items":
            icodec = spec.item.__codec__  # type: ignore[union-attr]
            v = {"items": [_item_obj(icodec, it) for it in v]}
        var[n] = v
    return {
        "tag": codec.tag,
        "fixed": {"values": {n: getattr(rec, n) for n in codec.fixed.names}, "ext": ext_fixed},
        "var": var,
    }


# --------------------------------------------------------------------------- errors

# construct's exception classes, as one line a user can act on (never parsed from e.path)
_PARSE_ERRORS: dict[type[Exception], str] = {
    cs.StreamError: "a length or count runs past the record (truncated or corrupted)",
    cs.CheckError: "items of size 0",
    cs.ConstError: "wrong magic or tag",
    cs.PaddingError: "invalid length",
    cs.RangeError: "invalid count",
}

_BUILD_ERRORS = (cs.ConstructError, AttributeError, TypeError, ValueError, OverflowError)


def _parse_message(e: Exception) -> str:
    for cls, msg in _PARSE_ERRORS.items():
        if isinstance(e, cls):
            return msg
    return f"invalid ({type(e).__name__})"


# --------------------------------------------------------------------------- codecs


def parse_one(codec: RecordCodec | None, stream: IO[bytes]) -> Any:
    """The record at the stream's position, parsed by construct: a record of ``codec``,
    or (tag, raw bytes) of a record whose tag is unknown (codec None)."""
    try:
        if codec is None:
            c = UNKNOWN.parse_stream(stream)
            return c.value.tag, bytes(c.data)
        return to_record(codec, record(codec).parse_stream(stream))
    except cs.ConstructError as e:
        raise ImageError(_parse_message(e)) from None


def record_encoder(codec: RecordCodec) -> Callable[[Any], bytes]:
    con = record(codec)

    def encode(rec: Any) -> bytes:
        try:
            data: bytes = con.build(from_record(codec, rec))
        except _BUILD_ERRORS as e:
            raise ImageError(f"cannot encode {codec.name}: {e}", record=codec.name) from None
        return data

    return encode


def record_decoder(codec: RecordCodec) -> Callable[[bytes, bytes], Any]:
    fixed, var = Versioned(fixed_struct(codec.fixed)), var_struct(codec.var)

    def decode(fixed_raw: bytes, var_raw: bytes) -> Any:
        try:
            c = {"fixed": fixed.parse(fixed_raw), "var": var.parse(var_raw)}
        except cs.ConstructError as e:
            raise ImageError(_parse_message(e), record=codec.name) from None
        return to_record(codec, c)

    return decode


def item_encoder(codec: ItemCodec) -> Callable[[Any], bytes]:
    con = fixed_struct(codec)

    def encode(it: Any) -> bytes:
        try:
            data: bytes = con.build({n: getattr(it, n) for n in codec.names})
        except cs.ConstructError as e:
            raise ImageError(f"cannot encode {codec.owner}: {e}", record=codec.owner) from None
        return data

    return encode


def item_decoder(codec: ItemCodec) -> Callable[[bytes], Any]:
    con = Versioned(fixed_struct(codec))

    def decode(raw: bytes) -> Any:
        return _item_value(codec, con.parse(raw))

    return decode
