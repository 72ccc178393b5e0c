"""Image chains (cptimage/chain.py): resolution of PARENT runs through parents, every link
checked by verify, flatten, and what each kind of image may hold."""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import samples
from samples import CHAIN_PAGES, CHAIN_START, PAGE, chain_memory, write_chain

from cptimage import records as R
from cptimage.chain import Chain, ChainError, flatten, verify_chain
from cptimage.container import ImageReader, ImageWriter
from cptimage.verify import verify


def memory(chain: Chain) -> bytes:
    """The sample process's 16 pages as the chain's newest image says they are."""
    out = bytearray(CHAIN_PAGES * PAGE)
    for p in chain.pieces(R.OwnerKind.PROCESS, 100):
        data = chain.read(p, 0, p.nr_pages * PAGE)
        at = p.vaddr - CHAIN_START
        out[at : at + len(data)] = data
    return bytes(out)


@pytest.mark.parametrize("levels", [1, 2, 5, 20])
def test_chains_resolve_to_the_newest_pages(tmp_path: Path, levels: int) -> None:
    paths = write_chain(str(tmp_path), levels)
    assert verify_chain(paths[-1]).problems == []
    with Chain(paths[-1]) as chain:
        assert len(chain) == levels
        assert chain.paths == list(reversed(paths))
        assert memory(chain) == chain_memory(levels)
        kinds = [r["kind"] for r in chain.describe()]
        assert kinds == ["incremental" if levels > 1 else "full"] + ["pre-dump"] * (levels - 1)


@pytest.mark.parametrize("levels", [2, 5, 20])
def test_flatten_gives_the_same_memory(tmp_path: Path, levels: int) -> None:
    paths = write_chain(str(tmp_path), levels)
    out = tmp_path / "flat.img"
    with Chain(paths[-1]) as chain, open(out, "wb") as f:
        flatten(chain, f)
        uuid = chain.image.header.uuid
    assert verify(out) == []
    with ImageReader(out) as r:
        assert not r.header.flags & R.HeaderFlags.INCREMENTAL
        assert r.header.parent_uuid == bytes(16) and r.header.uuid == uuid
        assert not r.records(R.SectionType.CHAIN)
    for p in paths:
        os.unlink(p)  # self-contained: no parent needed
    with Chain(str(out)) as chain:
        assert len(chain) == 1 and memory(chain) == chain_memory(levels)


def test_flatten_onto_a_lower_parent(tmp_path: Path) -> None:
    """Deleting image 2 of 0..4: image 3 flattened onto image 1 keeps image 4 restorable."""
    paths = write_chain(str(tmp_path), 5)
    new3 = tmp_path / "new3.img"
    with Chain(paths[3]) as chain, open(new3, "wb") as f:
        flatten(chain, f, keep=2, out_path=str(new3))  # levels: 0 = image 3, 2 = image 1
    os.replace(new3, paths[3])
    os.unlink(paths[2])
    # image 4 names image 3 by its digest: the rebased one is another file
    rep = verify_chain(paths[4])
    assert any("was changed" in str(p) for p in rep.problems)
    with Chain(paths[3]) as chain:
        assert chain.paths == [paths[3], paths[1], paths[0]]
        assert memory(chain) == chain_memory(4)
    assert verify_chain(paths[3]).problems == []


def test_a_missing_middle_image_is_named(tmp_path: Path) -> None:
    paths = write_chain(str(tmp_path), 5)
    os.unlink(paths[2])
    rep = verify_chain(paths[-1])
    assert len(rep.problems) == 1
    assert f"the parent image {paths[2]} is missing" in str(rep.problems[0])
    with pytest.raises(ChainError, match=f"{paths[2]} is missing"):
        Chain(paths[-1])


def test_a_corrupted_middle_image_is_named(tmp_path: Path) -> None:
    paths = write_chain(str(tmp_path), 5)
    raw = bytearray(Path(paths[1]).read_bytes())
    with ImageReader(paths[1]) as r:
        at = r.page_blocks()[0].payload_offset + 5
    raw[at] ^= 0x10
    Path(paths[1]).write_bytes(bytes(raw))
    rep = verify_chain(paths[-1])
    assert rep.problems
    assert all(paths[1] in str(p) for p in rep.problems), rep.problems


