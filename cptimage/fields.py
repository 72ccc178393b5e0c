"""Record declarations: the field helpers, @record and @item, the registry, record framing.

A record type is a class whose fields are declared with the helpers below; the
decorator ``record(tag)`` registers the tag and makes the class a dataclass (same
__init__, __repr__, __eq__, dataclasses.fields() and replace()).

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

Three modules carry the format, one source of truth:

    schema.py   the construct declaration of every byte: the reference, and the plain
                parser (``decode_records(..., plain=True)``)
    _codec.py   plain Python generated from schema.py by ``python -m cptimage.codegen``
                (``make codec``): what every command runs; no construct, no dataclass
                machinery at import
    this file   the declarations' helpers, and the binding of each class to its code

A class whose declaration differs from what _codec.py was generated from (records.py
edited, codec not regenerated) falls back to a dataclass over the construct codec, with
a warning; tests/test_codec.py fails until ``make codec`` is run.
"""

from __future__ import annotations

import enum
import io
import struct
import warnings
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, dataclass_transform

from .errors import ImageError

try:
    from . import _codec as _generated
except ImportError:  # pragma: no cover - the committed file is missing or broken: construct
    _generated = None  # type: ignore[assignment]

_META = "cpt"
_RHDR = struct.Struct("<IHH")
RECORD_HEADER_SIZE = _RHDR.size


def align8(n: int) -> int:
    return (n + 7) & ~7


# ---------------------------------------------------------------------------
# field declarations


class FixedSpec:
    """A fixed-width field: its wire type (u8 u16 u32 u64 i32 i64 bytes[N], the name
    SPEC.md uses) and the enumeration or flags its values come from."""

    __slots__ = ("enum", "flags", "is_bytes", "size", "wire")

    def __init__(
        self,
        wire: str,
        size: int,
        *,
        enum: type[enum.IntEnum] | None = None,
        flags: type[enum.IntFlag] | None = None,
        is_bytes: bool = False,
    ) -> None:
        self.wire = wire
        self.size = size
        self.enum = enum
        self.flags = flags
        self.is_bytes = is_bytes

    def __repr__(self) -> str:
        return f"FixedSpec({self.wire!r})"


class VarSpec:
    """A variable-width field: text blob u32s u64s strs blobs items (of ``item``)."""

    __slots__ = ("item", "kind")

    def __init__(self, kind: str, item: type | None = None) -> None:
        self.kind = kind
        self.item = item

    def __repr__(self) -> str:
        return f"VarSpec({self.kind!r})"


class FieldDecl:
    """What a field helper returns: a class attribute that @record/@item consume."""

    __slots__ = ("default", "factory", "spec")

    def __init__(self, spec: FixedSpec | VarSpec, default: Any, factory: Any) -> None:
        self.spec = spec
        self.default = default
        self.factory = factory

    def dataclass_field(self) -> Any:
        import dataclasses

        meta = {_META: self.spec}
        if self.factory is not None:
            return dataclasses.field(default_factory=self.factory, metadata=meta)
        return dataclasses.field(default=self.default, metadata=meta)


# one spec object per distinct declaration: records declare hundreds of plain u32 fields
_SPECS: dict[tuple[Any, ...], FixedSpec] = {}


def _fixed(wire: str, size: int, default: Any, **kw: Any) -> Any:
    key = (wire, kw.get("enum"), kw.get("flags"))
    spec = _SPECS.get(key)
    if spec is None:
        spec = _SPECS[key] = FixedSpec(wire, size, **kw)
    return FieldDecl(spec, default, None)


def u8(default: int = 0, *, enum: type[enum.IntEnum] | None = None) -> Any:
    return _fixed("u8", 1, default, enum=enum)


def u16(default: int = 0, *, enum: type[enum.IntEnum] | None = None) -> Any:
    return _fixed("u16", 2, default, enum=enum)


