"""verify: every corruption is reported, structure is checked, nothing else ever raises.

The corruption cases run thousands of generated mutations of real images through the
random-access reader (and the show/pagestore tools on top of it) and through verify:
the reader may only raise ImageError, verify may only return Problems, and verify must
report at least one problem whenever a byte of the file changed.
"""

from __future__ import annotations

import dataclasses
import io
import os
import struct
import threading
from collections.abc import Callable
from typing import Any

import pytest
import samples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cptimage import pagestore, show
from cptimage import records as R
from cptimage.container import (
    FORMAT_MINOR,
    SECTION_HEADER_SIZE,
    TRAILER_SIZE,
    ImageReader,
    ImageWriter,
    walk,
)
from cptimage.errors import ImageError, ImageVersionError
from cptimage.fields import UnknownRecord
from cptimage.verify import Problem, verify, verify_report

PAGE = 4096
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _bytes(build: Callable[[io.BytesIO], None]) -> bytes:
    buf = io.BytesIO()
    build(buf)
    return buf.getvalue()


PLAIN = _bytes(samples.tree_image)
ZSTD = _bytes(lambda f: samples.tree_image(f, variant=1, compress=True))
BASES = {"plain": PLAIN, "zstd": ZSTD}


def _exercise_reader(raw: bytes) -> None:
    """Everything a reader-side tool does with an image; only ImageError may escape."""
    try:
        with ImageReader(io.BytesIO(raw)) as r:
            r.all_records()
            for blk in r.page_blocks():
                r.read_pages(blk.base, blk.raw_len)
            summary = show.summary(r)
            for p in summary["processes"]:
                show.maps(r, p["pid"])
                show.fds(r, p["pid"])
            pagestore.vma_digests(r)
    except ImageError:
        pass


def _check_corrupted(raw: bytes) -> list[Problem]:
    _exercise_reader(raw)
    try:
        problems = verify(io.BytesIO(raw))
    except ImageVersionError:
        # the major version field changed: refused, as a newer image would be
        assert raw[8:10] != b"\x01\x00"
        return []
    assert problems, "a changed byte went unnoticed"
    assert all(isinstance(p, Problem) and str(p) for p in problems)
    return problems


# --------------------------------------------------------------------------- corruption


@FUZZ
@given(
    base=st.sampled_from(sorted(BASES)),
    where=st.floats(0, 1, exclude_max=True),
    xor=st.integers(1, 255),
)
def test_flipped_byte(base: str, where: float, xor: int) -> None:
    raw = bytearray(BASES[base])
    raw[int(where * len(raw))] ^= xor
    _check_corrupted(bytes(raw))


@FUZZ
@given(
    base=st.sampled_from(sorted(BASES)),
    where=st.floats(0, 1, exclude_max=True),
    junk=st.binary(min_size=1, max_size=64),
)
def test_overwritten_bytes(base: str, where: float, junk: bytes) -> None:
    raw = bytearray(BASES[base])
    at = int(where * len(raw))
    old = raw[at : at + len(junk)]
    raw[at : at + len(junk)] = junk[: len(old)]
    if raw != BASES[base]:
        _check_corrupted(bytes(raw))


def _boundaries(raw: bytes) -> list[int]:
    """Every region edge of the file: preamble, each section header and payload, trailer."""
    cuts = {0, 8, 16, len(raw) - TRAILER_SIZE, len(raw) - 16, len(raw) - 8, len(raw) - 1}
    for kind, v in walk(io.BytesIO(raw)):
        if kind == "section":
            i = v.info
            cuts |= {
                i.offset,
                i.offset + 4,
                i.offset + SECTION_HEADER_SIZE - 1,
                i.payload_offset,
                i.payload_offset + i.payload_len // 2,
                i.end - 1,
            }
    return sorted(c for c in cuts if 0 <= c < len(raw))


@pytest.mark.parametrize("base", sorted(BASES))
def test_truncation_at_every_region(base: str) -> None:
    raw = BASES[base]
    for cut in _boundaries(raw):
        for n in {cut, min(cut + 1, len(raw) - 1)}:
            _check_corrupted(raw[:n])


@FUZZ
@given(base=st.sampled_from(sorted(BASES)), where=st.floats(0, 1, exclude_max=True))
def test_truncation_anywhere(base: str, where: float) -> None:
    raw = BASES[base]
    _check_corrupted(raw[: int(where * len(raw))])


