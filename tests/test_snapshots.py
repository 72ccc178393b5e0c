"""Filesystem snapshots taken with each dump, and the snapshot manager, on a real
loop-file btrfs pool with real VEs.

A VE whose counter appends to a file of its private area is snapshotted with memory, runs
on, and is rolled back: the file and the process are back at the snapshot point and the
counter continues from there.  A file changed after a chkpnt makes the restore refuse,
naming it; --rollback-fs restores.  Retention keeps exactly what the policy says; a
snapshot in use is kept; concurrent creates and deletes leave a consistent catalog.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from ve_node import CPT, REPO, Node

pytestmark = [
    pytest.mark.root,
    pytest.mark.destructive,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="VEs and btrfs need root"),
]

COUNTER = (
    "import time\n"
    "f = open('/root/count.log', 'a', buffering=1)\n"
    "i = 0\n"
    "while True:\n"
    "    i += 1\n"
    "    f.write(f'{i}\\n')\n"
    "    time.sleep(0.02)\n"
)


def ok(node: Node, *args: object) -> str:
    rc, out, err = node.cpt(*args)
    assert rc == 0, f"cpt {' '.join(map(str, args))}: {err}"
    return out


def snaps(node: Node, veid: str) -> list[dict]:
    return json.loads(ok(node, "snapshot", "list", veid, "--json"))


def lines(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()]


def wait_lines(path: Path, n: int, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        got = lines(path) if path.exists() else []
        if len(got) >= n:
            return got
        assert time.monotonic() < deadline, f"{path}: {len(got)} lines, {n} wanted"
        time.sleep(0.02)


def test_snapshot_then_rollback_brings_files_and_processes_back(node: Node) -> None:
    node.create("401", "--ip", "198.18.41.2/24", "--", "/usr/bin/python3", "-c", COUNTER)
    ok(node, "ve", "start", "401")
    log = node.root / "pool" / "private" / "401" / "root" / "count.log"
    wait_lines(log, 10)
    ok(node, "snapshot", "create", "401", "--name", "s1", "--description", "ten lines in")
    [s1] = snaps(node, "401")
    assert s1["name"] == "s1" and s1["memory"] and s1["kind"] == "snapshot"
    assert s1["description"] == "ten lines in" and s1["parent"] is None
    at_snapshot = lines(Path(s1["fs"]) / "root" / "count.log")
    assert at_snapshot == list(range(1, len(at_snapshot) + 1))
    wait_lines(log, len(at_snapshot) + 30)  # it runs on after the snapshot
    out = ok(node, "snapshot", "rollback", "401", "s1")
    assert "its processes restored" in out
    after = wait_lines(log, len(at_snapshot) + 10)
    assert after[: len(at_snapshot)] == at_snapshot, "the file is back at the snapshot point"
    assert after == list(range(1, len(after) + 1)), "the counter continued from there"
    listed = {s["id"]: s for s in snaps(node, "401")}
    pre = [s for s in listed.values() if s["kind"] == "pre-rollback"]
    assert len(pre) == 1 and len(lines(Path(pre[0]["fs"]) / "root" / "count.log")) > len(
        at_snapshot
    ), "the live area was kept"
    # a filesystem-only snapshot of a running VE; diff names the file that grew
    ok(node, "snapshot", "create", "401", "--no-memory", "--name", "s2")
    s2 = next(s for s in snaps(node, "401") if s["name"] == "s2")
    assert not s2["memory"] and s2["parent"] == s1["id"]
    out = ok(node, "snapshot", "diff", "401", "s1", "s2")
    assert "~ root/count.log" in out
    ok(node, "ve", "stop", "401", "--timeout", "1")


def test_changed_file_refuses_restore_until_rollback_fs(node: Node) -> None:
    node.create("402", "--", "/usr/bin/python3", "-c", COUNTER)
    ok(node, "ve", "start", "402")
    private = node.root / "pool" / "private" / "402"
    wait_lines(private / "root" / "count.log", 5)
    out = ok(node, "chkpnt", "402")
    assert "fs_snapshot_s=" in out
    [cp] = snaps(node, "402")
    assert cp["kind"] == "checkpoint" and cp["image"] == str(node.root / "dump" / "Dump.402")
    rc, _, err = node.cpt("snapshot", "delete", "402", str(cp["id"]))
    assert rc == 21 and "in use" in err, "a dump file waits for it"
    (private / "etc" / "added.conf").write_text("changed after the checkpoint\n")
    rc, _, err = node.cpt("restore", "402")
    assert rc == 17 and "etc/added.conf" in err and "--rollback-fs" in err, err
    assert err.count("\n") == 1
    assert node.cpt("ve", "status", "402")[1].split()[-1] == "suspended", "nothing ran"
    ok(node, "restore", "402", "--rollback-fs")
    assert not (private / "etc" / "added.conf").exists()
    kinds = [s["kind"] for s in snaps(node, "402")]
    assert kinds == ["pre-rollback"], "the checkpoint's snapshot is spent with its dump"
    pre = snaps(node, "402")[0]
    assert (Path(pre["fs"]) / "etc" / "added.conf").exists(), "the change was kept aside"
    wait_lines(private / "root" / "count.log", 10)
    ok(node, "ve", "stop", "402", "--timeout", "1")


def test_retention_keeps_exactly_what_the_policy_says(node: Node) -> None:
    node.create("403")  # stopped: filesystem snapshots
    for i in range(6):
        ok(node, "snapshot", "create", "403", "--name", f"n{i}")
    assert [s["memory"] for s in snaps(node, "403")] == [False] * 6
    ok(node, "snapshot", "cleanup", "403", "--keep", "4")
    assert [s["name"] for s in snaps(node, "403")] == ["n2", "n3", "n4", "n5"]
    os.environ["CPT_ROOT"] = str(node.root)  # the library, for a clock of our own
    try:
        from snapshot.manager import Policy, SnapshotManager

        sm = SnapshotManager()
        newest = max(s.created_ns for s in sm.snapshots("403")) / 1e9
        for s in sm.snapshots("403"):
            assert s.created_ns / 1e9 <= newest
        # a clock 10 s after the newest snapshot: every one is at least 10 s old
        gone = sm.cleanup("403", Policy(max_age=3600), now=newest + 10)
        assert gone == [], "nothing is an hour old"
        gone = sm.cleanup("403", Policy(max_age=5), now=newest + 10)
        assert {s.name for s in gone} == {"n2", "n3", "n4", "n5"}
        assert sm.snapshots("403") == []
        # free space: a demand no pool meets deletes everything deletable
        for i in range(3):
            sm.create("403", name=f"m{i}")
        gone = sm.cleanup("403", Policy(min_free=1 << 60))
        assert [s.name for s in gone] == ["m0", "m1", "m2"]
    finally:
        del os.environ["CPT_ROOT"]
    rc, _, err = node.cpt("snapshot", "cleanup", "403")
    assert rc == 20 and "policy" in err
    rc, _, err = node.cpt("snapshot", "rollback", "403", "nosuch")
    assert rc == 21 and "no snapshot 'nosuch'" in err


def test_concurrent_creates_and_deletes_keep_the_catalog_consistent(node: Node) -> None:
    node.create("404")
    for i in range(4):
        ok(node, "snapshot", "create", "404", "--name", f"base{i}")
    env = dict(node.env)
    procs = [
        subprocess.Popen([*CPT, "snapshot", "create", "404", "--name", f"c{i}"], cwd=REPO,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(4)
    ] + [
        subprocess.Popen([*CPT, "snapshot", "delete", "404", f"base{i}"], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(4)
    ]  # fmt: skip
    results = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in procs]
    for rc, err in results:
        assert rc in (0, 9), err  # done, or refused because another held the VE's lock
        if rc == 9:
            assert "VE 404 is locked" in err
    listed = snaps(node, "404")
    ids = [s["id"] for s in listed]
    assert len(ids) == len(set(ids))
    created = sum(1 for (rc, _), p in zip(results[:4], procs[:4], strict=True) if rc == 0)
    deleted = sum(1 for rc, _ in results[4:] if rc == 0)
    assert len(listed) == 4 + created - deleted
    snapdir = node.root / "pool" / "snapshots" / "404"
    on_disk = {p.name for p in snapdir.iterdir() if p.is_dir()}
    assert on_disk == {str(i) for i in ids}, "no orphan snapshot, no dangling entry"
    for s in listed:
        assert Path(s["fs"]).is_dir()


def test_a_nested_subvolume_is_snapshotted_checked_and_rolled_back_with_the_area(
    node: Node,
) -> None:
    """A snapshot is not recursive: a subvolume nested in the private area is snapshotted
    with it in the frozen window, a change inside it makes restore refuse naming the file,
    and --rollback-fs rolls it back too."""
    import btrfsutil

    node.create("405", "--", "/usr/bin/python3", "-c", COUNTER)
    ok(node, "ve", "start", "405")
    private = node.root / "pool" / "private" / "405"
    inner = private / "root" / "inner"
    btrfsutil.create_subvolume(inner)
    (inner / "data").write_text("at the checkpoint\n")
    wait_lines(private / "root" / "count.log", 5)
    ok(node, "chkpnt", "405")
    [cp] = snaps(node, "405")
    assert sorted(os.listdir(Path(cp["fs"] + ".nested"))) == ["root%2Finner"]
    (inner / "data").write_text("changed after it\n")
    rc, _, err = node.cpt("restore", "405")
    assert rc == 17 and "root/inner/data" in err and "--rollback-fs" in err, err
    ok(node, "restore", "405", "--rollback-fs")
    assert (inner / "data").read_text() == "at the checkpoint\n"
    assert btrfsutil.is_subvolume(inner)
    [pre] = snaps(node, "405")
    assert pre["kind"] == "pre-rollback"
    kept = Path(pre["fs"] + ".nested") / "root%2Finner" / "data"
    assert kept.read_text() == "changed after it\n", "the change was kept aside"
    n = len(lines(private / "root" / "count.log"))
    wait_lines(private / "root" / "count.log", n + 5)
    ok(node, "snapshot", "delete", "405", str(pre["id"]))
    assert not Path(pre["fs"] + ".nested").exists()
    ok(node, "ve", "stop", "405", "--timeout", "1")


def test_a_new_dump_replaces_its_snapshot_and_destroy_removes_every_snapshot(
    node: Node,
) -> None:
    """What the catalog keeps of the VE layer's dumps: one checkpoint snapshot per dump
    file (a dump replacing the file replaces it), and nothing after `ve destroy`."""
    node.create("406", "--", "/bin/sh", "-c", "sleep 1000")
    ok(node, "ve", "start", "406")
    ok(node, "chkpnt", "406", "--leave-running")
    [first] = snaps(node, "406")
    assert first["kind"] == "checkpoint" and Path(first["fs"]).is_dir()
    ok(node, "chkpnt", "406", "--leave-running")
    [second] = snaps(node, "406")
    assert second["kind"] == "checkpoint" and second["id"] > first["id"]
    assert second["image"] == first["image"] and Path(second["fs"]).is_dir()
    assert not Path(first["fs"]).exists() and not Path(first["fs"]).parent.exists()
    ok(node, "snapshot", "create", "406", "--no-memory", "--name", "fsonly")
    assert len(snaps(node, "406")) == 2
    ok(node, "ve", "stop", "406", "--timeout", "1")
    ok(node, "ve", "destroy", "406")
    node.created.remove("406")
    catalog_dir = Path(second["fs"]).parent.parent
    assert catalog_dir.name == "406" and not catalog_dir.exists()
    assert not Path(first["image"]).exists(), "destroy removes the dump file"
