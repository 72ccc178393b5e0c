"""The Filesystem contract (storage/base.py), one suite run against every backend on a
real filesystem: btrfs on a loop-file btrfs, the copy fallback in both its modes (reflink
copies on that btrfs, the content-addressed store on a tmpfs), and LVM thin snapshots on a
loop-file volume group where device-mapper exists (this machine's kernel has none: those
are skipped, saying so).  What only one backend does is tested in test_fs_<backend>.py."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import btrfsutil
import pytest
from fstrees import mutate, populate, special, tree
from loopfs import DM_MISSING, delete_subvolumes, device_mapper, mounted, sh, thin_pool

from cptimage.records import FsBackend
from storage.base import Filesystem
from storage.btrfs import BtrfsFilesystem
from storage.copy import STORE_DIR, CopyFilesystem
from storage.errors import FsError
from storage.lvm import LvmFilesystem

pytestmark = [
    pytest.mark.root,
    pytest.mark.destructive,
    pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and mounts need root"),
]

# backend -> what its snapshots say they are
KINDS = {
    "btrfs": FsBackend.BTRFS,
    "copy-reflink": FsBackend.REFLINK,
    "copy-store": FsBackend.STORE,
    "lvm": FsBackend.LVM,
}


@dataclass
class Backend:
    kind: str
    fs: Filesystem
    work: Path  # a directory of the test's own, where its areas and snapshots go

    @property
    def area(self) -> Path:
        return self.work / "area"


@pytest.fixture(scope="module")
def mounts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A loop-file btrfs and a tmpfs for the module."""
    with mounted(tmp_path_factory.mktemp("contract"), ["btrfs", "tmpfs"], size=1 << 30) as m:
        yield m


