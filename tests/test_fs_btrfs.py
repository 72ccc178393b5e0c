"""What only the btrfs backend does, on a real loop-file btrfs: read-only subvolumes, send
streams parsed as `btrfs receive --dump` reads them, nested subvolumes as one group, the
rollback's subvolume flags, exclusive sizes, and its reports checked against the copy
backend's.  The Filesystem contract every backend keeps is test_fs_contract.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import btrfsutil
import pytest
from fstrees import mutate, populate, tree
from loopfs import delete_subvolumes, mounted

from cptimage.records import FsBackend
from storage import backend_for
from storage.base import Changes
from storage.btrfs import BtrfsFilesystem
from storage.copy import CopyFilesystem
from storage.errors import FsError, UnsupportedFs
from storage.sendstream import Cmd, parse

pytestmark = [
    pytest.mark.root,
    pytest.mark.destructive,
    pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and mounts need root"),
]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One loop-file btrfs for the module, mounted noatime; removed even on failure."""
    with mounted(tmp_path_factory.mktemp("btrfs"), ["btrfs"], size=1 << 30) as m:
        yield m["btrfs"]


@pytest.fixture
def work(pool: Path) -> Iterator[Path]:
    """A directory of its own in the pool for one test, emptied afterwards by path."""
    d = pool / f"t-{uuid.uuid4().hex[:8]}"
    btrfsutil.create_subvolume(d)
    try:
        yield d
    finally:
        delete_subvolumes(d)
        btrfsutil.delete_subvolume(d)


FS = BtrfsFilesystem()


def test_backend_for_probes_btrfs_then_falls_back(work: Path, tmp_path: Path) -> None:
    assert isinstance(backend_for(work / "not-yet" / "area"), BtrfsFilesystem)
    assert isinstance(backend_for(tmp_path), CopyFilesystem)


def test_snapshot_is_read_only_and_described(work: Path) -> None:
    area = work / "area"
    FS.create_area(area)
    (area / "f").write_text("x")
    info = FS.snapshot(area, work / "snaps" / "1")
    area_info = btrfsutil.subvolume_info(area)
    assert info.backend is FsBackend.BTRFS
    assert info.read_only and btrfsutil.get_subvolume_read_only(info.path)
    assert info.subvolume == area
    assert info.parent_uuid == uuid.UUID(bytes=area_info.uuid)
    assert info.generation == area_info.ctransid
    with pytest.raises(OSError):
        (info.path / "f").write_text("y")


def test_send_stream_is_parsed_like_receive_dump(work: Path) -> None:
    """Our parser reads the same commands `btrfs receive --dump` prints, and an xattr value
    holding a newline (which forges a line in the dump) is just data to it."""
    area = work / "area"
    FS.create_area(area)
    populate(area)
    a = FS.snapshot(area, work / "a").path
    mutate(area)
    os.setxattr(area / "keep", "user.evil", b"x\nunlink          ./b/keep")
    b = FS.snapshot(area, work / "b").path
    stream = subprocess.run(["btrfs", "-q", "send", "--no-data", "-p", a, b], check=True,
                            capture_output=True, timeout=60).stdout  # fmt: skip
    dump = subprocess.run(["btrfs", "receive", "--dump"], input=stream, check=True,
                          capture_output=True, timeout=60).stdout.decode()  # fmt: skip
    names = {c.name.lower() for c in Cmd}
    dumped = [line.split()[0] for line in dump.splitlines() if line.split()[0] in names]
    ours = [Cmd(c.cmd).name.lower() for c in parse(stream)]
    assert dumped.count("unlink") == ours.count("unlink") + 1  # the forged line
    assert [c for c in dumped if c != "unlink"] == [c for c in ours if c != "unlink"]
    assert "keep" in FS.changed_since(area, a) and "keep" not in FS.diff(a, b).removed