@settings(max_examples=100, deadline=None)
@given(base=st.sampled_from(sorted(BASES)), junk=st.binary(min_size=1, max_size=300))
def test_appended_garbage(base: str, junk: bytes) -> None:
    problems = _check_corrupted(BASES[base] + junk)
    assert any("appended" in p.message or "trailer" in p.section for p in problems)


# section header fields: (offset, struct format)
_HEADER_FIELDS = {
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


def _section_offsets(raw: bytes) -> list[int]:
    return [v.info.offset for k, v in walk(io.BytesIO(raw)) if k == "section"]


@FUZZ
@given(
    base=st.sampled_from(sorted(BASES)),
    which=st.integers(0, 50),
    field=st.sampled_from(sorted(_HEADER_FIELDS)),
    value=st.integers(0, 2**64 - 1),
)
def test_wrong_section_header_fields(base: str, which: int, field: str, value: int) -> None:
    raw = bytearray(BASES[base])
    offsets = _section_offsets(bytes(raw))
    at, fmt = _HEADER_FIELDS[field]
    pos = offsets[which % len(offsets)] + at
    value %= 1 << (8 * struct.calcsize(fmt))
    old = bytes(raw)
    struct.pack_into(fmt, raw, pos, value)
    if bytes(raw) != old:
        _check_corrupted(bytes(raw))


def _sealed(stype: int, payload: bytes, count: int) -> bytes:
    """An image whose checksums and digest are right but whose payload is what we say."""
    buf = io.BytesIO()
    with ImageWriter(buf, samples.header()) as w:
        w.add_raw_section(stype, 1, payload, count=count, compression=0)
    return buf.getvalue()


_PAYLOADS = {
    st_: b"".join(r.encode() for r in recs)
    for st_, recs in {
        R.SectionType.PROCESS: samples._Tree(0).process(),
        R.SectionType.MM: samples._Tree(0).mm(),
        R.SectionType.FILES: samples._Tree(0).files(),
    }.items()
}


@FUZZ
@given(
    stype=st.sampled_from(sorted(_PAYLOADS)),
    where=st.floats(0, 1, exclude_max=True),
    value=st.integers(0, 2**32 - 1),
    width=st.sampled_from(["<B", "<H", "<I"]),
)
def test_wrong_lengths_and_counts_inside_sealed_records(
    stype: int, where: float, value: int, width: str
) -> None:
    """Record sizes, fixed sizes, var-part lengths and counts: past the checksums."""
    payload = bytearray(_PAYLOADS[stype])
    at = min(int(where * len(payload)), len(payload) - struct.calcsize(width))
    struct.pack_into(width, payload, at, value % (1 << (8 * struct.calcsize(width))))
    raw = _sealed(stype, bytes(payload), count=0)
    _exercise_reader(raw)
    report = verify_report(io.BytesIO(raw))
    assert all(isinstance(p, Problem) for p in report.problems)


# --------------------------------------------------------------------------- structure


def _base() -> dict[int, list[Any]]:
    """A minimal valid image's records: a root with one child, threads, VMAs, files."""
    return {
        R.SectionType.PROCESS: [
            R.Process(pid=10, ppid=0, state=R.ProcessState.ALIVE, comm="root"),
            R.Process(pid=11, ppid=10, state=R.ProcessState.ALIVE, comm="child"),
            R.Thread(pid=10, tid=10, regs=bytes(216), fpregs=bytes(512)),
            R.Thread(pid=11, tid=11, regs=bytes(216), fpregs=bytes(512)),
            R.TaskState(pid=10, cwd_id=1, root_id=1),
        ],
        R.SectionType.MM: [
            R.Vma(pid=10, kind=R.VmaKind.ANON, prot=3, start=0x1000, end=0x3000),
            R.Vma(pid=10, kind=R.VmaKind.FILE_PRIVATE, prot=5, start=0x4000, end=0x5000, file_id=1),
            R.Vma(pid=11, kind=R.VmaKind.ANON, prot=3, start=0x1000, end=0x2000),
        ],
        R.SectionType.FILES: [
            R.PathObj(id=1, kind=R.PathKind.REG, path="/bin/x"),
            R.RegFile(id=1, path_id=1),
        ],
        R.SectionType.FDS: [R.Fd(pid=10, fd=0, file_id=1), R.Fd(pid=11, fd=0, file_id=1)],
        R.SectionType.PAGEMAP: [
            R.PagemapRun(
                owner_kind=1,
                flags=R.PageFlags.PRESENT,
                owner=10,
                vaddr=0x1000,
                nr_pages=1,
                data_offset=0,
            ),
            R.PagemapRun(owner_kind=1, flags=R.PageFlags.ZERO, owner=10, vaddr=0x2000, nr_pages=1),
        ],
    }


def _build(recs: dict[int, list[Any]], pages: bytes = bytes(PAGE), **hdr: Any) -> bytes:
    buf = io.BytesIO()
    with ImageWriter(buf, samples.header(root_pid=10, **hdr)) as w:
        if pages:
            w.write_pages(pages)
        for stype, rs in recs.items():
            w.add_section(stype, rs)
    return buf.getvalue()


def _problems(edit: Callable[[dict[int, list[Any]]], None], **kw: Any) -> list[str]:
    recs = _base()
    edit(recs)
    return [str(p) for p in verify(io.BytesIO(_build(recs, **kw)))]


def test_base_is_clean() -> None:
    assert _problems(lambda r: None) == []


def _set(stype: int, i: int, **kw: Any) -> Callable[[dict[int, list[Any]]], None]:
    def edit(recs: dict[int, list[Any]]) -> None:
        recs[stype][i] = dataclasses.replace(recs[stype][i], **kw)

    return edit


def _add(stype: int, *rs: Any) -> Callable[[dict[int, list[Any]]], None]:
    return lambda recs: recs[stype].extend(rs)


P, M, F, D, PM = (
    R.SectionType.PROCESS,
    R.SectionType.MM,
    R.SectionType.FILES,
    R.SectionType.FDS,
    R.SectionType.PAGEMAP,
)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (_set(P, 1, pid=10), "pid 10 is used twice"),
        (_set(P, 1, ppid=0), "2 root processes"),
        (_set(P, 1, ppid=99), "parent 99 is not in the image"),
        (
            _add(P, R.Process(pid=20, ppid=21, state=1), R.Process(pid=21, ppid=20, state=1)),
            "parent cycle",
        ),
        (_set(P, 0, state=9), "state=9 is not a known ProcessState"),
        (_set(P, 3, tid=10), "tid 10 is used twice"),
        (_set(P, 3, pid=12), "pid 12 refers to no process"),
        (_set(P, 2, regs=bytes(100)), "regs holds 100 bytes, expected 216"),
        (_set(P, 2, fpregs=b""), "fpregs holds 0 bytes, expected 512"),
        (_set(P, 4, cwd_id=7), "cwd_id 7 refers to no PathObj"),
        (_add(P, R.Creds(pid=10), R.Creds(pid=10)), "a second Creds for process 10"),
        (_add(P, R.Owner(pid=10), R.Owner(pid=10)), "a second Owner"),
        (_add(P, R.Owner(pid=11)), "the owner's pid is 11, the root is 10"),
        (_add(P, R.Owner(pid=12)), "pid 12 refers to no process"),
        (lambda r: r[M].reverse(), "not sorted"),
        (_set(M, 1, start=0x2000), "overlaps"),
        (_set(M, 0, end=0x2800), "not page-aligned"),
        (_set(M, 0, end=0x1000), "empty or inverted"),
        (_set(M, 1, file_id=5), "file_id 5 refers to no PathObj"),
        (_set(M, 1, file_id=0), "a file mapping without a file"),
        (_set(M, 0, kind=R.VmaKind.SHMEM, shmem_id=4), "shmem_id 4 refers to no ShmemObject"),
        (_set(M, 0, vmflags=1 << 40), "unknown VmFlags bits"),
        (_set(F, 1, path_id=9), "path_id 9 refers to no PathObj"),
        (_add(F, R.Pipe(id=1)), "id 1 is used twice"),
        (_set(D, 1, file_id=3), "file_id 3 refers to no open-file description"),
        (_set(D, 1, pid=10), "fd 0 of process 10 is listed twice"),
        (_set(PM, 0, vaddr=0x3000), "not inside one VMA"),
        (_set(PM, 0, nr_pages=3), "not inside one VMA"),
        (_set(PM, 1, vaddr=0x1000), "overlaps"),
        (_set(PM, 0, data_offset=PAGE), "outside the page data"),
        (_set(PM, 0, flags=R.PageFlags.PRESENT | R.PageFlags.ZERO), "exactly one of"),
        (_set(PM, 1, flags=R.PageFlags.PARENT), "not INCREMENTAL"),
        (_set(PM, 0, owner=77), "process 77 is not in the image"),
        (_set(PM, 0, owner_kind=2, owner=3), "shared-memory object 3 is not in the image"),
        (
            _add(PM, R.PagemapRun(owner_kind=1, flags=1, owner=11, vaddr=0x1000, nr_pages=1)),
            "overlaps the data of",
        ),
    ],
)
def test_structural_problems(edit: Callable[[dict[int, list[Any]]], None], expected: str) -> None:
    problems = _problems(edit)
    assert any(expected in p for p in problems), problems