@pytest.fixture(params=list(KINDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    kind = request.param
    if kind == "lvm":
        if not device_mapper():
            pytest.skip(DM_MISSING)
        if shutil.which("lvcreate") is None:
            pytest.skip("lvm2 is not installed")
        with thin_pool(tmp_path) as (vg, pool):
            (tmp_path / "work").mkdir()
            yield Backend(kind, LvmFilesystem(vg, pool, area_size="256M"), tmp_path / "work")
        return
    mounts = request.getfixturevalue("mounts")
    work = mounts["tmpfs" if kind == "copy-store" else "btrfs"] / f"t-{uuid.uuid4().hex[:8]}"
    if kind == "btrfs":
        btrfsutil.create_subvolume(work)
        try:
            yield Backend(kind, BtrfsFilesystem(), work)
        finally:
            delete_subvolumes(work)
            btrfsutil.delete_subvolume(work)
        return
    work.mkdir()
    try:
        yield Backend(kind, CopyFilesystem(), work)
    finally:
        shutil.rmtree(work)


def test_a_snapshot_is_described_and_never_written_over(backend: Backend) -> None:
    fs, area = backend.fs, backend.area
    fs.create_area(area)
    (area / "f").write_text("x")
    info = fs.snapshot(area, backend.work / "snaps" / "1")
    assert info.backend is KINDS[backend.kind]
    assert info.read_only and info.subvolume == area
    assert info.path == backend.work / "snaps" / "1"
    again = fs.info(info.path)
    assert (again.backend, again.uuid, again.generation, again.subvolume) == (
        info.backend, info.uuid, info.generation, area,
    )  # fmt: skip
    with pytest.raises(FsError, match="exists"):
        fs.snapshot(area, info.path)
    fs.delete_snapshot(info.path)
    assert not info.path.exists()


def test_changes_since_names_exactly_the_changes(backend: Backend) -> None:
    fs, area, work = backend.fs, backend.area, backend.work
    fs.create_area(area)
    populate(area)
    snap = fs.snapshot(area, work / "snap").path
    assert fs.changed_since(area, snap) == []
    expected = mutate(area)
    assert fs.changes_since(area, snap) == expected
    assert fs.changed_since(area, snap) == expected.paths()
    # Nothing the comparison needed is left (btrfs: the read-only snapshot send needed).
    assert sorted(p for p in os.listdir(work) if p != STORE_DIR) == ["area", "snap"]


def test_diff_between_snapshots_both_ways(backend: Backend) -> None:
    fs, area, work = backend.fs, backend.area, backend.work
    fs.create_area(area)
    populate(area)
    a = fs.snapshot(area, work / "a").path
    expected = mutate(area)
    b = fs.snapshot(area, work / "b").path
    assert fs.diff(a, b) == expected
    back = fs.diff(b, a)
    assert (back.added, back.removed) == (expected.removed, expected.added)


def test_a_read_changes_nothing_and_a_touch_does(backend: Backend) -> None:
    fs, area = backend.fs, backend.area
    fs.create_area(area)
    (area / "f").write_text("x")
    snap = fs.snapshot(area, backend.work / "snap").path
    fs.sync(area)
    (area / "f").read_text()
    assert fs.changed_since(area, snap) == []
    os.utime(area / "f")
    assert fs.changed_since(area, snap) == ["f"]


def test_a_write_in_place_does_not_reach_the_snapshot(backend: Backend) -> None:
    """What a hard-link copy would get wrong: the snapshot keeps the old bytes."""
    fs, area = backend.fs, backend.area
    fs.create_area(area)
    (area / "f").write_bytes(b"old contents")
    snap = fs.snapshot(area, backend.work / "snap").path
    with open(area / "f", "r+b") as f:
        f.write(b"NEW")
    assert fs.changed_since(area, snap) == ["f"]
    fs.rollback(area, snap)
    assert (area / "f").read_bytes() == b"old contents"


def test_rollback_restores_every_attribute_and_keeps_the_newer_contents(
    backend: Backend,
) -> None:
    fs, area, work = backend.fs, backend.area, backend.work
    fs.create_area(area)
    populate(area)
    special(area)
    snap = fs.snapshot(area, work / "snap").path
    before = tree(area)
    expected = mutate(area)
    (area / "owned").write_text("changed")
    after = tree(area)
    assert after != before
    pre = fs.rollback(area, snap, keep=work / "pre")
    assert pre == work / "pre"
    assert tree(area) == before
    assert (area / "hard1").stat().st_ino == (area / "hard2").stat().st_ino
    assert fs.changed_since(area, snap) == []
    # The pre-rollback snapshot holds the newer contents.
    assert fs.diff(snap, pre).paths() == sorted({*expected.paths(), "owned"})
    (area / "written").write_text("after rollback")
    assert fs.changed_since(area, snap) == ["written"]
    # Forward again, to the pre-rollback point: the default keeps beside the snapshot.
    pre2 = fs.rollback(area, pre)
    assert pre2.parent == pre.parent and pre2.name.startswith("pre.pre-rollback-")
    assert tree(area) == after
    with pytest.raises(FsError, match="exists"):
        fs.rollback(area, snap, keep=pre)
    assert not [p for p in os.listdir(work) if ".rollback-" in p or ".old-" in p]


def test_snapshot_many_is_all_or_none(backend: Backend) -> None:
    fs, work = backend.fs, backend.work
    areas = [work / "root", work / "var"]
    for area in areas:
        fs.create_area(area)
        (area / "f").write_text(area.name)
    dests = [work / "s" / "root", work / "s" / "var"]
    # A destination that exists: refused before anything is made.
    dests[1].parent.mkdir()
    dests[1].mkdir()
    with pytest.raises(FsError, match="exists"):
        fs.snapshot_many(areas, dests)
    assert not dests[0].exists()
    dests[1].rmdir()
    # The second area is missing: the first snapshot, made, is removed again.
    with pytest.raises(FsError, match="does not exist"):
        fs.snapshot_many([areas[0], work / "missing"], dests)
    assert not dests[0].exists() and not dests[1].exists()
    infos = fs.snapshot_many(areas, dests)
    assert [i.path for i in infos] == dests
    assert [i.subvolume for i in infos] == areas
    assert [fs.changed_since(a, d) for a, d in zip(areas, dests, strict=True)] == [[], []]


def test_refusals(backend: Backend) -> None:
    fs, area, work = backend.fs, backend.area, backend.work
    with pytest.raises(FsError, match="does not exist"):
        fs.snapshot(work / "missing", work / "s")
    assert not (work / "s").exists()
    fs.create_area(area)
    inner = area / "mnt"
    inner.mkdir()
    sh("mount", "-t", "tmpfs", "tmpfs", inner)
    try:
        with pytest.raises(FsError, match="holds a mount"):
            fs.delete_area(area)
    finally:
        sh("umount", inner)
    fs.delete_area(area)
    assert not area.exists()