def test_a_replaced_parent_is_refused(tmp_path: Path) -> None:
    """A parent rewritten since (same UUID, other bytes) or another image in its place."""
    paths = write_chain(str(tmp_path), 3)
    keep = Path(paths[1]).read_bytes()
    buf = io.BytesIO()
    samples.chain_image(buf, 1, Path(paths[0]).read_bytes(), name="chain-0.img")
    buf2 = io.BytesIO()
    samples.tree_image(buf2)
    Path(paths[1]).write_bytes(buf2.getvalue())
    rep = verify_chain(paths[2])
    assert any("is not the parent" in str(p) for p in rep.problems), rep.problems
    # the same UUID, other bytes: a byte of its page data changed and its checksums redone
    with ImageReader(io.BytesIO(keep)) as r:
        recs = r.all_records()
        data = r.read_pages(0, r.page_data_len)
        h = r.header
    out = io.BytesIO()
    with ImageWriter(out, h) as w:
        w.write_pages(bytes([data[0] ^ 1]) + data[1:])
        for st, rs in recs.items():
            w.add_section(st, rs)
    Path(paths[1]).write_bytes(out.getvalue())
    assert verify(paths[1]) == []
    rep = verify_chain(paths[2])
    assert [str(p) for p in rep.problems] == [
        f"chain: the parent image {paths[1]} was changed after its child was written on it"
    ]


def test_the_parent_is_found_in_parent_dir(tmp_path: Path) -> None:
    paths = write_chain(str(tmp_path), 3)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for p in paths[:2]:
        shutil.move(p, elsewhere)
    assert verify_chain(paths[2]).problems
    assert verify_chain(paths[2], parent_dir=str(elsewhere)).problems == []
    with Chain(paths[2], parent_dir=str(elsewhere)) as chain:
        assert memory(chain) == chain_memory(3)


def test_a_stream_is_verified_with_its_chain(tmp_path: Path) -> None:
    paths = write_chain(str(tmp_path), 3)
    with open(paths[2], "rb") as f:
        stream = io.BytesIO(f.read())
    assert verify_chain(stream, parent_dir=str(tmp_path)).problems == []
    os.unlink(paths[0])
    stream.seek(0)
    assert verify_chain(stream, parent_dir=str(tmp_path)).problems


def test_a_parent_run_without_data_below(tmp_path: Path) -> None:
    """The parent lacks pages the child leaves to it: verify and resolution both say so."""
    base = io.BytesIO()
    hdr = samples.header(uuid=samples.chain_uuid(0), flags=R.HeaderFlags.PREDUMP)
    with ImageWriter(base, hdr) as w:  # a pre-dump: memory only
        w.add_section(R.SectionType.PROCESS, [R.Process(pid=100, state=1, comm="x")])
        w.add_section(
            R.SectionType.MM,
            [R.Vma(pid=100, kind=R.VmaKind.ANON, prot=3, flags=0x22, start=CHAIN_START,
                   end=CHAIN_START + CHAIN_PAGES * PAGE)],
        )  # fmt: skip
    (tmp_path / "chain-0.img").write_bytes(base.getvalue())
    child = io.BytesIO()
    samples.chain_image(child, 1, base.getvalue(), name="chain-0.img")
    (tmp_path / "chain-1.img").write_bytes(child.getvalue())
    rep = verify_chain(tmp_path / "chain-1.img")
    assert rep.problems and "has no data in the parent" in str(rep.problems[0])
    with Chain(str(tmp_path / "chain-1.img")) as chain, pytest.raises(ChainError, match="PARENT"):
        chain.pieces(R.OwnerKind.PROCESS, 100)


def _problems(build) -> list[str]:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    build(buf)
    return [str(p) for p in verify(io.BytesIO(buf.getvalue()))]


def test_what_each_kind_may_hold() -> None:
    # a pre-dump holds memory only
    def predump_with_a_thread(out: io.BytesIO) -> None:
        with ImageWriter(out, samples.header(flags=R.HeaderFlags.PREDUMP)) as w:
            w.add_section(
                R.SectionType.PROCESS,
                [R.Process(pid=100, state=1), R.Thread(pid=100, tid=100, regs=bytes(216),
                                                        fpregs=bytes(512))],
            )  # fmt: skip

    assert any(
        "a pre-dump holds memory only: no Thread" in p for p in _problems(predump_with_a_thread)
    )

    # INCREMENTAL needs a parent UUID and its Parent record; a full image has neither
    def incremental_without_parent(out: io.BytesIO) -> None:
        with ImageWriter(out, samples.header(flags=R.HeaderFlags.INCREMENTAL)) as w:
            w.add_section(R.SectionType.PROCESS, [R.Process(pid=100, state=1)])

    got = _problems(incremental_without_parent)
    assert any("the parent UUID is zero" in p for p in got)
    assert any("one Parent record, this one 0" in p for p in got)

    def full_with_parent(out: io.BytesIO) -> None:
        with ImageWriter(out, samples.header(parent_uuid=b"\1" * 16)) as w:
            w.add_section(R.SectionType.PROCESS, [R.Process(pid=100, state=1)])
            w.add_section(R.SectionType.CHAIN, [R.Parent(uuid=b"\1" * 16, name="p.img")])

    got = _problems(full_with_parent)
    assert any("a parent UUID in an image that is not INCREMENTAL" in p for p in got)
    assert any("a Parent record in an image that is not INCREMENTAL" in p for p in got)

    def shmem_parent_run(out: io.BytesIO) -> None:
        h = samples.header(flags=R.HeaderFlags.INCREMENTAL, parent_uuid=b"\1" * 16)
        with ImageWriter(out, h) as w:
            w.add_section(R.SectionType.PROCESS, [R.Process(pid=100, state=1)])
            w.add_section(
                R.SectionType.MM, [R.ShmemObject(id=1, kind=R.ShmemKind.SHARED_ANON, size=PAGE)]
            )
            w.add_section(R.SectionType.CHAIN, [R.Parent(uuid=b"\2" * 16, name="p.img")])
            w.add_section(
                R.SectionType.PAGEMAP,
                [R.PagemapRun(owner_kind=R.OwnerKind.SHMEM, flags=R.PageFlags.PARENT, owner=1,
                              vaddr=0, nr_pages=1)],
            )  # fmt: skip

    got = _problems(shmem_parent_run)
    assert any("a PARENT run of a shared memory object" in p for p in got)
    assert any("names the parent 0202" in p for p in got)


