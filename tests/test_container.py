"""The container: writer, random-access reader, sequential walk, version rules."""

from __future__ import annotations

import fcntl
import io
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import samples

from cptimage import records as R
from cptimage.atomic import AtomicFile, atomic_output, check_target
from cptimage.container import (
    FORMAT_MINOR,
    ImageReader,
    ImageWriter,
    PageArea,
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


def _pages_image(f: io.BufferedIOBase, block: int, area: PageArea | None, mode: str) -> None:
    """Ten pages (and a record section after them) written the way `mode` says: "claim"
    (read into the area in place, as a dump does) or "write" (write_pages)."""
    data = samples.pattern(5, 10 * PAGE)
    w = ImageWriter(f, samples.header(), block_size=block, area=area)  # type: ignore[arg-type]
    for i in range(10):
        page = data[i * PAGE : (i + 1) * PAGE]
        if mode == "claim" and w.page_room():
            pos, view = w.claim_pages(PAGE)
            assert pos == i * PAGE
            view[:] = page
            view.release()
        else:
            assert w.write_pages(page) == i * PAGE
    w.add_section(R.SectionType.PROCESS, [R.Process(pid=100, ppid=1, pgid=100, sid=100)])
    w.close()


@pytest.mark.parametrize("block", [3 * PAGE, 16 * PAGE])
@pytest.mark.parametrize("capacity", [0, 4 * PAGE, 10 * PAGE, 40 * PAGE])
@pytest.mark.parametrize("mode", ["claim", "write"])
def test_page_area_writes_the_bytes_the_stream_writes(
    tmp_path: Path, block: int, capacity: int, mode: str
) -> None:
    """Page data placed in the file first, its headers and checksums filled in after: the
    same file, byte for byte, as the streaming writer's, whether the area was sized right,
    too large (the file is cut) or too small (it grows)."""
    streamed = io.BytesIO()
    _pages_image(streamed, block, None, "write")
    path = tmp_path / "area.img"
    with open(path, "w+b") as f:
        area = PageArea(f.fileno(), capacity, page_size=PAGE, block_size=block)
        _pages_image(f, block, area, mode)
        assert not area.segments, "the writer unmaps the area when it seals it"
    assert path.read_bytes() == streamed.getvalue()
    with ImageReader(path) as r:
        assert r.read_pages(0, 10 * PAGE) == samples.pattern(5, 10 * PAGE)
        assert all(b.payload_offset % PAGE == 0 for b in r.page_blocks())


def test_page_area_is_dropped_where_it_cannot_serve(tmp_path: Path) -> None:
    """Compressed pages are streamed: the area is discarded, the file emptied first."""
    path = tmp_path / "z.img"
    with open(path, "w+b") as f:
        area = PageArea(f.fileno(), 8 * PAGE, page_size=PAGE, block_size=4 * PAGE)
        w = ImageWriter(f, samples.header(), compress_pages=True, area=area)  # type: ignore[arg-type]
        assert w.page_room() == 0 and not area.segments
        w.write_pages(bytes(8 * PAGE))
        w.close()
    with ImageReader(path) as r:
        assert r.read_pages(0, 8 * PAGE) == bytes(8 * PAGE)
        assert {b.compression for b in r.page_blocks()} == {R.Compression.ZSTD}


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
        match=r"image format 2\.3 is newer than this cpt reads \(1\.7\): upgrade cpt",
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
        w.add_raw_section(0x7A, 1, R.Fd(pid=1).encode(), count=1, compression=0)
    return buf.getvalue()


def test_unknown_section_of_a_newer_minor_is_skipped_with_a_warning(tmp_path: Path) -> None:
    with ImageReader(_write(tmp_path, _with_unknown_section(FORMAT_MINOR + 1))) as r:
        assert [s.type for s in r.sections] == [R.SectionType.PROCESS]
        assert len(r.warnings) == 1 and "0x007a" in r.warnings[0]
        assert r.records(R.SectionType.PROCESS) == [R.Process(pid=1, state=1)]


def test_unknown_section_of_the_current_minor_is_corruption(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="unknown section type 0x007a"):
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
        assert list(tmp_path.iterdir()) == [], "unnamed (O_TMPFILE) until it is complete"
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


def test_atomic_output_of_a_killed_writer_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "out.img"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a writer killed half-way (SIGKILL: no unwinding)
        try:
            af = AtomicFile(dest)
            af.file.write(b"x" * 65536)
            af.file.flush()
            os.write(w, b"k")
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"k"
    os.close(r)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_sweeps_the_named_temp_file_of_a_dead_writer(tmp_path: Path) -> None:
    dest = tmp_path / "out.img"
    dead = tmp_path / ".out.img.0123456789ab.tmp"  # a filesystem without O_TMPFILE's
    dead.write_bytes(b"memory of a killed dump")
    live = tmp_path / ".out.img.ba9876543210.tmp"  # one whose writer holds its flock
    live.write_bytes(b"in progress")
    with open(live, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with atomic_output(dest) as f:
            f.write(b"new")
        assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "out.img"]
    assert dest.read_bytes() == b"new"


def test_atomic_output_replaces_a_symlink_never_its_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (tmp_path / "dir").mkdir()
    for target in (victim, tmp_path / "dir", Path("/dev/null")):
        link = tmp_path / "out.img"
        link.unlink(missing_ok=True)
        link.symlink_to(target)
        with atomic_output(link) as f:
            f.write(b"new")
        assert not link.is_symlink() and link.read_bytes() == b"new"
    assert victim.read_bytes() == b"keep me" and (tmp_path / "dir").is_dir()


@pytest.mark.parametrize("kind", ["dir", "fifo"])
def test_atomic_output_refuses_a_directory_or_fifo(tmp_path: Path, kind: str) -> None:
    dest = tmp_path / "out.img"
    dest.mkdir() if kind == "dir" else os.mkfifo(dest)
    with pytest.raises(FileExistsError, match="not a regular file"):
        check_target(str(dest))
