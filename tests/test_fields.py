"""The record codec: framing, version rules (SPEC.md section 4), bounds checks."""

from __future__ import annotations

import struct

import pytest

from cptimage import records as R
from cptimage.errors import ImageError
from cptimage.fields import (
    RECORD_HEADER_SIZE,
    REGISTRY,
    UnknownRecord,
    align8,
    decode_records,
    encode_records,
)


def _split(raw: bytes) -> tuple[int, int, int, bytes, bytes]:
    size, tag, fsize = struct.unpack_from("<IHH", raw)
    body = raw[RECORD_HEADER_SIZE:size]
    return size, tag, fsize, body[:fsize], body[fsize:]


def _frame(tag: int, fixed: bytes, var: bytes) -> bytes:
    size = RECORD_HEADER_SIZE + len(fixed) + len(var)
    return struct.pack("<IHH", size, tag, len(fixed)) + fixed + var + b"\0" * (align8(size) - size)


def test_align8() -> None:
    assert [align8(n) for n in (0, 1, 7, 8, 9, 16)] == [0, 8, 8, 8, 16, 16]


def test_records_are_8_aligned_and_sized() -> None:
    raw = R.Process(pid=1, comm="abc").encode()
    size, tag, fsize, _, _ = _split(raw)
    assert len(raw) % 8 == 0 and len(raw) == align8(size)
    assert tag == R.Process.TAG and fsize == R.Process.__codec__.fixed.size


def test_tags_live_in_their_section() -> None:
    for tag, codec in REGISTRY.items():
        sec = R.section_of_tag(tag)
        assert sec == 0 or sec in R.SectionType._value2member_map_, codec.name


def test_shorter_fixed_part_zero_fills() -> None:
    """An older minor version wrote fewer fixed fields: the rest read as zero."""
    rec = R.Process(pid=7, ppid=3, pgid=7, sid=7, state=1, exit_status=5, comm="x")
    _, tag, _, fixed, var = _split(rec.encode())
    (back,) = decode_records(_frame(tag, fixed[:8], var))
    assert (back.pid, back.ppid, back.pgid, back.state, back.exit_status) == (7, 3, 0, 0, 0)
    assert back.comm == "x"


def test_missing_var_fields_take_defaults() -> None:
    rec = R.Process(pid=7, nspid=[7, 1], comm="x")
    _, tag, _, fixed, var = _split(rec.encode())
    (back,) = decode_records(_frame(tag, fixed, var[:12]))  # nspid only
    assert back.nspid == [7, 1] and back.comm == "" and back.nssid == []


def test_longer_record_keeps_the_extension() -> None:
    """A newer minor version appended fields: parsed, and the extra bytes kept."""
    rec = R.Fd(pid=1, fd=2, file_id=3, flags=1)
    _, tag, _, fixed, var = _split(rec.encode())
    raw = _frame(tag, fixed + b"\x01\x02\x03\x04", var + b"\xaa\xbb")
    (back,) = decode_records(raw)
    assert back == rec
    assert back._ext == (b"\x01\x02\x03\x04", b"\xaa\xbb")
    assert back.encode() == raw


def test_longer_items_keep_their_extension() -> None:
    rec = R.Rlimits(pid=1, limits=[R.Rlimit(1, 2, 3), R.Rlimit(4, 5, 6)])
    _, tag, _, fixed, var = _split(rec.encode())
    count, esize, _ = struct.unpack_from("<IHH", var)
    items = [var[8 + i * esize : 8 + (i + 1) * esize] + b"\x09\x09" for i in range(count)]
    raw = _frame(tag, fixed, struct.pack("<IHH", count, esize + 2, 0) + b"".join(items))
    (back,) = decode_records(raw)
    assert back == rec and back.limits[1]._ext == b"\x09\x09"
    assert back.encode() == raw


def test_shorter_items_zero_fill() -> None:
    rec = R.Rlimits(pid=1, limits=[R.Rlimit(1, 2, 3)])
    _, tag, _, fixed, _ = _split(rec.encode())
    var = struct.pack("<IHH", 1, 4, 0) + struct.pack("<I", 9)
    (back,) = decode_records(_frame(tag, fixed, var))
    assert back.limits == [R.Rlimit(9, 0, 0)]


def test_items_of_size_zero_are_refused() -> None:
    """count * 0 bytes would pass the bounds check and loop count times."""
    _, tag, _, fixed, _ = _split(R.Rlimits(pid=1).encode())
    with pytest.raises(ImageError, match="size 0"):
        decode_records(_frame(tag, fixed, struct.pack("<IHH", 0xFFFFFFFF, 0, 0)))


@pytest.mark.parametrize(
    "var",
    [
        struct.pack("<I", 100) + b"ab",  # text longer than the record
        struct.pack("<I", 0x40000000),  # u32s count beyond the record
    ],
)
def test_var_part_overruns_are_errors(var: bytes) -> None:
    _, tag, _, fixed, _ = _split(R.Process(pid=1).encode())
    with pytest.raises(ImageError):
        decode_records(_frame(tag, fixed, var))


@pytest.mark.parametrize(
    "raw",
    [
        b"\x10\x00\x00\x00",  # header truncated
        struct.pack("<IHH", 4, 0x0101, 0) + b"\0" * 8,  # size below the header
        struct.pack("<IHH", 64, 0x0101, 0) + b"\0" * 8,  # size past the payload
        struct.pack("<IHH", 16, 0x0101, 40) + b"\0" * 8,  # fixed part past the record
    ],
)
def test_bad_framing_is_an_error(raw: bytes) -> None:
    with pytest.raises(ImageError):
        decode_records(raw)


def test_unknown_tag_is_kept_raw() -> None:
    raw = _frame(0x01FE, b"\1\2\3\4", b"zz")
    (rec,) = decode_records(raw)
    assert isinstance(rec, UnknownRecord) and rec.tag == 0x01FE
    assert encode_records([rec]) == raw


def test_out_of_range_values_cannot_be_encoded() -> None:
    with pytest.raises(ImageError, match="Fd"):
        R.Fd(pid=-1).encode()
    with pytest.raises(ImageError, match="comm"):
        R.Process(comm=5).encode()  # type: ignore[arg-type]
