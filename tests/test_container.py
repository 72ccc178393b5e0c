"""The container: writer, random-access reader, sequential walk, version rules."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import samples

from cptimage import records as R
from cptimage.atomic import atomic_output
from cptimage.container import (
    FORMAT_MINOR,
    ImageReader,
    ImageWriter,
    StreamedSection,
    StreamedTrailer,
    walk,
)
from cptimage.errors import ImageError, ImageVersionError

PAGE = 4096


def _image() -> bytes:
    buf = io.BytesIO()
    samples.tree_image(buf)
    return buf.getvalue()


def _write(tmp_path: Path, data: bytes, name: str = "x.img") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_reader_reads_what_the_writer_wrote(tmp_path: Path) -> None:
    with ImageReader(_write(tmp_path, _image())) as r:
        assert r.header == samples.header()
        procs = [p for p in r.records(R.SectionType.PROCESS) if isinstance(p, R.Process)]
        assert [p.pid for p in procs] == [100, 101, 103]
        assert r.page_data_len == 10 * PAGE
        assert r.read_pages(0, 2 * PAGE) == samples.pattern(100, 2 * PAGE)


def test_pages_span_blocks_and_map_in_place(tmp_path: Path) -> None:
    buf = io.BytesIO()
    data = samples.pattern(5, 10 * PAGE)
    with ImageWriter(buf, samples.header(), block_size=3 * PAGE) as w:
        for i in range(10):
            assert w.write_pages(data[i * PAGE : (i + 1) * PAGE]) == i * PAGE
    raw = buf.getvalue()
    with ImageReader(_write(tmp_path, raw)) as r:
        blocks = r.page_blocks()
        assert len(blocks) == 4 and [b.base for b in blocks] == [0, 3 * PAGE, 6 * PAGE, 9 * PAGE]
        assert all(b.payload_offset % PAGE == 0 for b in blocks)
        assert r.read_pages(PAGE, 8 * PAGE) == data[PAGE : 9 * PAGE]
        pieces = r.page_file_ranges(2 * PAGE, 3 * PAGE)
        assert pieces is not None
        assert b"".join(raw[o : o + n] for o, n in pieces) == data[2 * PAGE : 5 * PAGE]


def test_compressed_pages(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with ImageWriter(buf, samples.header(), compress_pages=True, level=5) as w:
        w.write_pages(bytes(8 * PAGE))
    with ImageReader(_write(tmp_path, buf.getvalue())) as r:
        (blk,) = r.page_blocks()
        assert blk.compression == R.Compression.ZSTD and blk.payload_len < PAGE
        assert r.read_pages(PAGE, PAGE) == bytes(PAGE)
        assert r.page_file_ranges(0, PAGE) is None


def test_writer_never_seeks_and_walk_reads_a_pipe() -> None:
    """Write through a pipe to a child, walk a pipe back: no seek anywhere."""
    raw = _image()
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read())"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdin is not None and child.stdout is not None
    samples.tree_image(child.stdin)  # a pipe: seek() would raise
    child.stdin.close()
    events = list(walk(child.stdout))
    child.wait()
    assert events[0][0] == "preamble" and events[-1][0] == "trailer"
    sections = [v for k, v in events if k == "section"]
    assert all(isinstance(s, StreamedSection) for s in sections)
    assert all(s.computed_checksum == s.info.checksum for s in sections)
    trailer = events[-1][1]
    assert isinstance(trailer, StreamedTrailer)
    assert trailer.digest == trailer.computed_digest and trailer.end == len(raw)
    assert trailer.extra == 0


def test_walk_page_sink_streams_pages() -> None:
    raw = _image()
    got: list[bytes] = []
    events = list(
        walk(io.BytesIO(raw), page_sink=lambda i, mv: got.append(bytes(mv)), chunk_size=PAGE)
    )
    pages = [v for k, v in events if k == "section" and v.info.type == R.SectionType.PAGES]
    assert pages[0].stored == b"" and pages[0].computed_checksum == pages[0].info.checksum
    with ImageReader(io.BytesIO(raw)) as r:
        assert b"".join(got) == r.read_pages(0, r.page_data_len)


def test_reader_refuses_a_stream() -> None:
    r, w = os.pipe()
    with os.fdopen(r, "rb") as f, pytest.raises(ImageError, match="not seekable"):
        os.close(w)
        ImageReader(f)


def test_newer_major_is_refused_with_the_message(tmp_path: Path) -> None:
    raw = bytearray(_image())
    struct.pack_into("<HH", raw, 8, 2, 3)
    with pytest.raises(
        ImageVersionError,
        match=r"image format 2\.3 is newer than this cpt reads \(1\.2\): upgrade cpt",
    ):
        ImageReader(_write(tmp_path, bytes(raw)))


def test_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not a cpt image") as e:
        ImageReader(_write(tmp_path, b"hello world, this is text" * 4))
    assert not isinstance(e.value, ImageVersionError)  # exit 40, not 41
    with pytest.raises(ImageError, match="cannot open"):
        ImageReader(tmp_path / "missing.img")


def _with_unknown_section(minor: int) -> bytes:
    buf = io.BytesIO()
    with ImageWriter(buf, samples.header(), minor=minor) as w:
        w.add_section(R.SectionType.PROCESS, [R.Process(pid=1, state=1)])
        w.add_raw_section(0x0A, 1, R.Fd(pid=1).encode(), count=1, compression=0)
    return buf.getvalue()


def test_unknown_section_of_a_newer_minor_is_skipped_with_a_warning(tmp_path: Path) -> None:
    with ImageReader(_write(tmp_path, _with_unknown_section(FORMAT_MINOR + 1))) as r:
        assert [s.type for s in r.sections] == [R.SectionType.PROCESS]
        assert len(r.warnings) == 1 and "0x000a" in r.warnings[0]
        assert r.records(R.SectionType.PROCESS) == [R.Process(pid=1, state=1)]


def test_unknown_section_of_the_current_minor_is_corruption(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="unknown section type 0x000a"):
        ImageReader(_write(tmp_path, _with_unknown_section(FORMAT_MINOR)))


def test_checksum_is_checked_on_every_read(tmp_path: Path) -> None:
    raw = bytearray(_image())
    with ImageReader(io.BytesIO(bytes(raw))) as r:
        proc = r.sections_of(R.SectionType.PROCESS)[0]
    raw[proc.payload_offset + 3] ^= 0x40
    with (
        ImageReader(_write(tmp_path, bytes(raw))) as r,
        pytest.raises(ImageError, match="checksum"),
    ):
        r.records(R.SectionType.PROCESS)


@pytest.mark.parametrize("cut", [-1, -40, 100])
def test_truncation_and_appended_data(tmp_path: Path, cut: int) -> None:
    raw = _image()
    with pytest.raises(ImageError):
        ImageReader(_write(tmp_path, raw[:cut]))
    with pytest.raises(ImageError):
        ImageReader(_write(tmp_path, raw + b"\0" * abs(cut)))


def test_page_size_must_be_a_power_of_two() -> None:
    with pytest.raises(ImageError, match="page size"):
        ImageWriter(io.BytesIO(), samples.header(page_size=5000))


# --------------------------------------------------------------------------- atomic output


def test_atomic_output_appears_complete_with_mode_0600(tmp_path: Path) -> None:
    dest = tmp_path / "out.img"
    with atomic_output(dest) as f:
        f.write(b"partial")
        assert not dest.exists()
        assert next(p.name for p in tmp_path.iterdir()).endswith(".tmp")
    assert dest.read_bytes() == b"partial"
    assert dest.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["out.img"]


def test_atomic_output_failure_leaves_the_old_file(tmp_path: Path) -> None:
    dest = tmp_path / "out.img"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_output(dest) as f:
        f.write(b"new")
        raise RuntimeError("boom")
    assert dest.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.img"]


def test_atomic_output_mode(tmp_path: Path) -> None:
    with atomic_output(tmp_path / "a.json", mode=0o644) as f:
        f.write(b"{}")
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