def test_an_owner_belongs_to_a_tree_not_to_a_ve() -> None:
    recs = _base()
    recs[P].append(R.Owner(pid=10))
    assert [str(p) for p in verify(io.BytesIO(_build(recs)))] == []
    ve = _build(recs, source_kind=R.SourceKind.VE, flags=R.HeaderFlags.VE | R.HeaderFlags.PIDNS)
    assert any("an Owner in the image of a VE" in str(p) for p in verify(io.BytesIO(ve)))


def test_problem_names_section_and_record() -> None:
    (p,) = verify(io.BytesIO(_build_edit(_set(D, 1, file_id=3))))
    assert (p.section, p.record) == ("FDS", "Fd #1") and p.offset is not None
    assert str(p).startswith("FDS Fd #1 @")


def _build_edit(edit: Callable[[dict[int, list[Any]]], None]) -> bytes:
    recs = _base()
    edit(recs)
    return _build(recs)


def test_shmem_runs_stay_inside_the_object() -> None:
    obj = R.ShmemObject(id=3, kind=1, size=PAGE)
    run = R.PagemapRun(owner_kind=2, flags=R.PageFlags.ZERO, owner=3, vaddr=PAGE, nr_pages=1)
    problems = _problems(_add(M, obj), pages=bytes(PAGE))
    assert problems == []
    problems = _problems(lambda r: (r[M].append(obj), r[PM].append(run)))
    assert any("beyond the object's size" in p for p in problems)