def u32(
    default: int = 0,
    *,
    enum: type[enum.IntEnum] | None = None,
    flags: type[enum.IntFlag] | None = None,
) -> Any:
    return _fixed("u32", 4, default, enum=enum, flags=flags)


def u64(default: int = 0, *, flags: type[enum.IntFlag] | None = None) -> Any:
    return _fixed("u64", 8, default, flags=flags)


def i32(default: int = 0) -> Any:
    return _fixed("i32", 4, default)


def i64(default: int = 0) -> Any:
    return _fixed("i64", 8, default)


def fbytes(n: int) -> Any:
    """A fixed-width byte string (UUIDs, addresses)."""
    return _fixed(f"bytes[{n}]", n, b"\0" * n, is_bytes=True)


_VAR_SPECS = {k: VarSpec(k) for k in ("text", "blob", "u32s", "u64s", "strs", "blobs")}


def text() -> Any:
    return FieldDecl(_VAR_SPECS["text"], None, str)


def blob() -> Any:
    return FieldDecl(_VAR_SPECS["blob"], None, bytes)


def u32s() -> Any:
    return FieldDecl(_VAR_SPECS["u32s"], None, list)


def u64s() -> Any:
    return FieldDecl(_VAR_SPECS["u64s"], None, list)


def strs() -> Any:
    return FieldDecl(_VAR_SPECS["strs"], None, list)


def blobs() -> Any:
    return FieldDecl(_VAR_SPECS["blobs"], None, list)


def items(item_cls: type) -> Any:
    """A list of fixed-layout items (declared with @item)."""
    return FieldDecl(VarSpec("items", item_cls), None, list)


# ---------------------------------------------------------------------------
# binding a declared class to its code

Decl = tuple[str, str, FieldDecl]  # name, annotation (text), declaration


def _declarations(cls: type) -> list[Decl]:
    out = []
    # the class's own annotations, in order (inspect.get_annotations: +6 ms to import inspect)
    for name, ann in cls.__dict__.get("__annotations__", {}).items():  # noqa: RUF063
        f = cls.__dict__.get(name)
        if not isinstance(f, FieldDecl):
            if "ClassVar" in str(ann):
                continue
            raise TypeError(f"{cls.__name__}.{name}: not declared with a field helper")
        out.append((name, ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann)), f))
    return out


def fingerprint(name: str, tag: int | None, decls: list[Decl]) -> str:
    """What the generated code of a class depends on: codegen stores it, @record compares."""
    parts = [name if tag is None else f"{name}@{tag:#06x}"]
    for n, _, f in decls:
        s = f.spec
        if isinstance(s, FixedSpec):
            parts.append(f"{n}:{s.wire}={f.default!r}")
        elif s.item is not None:
            parts.append(f"{n}:items[{s.item.__codec__.fingerprint}]")  # type: ignore[attr-defined]
        else:
            parts.append(f"{n}:{s.kind}")
    return " ".join(parts)


class _LazyDataclassAttr:
    """__dataclass_fields__ / __dataclass_params__ of a generated class, built on first use.

    dataclasses.fields(), replace() and asdict() read them; building them costs what the
    dataclass decorator costs (about 0.4 ms a class), so it happens only for the classes a
    command actually asks about, from a twin made by dataclasses.make_dataclass.
    """

    def __init__(self, attr: str) -> None:
        self.attr = attr

    def __get__(self, obj: Any, cls: type) -> Any:
        import dataclasses

        twin = dataclasses.make_dataclass(
            cls.__name__,
            [(n, ann, f.dataclass_field()) for n, ann, f in cls.__codec__.decls],  # type: ignore[attr-defined]
        )
        cls.__dataclass_fields__ = twin.__dataclass_fields__  # type: ignore[attr-defined]
        cls.__dataclass_params__ = twin.__dataclass_params__  # type: ignore[attr-defined]
        return getattr(cls, self.attr)


_LAZY_FIELDS = _LazyDataclassAttr("__dataclass_fields__")
_LAZY_PARAMS = _LazyDataclassAttr("__dataclass_params__")


