"""What only the copy fallback does, on real filesystems: its method follows the filesystem
(reflink copies on btrfs, the content-addressed store on tmpfs and ext4, which have no
reflinks), a failed snapshot leaves nothing, and store objects are shared between
snapshots and collected.  The Filesystem contract it keeps in both modes is
test_fs_contract.py."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from loopfs import mounted, sh

from cptimage.records import FsBackend
from storage.copy import MANIFEST, STORE_DIR, TREE, CopyFilesystem
from storage.objstore import ObjectStore

pytestmark = [
    pytest.mark.root,
    pytest.mark.destructive,
    pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and mounts need root"),
]


@pytest.fixture(scope="module")
def filesystems(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A loop-file btrfs, a loop-file ext4 and a tmpfs, mounted for the module; all removed
    (umount, losetup -d, image files) even on failure."""
    with mounted(tmp_path_factory.mktemp("copyfs"), ["btrfs", "ext4", "tmpfs"]) as m:
        yield m


@pytest.fixture(params=["btrfs", "tmpfs"])
def work(request: pytest.FixtureRequest, filesystems: dict[str, Path]) -> Iterator[Path]:
    """A directory of its own for one test, on btrfs (reflinks) or tmpfs (the store)."""
    d = filesystems[request.param] / f"t-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    try:
        yield d
    finally:
        shutil.rmtree(d)


def _expected_method(work: Path) -> FsBackend:
    return FsBackend.REFLINK if work.parent.name == "btrfs" else FsBackend.STORE


def test_the_method_follows_the_filesystem(work: Path, filesystems: dict[str, Path]) -> None:
    fs = CopyFilesystem()
    area = work / "area"
    fs.create_area(area)
    (area / "data").write_bytes(os.urandom(4 << 20))
    info = fs.snapshot(area, work / "snap")
    assert info.backend is _expected_method(work)
    assert info.manifest_digest == hashlib.sha256((info.path / MANIFEST).read_bytes()).digest()
    assert info.subvolume == area and info.read_only
    if info.backend is FsBackend.REFLINK:
        # The copy shares every extent with the area: no exclusive byte.
        du = sh("btrfs", "filesystem", "du", "-s", "--raw", info.path / TREE)
        assert du.splitlines()[-1].split()[1] == "0"
    else:
        assert not (info.path / TREE).exists()
        assert (work / STORE_DIR / "objects").is_dir()
    # ext4 has no reflinks either: the probe picks the store there too.
    ext4 = filesystems["ext4"] / f"t-{uuid.uuid4().hex[:8]}"
    try:
        fs.create_area(ext4 / "area")
        (ext4 / "area" / "f").write_text("x")
        assert fs.snapshot(ext4 / "area", ext4 / "snap").backend is FsBackend.STORE
    finally:
        shutil.rmtree(ext4)


def test_a_failed_snapshot_is_removed(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fs = CopyFilesystem()
    area = work / "area"
    fs.create_area(area)
    (area / "f").write_text("f")
    (area / "g").write_text("g")

    def broken(*args: object) -> None:
        raise OSError(5, "injected I/O error")

    monkeypatch.setattr(ObjectStore, "put", broken)
    monkeypatch.setattr("storage.copy.clone_or_copy", broken)
    with pytest.raises(OSError, match="injected"):
        fs.snapshot(area, work / "snap")
    assert not (work / "snap").exists()
    refs = work / STORE_DIR / "refs"
    assert not refs.exists() or not any(refs.iterdir())


def test_store_objects_are_shared_and_collected(filesystems: dict[str, Path]) -> None:
    work = filesystems["tmpfs"] / f"t-{uuid.uuid4().hex[:8]}"
    fs = CopyFilesystem(store=work / "objects-here")
    try:
        area = work / "area"
        fs.create_area(area)
        (area / "one").write_bytes(b"1" * 1000)
        (area / "also-one").write_bytes(b"1" * 1000)
        (area / "two").write_bytes(b"2" * 3000)
        s1 = fs.snapshot(area, work / "s1").path
        s2 = fs.snapshot(area, work / "s2").path
        objects = work / "objects-here" / "objects"
        assert len(list(objects.glob("*/*"))) == 2  # contents, not files, are stored
        assert fs.size(s1) == 0  # every object is shared with s2
        (area / "two").write_bytes(b"3" * 5000)
        s3 = fs.snapshot(area, work / "s3").path
        assert fs.size(s3) == 5000
        fs.delete_snapshot(s1)
        assert len(list(objects.glob("*/*"))) == 3
        fs.delete_snapshot(s2)
        assert len(list(objects.glob("*/*"))) == 2  # "2" * 3000 went with its last snapshot
        fs.rollback(area, s3, keep=work / "pre")
        assert (area / "two").read_bytes() == b"3" * 5000
        fs.delete_snapshot(s3)
        fs.delete_snapshot(work / "pre")
        assert list(objects.glob("*/*")) == []
    finally:
        shutil.rmtree(work)
