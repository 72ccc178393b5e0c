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

import mutants
import pytest
import samples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cptimage import jsonio, pagestore, show
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
_HEADER_FIELDS = mutants.SECTION_FIELDS


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
            R.TaskState(pid=10, cwd_id=2, root_id=2),
            # what every live process has besides (SPEC.md section 11)
            R.TaskState(pid=11),
            *(rec for pid in (10, 11) for rec in samples._process_state(pid)[:3]),
        ],
        R.SectionType.MM: [
            R.Vma(pid=10, kind=R.VmaKind.ANON, prot=3, start=0x1000, end=0x3000),
            R.Vma(pid=10, kind=R.VmaKind.FILE_PRIVATE, prot=5, start=0x4000, end=0x5000, file_id=1),
            R.Vma(pid=11, kind=R.VmaKind.ANON, prot=3, start=0x1000, end=0x2000),
            R.Mm(pid=10),
            R.Mm(pid=11),
        ],
        R.SectionType.FILES: [
            R.PathObj(id=1, kind=R.PathKind.REG, path="/bin/x"),
            R.RegFile(id=1, path_id=1),
            R.PathObj(id=2, kind=R.PathKind.DIR, path="/"),
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
            alive = [
                R.Thread(pid=1, tid=1, regs=bytes(216), fpregs=bytes(512)),
                *samples._process_state(1),
            ]
            w.add_section(R.SectionType.PROCESS, [R.Process(pid=1, state=1), *alive, unknown])
            w.add_section(R.SectionType.MM, [R.Mm(pid=1)])
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


# --------------------------------------------------------------------------- invariants
# SPEC.md section 11: what the format implies beyond ids that resolve.  Each case breaks
# one invariant of the clean base image, sealed (checksums and digest right), and names
# what verify must say about it.

NS, IPC = R.SectionType.NAMESPACES, R.SectionType.IPC
ZOMBIE = R.ProcessState.ZOMBIE
VE_HEADER = dict(
    flags=R.HeaderFlags.VE | R.HeaderFlags.PIDNS, source_kind=R.SourceKind.VE, source_id="7"
)


def _put(stype: int, *rs: Any) -> Callable[[dict[int, list[Any]]], None]:
    return lambda recs: recs.setdefault(stype, []).extend(rs)


def _del(stype: int, i: int) -> Callable[[dict[int, list[Any]]], None]:
    return lambda recs: recs[stype].pop(i)


def _both(*edits: Callable[[dict[int, list[Any]]], None]) -> Callable[[dict[int, list[Any]]], None]:
    def edit(recs: dict[int, list[Any]]) -> None:
        for e in edits:
            e(recs)

    return edit


def _limits(*lims: tuple[int, int, int]) -> Callable[[dict[int, list[Any]]], None]:
    return _set(P, 7, limits=[R.Rlimit(*x) for x in lims])


def _sigs(*signos: int) -> Callable[[dict[int, list[Any]]], None]:
    return _set(P, 8, actions=[R.Sigaction(n) for n in signos])


_PIPE = (R.Pipe(id=5, ino=77), R.Fd(pid=10, fd=5, file_id=5))
_SIG = dict(pid=10, signo=10, siginfo=bytes(128))
_MOUNT = dict(mnt_id=1, parent_id=0, mountpoint="/", root="/", fstype="ext4")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        # the tree
        (lambda r: r[P].clear(), "the image holds no process"),
        (_set(P, 0, state=ZOMBIE), "the root of the tree is a zombie"),
        (_set(P, 0, state=ZOMBIE), "its parent 10 is a zombie"),
        # a session or group whose leader exited (1.7) is rebuilt, not under a thread's id
        (_both(_set(P, 1, sid=99), _set(P, 3, tid=99)), "session 99 has no leader but thread 99"),
        (_both(_set(P, 1, pgid=99), _set(P, 3, tid=99)), "group 99 has no leader but thread"),
        (_both(_set(P, 1, pgid=11, sid=11), _set(P, 0, pgid=11)), "process group 11 is led by"),
        # each live process is complete
        (_del(P, 3), "process 11 has no Thread"),
        (_set(P, 3, tid=12), "process 11 has no leader thread"),
        (_del(P, 6), "process 10 has no Creds"),
        (_del(P, 5), "process 11 has no TaskState"),
        (_del(M, 4), "process 11 has no Mm"),
        (_del(P, 11), "process 11 has no Sigactions"),
        (_set(P, 1, state=ZOMBIE), "process 11 is not alive: it has no Vma"),
        (_set(P, 1, state=ZOMBIE), "process 11 is not alive: it has no Fd"),
        # ids and names
        (_set(P, 0, nspid=[11, 1]), "does not start with its pid 10"),
        (_set(P, 2, nstid=[99]), "does not start with its tid 10"),
        (_both(_set(P, 0, nspid=[10, 2]), _set(P, 1, nspid=[11, 2])), "inside, not 1"),
        (_both(_set(P, 0, nspid=[10, 1]), _set(P, 1, nspid=[11, 1])), "pid 1 inside is used"),
        (_set(P, 0, comm="x" * 16), "holds 16 bytes; the kernel keeps 15"),
        (_set(P, 2, comm="é" * 8), "holds 16 bytes"),
        # values the kernel must take back
        (_set(P, 6, uid=2**32 - 1), "uid 4294967295 is (uid_t)-1"),
        (_set(P, 6, groups=[5, 2**32 - 1]), "groups hold 4294967295"),
        (_limits((99, 1, 1)), "resource 99 is not one of the 16"),
        (_limits((7, 1, 1), (7, 1, 1)), "resource 7 is listed twice"),
        (_limits((7, 10, 5)), "soft limit 10 is above the hard limit 5"),
        (_limits((7, 2**63, 2**64 - 1)), "neither a limit (< 2^63) nor unlimited"),
        (_sigs(9), "signal 9 has no action to restore"),
        (_sigs(65), "signal 65 has no action"),
        (_sigs(10, 10), "signal 10 is listed twice"),
        (_set(P, 4, umask=0o1777), "has bits beyond 0777"),
        (_set(P, 4, oom_score_adj=-2000), "outside -1000..1000"),
        (_set(P, 4, dumpable=7), "dumpable 7"),
        (_set(P, 4, pdeath_sig=99), "pdeath_sig 99 is no signal"),
        (_add(P, R.PendingSignal(**{**_SIG, "tid": 11})), "tid 11 is not a thread of process 10"),
        (_add(P, R.PendingSignal(**{**_SIG, "signo": 0})), "signo 0 is no signal"),
        (_add(P, R.PendingSignal(**{**_SIG, "siginfo": b"x"})), "siginfo holds 1 bytes"),
        (_add(P, R.SeccompFilter(pid=10, tid=10, program=bytes(7))), "a program of 7 bytes"),
        (_add(P, R.SeccompFilter(pid=10, tid=10, program=b"")), "a program of 0 bytes"),
        (_add(P, R.PosixTimer(pid=10, signo=14, notify_tid=11)), "notify_tid 11 is not a thread"),
        # per thread
        (_set(P, 2, robust_head=0x1000, robust_len=2**31), "set_robust_list takes 24"),
        (_set(P, 2, robust_head=0x1000, robust_len=0), "robust_len 0: set_robust_list"),
        (_set(P, 6, cap_eff=1, cap_prm=0), "effective capabilities 0x1 beyond the permitted"),
        (_set(P, 6, securebits=4096), "securebits 0x1000 hold unknown bits"),
        (_set(F, 1, flags=2**32 - 1), "hold bits that are no open(2) flag"),
        (_both(_set(P, 1, state=ZOMBIE, exit_status=2**31 - 1)), "is no status of a dead"),
        (_set(P, 1, state=ZOMBIE, exit_status=0x7F), "is no status of a dead process"),
        (_set(P, 1, exit_signal=99), "exit_signal 99 is no signal"),
        (_set(P, 6, cap_amb=3, cap_prm=3, cap_inh=1), "ambient capabilities 0x3 beyond"),
        (_set(M, 0, prot=64), "prot 0x40 is more than read, write and execute"),
        (_set(P, 2, rseq_ptr=0x1010, rseq_len=32), "rseq takes 32 bytes or more, aligned"),
        (_set(P, 2, rseq_ptr=0x1000, rseq_len=16), "rseq area 0x1000+16"),
        (_set(P, 2, sas_flags=1 << 30), "unknown sigaltstack flags"),
        (_set(F, 1, pos=2**63), "beyond any file offset"),
        (_set(F, 0, mtime_ns=2**63), "is beyond any time"),
        (_add(F, R.UnixSocket(id=6, type=1, fmode=2**32 - 1)), "is not the mode of a socket"),
        (_add(F, R.UnixSocket(id=6, type=1, fmode=0o100644)), "is not the mode of a socket"),
        (_add(M, R.ShmemObject(id=3, kind=1, size=2**63)), "beyond any file size"),
        (
            _both(_add(F, *_PIPE[:1], R.PipeData(ino=77, capacity=2**31)), _add(D, *_PIPE[1:])),
            "from one page to 1073741824",
        ),
        # memory
        (_set(M, 3, start_brk=0x2000, brk=0x1000), "start_brk 0x2000 is above brk 0x1000"),
        (_set(M, 3, env_end=1 << 60, env_start=1 << 60), "env_start 0x1000000000000000 is"),
        (_set(M, 3, auxv=[6, 4096, 0]), "auxv holds 3 words"),
        (_set(M, 3, auxv=[6, 4096]), "ending in AT_NULL"),
        (_set(M, 0, start=1 << 60, end=(1 << 60) + 0x1000), "beyond the user address space"),
        # paths and what refers to them
        (_set(F, 0, path="bin/x"), "path 'bin/x' is not absolute"),
        (_set(F, 0, path="/a/../x"), "has an empty, '.' or '..' component"),
        (_set(F, 0, path="/a//x"), "has an empty"),
        (_set(F, 0, path="/a\0x"), "holds a NUL byte"),
        (_set(F, 0, mode=0o40755), "mode 0o40755 is not that of a REG path"),
        (_set(F, 0, flags=R.PathFlags.GHOST), "a GHOST path that is not DELETED"),
        (_set(F, 0, flags=R.PathFlags.GHOST | 1, size=3, contents=b"ab"), "ghost of 3 bytes"),
        (_set(F, 0, contents=b"ab"), "contents in a path that is not a GHOST"),
        (_set(P, 4, cwd_id=1), "cwd_id 1 is a REG, not a DIR"),
        (_set(M, 1, file_id=2), "file_id 2 is a DIR, not a REG or CHR or BLK"),
        (_set(M, 3, exe_id=2), "exe_id 2 is a DIR, not a REG"),
        # fd tables and descriptions
        (lambda r: r[D].clear(), "open-file description 1 is in no fd table"),
        (_set(D, 0, fd=2**31), "is beyond any fd table"),
        (_set(D, 0, flags=2), "FD_CLOEXEC is the only one"),
        (_add(F, R.FileLock(pid=10, fd=5, file_id=1, kind=1)), "fd 5 of process 10 is not in"),
        (_add(F, R.FileLock(pid=10, fd=0, file_id=1, kind=9)), "kind=9 is not a known LockKind"),
        (_add(F, R.FileOwner(file_id=1, pid=10, fd=5, owner=10)), "fd 5 of process 10 is not in"),
        (_add(F, R.FileOwner(file_id=1, pid=10, fd=0, signum=70)), "signum 70 is no signal"),
        (_add(P, R.SeccompStrict(pid=10, tid=99)), "tid 99 is not a thread of process 10"),
        (
            _add(
                P,
                R.SeccompFilter(pid=10, tid=10, program=bytes(8)),
                R.SeccompStrict(pid=10, tid=10),
            ),
            "thread 10 has seccomp filters and strict mode",
        ),
        (_add(M, R.GuardRegion(pid=10, start=0x1000, end=0x1800)), "is not whole pages"),
        (_add(M, R.GuardRegion(pid=10, start=0x8000, end=0x9000)), "is in no mapping of its"),
        (_add(M, R.GuardRegion(pid=12, start=0x1000, end=0x2000)), "pid 12"),
        (_add(F, *[R.FileOwner(file_id=1, pid=10, fd=0)] * 2), "description 1 has two owners"),
        (
            _add(F, R.FileOwner(file_id=1, pid=10, fd=0, owner_type=7)),
            "owner_type=7 is not a known OwnerType",
        ),
        (
            _both(_add(F, R.PidFd(id=6, pid=12)), _add(D, R.Fd(pid=10, fd=6, file_id=6))),
            "pid 12 is no process or thread of the image",
        ),
        (_both(_add(F, *_PIPE[:1]), _add(D, *_PIPE[1:])), "pipe inode 77 has no PipeData"),
        (_add(F, R.PipeData(ino=78)), "pipe inode 78 is no Pipe's or Fifo's"),
        (
            _both(_add(F, *_PIPE[:1], R.PipeData(ino=77, capacity=1000)), _add(D, *_PIPE[1:])),
            "capacity 1000 is not a power of two",
        ),
        (
            _both(
                _add(F, *_PIPE[:1], R.PipeData(ino=77, capacity=4096, data=bytes(5000))),
                _add(D, *_PIPE[1:]),
            ),
            "5000 bytes pending in a pipe of 4096",
        ),
        (_add(F, R.UnixSocket(id=6, type=3)), "type 3 is not a unix socket type"),
        (_add(F, R.InetSocket(id=6, family=99)), "family 99 is not AF_INET"),
        (_add(F, R.TimerFd(id=6, clockid=99)), "clockid 99 is not a clock"),
        (_add(F, R.Tty(id=6, kind=R.TtyKind.PTY_SLAVE)), "a pseudo-terminal end without"),
        (_add(F, R.Epoll(id=6), R.EpollTarget(epoll_id=6, target_id=6)), "watches itself"),
        (
            _add(F, R.Epoll(id=6), *[R.EpollTarget(epoll_id=6, tfd=3, target_id=1)] * 2),
            "fd 3 is in epoll 6 twice",
        ),
        (
            _both(_add(M, R.ShmemObject(id=3, kind=1)), _add(F, R.MemfdFile(id=6, shmem_id=3))),
            "shmem_id 3 is a SHARED_ANON object, not a MEMFD",
        ),
        (
            _both(
                _add(M, R.ShmemObject(id=3, kind=R.ShmemKind.MEMFD)),
                _set(M, 0, kind=R.VmaKind.SYSV_SHM, shmem_id=3),
            ),
            "shmem_id 3 is a MEMFD object, not a SYSV",
        ),
        # namespaces
        (_put(NS, R.Namespace(kind=1, pid=99)), "pid 99 refers to no process"),
        (_put(NS, R.Namespace(kind=1, pid=10), R.Namespace(kind=1, pid=11)), "a second namespace"),
        (_put(NS, R.Uts(hostname="h" * 65)), "holds 65 bytes; the kernel takes 64"),
        (_put(NS, R.Uts(), R.Uts()), "a second Uts record"),
        (_put(NS, R.NetLink(ifindex=1, name="x" * 16)), "is no interface name"),
        (_put(NS, R.NetLink(ifindex=1, name="a/b")), "is no interface name"),
        (_put(NS, *[R.NetLink(ifindex=1, name="lo")] * 2), "ifindex 1 is used twice"),
        (_put(NS, R.NetAddr(ifindex=3, family=2, address=bytes(4))), "ifindex 3 refers to no"),
        (
            _put(NS, R.NetLink(ifindex=1, name="lo"), R.NetAddr(ifindex=1, family=99)),
            "family 99 is not AF_INET",
        ),
        (
            _put(
                NS, R.NetLink(ifindex=1, name="lo"), R.NetAddr(ifindex=1, family=2, address=b"ab")
            ),
            "address holds 2 bytes, an address of its family 4",
        ),
        (
            _put(
                NS,
                R.NetLink(ifindex=1, name="lo"),
                R.NetAddr(ifindex=1, family=2, address=bytes(4), prefixlen=33),
            ),
            "prefix length 33 is longer than the address",
        ),
        (_put(NS, R.NetRoute(family=2, oif=4)), "oif 4 refers to no NetLink"),
        (_put(NS, R.Mount(**{**_MOUNT, "mountpoint": "/x"})), "the first mount is '/x', not /"),
        (
            _put(NS, R.Mount(**_MOUNT), R.Mount(**{**_MOUNT, "mnt_id": 2, "parent_id": 3})),
            "parent_id 3 is no mount before it",
        ),
        (
            _put(
                NS,
                R.Mount(**_MOUNT),
                R.Mount(**{**_MOUNT, "mnt_id": 2, "parent_id": 1, "mountpoint": "/../etc"}),
            ),
            "mountpoint '/../etc' has an empty",
        ),
        (_put(NS, R.Mount(**_MOUNT), R.MountData(mnt_id=1)), "mount 1 is 'ext4', not a tmpfs"),
        (_put(R.SectionType.FSSNAP, R.FsSnapshot(subvolume="rel")), "subvolume 'rel' is not"),
        # IPC
        (
            _put(
                IPC,
                R.PosixMq(id=6, name="a/b"),
            ),
            "name 'a/b' is no message queue name",
        ),
        (_put(IPC, R.SysvSem(semid=1), R.SysvSem(semid=1)), "semid 1 is used twice"),
        (_put(IPC, R.SysvSem(semid=1, values=[0] * 32001)), "32001 semaphores in one set"),
    ],
)
def test_invariants(edit: Callable[[dict[int, list[Any]]], None], expected: str) -> None:
    problems = _problems(edit)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("hdr", "edit", "expected"),
    [
        (dict(flags=R.HeaderFlags.VE | R.HeaderFlags.PIDNS), None, "flags have VE but the source"),
        (dict(source_kind=R.SourceKind.VE), None, "flags lack VE but the source kind is VE"),
        (dict(VE_HEADER, flags=R.HeaderFlags.VE), None, "a VE's image without PIDNS"),
        (dict(parent_uuid=b"\1" * 16), None, "a parent uuid in an image that is not INCREMENTAL"),
        (dict(flags=R.HeaderFlags.INCREMENTAL), None, "needs its parent's uuid"),
        (VE_HEADER, None, "a VE's image without its mount table"),
        (
            VE_HEADER,
            _put(R.SectionType.FSSNAP, R.FsSnapshot(subvolume="/a", snapshot_path="/b", ve_id="8")),
            "ve_id '8' is not the image's VE '7'",
        ),
    ],
)
def test_header_invariants(
    hdr: dict[str, Any], edit: Callable[[dict[int, list[Any]]], None] | None, expected: str
) -> None:
    problems = _problems(edit or (lambda r: None), **hdr)
    assert any(expected in p for p in problems), problems


