"""show, diff and the page store on the sample images."""

from __future__ import annotations

import io
import json

import pytest
import samples
import xxhash

from cptimage import pagestore, show
from cptimage import records as R
from cptimage.container import FORMAT_MINOR, ImageReader
from cptimage.diff import Difference, diff

PAGE = 4096


def _reader(build=samples.tree_image) -> ImageReader:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    build(buf)
    return ImageReader(io.BytesIO(buf.getvalue()))


@pytest.fixture
def tree() -> ImageReader:
    return _reader()


def test_process_tree_is_ps_like(tree: ImageReader) -> None:
    rows = show.process_tree(tree)
    assert [(r["pid"], r["depth"], r["threads"], r["comm"]) for r in rows] == [
        (100, 0, 1, "sh"),
        (101, 1, 2, "worker"),
        (103, 1, 1, "logger"),
    ]
    assert rows[1]["state"] == "ALIVE" and rows[1]["ppid"] == 100


def test_summary_is_json_able(tree: ImageReader) -> None:
    s = show.summary(tree)
    json.dumps(s)
    by_type = {r["type"]: r for r in s["sections"]}
    assert by_type["PAGES"]["raw"] == 10 * PAGE and by_type["FDS"]["records"] == 15
    assert s["version"] == f"1.{FORMAT_MINOR}" and s["header"]["source_kind"] == "PID"


def test_maps_like_proc(tree: ImageReader) -> None:
    lines = [show.format_maps_line(r) for r in show.maps(tree, 101)]
    assert lines[0].startswith("00400000-00402000 r-xp 00000000 08:01 131075")
    assert lines[0].endswith("/usr/bin/worker")
    assert any(ln.endswith("[heap]") and " rw-p " in ln for ln in lines)
    assert any(" rw-s " in ln and ln.endswith("/dev/zero (deleted)") for ln in lines)
    assert show.maps(tree, 999) == []


def test_fds_like_ls_l(tree: ImageReader) -> None:
    lines = [show.format_fd_line(r) for r in show.fds(tree, 101)]
    assert lines == [
        "0 -> /dev/pts/0; flags 02",
        "1 -> /dev/pts/0; flags 02",
        "2 -> /dev/pts/0; flags 02",
        "3 -> pipe:[9001]; flags 00",
        "5 -> socket:[9100]; flags 02",
        "6 -> anon_inode:[eventfd]; flags 02004002; cloexec",
    ]
    logger = {r["fd"]: r for r in show.fds(_reader(samples.every_record_image), 103)}
    assert (logger[3]["kind"], logger[3]["target"], logger[3]["pos"]) == (
        "file",
        "/home/user/log.txt",
        1234,
    )


def test_pagestore_runs_and_data(tree: ImageReader) -> None:
    runs = pagestore.owner_runs(tree, R.OwnerKind.PROCESS, 101)
    assert [(r.vaddr, r.nr_pages, r.flags) for r in runs] == [
        (0x405000, 2, R.PageFlags.PRESENT),
        (0x407000, 4, R.PageFlags.ZERO),
        (0x7FFD0000F000, 1, R.PageFlags.PRESENT),
    ]
    chunks = list(pagestore.iter_run_data(tree, runs, chunk=PAGE))
    assert [(addr, len(b)) for _, addr, b in chunks] == [
        (0x405000, PAGE),
        (0x406000, PAGE),
        (0x7FFD0000F000, PAGE),
    ]
    assert b"".join(b for _, _, b in chunks[:2]) == samples.pattern(101, 2 * PAGE)
    pieces = pagestore.file_pieces(tree, runs)
    assert pieces is not None and [(a, n) for a, n, _ in pieces] == [
        (0x405000, 2 * PAGE),
        (0x7FFD0000F000, PAGE),
    ]
    tree.f.seek(pieces[0][2])
    assert tree.f.read(2 * PAGE) == samples.pattern(101, 2 * PAGE)


def test_file_pieces_of_compressed_pages() -> None:
    r = _reader(lambda f: samples.tree_image(f, compress=True))
    runs = pagestore.owner_runs(r, R.OwnerKind.PROCESS, 100)
    assert pagestore.file_pieces(r, runs) is None
    assert next(iter(pagestore.iter_run_data(r, runs)))[2] == samples.pattern(100, 2 * PAGE)


def test_vma_digests(tree: ImageReader) -> None:
    digests = pagestore.vma_digests(tree, 101)
    assert len(digests) == 7 and all(k[0] == 101 for k in digests)
    empty = xxhash.xxh3_64().hexdigest()
    assert digests[(101, 0x400000, 0x402000)] == empty  # no runs
    assert digests[(101, 0x405000, 0x427000)] != empty
    same_elsewhere = pagestore.vma_digests(_reader(lambda f: samples.tree_image(f, compress=True)))
    assert same_elsewhere[(101, 0x405000, 0x427000)] == digests[(101, 0x405000, 0x427000)]


def test_diff_of_identical_content_is_empty() -> None:
    assert diff(_reader(), _reader(lambda f: samples.tree_image(f, compress=True))) == []


def test_diff_names_what_changed() -> None:
    got = diff(_reader(), _reader(lambda f: samples.tree_image(f, variant=1)))
    paths = [d.path for d in got]
    assert paths == [
        "header.created_ns",
        "Process[103].comm",
        "Thread[102].regs",
        "Thread[103].comm",
        "RegFile[4].pos",
        "EventFd[8]",
        "Fd[103:5]",
        "pages[101:0x405000-0x427000]",
    ]
    assert got[4] == Difference("RegFile[4].pos", 1234, 2048)
    assert got[5].a is None and got[5].b["record"] == "EventFd"
    json.dumps([d.to_json() for d in got])
