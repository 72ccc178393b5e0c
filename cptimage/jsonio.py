"""The JSON form of an image (SPEC.md section 8): lossless decode, byte-identical encode.

    decode(src) -> doc          encode(doc, out)          decode_to(src, text_out)

``decode`` walks the file front to back (a pipe works), checking every section checksum
and the file digest; ``encode`` writes the sections back in the same order with the same
versions, compression and zstd levels, so ``encode(decode(img))`` reproduces ``img``
byte for byte for images this version writes.  Unknown records and the bytes a newer
minor version appended to a known record (``_ext``) are carried through.

Memory: ``decode`` holds the whole document (page data as base64); ``decode_to`` and
``encode`` hold one section at a time besides their input or output.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import struct
from collections.abc import Iterator
from typing import IO, Any, BinaryIO

from .container import (
    FORMAT_MAJOR,
    FORMAT_MINOR,
    ImageReader,
    ImageWriter,
    StreamedSection,
    StreamedTrailer,
    decompress,
    open_regular,
    parse_header_record,
    walk,
)
from .errors import ImageError, ImageVersionError, quote
from .fields import BY_NAME, REGISTRY, FixedSpec, UnknownRecord, VarSpec, decode_records, fields_of
from .records import Compression, Header, SectionType, section_of_tag

FORMAT_NAME = "cpt-image"
Source = str | os.PathLike[str] | BinaryIO | ImageReader
_COMPRESSION = {"none": Compression.NONE, "zstd": Compression.ZSTD}
_COMPRESSION_NAME = {v: k for k, v in _COMPRESSION.items()}


class _JsonError(ImageError):
    """The JSON document does not describe an image."""


# --------------------------------------------------------------------------- values


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(s: Any, where: str) -> bytes:
    if not isinstance(s, str):
        raise _JsonError(f"{where}: expected base64 text, got {type(s).__name__}")
    try:
        return base64.b64decode(s.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise _JsonError(f"{where}: invalid base64 ({e})") from None


def _unhex(s: Any, where: str) -> bytes:
    if not isinstance(s, str):
        raise _JsonError(f"{where}: expected hex text, got {type(s).__name__}")
    try:
        return bytes.fromhex(s)
    except ValueError as e:
        raise _JsonError(f"{where}: invalid hex ({e})") from None


# the values each wire type holds
_RANGES = {
    "u8": (0, 0xFF),
    "u16": (0, 0xFFFF),
    "u32": (0, 0xFFFF_FFFF),
    "u64": (0, 0xFFFF_FFFF_FFFF_FFFF),
    "i32": (-(1 << 31), (1 << 31) - 1),
    "i64": (-(1 << 63), (1 << 63) - 1),
}


def _int_in(v: Any, wire: str, where: str, owner: str = "") -> int:
    """An integer of a wire type's range, or _JsonError naming the place and the range
    (and the record or item, ``owner``, it would not fit)."""
    if not isinstance(v, int) or isinstance(v, bool):
        raise _JsonError(f"{where}: expected an integer, got {quote(v)}")
    lo, hi = _RANGES[wire]
    if not lo <= v <= hi:
        what = f"cannot encode {owner}: " if owner else ""
        raise _JsonError(f"{where}: {what}{quote(v)} is out of range for {wire} ({lo}..{hi})")
    return v


def _text_in(v: Any, where: str) -> str:
    if not isinstance(v, str):
        raise _JsonError(f"{where}: expected text, got {quote(v)}")
    try:
        v.encode("utf-8", "surrogateescape")  # how records store text
    except UnicodeEncodeError as e:
        raise _JsonError(
            f"{where}: {quote(v)} cannot be stored: {quote(e.object[e.start : e.end])} "
            f"at {e.start} is not a character"
        ) from None
    return v


def _fixed_out(spec: FixedSpec, v: Any) -> Any:
    if spec.is_bytes:
        return bytes(v).hex()
    if spec.enum is not None and v in spec.enum._value2member_map_:
        return spec.enum(v).name
    return v


def _fixed_in(spec: FixedSpec, v: Any, where: str, owner: str = "") -> Any:
    if spec.is_bytes:
        b = _unhex(v, where)
        if len(b) != spec.size:
            raise _JsonError(f"{where}: {len(b)} bytes, {spec.wire} holds {spec.size}")
        return b
    if isinstance(v, str) and spec.enum is not None:
        try:
            return spec.enum[v].value
        except KeyError:
            raise _JsonError(f"{where}: {quote(v)} is not a {spec.enum.__name__}") from None
    return _int_in(v, spec.wire, where, owner)


def _item_out(it: Any) -> dict[str, Any]:
    d = {n: _fixed_out(spec, getattr(it, n)) for n, spec in fields_of(type(it))}  # type: ignore[arg-type]
    ext = getattr(it, "_ext", b"")
    if ext:
        d["_ext"] = ext.hex()
    return d


def _item_in(cls: type, d: Any, where: str) -> Any:
    if not isinstance(d, dict):
        raise _JsonError(f"{where}: expected an object")
    specs = dict(fields_of(cls))
    kw = {}
    for k, v in d.items():
        if k == "_ext":
            continue
        spec = specs.get(k)
        if not isinstance(spec, FixedSpec):
            raise _JsonError(f"{where}: {cls.__name__} has no field {quote(k)}")
        kw[k] = _fixed_in(spec, v, f"{where}.{k}", cls.__name__)
    it = cls(**kw)
    if d.get("_ext"):
        it._ext = _unhex(d["_ext"], f"{where}._ext")
    return it


def _var_out(spec: VarSpec, v: Any) -> Any:
    k = spec.kind
    if k == "blob":
        return _b64(v)
    if k == "blobs":
        return [_b64(b) for b in v]
    if k == "items":
        return [_item_out(it) for it in v]
    return list(v) if k in ("u32s", "u64s", "strs") else v


def _var_in(spec: VarSpec, v: Any, where: str, owner: str = "") -> Any:
    k = spec.kind
    if k == "blob":
        return _unb64(v, where)
    if k == "text":
        return _text_in(v, where)
    if not isinstance(v, list):
        raise _JsonError(f"{where}: expected an array, got {quote(v)}")
    if k == "blobs":
        return [_unb64(b, f"{where}[{i}]") for i, b in enumerate(v)]
    if k == "items":
        assert spec.item is not None
        return [_item_in(spec.item, d, f"{where}[{i}]") for i, d in enumerate(v)]
    if k == "strs":
        return [_text_in(x, f"{where}[{i}]") for i, x in enumerate(v)]
    wire = "u32" if k == "u32s" else "u64"
    return [_int_in(x, wire, f"{where}[{i}]", owner) for i, x in enumerate(v)]


def record_to_json(rec: Any) -> dict[str, Any]:
    """One record as a JSON-able object (SPEC.md section 8)."""
    if isinstance(rec, UnknownRecord):
        return {"record": None, "tag": rec.tag, "raw": _b64(rec.raw)}
    d: dict[str, Any] = {"record": type(rec).__name__}
    for name, spec in fields_of(type(rec)):
        v = getattr(rec, name)
        d[name] = _fixed_out(spec, v) if isinstance(spec, FixedSpec) else _var_out(spec, v)
    ext = getattr(rec, "_ext", None)
    if ext:
        d["_ext"] = [ext[0].hex(), ext[1].hex()]
    return d


def record_from_json(d: Any, where: str = "record") -> Any:
    """The record a ``record_to_json`` object describes."""
    if not isinstance(d, dict) or "record" not in d:
        raise _JsonError(f"{where}: expected an object with a 'record' key")
    name = d["record"]
    if name is None:
        tag = d.get("tag")
        raw = _unb64(d.get("raw"), f"{where}.raw")
        if not isinstance(tag, int) or tag in REGISTRY or len(raw) < 8:
            raise _JsonError(f"{where}: an unknown record needs an unknown tag and its raw bytes")
        _int_in(tag, "u16", f"{where}.tag")
        size, rtag, fsize = struct.unpack_from("<IHH", raw)
        if (size, rtag) != (len(raw), tag) or fsize > size - 8:
            raise _JsonError(
                f"{where}.raw: its record header (size {size}, tag {rtag}, fixed part {fsize}) "
                f"does not describe {len(raw)} bytes of tag {tag}"
            )
        return UnknownRecord(tag, raw)
    codec = BY_NAME.get(name) if isinstance(name, str) else None
    if codec is None:
        raise _JsonError(f"{where}: unknown record type {quote(name)}")
    specs = dict(fields_of(codec.cls))
    kw = {}
    for k, v in d.items():
        if k in ("record", "_ext"):
            continue
        spec = specs.get(k)
        if spec is None:
            raise _JsonError(f"{where}: {name} has no field {quote(k)}")
        at = f"{where}.{k}"
        if isinstance(spec, FixedSpec):
            kw[k] = _fixed_in(spec, v, at, name)
        else:
            kw[k] = _var_in(spec, v, at, name)
    rec = codec.cls(**kw)
    ext = d.get("_ext")
    if ext:
        if not isinstance(ext, list) or len(ext) != 2:
            raise _JsonError(f"{where}._ext: expected [fixed hex, var hex]")
        rec._ext = (_unhex(ext[0], f"{where}._ext"), _unhex(ext[1], f"{where}._ext"))
    return rec


# --------------------------------------------------------------------------- decode


def _section_doc(sec: StreamedSection, minor: int, path: str | None) -> dict[str, Any] | None:
    info = sec.info
    if sec.computed_checksum != info.checksum:
        raise ImageError("checksum mismatch", path=path, section=info.name, offset=info.offset)
    if info.type == SectionType.INDEX:
        return None  # derived: encode rebuilds it
    known = info.type in SectionType._value2member_map_
    if not known and minor <= FORMAT_MINOR:
        raise ImageError(f"unknown section type 0x{info.type:04x}", path=path, offset=info.offset)
    payload = sec.stored
    if info.compression == Compression.ZSTD:
        payload = decompress(payload, info.raw_len, info.name)
    doc: dict[str, Any] = {
        "type": info.name if known else info.type,
        "version": info.version,
        "compression": _COMPRESSION_NAME[Compression(info.compression)],
        "level": info.level,
    }
    if info.type == SectionType.PAGES:
        doc["base"] = info.base
        doc["data"] = _b64(payload)
    elif known:
        try:
            recs = decode_records(payload, where=info.name)
        except ImageError as e:
            e.path = path
            raise
        doc["records"] = [record_to_json(r) for r in recs]
    else:
        doc["count"] = info.count
        doc["data"] = _b64(payload)
    return doc


def _check_trailer(t: StreamedTrailer, index_at: int, path: str | None) -> None:
    if t.extra:
        raise ImageError(f"{t.extra} bytes appended after the trailer", path=path)
    if t.digest != t.computed_digest:
        raise ImageError("file digest mismatch: the file is corrupted", path=path)
    if t.index_offset != index_at or t.file_size != t.end:
        raise ImageError("the trailer disagrees with the file", path=path)


def _open(src: Source) -> tuple[BinaryIO, str | None, bool]:
    """(file, path for messages, whether we own the file)."""
    if isinstance(src, ImageReader):
        src.f.seek(0)
        return src.f, src.path, False
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        return open_regular(path), path, True  # closed by iter_doc
    name = getattr(src, "name", None)
    return src, name if isinstance(name, str) else None, False


def iter_doc(src: Source, *, path: str | None = None) -> Iterator[dict[str, Any]]:
    """The document's head (format, version, header), then one object per section.

    ``path`` names an open file ``src`` in messages."""
    f, name, own = _open(src)
    path = path or name
    try:
        minor = FORMAT_MINOR
        index_at = -1
        for kind, value in walk(f, path=path):
            if kind == "preamble":
                major, minor, header_raw = value
                header = parse_header_record(header_raw, path=path)
                yield {
                    "format": FORMAT_NAME,
                    "version": [major, minor],
                    "header": record_to_json(header),
                }
            elif kind == "section":
                if value.info.type == SectionType.INDEX:
                    index_at = value.info.offset
                doc = _section_doc(value, minor, path)
                if doc is not None:
                    yield doc
            else:
                _check_trailer(value, index_at, path)
    finally:
        if own:
            f.close()


def decode(src: Source) -> dict[str, Any]:
    """The whole image as one JSON-able document."""
    parts = iter_doc(src)
    doc = next(parts)
    doc["header"].pop("record")
    doc["sections"] = list(parts)
    return doc


def decode_to(src: Source, out: IO[str], *, path: str | None = None) -> None:
    """Write the JSON document to a text stream, one section (and one record) per line."""
    parts = iter_doc(src, path=path)
    head = next(parts)
    head["header"].pop("record")
    out.write(
        f'{{"format": {json.dumps(head["format"])}, "version": {json.dumps(head["version"])},\n'
        f' "header": {json.dumps(head["header"])},\n "sections": ['
    )
    sep = "\n"
    for sec in parts:
        recs = sec.pop("records", None)
        body = json.dumps(sec)
        if recs is not None:
            lines = ",\n   ".join(json.dumps(r) for r in recs)
            body = f'{body[:-1]}, "records": [\n   {lines}]}}'
        out.write(f"{sep}  {body}")
        sep = ",\n"
    out.write("\n ]}\n")


# --------------------------------------------------------------------------- encode


def _section_type(v: Any, where: str) -> int:
    if isinstance(v, str):
        try:
            return SectionType[v].value
        except KeyError:
            raise _JsonError(f"{where}.type: unknown section type {quote(v)}") from None
    if isinstance(v, int) and not isinstance(v, bool) and 0 < v < 0xFFFF:
        return v
    raise _JsonError(f"{where}.type: expected a section type name or number")


def _int(
    d: dict[str, Any], key: str, where: str, default: int | None = None, wire: str = "u64"
) -> int:
    v = d.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise _JsonError(f"{where}.{key}: expected a non-negative integer, got {quote(v)}")
    return _int_in(v, wire, f"{where}.{key}")


MAX_ZSTD_LEVEL = 22


def _write_section(w: ImageWriter, sec: Any, where: str) -> None:
    if not isinstance(sec, dict):
        raise _JsonError(f"{where}: expected an object")
    stype = _section_type(sec.get("type"), where)
    if stype == SectionType.INDEX:
        raise _JsonError(f"{where}: the index is derived, not part of the JSON form")
    name = sec.get("compression", "none")
    comp = _COMPRESSION.get(name) if isinstance(name, str) else None
    if comp is None:
        raise _JsonError(f"{where}.compression: expected 'none' or 'zstd'")
    version = _int(sec, "version", where, 1, "u16")
    level = _int(sec, "level", where, 0, "u8")
    if comp == Compression.ZSTD and level > MAX_ZSTD_LEVEL:
        raise _JsonError(f"{where}.level: zstd levels go up to {MAX_ZSTD_LEVEL}, not {level}")
    known = stype in SectionType._value2member_map_
    if "records" in sec:
        recs = sec["records"]
        if not isinstance(recs, list):
            raise _JsonError(f"{where}.records: expected an array")
        if not known or stype == SectionType.PAGES:
            raise _JsonError(f"{where}: a {_type_name(stype)} section holds data, not records")
        if len(recs) > 0xFFFF_FFFF:
            raise _JsonError(f"{where}.records: more records than a section counts")
        parts = []
        for i, r in enumerate(recs):
            rec = record_from_json(r, f"{where}.records[{i}]")
            home = section_of_tag(rec.TAG if not isinstance(rec, UnknownRecord) else rec.tag)
            if home != stype:
                raise _JsonError(
                    f"{where}.records[{i}]: a {type(rec).__name__} record belongs in section "
                    f"{_type_name(home)}, not {_type_name(stype)}"
                )
            parts.append(_encode(rec, f"{where}.records[{i}]"))
        payload = b"".join(parts)
        count = len(recs)
    else:
        if known and stype != SectionType.PAGES:
            raise _JsonError(f"{where}: a {_type_name(stype)} section holds records, not data")
        payload = _unb64(sec.get("data"), f"{where}.data")
        count = 0 if stype == SectionType.PAGES else _int(sec, "count", where, wire="u32")
    base = _int(sec, "base", where, 0)
    w.add_raw_section(
        stype, version, payload, count=count, compression=comp, level=level, base=base
    )


def _type_name(stype: int) -> str:
    try:
        return SectionType(stype).name
    except ValueError:
        return f"0x{stype:04x}"


def _encode(rec: Any, where: str) -> bytes:
    """A record's bytes; what the codec refuses (a value the JSON checks let through)
    becomes an error naming the place."""
    try:
        return bytes(rec.encode())
    except ImageError as e:
        raise _JsonError(f"{where}: {e.msg}") from None


def _header(doc: Any) -> tuple[Header, int]:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise _JsonError(f'not a cpt image document (expected "format": "{FORMAT_NAME}")')
    version = doc.get("version")
    if not (
        isinstance(version, list)
        and len(version) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in version)
    ):
        raise _JsonError('"version": expected [major, minor]')
    major, minor = version
    _int_in(minor, "u16", "version[1]")
    if major != FORMAT_MAJOR:
        raise ImageVersionError(
            f"image format {major}.{minor} is not {FORMAT_MAJOR}.x: this cpt cannot encode it"
        )
    hdr = doc.get("header")
    if not isinstance(hdr, dict):
        raise _JsonError('"header": expected an object')
    header = record_from_json({**hdr, "record": "Header"}, "header")
    ps = header.page_size
    if ps < 512 or ps & (ps - 1):
        raise _JsonError(f"header.page_size: {ps} is not a power of two >= 512")
    return header, minor


def encode(doc: dict[str, Any], out: BinaryIO) -> None:
    """Write the image a ``decode`` document describes to a binary stream."""
    header, minor = _header(doc)
    sections = doc.get("sections")
    if not isinstance(sections, list):
        raise _JsonError('"sections": expected an array')
    _encode(header, "header")
    w = ImageWriter(out, header, minor=minor)
    for i, sec in enumerate(sections):
        _write_section(w, sec, f"sections[{i}]")
    w.close()


def load(f: IO[str]) -> dict[str, Any]:
    """Parse a JSON document from a text stream (errors become ImageError)."""
    try:
        doc = json.load(f)
    except json.JSONDecodeError as e:
        raise _JsonError(f"invalid JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise _JsonError(f"invalid JSON: not UTF-8 (byte {e.start})") from None
    except ValueError as e:  # a number of more than sys.get_int_max_str_digits() digits
        raise _JsonError(f"invalid JSON: {e}") from None
    except RecursionError:
        raise _JsonError("invalid JSON: arrays or objects nested too deeply") from None
    if not isinstance(doc, dict):
        raise _JsonError("not a cpt image document (expected an object)")
    return doc


__all__ = [
    "FORMAT_NAME",
    "decode",
    "decode_to",
    "encode",
    "iter_doc",
    "load",
    "record_from_json",
    "record_to_json",
]
