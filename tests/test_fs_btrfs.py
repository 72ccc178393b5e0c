"""The btrfs backend on a real loop-file btrfs: snapshots, exact change reports from send
streams, all-or-none groups, rollback in place, sizes."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import btrfsutil
import pytest

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


def _sh(*argv: str | Path) -> str:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True, text=True,
                          timeout=60).stdout  # fmt: skip


def _leftovers(path: Path) -> list[str]:
    """Mounts and loop devices that still refer to anything under `path`."""
    mounts = [line for line in Path("/proc/mounts").read_text().splitlines() if str(path) in line]
    loops = [line for line in _sh("losetup", "-a").splitlines() if str(path) in line]
    return mounts + loops


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One loop-file btrfs for the module, mounted noatime; removed even on failure."""
    top = tmp_path_factory.mktemp("btrfs")
    image, mnt = top / "fs.img", top / "mnt"
    with open(image, "wb") as f:
        f.truncate(1 << 30)
    mnt.mkdir()
    device = ""
    try:
        device = _sh("losetup", "--find", "--show", image).strip()
        _sh("mkfs.btrfs", "-q", "-f", device)
        _sh("mount", "-o", "noatime", device, mnt)
        yield mnt
    finally:
        if os.path.ismount(mnt):
            _sh("umount", mnt)
        if device:
            _sh("losetup", "--detach", device)
        image.unlink()
        assert _leftovers(top) == []


def _delete_subvolumes(root: Path) -> None:
    """Every subvolume under `root`, children first (read-only ones included)."""
    for rel, _ in btrfsutil.SubvolumeIterator(root, post_order=True):
        btrfsutil.delete_subvolume(root / rel)


@pytest.fixture
def work(pool: Path) -> Iterator[Path]:
    """A directory of its own in the pool for one test, emptied afterwards by path."""
    d = pool / f"t-{uuid.uuid4().hex[:8]}"
    btrfsutil.create_subvolume(d)
    try:
        yield d
    finally:
        _delete_subvolumes(d)
        btrfsutil.delete_subvolume(d)


FS = BtrfsFilesystem()