def _install(cls: type, decls: list[Decl], methods: tuple[Callable[..., Any], ...]) -> None:
    """Make cls the dataclass the dataclass decorator would make, with generated methods."""
    for fn in methods:
        fn.__qualname__ = f"{cls.__qualname__}.{fn.__name__}"
        setattr(cls, fn.__name__, fn)
    cls.__hash__ = None  # type: ignore[assignment]  # eq without frozen, as dataclass does
    cls.__match_args__ = tuple(n for n, _, _ in decls)  # type: ignore[attr-defined,misc]
    cls.__dataclass_fields__ = _LAZY_FIELDS  # type: ignore[attr-defined]
    cls.__dataclass_params__ = _LAZY_PARAMS  # type: ignore[attr-defined]
    for n, _, f in decls:
        if f.factory is None:
            setattr(cls, n, f.default)
        else:
            delattr(cls, n)


def _as_dataclass(cls: type, decls: list[Decl]) -> None:
    import dataclasses

    for n, _, f in decls:
        setattr(cls, n, f.dataclass_field())
    dataclasses.dataclass(cls)


def _bind(kind: str, cls: type, fp: str) -> Any:
    """The generated code of a class, or None when it is missing or stale."""
    table = getattr(_generated, kind, None) or {}
    entry = table.get(cls.__name__)
    if entry is not None and entry[0] == fp:
        return entry[1]
    warnings.warn(
        f"cptimage/_codec.py is stale for {cls.__name__}: falling back to construct "
        "(run `make codec`)",
        stacklevel=4,
    )
    return None


class ItemCodec:
    """The fixed layout of an item, or of a record's fixed part."""

    def __init__(self, owner: str, fields: list[tuple[str, FixedSpec]]) -> None:
        self.owner = owner
        self.fields = fields
        self.names = [n for n, _ in fields]
        self.size = sum(spec.size for _, spec in fields)