def test_section_count_and_page_blocks() -> None:
    buf = io.BytesIO()
    with ImageWriter(buf, samples.header()) as w:
        w.add_raw_section(
            R.SectionType.PROCESS, 1, R.Process(pid=1).encode(), count=2, compression=0
        )
        w.add_raw_section(R.SectionType.PAGES, 1, bytes(PAGE), count=0, compression=0, base=PAGE)
    problems = [str(p) for p in verify(io.BytesIO(buf.getvalue()))]
    assert any("header says 2 records, the payload holds 1" in p for p in problems)
    assert any("not contiguous" in p for p in problems)


def test_index_disagreeing_with_the_walk() -> None:
    class LyingWriter(ImageWriter):
        def close(self) -> None:
            self.sections[0].count += 1
            super().close()

    buf = io.BytesIO()
    with LyingWriter(buf, samples.header()) as w:
        w.add_section(R.SectionType.PROCESS, [R.Process(pid=1, state=1)])
    problems = verify(io.BytesIO(buf.getvalue()))
    assert any(p.section == "index" and "count=2" in p.message for p in problems), problems


def test_unknown_tags_by_version() -> None:
    unknown = UnknownRecord(0x01F0, struct.pack("<IHH", 12, 0x01F0, 0) + b"abcd")
    for minor, is_problem in ((FORMAT_MINOR, True), (FORMAT_MINOR + 1, False)):
        buf = io.BytesIO()
        with ImageWriter(buf, samples.header(root_pid=1), minor=minor) as w:
            w.add_section(R.SectionType.PROCESS, [R.Process(pid=1, state=1), unknown])
        report = verify_report(io.BytesIO(buf.getvalue()))
        assert bool(report.problems) == is_problem, report
        assert bool(report.warnings) != is_problem


def test_verify_reads_a_pipe() -> None:
    r, w = os.pipe()

    def feed() -> None:
        with os.fdopen(w, "wb") as f:
            f.write(ZSTD)

    t = threading.Thread(target=feed)
    t.start()
    with os.fdopen(r, "rb", buffering=0) as f:
        assert verify(f) == []
    t.join()


def test_missing_file_is_an_image_error(tmp_path: Any) -> None:
    with pytest.raises(ImageError, match="cannot open"):
        verify(tmp_path / "nope.img")