def _tree(root: Path) -> dict[str, tuple[int, bytes | str | None]]:
    """path -> (mode, content or link target) for every path under root."""
    out: dict[str, tuple[int, bytes | str | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            value: bytes | str | None = None
            if p.is_symlink():
                value = os.readlink(p)
            elif p.is_file():
                value = p.read_bytes()
            out[str(p.relative_to(root))] = (st.st_mode, value)
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
    """One change of every kind; returns what a report must say about it."""
    with open(area / "mod", "ab") as f:
        f.write(b"more")
    # Same size, same mtime: only the content tells.
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
    (area / "d/z").write_text("z")  # d's mtime moves too: an echo, not reported
    os.utime(area / "d2", ns=(1, 1))  # a directory whose only change is its times
    for name in ("1", "2"):
        (area / "big" / name).unlink()
    (area / "big").rmdir()
    (area / "lnk").symlink_to("keep")
    (area / "keep").read_bytes()  # a read is no change (noatime)
    return Changes(
        added=["d/z", "lnk", "new", "renamed", "tree2", "tree2/sub", "tree2/sub/y", "tree2/x"],
        removed=["big", "big/1", "big/2", "gone", "old", "tree", "tree/sub", "tree/sub/y",
                 "tree/x"],
        changed=["d2", "mod", "perm", "same", "xa"],
    )  # fmt: skip


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
    again = FS.info(info.path)
    assert (again.uuid, again.generation, again.subvolume) == (info.uuid, info.generation, area)
    with pytest.raises(FsError, match="exists"):
        FS.snapshot(area, info.path)


def test_changed_since_names_exactly_the_changes(work: Path) -> None:
    area = work / "area"
    FS.create_area(area)
    _populate(area)
    snap = FS.snapshot(area, work / "snap").path
    assert FS.changed_since(area, snap) == []
    expected = _mutate(area)
    assert FS.changes_since(area, snap) == expected
    assert FS.changed_since(area, snap) == expected.paths()
    # The temporary read-only snapshot send needed is gone.
    assert sorted(os.listdir(work)) == ["area", "snap"]


def test_a_read_changes_nothing_and_a_touch_does(work: Path) -> None:
    area = work / "area"
    FS.create_area(area)
    (area / "f").write_text("x")
    snap = FS.snapshot(area, work / "snap").path
    btrfsutil.sync(area)
    (area / "f").read_text()
    assert FS.changed_since(area, snap) == []
    os.utime(area / "f")
    assert FS.changed_since(area, snap) == ["f"]


def test_diff_between_snapshots_both_ways(work: Path) -> None:
    area = work / "area"
    FS.create_area(area)
    _populate(area)
    a = FS.snapshot(area, work / "a").path
    expected = _mutate(area)
    b = FS.snapshot(area, work / "b").path
    assert FS.diff(a, b) == expected
    back = FS.diff(b, a)
    assert (back.added, back.removed) == (expected.removed, expected.added)


def test_send_stream_is_parsed_like_receive_dump(work: Path) -> None:
    """Our parser reads the same commands `btrfs receive --dump` prints, and an xattr value
    holding a newline (which forges a line in the dump) is just data to it."""
    area = work / "area"
    FS.create_area(area)
    _populate(area)
    a = FS.snapshot(area, work / "a").path
    _mutate(area)
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


def test_snapshot_many_is_all_or_none(work: Path) -> None:
    areas = [work / "root", work / "var"]
    for area in areas:
        FS.create_area(area)
        (area / "f").write_text(area.name)
    dests = [work / "s" / "root", work / "s" / "var"]
    # A destination that exists: refused before anything is made.
    dests[1].parent.mkdir()
    dests[1].mkdir()
    with pytest.raises(FsError, match="exists"):
        FS.snapshot_many(areas, dests)
    assert not dests[0].exists()
    dests[1].rmdir()
    # The second area is no subvolume: the first snapshot, made, is removed again.
    plain = work / "plain"
    plain.mkdir()
    with pytest.raises(UnsupportedFs):
        FS.snapshot_many([areas[0], plain], dests)
    assert not dests[0].exists() and not dests[1].exists()
    infos = FS.snapshot_many(areas, dests)
    assert [i.path for i in infos] == dests
    assert [(d / "f").read_text() for d in dests] == ["root", "var"]


def test_rollback_restores_exactly_and_keeps_the_newer_contents(work: Path) -> None:
    area = work / "area"
    FS.create_area(area)
    _populate(area)
    snap = FS.snapshot(area, work / "snap").path
    before = _tree(area)
    _mutate(area)
    after = _tree(area)
    assert after != before
    pre = FS.rollback(area, snap, keep=work / "pre")
    assert pre == work / "pre"
    assert _tree(area) == before
    assert _tree(pre) == after
    assert btrfsutil.get_subvolume_read_only(pre)
    assert btrfsutil.get_subvolume_read_only(snap)  # never made writable in place
    assert not btrfsutil.get_subvolume_read_only(area)
    assert FS.changed_since(area, snap) == []
    (area / "written").write_text("after rollback")
    assert FS.changed_since(area, snap) == ["written"]
    # Forward again, to the pre-rollback point: the default keeps beside the snapshot.
    pre2 = FS.rollback(area, pre)
    assert pre2.parent == pre.parent and pre2.name.startswith("pre.pre-rollback-")
    assert _tree(area) == after
    with pytest.raises(FsError, match="exists"):
        FS.rollback(area, snap, keep=pre)


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
    before = _tree(area)
    assert FS.changed_since(area, snap) == []
    # changes inside nested subvolumes count, and so does a new one
    (area / "a" / "x").write_text("x2")
    (area / "a" / "b" / "new").write_text("n")
    btrfsutil.create_subvolume(area / "c")
    (area / "c" / "big").write_bytes(os.urandom(1 << 20))
    want = Changes(added=["a/b/new", "c", "c/big"], changed=["a/x"])
    assert FS.changes_since(area, snap) == want
    after = _tree(area)
    pre = FS.rollback(area, snap, keep=work / "pre")
    assert _tree(area) == before
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
    assert _tree(area) == after
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
    with pytest.raises(FsError, match="does not exist"):
        FS.snapshot(work / "missing", work / "s")
    (work / "plain").mkdir()
    with pytest.raises(UnsupportedFs, match="not a btrfs subvolume"):
        FS.snapshot(work / "plain", work / "s")
    writable = FS.snapshot(area, work / "rw", readonly=False).path
    with pytest.raises(UnsupportedFs, match="not a read-only snapshot"):
        FS.changed_since(area, writable)
    inner = area / "mnt"
    inner.mkdir()
    _sh("mount", "-t", "tmpfs", "tmpfs", inner)
    try:
        with pytest.raises(FsError, match="holds a mount"):
            FS.delete_area(area)
    finally:
        _sh("umount", inner)
    FS.delete_area(area)
    assert not area.exists()


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
