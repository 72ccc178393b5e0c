"""The copy fallback on real filesystems: reflink copies on btrfs, the content-addressed store
on tmpfs and ext4 (no reflinks there); exact change reports, rollback with every kind of
metadata, objects shared between snapshots and collected."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cptimage.records import FsBackend
from storage.base import Changes
from storage.copy import MANIFEST, STORE_DIR, TREE, CopyFilesystem
from storage.errors import FsError
from storage.objstore import ObjectStore

pytestmark = [
    pytest.mark.root,
    pytest.mark.destructive,
    pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and mounts need root"),
]


def _sh(*argv: str | Path) -> str:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True, text=True,
                          timeout=60).stdout  # fmt: skip


def _leftovers(path: Path) -> list[str]:
    mounts = [line for line in Path("/proc/mounts").read_text().splitlines() if str(path) in line]
    loops = [line for line in _sh("losetup", "-a").splitlines() if str(path) in line]
    return mounts + loops


@pytest.fixture(scope="module")
def filesystems(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A loop-file btrfs, a loop-file ext4 and a tmpfs, mounted for the module; all removed
    (umount, losetup -d, image files) even on failure."""
    top = tmp_path_factory.mktemp("copyfs")
    mounted: dict[str, Path] = {}
    devices: list[str] = []
    try:
        for kind, mkfs in (("btrfs", ["mkfs.btrfs", "-q", "-f"]), ("ext4", ["mkfs.ext4", "-q"])):
            image, mnt = top / f"{kind}.img", top / kind
            with open(image, "wb") as f:
                f.truncate(512 << 20)
            devices.append(_sh("losetup", "--find", "--show", image).strip())
            _sh(*mkfs, devices[-1])
            mnt.mkdir()
            _sh("mount", "-o", "noatime", devices[-1], mnt)
            mounted[kind] = mnt
        (top / "tmpfs").mkdir()
        _sh("mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", top / "tmpfs")
        mounted["tmpfs"] = top / "tmpfs"
        yield mounted
    finally:
        for mnt in mounted.values():
            _sh("umount", mnt)
        for device in devices:
            _sh("losetup", "--detach", device)
        for image in top.glob("*.img"):
            image.unlink()
        assert _leftovers(top) == []


@pytest.fixture(params=["btrfs", "tmpfs"])
def work(request: pytest.FixtureRequest, filesystems: dict[str, Path]) -> Iterator[Path]:
    """A directory of its own for one test, on btrfs (reflinks) or tmpfs (the store)."""
    d = filesystems[request.param] / f"t-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    try:
        yield d
    finally:
        shutil.rmtree(d)


def _tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """path -> every attribute a snapshot must keep: type and mode, owner, mtime, content
    (or link target, or device number), xattrs, and which paths share an inode."""
    out: dict[str, tuple[Any, ...]] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                value: Any = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                value = p.read_bytes()
            else:
                value = st.st_rdev
            xattrs = {n: os.getxattr(p, n, follow_symlinks=False)
                      for n in os.listxattr(p, follow_symlinks=False)}  # fmt: skip
            link = inodes.setdefault(st.st_ino, rel) if st.st_nlink > 1 and not p.is_dir() else ""
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, value, xattrs, link)
    return out


def _populate(area: Path) -> None:
    for name in ("mod", "same", "gone", "old", "perm", "xa", "keep"):
        (area / name).write_bytes(name.encode() * 100)
    for d in ("tree/sub", "d", "d2", "big"):
        (area / d).mkdir(parents=True)
    (area / "tree/x").write_text("x")
    (area / "tree/sub/y").write_text("y")
    (area / "d/in").write_text("in")
    (area / "big/1").write_text("1")
    (area / "big/2").write_text("2")