def test_snapshot_many_refuses_an_area_that_is_no_subvolume(work: Path) -> None:
    areas = [work / "root", work / "plain"]
    FS.create_area(areas[0])
    areas[1].mkdir()
    dests = [work / "s" / "root", work / "s" / "plain"]
    # The second area is no subvolume: the first snapshot, made, is removed again.
    with pytest.raises(UnsupportedFs):
        FS.snapshot_many(areas, dests)
    assert not dests[0].exists() and not dests[1].exists()


def test_rollback_swaps_subvolumes_and_keeps_them_read_only(work: Path) -> None:
    """The live contents become the pre-rollback snapshot as they are (a read-only
    subvolume one can browse); the snapshot is never made writable in place."""
    area = work / "area"
    FS.create_area(area)
    populate(area)
    snap = FS.snapshot(area, work / "snap").path
    mutate(area)
    after = tree(area)
    pre = FS.rollback(area, snap, keep=work / "pre")
    assert tree(pre) == after
    assert btrfsutil.get_subvolume_read_only(pre)
    assert btrfsutil.get_subvolume_read_only(snap)  # never made writable in place
    assert not btrfsutil.get_subvolume_read_only(area)


def _nest(area: Path) -> None:
    """Two nested subvolumes, one inside the other: a and a/b."""
    (area / "top").write_text("t")
    btrfsutil.create_subvolume(area / "a")
    (area / "a" / "x").write_text("x1")
    btrfsutil.create_subvolume(area / "a" / "b")
    (area / "a" / "b" / "y").write_text("y1")


def test_nested_subvolumes_are_snapshotted_compared_and_rolled_back_as_one_group(
    work: Path,
) -> None:
    area = work / "area"
    FS.create_area(area)
    _nest(area)
    snap = FS.snapshot(area, work / "snap").path
    group = work / "snap.nested"
    assert sorted(os.listdir(group)) == ["a", "a%2Fb"]
    assert all(btrfsutil.get_subvolume_read_only(group / n) for n in os.listdir(group))
    assert (group / "a%2Fb" / "y").read_text() == "y1"
    # A rollback puts each nested snapshot in place inside its parent: the parent's mtime
    # is the rollback's (a known gap; the send stream does not report it either).
    before = tree(area, times=False)
    assert FS.changed_since(area, snap) == []
    # changes inside nested subvolumes count, and so does a new one
    (area / "a" / "x").write_text("x2")
    (area / "a" / "b" / "new").write_text("n")
    btrfsutil.create_subvolume(area / "c")
    (area / "c" / "big").write_bytes(os.urandom(1 << 20))
    want = Changes(added=["a/b/new", "c", "c/big"], changed=["a/x"])
    assert FS.changes_since(area, snap) == want
    after = tree(area, times=False)
    pre = FS.rollback(area, snap, keep=work / "pre")
    assert tree(area, times=False) == before
    for rel in ("a", "a/b"):
        assert btrfsutil.is_subvolume(area / rel)
        assert not btrfsutil.get_subvolume_read_only(area / rel)
    assert not (area / "c").exists()
    assert FS.changed_since(area, snap) == []
    # the live contents are a group too, and a rollback to it goes forward again
    assert sorted(os.listdir(work / "pre.nested")) == ["a", "a%2Fb", "c"]
    assert FS.diff(snap, pre) == want
    assert FS.size(pre) >= 1 << 20, "the group's size counts c/big"
    pre2 = FS.rollback(area, pre, keep=work / "pre2")
    assert tree(area, times=False) == after
    assert FS.changed_since(area, pre) == []
    for s in (snap, pre, pre2):
        FS.delete_snapshot(s)
        assert not s.exists() and not s.with_name(s.name + ".nested").exists()
    # a group is never written over: refused before anything is made
    (work / "s3.nested").mkdir()
    with pytest.raises(FsError, match="exists"):
        FS.snapshot(area, work / "s3")
    assert not (work / "s3").exists()