def test_the_issue_examples() -> None:
    """Issue 11's two: an FDS section emptied while processes kept their descriptions,
    a pipe whose buffer record went; each named with its section and record."""
    recs = _base()
    recs[D] = []
    (p,) = verify(io.BytesIO(_build(recs)))
    assert (p.section, p.record) == ("FILES", "RegFile #0")
    assert p.message == "open-file description 1 is in no fd table"
    buf = io.BytesIO()
    samples.tree_image(buf)
    doc = jsonio.decode(io.BytesIO(buf.getvalue()))
    files = next(s for s in doc["sections"] if s["type"] == "FILES")
    files["records"] = [r for r in files["records"] if r["record"] != "PipeData"]
    out = io.BytesIO()
    jsonio.encode(doc, out)
    problems = [str(p) for p in verify(io.BytesIO(out.getvalue()))]
    assert [p.split(" @")[0] for p in problems] == ["FILES Pipe #0", "FILES Pipe #1"]
    assert all(p.endswith("pipe inode 9001 has no PipeData") for p in problems)


def test_golden_and_bench_images_hold_every_invariant() -> None:
    for build in (
        samples.tree_image,
        samples.every_record_image,
        lambda f: samples.tree_image(f, variant=1, compress=True),
        lambda f: samples.pages_image(f, 4 * PAGE),
        lambda f: samples.many_image(f, 20, 20),
    ):
        assert verify(io.BytesIO(_bytes(build))) == []