def _mutate(area: Path) -> Changes:
    """The same changes as tests/test_fs_btrfs.py, and the same expected report."""
    with open(area / "mod", "ab") as f:
        f.write(b"more")
    st = (area / "same").stat()
    with open(area / "same", "r+b") as f:
        f.write(b"SAME")
    os.utime(area / "same", ns=(st.st_atime_ns, st.st_mtime_ns))
    (area / "new").write_text("new")
    (area / "gone").unlink()
    (area / "old").rename(area / "renamed")
    (area / "tree").rename(area / "tree2")
    (area / "perm").chmod(0o600)
    os.setxattr(area / "xa", "user.cpt", b"1")
    (area / "d/z").write_text("z")
    os.utime(area / "d2", ns=(1, 1))
    for name in ("1", "2"):
        (area / "big" / name).unlink()
    (area / "big").rmdir()
    (area / "lnk").symlink_to("keep")
    (area / "keep").read_bytes()
    return Changes(
        added=["d/z", "lnk", "new", "renamed", "tree2", "tree2/sub", "tree2/sub/y", "tree2/x"],
        removed=["big", "big/1", "big/2", "gone", "old", "tree", "tree/sub", "tree/sub/y",
                 "tree/x"],
        changed=["d2", "mod", "perm", "same", "xa"],
    )  # fmt: skip


def _special(area: Path) -> None:
    """Every kind of entry and attribute a rollback must bring back."""
    (area / "suid").write_bytes(b"#!/bin/sh\n")
    (area / "suid").chmod(0o4755)
    (area / "owned").write_text("owned")
    os.chown(area / "owned", 1234, 5678)
    (area / "private").write_text("private")
    (area / "private").chmod(0o600)
    (area / "hard1").write_text("shared inode")
    os.link(area / "hard1", area / "hard2")
    (area / "sym").symlink_to("owned")
    os.mkfifo(area / "fifo")
    os.mknod(area / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.setxattr(area / "owned", "user.note", b"\x00binary\nvalue")
    (area / "sticky").mkdir()
    (area / "sticky").chmod(0o1777)
    os.utime(area / "private", ns=(1_000_000_123, 2_000_000_456))


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
        du = _sh("btrfs", "filesystem", "du", "-s", "--raw", info.path / TREE)
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


def test_changed_since_names_exactly_the_changes(work: Path) -> None:
    fs = CopyFilesystem()
    area = work / "area"
    fs.create_area(area)
    _populate(area)
    snap = fs.snapshot(area, work / "snap").path
    assert fs.changed_since(area, snap) == []
    expected = _mutate(area)
    assert fs.changes_since(area, snap) == expected
    b = fs.snapshot(area, work / "b").path
    assert fs.diff(snap, b) == expected


def test_a_write_in_place_does_not_reach_the_snapshot(work: Path) -> None:
    """What a hard-link copy would get wrong: the snapshot keeps the old bytes."""
    fs = CopyFilesystem()
    area = work / "area"
    fs.create_area(area)
    (area / "f").write_bytes(b"old contents")
    snap = fs.snapshot(area, work / "snap").path
    with open(area / "f", "r+b") as f:
        f.write(b"NEW")
    assert fs.changed_since(area, snap) == ["f"]
    fs.rollback(area, snap)
    assert (area / "f").read_bytes() == b"old contents"


def test_rollback_restores_every_attribute(work: Path) -> None:
    fs = CopyFilesystem()
    area = work / "area"
    fs.create_area(area)
    _populate(area)
    _special(area)
    snap = fs.snapshot(area, work / "snap").path
    before = _tree(area)
    expected = _mutate(area)
    (area / "owned").write_text("changed")
    after = _tree(area)
    pre = fs.rollback(area, snap, keep=work / "pre")
    assert _tree(area) == before
    assert (area / "hard1").stat().st_ino == (area / "hard2").stat().st_ino
    assert fs.changed_since(area, snap) == []
    # The pre-rollback snapshot holds the newer contents.
    assert fs.diff(snap, pre).paths() == sorted({*expected.paths(), "owned"})
    fs.rollback(area, pre)
    assert _tree(area) == after
    assert not [p for p in os.listdir(work) if ".rollback-" in p or ".old-" in p]


def test_snapshot_many_is_all_or_none(work: Path) -> None:
    fs = CopyFilesystem()
    fs.create_area(work / "a")
    (work / "a" / "f").write_text("a")
    with pytest.raises(FsError, match="does not exist"):
        fs.snapshot_many([work / "a", work / "missing"], [work / "s1", work / "s2"])
    assert not (work / "s1").exists() and not (work / "s2").exists()


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
