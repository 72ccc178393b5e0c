"""Record declarations and their wire codec.

A record type is a dataclass whose fields are declared with the helpers below; the
decorator ``record(tag)`` derives its construct schema and registers the tag.

Grammar of one record on disk (SPEC.md, "Records"):

    record := size:u32 tag:u16 fixed_size:u16 fixed[fixed_size] var[size-8-fixed_size] pad
    pad    := zero bytes up to the next multiple of 8 (not counted in size)
    fixed  := the fixed-width fields in declaration order, little-endian
    var    := the variable-width fields in declaration order; a reader stops when the
              bytes run out and gives the remaining fields their empty default
    text   := len:u32 utf8[len]           blob  := len:u32 bytes[len]
    u32s   := count:u32 u32[count]        u64s  := count:u32 u64[count]
    strs   := count:u32 text[count]       blobs := count:u32 blob[count]
    items  := count:u32 esize:u16 0:u16 item[count]   (each item: esize bytes, fixed fields)

Readers honour the STORED fixed_size and esize: a shorter part (older minor version) is
zero-filled, a longer one (newer minor version) is kept aside unparsed so that a decode /
encode round trip stays byte-identical.  Records only grow; fields are never reordered.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import struct
from collections.abc import Callable
from enum import IntEnum, IntFlag
from typing import Any, ClassVar, TypeVar, dataclass_transform

import construct as cs

from .errors import ImageError

_META = "cpt"
_RHDR = struct.Struct("<IHH")
RECORD_HEADER_SIZE = _RHDR.size


def align8(n: int) -> int:
    return (n + 7) & ~7


# ---------------------------------------------------------------------------
# field declarations


@dataclasses.dataclass(frozen=True)
class FixedSpec:
    con: cs.Construct
    size: int
    wire: str  # u8 u16 u32 u64 i32 i64 bytes[N]: the name SPEC.md uses
    enum: type[IntEnum] | None = None
    flags: type[IntFlag] | None = None
    is_bytes: bool = False


@dataclasses.dataclass(frozen=True)
class VarSpec:
    kind: str  # text blob u32s u64s strs blobs items
    item: type | None = None


def _fixed(con: cs.Construct, size: int, wire: str, default: Any, **kw: Any) -> Any:
    return dataclasses.field(default=default, metadata={_META: FixedSpec(con, size, wire, **kw)})


def u8(default: int = 0, *, enum: type[enum.IntEnum] | None = None) -> Any:
    return _fixed(cs.Int8ul, 1, "u8", default, enum=enum)


def u16(default: int = 0, *, enum: type[enum.IntEnum] | None = None) -> Any:
    return _fixed(cs.Int16ul, 2, "u16", default, enum=enum)


def u32(
    default: int = 0,
    *,
    enum: type[enum.IntEnum] | None = None,
    flags: type[enum.IntFlag] | None = None,
) -> Any:
    return _fixed(cs.Int32ul, 4, "u32", default, enum=enum, flags=flags)


def u64(default: int = 0, *, flags: type[enum.IntFlag] | None = None) -> Any:
    return _fixed(cs.Int64ul, 8, "u64", default, flags=flags)


def i32(default: int = 0) -> Any:
    return _fixed(cs.Int32sl, 4, "i32", default)


def i64(default: int = 0) -> Any:
    return _fixed(cs.Int64sl, 8, "i64", default)


def fbytes(n: int) -> Any:
    """A fixed-width byte string (UUIDs, addresses)."""
    return _fixed(cs.Bytes(n), n, f"bytes[{n}]", b"\0" * n, is_bytes=True)


def _var(kind: str, default_factory: Callable[[], Any], item: type | None = None) -> Any:
    return dataclasses.field(default_factory=default_factory, metadata={_META: VarSpec(kind, item)})


def text() -> Any:
    return _var("text", str)


def blob() -> Any:
    return _var("blob", bytes)


def u32s() -> Any:
    return _var("u32s", list)


def u64s() -> Any:
    return _var("u64s", list)


def strs() -> Any:
    return _var("strs", list)


def blobs() -> Any:
    return _var("blobs", list)


def items(item_cls: type) -> Any:
    """A list of fixed-layout items (declared with @item)."""
    return _var("items", list, item_cls)


# ---------------------------------------------------------------------------
# codecs


_STRUCT_CODES = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q", "i32": "i", "i64": "q"}


class FixedCodec:
    """The fixed part of a record or item.

    construct declares it (``struct``, the plain parser that verify uses); the hot path
    is a ``struct.Struct`` built from the same declarations: what construct's
    Struct.compile() generates, without its code generation (about 1 ms per type, paid by
    every cpt command) and 20 times faster per record.  tests/test_image_records.py checks
    that both parse every input alike.
    """

    def __init__(self, owner: str, fields: list[tuple[str, FixedSpec]]) -> None:
        self.owner = owner
        self.fields = fields
        self.names = [n for n, _ in fields]
        self.struct = cs.Struct(*[n / spec.con for n, spec in fields])
        self.size = sum(spec.size for _, spec in fields)
        self.fast = struct.Struct(
            "<" + "".join(_STRUCT_CODES.get(spec.wire, f"{spec.size}s") for _, spec in fields)
        )
        assert self.fast.size == self.size
        self._bytes = [(i, spec.size) for i, (_, spec) in enumerate(fields) if spec.is_bytes]
        self.zeros = b"\0" * self.size

    def parse(self, data: bytes, *, plain: bool = False) -> tuple[list[Any], bytes]:
        """Values in declaration order, plus the stored bytes this version does not know."""
        ext = b""
        if len(data) < self.size:
            # an older minor version wrote fewer fields: zero-fill the missing ones
            data = data + self.zeros[len(data) :]
        elif len(data) > self.size:
            ext = data[self.size :]
            data = data[: self.size]
        if plain:
            c = self.struct.parse(data)
            return [c[n] for n in self.names], ext
        return list(self.fast.unpack(data)), ext

    def build(self, values: dict[str, Any]) -> bytes:
        vals = [values[n] for n in self.names]
        for i, size in self._bytes:
            # struct would pad or cut a byte string silently; construct's Bytes(n) refuses
            if not isinstance(vals[i], (bytes, bytearray)) or len(vals[i]) != size:
                raise ImageError(
                    f"cannot encode {self.owner}: {self.names[i]} must be {size} bytes",
                    record=self.owner,
                )
        try:
            return self.fast.pack(*vals)
        except (struct.error, TypeError) as e:
            raise ImageError(f"cannot encode {self.owner}: {e}", record=self.owner) from None


_U32 = struct.Struct("<I")
_ITEMS = struct.Struct("<IHH")


class _Reader:
    """Bounds-checked reads over the var part of one record."""

    __slots__ = ("data", "owner", "pos")

    def __init__(self, data: bytes, owner: str) -> None:
        self.data = data
        self.pos = 0
        self.owner = owner

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or n > len(self.data) - self.pos:
            raise ImageError(
                f"{what} needs {n} bytes, only {len(self.data) - self.pos} left", record=self.owner
            )
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def u32(self, what: str) -> int:
        return int(_U32.unpack(self.take(4, what))[0])


def _read_var(r: _Reader, name: str, spec: VarSpec) -> Any:
    k = spec.kind
    if k == "text":
        raw = r.take(r.u32(name), name)
        try:
            return raw.decode("utf-8", "surrogateescape")
        except UnicodeDecodeError as e:  # pragma: no cover - surrogateescape never fails
            raise ImageError(f"field {name}: {e}", record=r.owner) from None
    if k == "blob":
        return r.take(r.u32(name), name)
    if k in ("u32s", "u64s"):
        n = r.u32(name)
        w = 4 if k == "u32s" else 8
        raw = r.take(n * w, name)
        return list(struct.unpack(f"<{n}{'I' if w == 4 else 'Q'}", raw))
    if k in ("strs", "blobs"):
        n = r.u32(name)
        if n > r.left() // 4:
            raise ImageError(f"field {name}: count {n} exceeds the record", record=r.owner)
        out: list[Any] = []
        for _ in range(n):
            raw = r.take(r.u32(name), name)
            out.append(raw.decode("utf-8", "surrogateescape") if k == "strs" else raw)
        return out
    if k == "items":
        assert spec.item is not None
        count, esize, _zero = _ITEMS.unpack(r.take(_ITEMS.size, name))
        if count and not esize:
            # every item has at least one field: a zero size would loop `count` times on nothing
            raise ImageError(f"field {name}: {count} items of size 0", record=r.owner)
        raw = r.take(count * esize, name)
        icodec: FixedCodec = spec.item.__codec__  # type: ignore[attr-defined]
        item_cls = spec.item
        res = []
        for i in range(count):
            vals, ext = icodec.parse(raw[i * esize : (i + 1) * esize])
            it = item_cls(*vals)
            if ext:
                it._ext = ext  # a newer minor version's item fields, kept for re-encoding
            res.append(it)
        return res
    raise AssertionError(k)  # pragma: no cover


def _write_var(out: list[bytes], name: str, spec: VarSpec, value: Any, owner: str) -> None:
    k = spec.kind
    try:
        if k == "text":
            b = value.encode("utf-8", "surrogateescape")
            out += (_U32.pack(len(b)), b)
        elif k == "blob":
            b = bytes(value)
            out += (_U32.pack(len(b)), b)
        elif k in ("u32s", "u64s"):
            out += (
                _U32.pack(len(value)),
                struct.pack(f"<{len(value)}{'I' if k == 'u32s' else 'Q'}", *value),
            )
        elif k in ("strs", "blobs"):
            out.append(_U32.pack(len(value)))
            for v in value:
                b = v.encode("utf-8", "surrogateescape") if k == "strs" else bytes(v)
                out += (_U32.pack(len(b)), b)
        elif k == "items":
            assert spec.item is not None
            icodec: FixedCodec = spec.item.__codec__  # type: ignore[attr-defined]
            exts = [getattr(it, "_ext", b"") for it in value]
            if len({len(e) for e in exts}) > 1:
                raise ValueError("items carry extension bytes of different lengths")
            esize = icodec.size + (len(exts[0]) if exts else 0)
            out.append(_ITEMS.pack(len(value), esize, 0))
            for it, ext in zip(value, exts, strict=True):
                out += (icodec.build({n: getattr(it, n) for n in icodec.names}), ext)
        else:  # pragma: no cover
            raise AssertionError(k)
    except (struct.error, AttributeError, TypeError, ValueError) as e:
        raise ImageError(f"cannot encode field {name}: {e}", record=owner) from None


class RecordCodec:
    def __init__(self, cls: type, tag: int) -> None:
        self.cls = cls
        self.tag = tag
        self.name = cls.__name__
        fixed: list[tuple[str, FixedSpec]] = []
        var: list[tuple[str, VarSpec]] = []
        for f in dataclasses.fields(cls):
            spec = f.metadata.get(_META)
            if isinstance(spec, FixedSpec):
                fixed.append((f.name, spec))
            elif isinstance(spec, VarSpec):
                var.append((f.name, spec))
            else:
                raise TypeError(f"{cls.__name__}.{f.name}: not declared with a field helper")
        self.fixed = FixedCodec(self.name, fixed)
        self.var = var
        self.field_names = [f.name for f in dataclasses.fields(cls)]

    def encode(self, rec: Any) -> bytes:
        fixed = self.fixed.build({n: getattr(rec, n) for n in self.fixed.names})
        ext_fixed, ext_var = getattr(rec, "_ext", (b"", b""))
        fixed += ext_fixed
        parts: list[bytes] = []
        for name, spec in self.var:
            _write_var(parts, name, spec, getattr(rec, name), self.name)
        parts.append(ext_var)
        body = b"".join(parts)
        size = RECORD_HEADER_SIZE + len(fixed) + len(body)
        if len(fixed) > 0xFFFF:
            raise ImageError("fixed part exceeds 65535 bytes", record=self.name)
        pad = align8(size) - size
        return _RHDR.pack(size, self.tag, len(fixed)) + fixed + body + b"\0" * pad

    def decode_body(self, fixed: bytes, var: bytes, *, plain: bool = False) -> Any:
        try:
            values, ext_fixed = self.fixed.parse(fixed, plain=plain)
        except (cs.ConstructError, struct.error) as e:
            raise ImageError(f"fixed part: {e}", record=self.name) from None
        kw = dict(zip(self.fixed.names, values, strict=True))
        r = _Reader(var, self.name)
        for name, spec in self.var:
            if r.left() == 0:
                break  # an older minor version: the remaining fields keep their defaults
            kw[name] = _read_var(r, name, spec)
        rec = self.cls(**kw)
        ext_var = var[r.pos :]
        if ext_fixed or ext_var:
            rec._ext = (ext_fixed, ext_var)
        return rec


# ---------------------------------------------------------------------------
# the registry


T = TypeVar("T")

REGISTRY: dict[int, RecordCodec] = {}
BY_NAME: dict[str, RecordCodec] = {}


class Record:
    """Base of every record dataclass.  ``TAG`` and ``__codec__`` are set by @record."""

    TAG: ClassVar[int]
    __codec__: ClassVar[RecordCodec]

    def encode(self) -> bytes:
        return self.__codec__.encode(self)


@dataclass_transform()  # type checkers: a record class is a dataclass
def record(tag: int) -> Callable[[type[T]], type[T]]:
    def wrap(cls: type[T]) -> type[T]:
        dc = dataclasses.dataclass(cls)
        if tag in REGISTRY:
            raise TypeError(
                f"record tag {tag:#06x} used twice ({REGISTRY[tag].name}, {cls.__name__})"
            )
        codec = RecordCodec(dc, tag)
        dc.TAG = tag  # type: ignore[attr-defined]
        dc.__codec__ = codec  # type: ignore[attr-defined]
        REGISTRY[tag] = codec
        BY_NAME[codec.name] = codec
        return dc

    return wrap


@dataclass_transform()
def item(cls: type[T]) -> type[T]:
    """A fixed-layout element of an ``items`` list (no tag, fixed fields only)."""
    dc: Any = dataclasses.dataclass(cls)
    fixed = []
    for f in dataclasses.fields(dc):
        spec = f.metadata.get(_META)
        if not isinstance(spec, FixedSpec):
            raise TypeError(f"{cls.__name__}.{f.name}: items hold fixed fields only")
        fixed.append((f.name, spec))
    dc.__codec__ = FixedCodec(cls.__name__, fixed)
    return dc


@dataclasses.dataclass
class UnknownRecord:
    """A record whose tag this version does not know (kept raw, skipped by consumers)."""

    tag: int
    raw: bytes  # the whole record, header included, padding excluded

    def encode(self) -> bytes:
        return self.raw + b"\0" * (align8(len(self.raw)) - len(self.raw))


def decode_records(payload: bytes, *, plain: bool = False, where: str = "") -> list[Any]:
    """Every record of a section payload, in order."""
    out: list[Any] = []
    off = 0
    end = len(payload)
    unpack = _RHDR.unpack_from
    registry = REGISTRY
    while off < end:
        if end - off < RECORD_HEADER_SIZE:
            raise ImageError(
                f"record header truncated ({end - off} bytes left)", section=where, offset=off
            )
        size, tag, fsize = unpack(payload, off)
        if size < RECORD_HEADER_SIZE + fsize or off + size > end:
            raise ImageError(
                f"record length {size} (fixed part {fsize}) does not fit the section",
                section=where,
                offset=off,
            )
        codec = registry.get(tag)
        if codec is None:
            out.append(UnknownRecord(tag, bytes(payload[off : off + size])))
        else:
            fstart = off + RECORD_HEADER_SIZE
            try:
                out.append(
                    codec.decode_body(
                        payload[fstart : fstart + fsize],
                        payload[fstart + fsize : off + size],
                        plain=plain,
                    )
                )
            except ImageError as e:
                e.section = e.section or where
                e.offset = off
                raise
        off += align8(size)
        if off > end:
            raise ImageError("record padding runs past the section end", section=where, offset=off)
    return out


def encode_records(recs: list[Any]) -> bytes:
    buf = io.BytesIO()
    for r in recs:
        buf.write(r.encode())
    return buf.getvalue()


def fields_of(cls: type) -> list[tuple[str, FixedSpec | VarSpec]]:
    return [(f.name, f.metadata[_META]) for f in dataclasses.fields(cls)]