# --------------------------------------------------------------------------- the commands


def test_cli_show_verify_flatten_diff(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    runner = CliRunner()
    paths = write_chain(str(tmp_path), 4)
    res = runner.invoke(app, ["image", "show", paths[-1]])
    assert res.exit_code == 0, res.output
    assert "chain (newest first)" in res.output
    for p in paths:
        assert os.path.basename(p) in res.output
    res = runner.invoke(app, ["image", "show", "--json", paths[-1]])
    doc = __import__("json").loads(res.output)
    assert [r["kind"] for r in doc["chain"]] == ["incremental", "pre-dump", "pre-dump", "pre-dump"]

    res = runner.invoke(app, ["image", "verify", paths[-1]])
    assert res.exit_code == 0 and res.output == f"{paths[-1]}: ok\n"

    flat = str(tmp_path / "flat.img")
    res = runner.invoke(app, ["image", "flatten", paths[-1], "-o", flat])
    assert res.exit_code == 0, res.output
    assert oct(os.stat(flat).st_mode & 0o777) == "0o600"
    res = runner.invoke(app, ["image", "diff", paths[-1], flat])
    # same memory; only the header's flags and parent differ
    lines = res.output.splitlines()
    assert lines and all(line.startswith("~ header.") for line in lines), res.output
    res = runner.invoke(app, ["image", "diff", paths[-1], paths[-2]])
    assert any(line.startswith("~ pages[100:") for line in res.output.splitlines())

    os.rename(paths[1], str(tmp_path / "moved.img"))
    res = runner.invoke(app, ["image", "verify", paths[-1]])
    assert res.exit_code == 1
    assert f"the parent image {paths[1]} is missing" in res.output
    res = runner.invoke(app, ["image", "show", paths[-1]])
    assert res.exit_code == 0 and "broken" in res.output
    res = runner.invoke(app, ["image", "flatten", paths[-1], "-o", str(tmp_path / "x.img")])
    assert res.exit_code == 40 or res.exit_code == 1 or "missing" in (res.output or "")
    assert not (tmp_path / "x.img").exists()


def test_cli_exit_codes_through_main(tmp_path: Path) -> None:
    from cli.main import run

    paths = write_chain(str(tmp_path), 3)
    os.unlink(paths[1])
    assert run(["image", "flatten", paths[-1], "-o", str(tmp_path / "x.img")]) == 40
    assert run(["image", "verify", paths[-1]]) == 1


def test_a_ve_predump_holds_no_namespaces() -> None:
    """A VE's pre-dump is memory only too: no mount table, no network is asked of it (a VE's
    full image without its mount table is a problem)."""

    def ve_image(flags: int) -> Callable[[io.BytesIO], None]:
        def build(out: io.BytesIO) -> None:
            hdr = samples.header(
                flags=R.HeaderFlags.VE | R.HeaderFlags.PIDNS | flags,
                source_kind=R.SourceKind.VE,
                source_id="101",
            )
            with ImageWriter(out, hdr) as w:
                w.add_section(R.SectionType.PROCESS, [R.Process(pid=100, state=1, comm="x")])
                w.add_section(
                    R.SectionType.MM,
                    [R.Vma(pid=100, kind=R.VmaKind.ANON, prot=3, flags=0x22, start=CHAIN_START,
                           end=CHAIN_START + CHAIN_PAGES * PAGE)],
                )  # fmt: skip

        return build

    assert _problems(ve_image(R.HeaderFlags.PREDUMP)) == []
    assert any("a VE's image without its mount table" in p for p in _problems(ve_image(0)))