class _ItemClassCodec(ItemCodec):
    """An @item class: its layout, and how one item is encoded and decoded."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.decls = _declarations(cls)
        fixed = []
        for n, _, f in self.decls:
            if not isinstance(f.spec, FixedSpec):
                raise TypeError(f"{cls.__name__}.{n}: items hold fixed fields only")
            fixed.append((n, f.spec))
        super().__init__(cls.__name__, fixed)
        self.fingerprint = fingerprint(cls.__name__, None, self.decls)
        make = _bind("ITEMS", cls, self.fingerprint)
        self.generated = make is not None
        if make is not None:
            init, rep, eq, self.encode, self.decode = make(cls)
            _install(cls, self.decls, (init, rep, eq))
        else:
            _as_dataclass(cls, self.decls)
            from . import schema

            self.encode = schema.item_encoder(self)
            self.decode = schema.item_decoder(self)


class RecordCodec:
    """A @record class: tag, layout, and its encode / decode functions.

    ``encode(rec) -> bytes`` gives the whole record, header and padding included;
    ``decode(fixed, var)`` the record of a fixed part and a var part (framing is
    decode_records' job).  Both raise ImageError naming the record and field.
    """

    encode: Callable[[Any], bytes]
    decode: Callable[[bytes, bytes], Any]

    def __init__(self, cls: type, tag: int) -> None:
        self.cls = cls
        self.tag = tag
        self.name = cls.__name__
        self.decls = _declarations(cls)
        fixed: list[tuple[str, FixedSpec]] = []
        var: list[tuple[str, VarSpec]] = []
        for n, _, f in self.decls:
            if isinstance(f.spec, FixedSpec):
                fixed.append((n, f.spec))
            else:
                var.append((n, f.spec))
        self.fixed = ItemCodec(self.name, fixed)
        self.var = var
        self.field_names = [n for n, _, _ in self.decls]
        self.fingerprint = fingerprint(self.name, tag, self.decls)
        make = _bind("RECORDS", cls, self.fingerprint)
        self.generated = make is not None
        if make is not None:
            item_classes = tuple(s.item for _, s in var if s.item is not None)
            init, rep, eq, encode, self.decode = make(cls, item_classes)
            _install(cls, self.decls, (init, rep, eq, encode))
            self.encode = encode
        else:
            _as_dataclass(cls, self.decls)
            from . import schema

            self.encode = schema.record_encoder(self)
            self.decode = schema.record_decoder(self)

    def decode_body(self, fixed: bytes, var: bytes) -> Any:
        return self.decode(fixed, var)


# ---------------------------------------------------------------------------
# the registry


T = TypeVar("T")

REGISTRY: dict[int, RecordCodec] = {}
BY_NAME: dict[str, RecordCodec] = {}


class Record:
    """Base of every record class.  ``TAG`` and ``__codec__`` are set by @record."""

    TAG: ClassVar[int]
    __codec__: ClassVar[RecordCodec]

    def encode(self) -> bytes:
        return self.__codec__.encode(self)


@dataclass_transform()  # type checkers: a record class is a dataclass
def record(tag: int) -> Callable[[type[T]], type[T]]:
    def wrap(cls: type[T]) -> type[T]:
        if tag in REGISTRY:
            raise TypeError(
                f"record tag {tag:#06x} used twice ({REGISTRY[tag].name}, {cls.__name__})"
            )
        codec = RecordCodec(cls, tag)
        cls.TAG = tag  # type: ignore[attr-defined]
        cls.__codec__ = codec  # type: ignore[attr-defined]
        REGISTRY[tag] = codec
        BY_NAME[codec.name] = codec
        return cls

    return wrap


@dataclass_transform()
def item(cls: type[T]) -> type[T]:
    """A fixed-layout element of an ``items`` list (no tag, fixed fields only)."""
    cls.__codec__ = _ItemClassCodec(cls)  # type: ignore[attr-defined]
    return cls


class UnknownRecord:
    """A record whose tag this version does not know (kept raw, skipped by consumers)."""

    __match_args__ = ("tag", "raw")

    def __init__(self, tag: int, raw: bytes) -> None:
        self.tag = tag
        self.raw = raw  # the whole record, header included, padding excluded

    def __repr__(self) -> str:
        return f"UnknownRecord(tag={self.tag!r}, raw={self.raw!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, UnknownRecord) and other.__class__ is self.__class__:
            return (self.tag, self.raw) == (other.tag, other.raw)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def encode(self) -> bytes:
        return self.raw + b"\0" * (align8(len(self.raw)) - len(self.raw))


def decode_records(payload: bytes, *, plain: bool = False, where: str = "") -> list[Any]:
    """Every record of a section payload, in order.

    ``plain``: parse with construct (schema.py), the reference the generated code is
    tested against; slower, and the only path that imports construct.
    """
    if plain:
        return _decode_plain(payload, where)
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
                    codec.decode(
                        payload[fstart : fstart + fsize], payload[fstart + fsize : off + size]
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


def _decode_plain(payload: bytes, where: str) -> list[Any]:
    from . import schema

    stream = io.BytesIO(payload)
    out: list[Any] = []
    off, end = 0, len(payload)
    while off < end:
        # the tag picks the declaration; construct then checks the whole record
        tag = int.from_bytes(payload[off + 4 : off + 6], "little") if end - off >= 6 else None
        codec = REGISTRY.get(tag) if tag is not None else None
        try:
            got = schema.parse_one(codec, stream)
        except ImageError as e:
            e.section, e.offset = where, off
            raise
        out.append(got if codec is not None else UnknownRecord(*got))
        off = stream.tell()
    return out


def encode_records(recs: list[Any]) -> bytes:
    return b"".join([r.encode() for r in recs])


def fields_of(cls: type) -> list[tuple[str, FixedSpec | VarSpec]]:
    """(name, spec) of every field of a record or item class, in declaration order."""
    return [(n, f.spec) for n, _, f in cls.__codec__.decls]  # type: ignore[attr-defined]