def test_refusals(work: Path) -> None:
    area = work / "area"
    FS.create_area(area)
    (work / "plain").mkdir()
    with pytest.raises(UnsupportedFs, match="not a btrfs subvolume"):
        FS.snapshot(work / "plain", work / "s")
    writable = FS.snapshot(area, work / "rw", readonly=False).path
    with pytest.raises(UnsupportedFs, match="not a read-only snapshot"):
        FS.changed_since(area, writable)


def test_size_counts_exclusive_bytes(work: Path) -> None:
    area = work / "area"
    FS.create_area(area)
    (area / "data").write_bytes(os.urandom(8 << 20))
    FS.sync(area)
    snap = FS.snapshot(area, work / "snap").path
    assert FS.size(area) == 0  # every extent shared with the snapshot
    with open(area / "data", "r+b") as f:
        f.write(os.urandom(8 << 20))
    FS.sync(area)
    # The new extents are the area's alone, the old ones the snapshot's alone.
    assert FS.size(area) >= 8 << 20
    assert FS.size(snap) >= 8 << 20


def _swap_dirs(area: Path) -> None:
    (area / "a").rename(area / "tmp")
    (area / "b").rename(area / "a")
    (area / "tmp").rename(area / "b")


def _file_to_dir(area: Path) -> None:
    (area / "f").unlink()
    (area / "f").mkdir()
    (area / "f" / "inside").write_text("inside")


def _dir_to_file(area: Path) -> None:
    shutil.rmtree(area / "a")
    (area / "a").write_text("now a file")


def _hard_link(area: Path) -> None:
    os.link(area / "f", area / "b" / "f-link")


def _rename_over(area: Path) -> None:
    (area / "g").rename(area / "f")


def _recreate(area: Path) -> None:
    (area / "f").unlink()
    (area / "f").write_text("recreated")


def _odd_names(area: Path) -> None:
    (area / "with space").write_text("s")
    (area / "new\nline").write_text("n")
    os.rename(area / "g", os.fsdecode(bytes(area / "latin-") + b"\xe9"))


def _moves(area: Path) -> None:
    (area / "c").mkdir()
    (area / "f").rename(area / "c" / "f")
    (area / "a").rename(area / "b" / "a")


def _deep(area: Path) -> None:
    (area / "n1/n2/n3").mkdir(parents=True)
    (area / "n1/n2/n3/leaf").write_text("leaf")
    (area / "b" / "y").write_text("y changed")


def _sizes_and_links(area: Path) -> None:
    os.truncate(area / "f", 0)
    with open(area / "g", "r+b") as f:
        f.seek(1 << 20)
        f.write(b"after a hole")
    (area / "sym").unlink()
    (area / "sym").symlink_to("g")
    os.chown(area / "a" / "x", 1000, 1000)


@pytest.mark.parametrize(
    "mutate",
    [_swap_dirs, _file_to_dir, _dir_to_file, _hard_link, _rename_over, _recreate, _odd_names,
     _moves, _deep, _sizes_and_links],
)  # fmt: skip
def test_send_stream_and_tree_comparison_agree(work: Path, mutate: Callable[[Path], None]) -> None:
    """The btrfs report (send stream) and the copy backend's (manifest and tree) name the
    same paths for every kind of rename, replacement and link."""
    area = work / "area"
    FS.create_area(area)
    for d in ("a", "b"):
        (area / d).mkdir()
    (area / "a" / "x").write_text("x")
    (area / "b" / "y").write_text("y")
    (area / "f").write_text("f")
    (area / "g").write_text("g")
    (area / "sym").symlink_to("f")
    copy = CopyFilesystem()
    bsnap = FS.snapshot(area, work / "bsnap").path
    csnap = copy.snapshot(area, work / "csnap").path
    assert copy.info(csnap).backend is FsBackend.REFLINK
    mutate(area)
    by_tree = copy.changes_since(area, csnap)
    assert by_tree
    assert FS.changes_since(area, bsnap) == by_tree
