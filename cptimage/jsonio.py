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
    parse_header_record,
    walk,
)
from .errors import ImageError, ImageVersionError
from .fields import BY_NAME, REGISTRY, FixedSpec, UnknownRecord, VarSpec, decode_records, fields_of
from .records import Compression, Header, SectionType

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
    try:
        return bytes.fromhex(s)
    except (TypeError, ValueError) as e:
        raise _JsonError(f"{where}: invalid hex ({e})") from None


def _fixed_out(spec: FixedSpec, v: Any) -> Any:
    if spec.is_bytes:
        return bytes(v).hex()
    if spec.enum is not None and v in spec.enum._value2member_map_:
        return spec.enum(v).name
    return v


def _fixed_in(spec: FixedSpec, v: Any, where: str) -> Any:
    if spec.is_bytes:
        return _unhex(v, where)
    if isinstance(v, str) and spec.enum is not None:
        try:
            return spec.enum[v].value
        except KeyError:
            raise _JsonError(f"{where}: {v!r} is not a {spec.enum.__name__}") from None
    if not isinstance(v, int) or isinstance(v, bool):
        raise _JsonError(f"{where}: expected an integer, got {v!r}")
    return v


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
            raise _JsonError(f"{where}: {cls.__name__} has no field {k!r}")
        kw[k] = _fixed_in(spec, v, f"{where}.{k}")
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


def _var_in(spec: VarSpec, v: Any, where: str) -> Any:
    k = spec.kind
    if k == "blob":
        return _unb64(v, where)
    if not isinstance(v, list if k != "text" else str):
        raise _JsonError(f"{where}: expected {'text' if k == 'text' else 'an array'}")
    if k == "blobs":
        return [_unb64(b, f"{where}[{i}]") for i, b in enumerate(v)]
    if k == "items":
        assert spec.item is not None
        return [_item_in(spec.item, d, f"{where}[{i}]") for i, d in enumerate(v)]
    return v


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
        return UnknownRecord(tag, raw)
    codec = BY_NAME.get(name) if isinstance(name, str) else None
    if codec is None:
        raise _JsonError(f"{where}: unknown record type {name!r}")
    specs = dict(fields_of(codec.cls))
    kw = {}
    for k, v in d.items():
        if k in ("record", "_ext"):
            continue
        spec = specs.get(k)
        if spec is None:
            raise _JsonError(f"{where}: {name} has no field {k!r}")
        at = f"{where}.{k}"
        kw[k] = _fixed_in(spec, v, at) if isinstance(spec, FixedSpec) else _var_in(spec, v, at)
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
        try:
            return open(path, "rb"), path, True  # closed by iter_doc
        except OSError as e:
            raise ImageError(f"cannot open: {e.strerror}", path=path) from None
    name = getattr(src, "name", None)
    return src, name if isinstance(name, str) else None, False


def iter_doc(src: Source) -> Iterator[dict[str, Any]]:
    """The document's head (format, version, header), then one object per section."""
    f, path, own = _open(src)
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


def decode_to(src: Source, out: IO[str]) -> None:
    """Write the JSON document to a text stream, one section (and one record) per line."""
    parts = iter_doc(src)
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
            raise _JsonError(f"{where}.type: unknown section type {v!r}") from None
    if isinstance(v, int) and not isinstance(v, bool) and 0 < v < 0xFFFF:
        return v
    raise _JsonError(f"{where}.type: expected a section type name or number")


def _int(d: dict[str, Any], key: str, where: str, default: int | None = None) -> int:
    v = d.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise _JsonError(f"{where}.{key}: expected a non-negative integer")
    return v


def _write_section(w: ImageWriter, sec: Any, where: str) -> None:
    if not isinstance(sec, dict):
        raise _JsonError(f"{where}: expected an object")
    stype = _section_type(sec.get("type"), where)
    if stype == SectionType.INDEX:
        raise _JsonError(f"{where}: the index is derived, not part of the JSON form")
    comp = _COMPRESSION.get(sec.get("compression", "none"))
    if comp is None:
        raise _JsonError(f"{where}.compression: expected 'none' or 'zstd'")
    version = _int(sec, "version", where, 1)
    level = _int(sec, "level", where, 0)
    if "records" in sec:
        recs = sec["records"]
        if not isinstance(recs, list):
            raise _JsonError(f"{where}.records: expected an array")
        payload = b"".join(
            record_from_json(r, f"{where}.records[{i}]").encode() for i, r in enumerate(recs)
        )
        count = len(recs)
    else:
        payload = _unb64(sec.get("data"), f"{where}.data")
        count = 0 if stype == SectionType.PAGES else _int(sec, "count", where)
    base = _int(sec, "base", where, 0)
    w.add_raw_section(
        stype, version, payload, count=count, compression=comp, level=level, base=base
    )


def _header(doc: Any) -> tuple[Header, int]:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise _JsonError(f'not a cpt image document (expected "format": "{FORMAT_NAME}")')
    version = doc.get("version")
    if not (
        isinstance(version, list) and len(version) == 2 and all(isinstance(v, int) for v in version)
    ):
        raise _JsonError('"version": expected [major, minor]')
    major, minor = version
    if major != FORMAT_MAJOR:
        raise ImageVersionError(
            f"image format {major}.{minor} is not {FORMAT_MAJOR}.x: this cpt cannot encode it"
        )
    hdr = doc.get("header")
    if not isinstance(hdr, dict):
        raise _JsonError('"header": expected an object')
    header = record_from_json({**hdr, "record": "Header"}, "header")
    return header, minor


def encode(doc: dict[str, Any], out: BinaryIO) -> None:
    """Write the image a ``decode`` document describes to a binary stream."""
    header, minor = _header(doc)
    sections = doc.get("sections")
    if not isinstance(sections, list):
        raise _JsonError('"sections": expected an array')
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
