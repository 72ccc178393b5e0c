"""Golden images of every format version (fixtures/images/NAME.img with NAME.json beside
it): tree, tree-zstd and every-record are of format 1.0, ve-userns of 1.1, tree-owner of
1.2, chain-predump and chain-final (a pre-dump and the incremental image written on it) of
1.3, sockets-1.4 of 1.4, task-extra of 1.5, fds-1.6 of 1.6, proc-1.7 of 1.7.

The writer's output for them must never change (SPEC.md section 7); their JSON form
must decode and encode exactly, the older ones with this reader too.  A new format
version adds goldens; `python tests/samples.py fixtures/images` rewrites them all, and
the old ones must come out unchanged.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import samples

from cptimage import jsonio
from cptimage.verify import verify

GOLDEN = Path(__file__).resolve().parent.parent / "fixtures" / "images"
NAMES = sorted(samples.GOLDENS)


def test_every_golden_is_committed() -> None:
    on_disk = {p.stem for p in GOLDEN.glob("*.img")}
    assert on_disk == set(NAMES)
    assert {p.stem for p in GOLDEN.glob("*.json")} == set(NAMES)
    assert not [p for p in GOLDEN.iterdir() if p.is_dir()]


@pytest.mark.parametrize("name", NAMES)
def test_writer_output_is_unchanged(name: str) -> None:
    buf = io.BytesIO()
    samples.GOLDENS[name](buf)
    assert buf.getvalue() == (GOLDEN / f"{name}.img").read_bytes()


@pytest.mark.parametrize("name", NAMES)
def test_decode_gives_the_committed_json(name: str) -> None:
    committed = json.loads((GOLDEN / f"{name}.json").read_text())
    assert jsonio.decode(GOLDEN / f"{name}.img") == committed
    text = io.StringIO()
    jsonio.decode_to(GOLDEN / f"{name}.img", text)
    assert text.getvalue() == (GOLDEN / f"{name}.json").read_text()


@pytest.mark.parametrize("name", NAMES)
def test_encode_of_the_json_gives_the_image(name: str) -> None:
    doc = json.loads((GOLDEN / f"{name}.json").read_text())
    out = io.BytesIO()
    jsonio.encode(doc, out)
    assert out.getvalue() == (GOLDEN / f"{name}.img").read_bytes()


@pytest.mark.parametrize("name", NAMES)
def test_goldens_verify_clean(name: str) -> None:
    assert verify(GOLDEN / f"{name}.img") == []


def test_goldens_cover_the_format() -> None:
    every = json.loads((GOLDEN / "every-record.json").read_text())
    assert every["version"] == [1, 0]
    every_missing = {"NsCreds", "UserNs", "Owner", "Parent", "ThreadSched", "TaskExtra"}
    every_missing |= set(samples.SOCKET_RECORDS_1_4) | set(samples.RECORDS_1_6)
    every_missing |= set(samples.RECORDS_1_7)
    assert samples.missing_record_types(every) == every_missing, "1.1 ... 1.7"
    fds = json.loads((GOLDEN / "fds-1.6.json").read_text())
    assert fds["version"] == [1, 6]
    assert not set(samples.RECORDS_1_6) & samples.missing_record_types(fds)
    leases = [
        r for s in fds["sections"] for r in s.get("records", [])
        if r["record"] == "FileLock" and r["kind"] == "LEASE"
    ]  # fmt: skip
    assert leases, "a lease (LockKind 4, format 1.6)"
    rings = [
        r for s in fds["sections"] for r in s.get("records", [])
        if r["record"] == "Vma" and r["kind"] == "AIO_RING"
    ]  # fmt: skip
    assert rings, "an AIO ring (VmaKind 11, format 1.6)"
    lock = json.loads((GOLDEN / "proc-1.7.json").read_text())
    assert not set(samples.RECORDS_1_7) & samples.missing_record_types(lock)
    assert lock["version"] == [1, 7]
    mm_flags = {
        r["flags"] for s in lock["sections"] for r in s.get("records", []) if r["record"] == "Mm"
    }
    assert mm_flags == {0, 2, 6}, "LOCK_FUTURE, with LOCK_ONFAULT (MmFlags, format 1.7)"
    extra = json.loads((GOLDEN / "task-extra.json").read_text())
    assert extra["version"] == [1, 5]
    assert samples.missing_record_types(extra) & {"ThreadSched", "TaskExtra"} == set()
    userns = json.loads((GOLDEN / "ve-userns.json").read_text())
    assert userns["version"] == [1, 1]
    assert samples.missing_record_types(userns) & {"NsCreds", "UserNs"} == set()
    owner = json.loads((GOLDEN / "tree-owner.json").read_text())
    assert owner["version"] == [1, 2]
    assert "Owner" not in samples.missing_record_types(owner)
    final = json.loads((GOLDEN / "chain-final.json").read_text())
    assert final["version"] == [1, 3]
    assert "Parent" not in samples.missing_record_types(final)
    sockets = json.loads((GOLDEN / "sockets-1.4.json").read_text())
    assert sockets["version"] == [1, 4]
    assert not set(samples.SOCKET_RECORDS_1_4) & samples.missing_record_types(sockets)
    kinds = {
        r["kind"] for s in sockets["sections"] for r in s.get("records", []) if r["record"] == "Vma"
    }
    assert "PACKET_RING" in kinds, kinds
    zstd = json.loads((GOLDEN / "tree-zstd.json").read_text())
    assert {s["compression"] for s in zstd["sections"]} == {"zstd"}
    tree = json.loads((GOLDEN / "tree.json").read_text())
    procs = [r for s in tree["sections"] for r in s.get("records", []) if r["record"] == "Process"]
    assert len(procs) == 3


def test_the_chain_goldens_are_a_chain(tmp_path: Path) -> None:
    """chain-final builds on chain-predump: its Parent record names it, by its file name,
    UUID, size and digest, and verify follows the link."""
    from cptimage.chain import Chain, verify_chain

    for name in ("chain-predump", "chain-final"):
        (tmp_path / f"{name}.img").write_bytes((GOLDEN / f"{name}.img").read_bytes())
    assert verify_chain(tmp_path / "chain-final.img").problems == []
    with Chain(str(tmp_path / "chain-final.img")) as chain:
        assert [r["kind"] for r in chain.describe()] == ["incremental", "pre-dump"]
