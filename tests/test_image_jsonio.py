"""The JSON form: decode -> encode is byte-identical, on generated images too."""

from __future__ import annotations

import dataclasses
import io
import json
import struct
from typing import Any

import pytest
import samples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_image_records import record_strategy, records_of_section

from cptimage import jsonio
from cptimage import records as R
from cptimage.container import FORMAT_MINOR, ImageReader, ImageWriter
from cptimage.errors import ImageError, ImageVersionError
from cptimage.fields import UnknownRecord

RECORD_SECTIONS = [t for t in R.SectionType if t not in (R.SectionType.PAGES, R.SectionType.INDEX)]


def _round_trip(raw: bytes) -> bytes:
    text = io.StringIO()
    jsonio.decode_to(io.BytesIO(raw), text)
    doc = json.loads(text.getvalue())
    assert doc == jsonio.decode(io.BytesIO(raw))
    out = io.BytesIO()
    jsonio.encode(doc, out)
    return out.getvalue()


@st.composite
def images(draw: st.DrawFn) -> bytes:
    """A random image: random records in random sections, pages, compression on or off."""
    header = dataclasses.replace(draw(record_strategy(R.Header)), page_size=4096)
    buf = io.BytesIO()
    w = ImageWriter(
        buf,
        header,
        compress_records=draw(st.booleans()),
        compress_pages=draw(st.booleans()),
        level=draw(st.sampled_from([1, 3, 19])),
        block_size=draw(st.sampled_from([4096, 3 * 4096, 1 << 20])),
    )
    for _ in range(draw(st.integers(0, 5))):
        stype = draw(st.sampled_from(RECORD_SECTIONS))
        w.add_section(stype, draw(st.lists(records_of_section(stype), max_size=5)))
        if draw(st.booleans()):
            w.write_pages(draw(st.binary(min_size=1, max_size=3 * 4096)))
    w.close()
    return buf.getvalue()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(images())
def test_generated_images_round_trip_byte_identical(raw: bytes) -> None:
    assert _round_trip(raw) == raw


@pytest.mark.parametrize("name", sorted(samples.GOLDENS))
def test_samples_round_trip(name: str) -> None:
    buf = io.BytesIO()
    samples.GOLDENS[name](buf)
    assert _round_trip(buf.getvalue()) == buf.getvalue()


def _newer_minor_image() -> bytes:
    """What a writer of a newer minor version could produce: an unknown section, an unknown tag, _ext bytes."""
    fd = R.Fd(pid=1, fd=0, file_id=1)
    fd._ext = (b"\x07\0\0\0", b"\x03\0\0\0abc")  # type: ignore[attr-defined]
    lim = R.Rlimits(pid=1, limits=[R.Rlimit(1, 2, 3)])
    lim.limits[0]._ext = b"\x01\x02"  # type: ignore[attr-defined]
    unknown = UnknownRecord(0x06F0, struct.pack("<IHH", 20, 0x06F0, 4) + b"\1\2\3\4" + b"later")
    buf = io.BytesIO()
    with ImageWriter(buf, samples.header(), minor=FORMAT_MINOR + 1, compress_records=True) as w:
        w.add_section(R.SectionType.PROCESS, [lim])
        w.add_section(R.SectionType.FDS, [fd, unknown], compress=False)
        w.add_raw_section(0x7A, 1, b"future payload\0\0", count=3, compression=1, level=7)
    return buf.getvalue()


def test_newer_minor_extensions_survive_the_round_trip() -> None:
    raw = _newer_minor_image()
    doc = jsonio.decode(io.BytesIO(raw))
    assert doc["version"] == [1, FORMAT_MINOR + 1]
    fds = doc["sections"][1]["records"]
    assert fds[0]["_ext"] == ["07000000", "03000000616263"]
    assert fds[1]["record"] is None and fds[1]["tag"] == 0x06F0
    assert doc["sections"][0]["records"][0]["limits"][0]["_ext"] == "0102"
    assert doc["sections"][2] == {
        "type": 0x7A,
        "version": 1,
        "compression": "zstd",
        "level": 7,
        "count": 3,
        "data": "ZnV0dXJlIHBheWxvYWQAAA==",
    }
    assert _round_trip(raw) == raw


def test_decode_checks_checksums_and_digest() -> None:
    buf = io.BytesIO()
    samples.tree_image(buf)
    raw = bytearray(buf.getvalue())
    with ImageReader(io.BytesIO(bytes(raw))) as r:
        off = r.sections_of(R.SectionType.MM)[0].payload_offset
    raw[off + 9] ^= 1
    with pytest.raises(ImageError, match="checksum"):
        jsonio.decode(io.BytesIO(bytes(raw)))
    raw[off + 9] ^= 1
    raw[-20] ^= 1  # the digest itself
    with pytest.raises(ImageError, match="digest"):
        jsonio.decode(io.BytesIO(bytes(raw)))


def _doc() -> dict[str, Any]:
    buf = io.BytesIO()
    samples.tree_image(buf)
    return jsonio.decode(io.BytesIO(buf.getvalue()))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format="other"), "not a cpt image document"),
        (lambda d: d.update(version=[1]), "version"),
        (lambda d: d["sections"].append({"type": "NOPE"}), "unknown section type 'NOPE'"),
        (
            lambda d: d["sections"][0]["records"][0].update(pid="x"),
            r"sections\[0\].records\[0\].pid",
        ),
        (lambda d: d["sections"][0]["records"][0].update(state="DEAD"), "not a ProcessState"),
        (lambda d: d["sections"][0]["records"][0].update(bogus=1), "no field 'bogus'"),
        (lambda d: d["sections"][0]["records"][0].update(pid=2**40), "cannot encode Process"),
        (lambda d: d["sections"][0]["records"][3].update(regs="***"), "base64"),
        (lambda d: d["sections"][0]["records"][0].update(record="Nope"), "unknown record type"),
        (lambda d: d["header"].update(uuid="zz"), "hex"),
        (lambda d: d["sections"][0].update(compression="lz4"), "compression"),
    ],
)
def test_bad_documents_are_image_errors(mutate: Any, message: str) -> None:
    doc = _doc()
    mutate(doc)
    with pytest.raises(ImageError, match=message):
        jsonio.encode(doc, io.BytesIO())


def test_newer_major_document_is_refused() -> None:
    doc = _doc()
    doc["version"] = [2, 0]
    with pytest.raises(ImageVersionError):
        jsonio.encode(doc, io.BytesIO())


def test_load_rejects_invalid_json() -> None:
    with pytest.raises(ImageError, match="invalid JSON"):
        jsonio.load(io.StringIO("{nope"))