# --------------------------------------------------------------------------- user namespaces


def _userns_problems(edit: Callable[[dict[str, Any]], None]) -> list[str]:
    """verify's messages for the ve-userns sample after `edit` of its JSON form."""
    from cptimage import jsonio

    doc = jsonio.decode(io.BytesIO(_bytes(samples.ve_userns_image)))
    edit(doc)
    out = io.BytesIO()
    jsonio.encode(doc, out)
    return [p.message for p in verify(io.BytesIO(out.getvalue()))]


def _records(doc: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [r for s in doc["sections"] for r in s.get("records", []) if r["record"] == name]


def _drop(doc: dict[str, Any], name: str, **match: Any) -> None:
    for s in doc["sections"]:
        if "records" in s:
            s["records"] = [
                r
                for r in s["records"]
                if not (r["record"] == name and all(r[k] == v for k, v in match.items()))
            ]


def test_userns_sample_is_clean() -> None:
    assert _userns_problems(lambda doc: None) == []


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda d: _records(d, "NsCreds")[1].update(uid=1001),
            "uid 1001 is host id 301001, Creds says 301000",
        ),
        (
            lambda d: _records(d, "NsCreds")[2].update(groups=[7]),
            "groups do not map to the Creds groups",
        ),
        (lambda d: _drop(d, "NsCreds", pid=103), "no NsCreds: its ids inside the VE's user"),
        (lambda d: _drop(d, "UserNs"), "ids inside a user namespace, but the image has no UserNs"),
        (
            lambda d: _records(d, "UserNs")[0]["uid_map"].append(
                {"inside": 100, "outside": 500000, "count": 10}
            ),
            "uid_map: inside ranges overlap at 100",
        ),
        (
            lambda d: _records(d, "UserNs")[0].update(gid_map=[]),
            "gid_map is empty",
        ),
        (lambda d: d["header"].update(flags=0), "a user namespace in an image that is not a VE's"),
        (
            lambda d: d["header"].update(flags=12),  # VE | PIDNS
            "a user namespace, but the header lacks the USERNS flag",
        ),
        (
            lambda d: (_drop(d, "UserNs"), _drop(d, "NsCreds")),
            "the header says USERNS, but there is no UserNs record",
        ),
    ],
)
def test_userns_problems(edit: Callable[[dict[str, Any]], None], expected: str) -> None:
    problems = _userns_problems(edit)
    assert any(expected in p for p in problems), problems
