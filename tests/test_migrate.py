"""`cpt migrate` between two node roots of this machine, through the local transport
(CPT_MIGRATE_TRANSPORT=local: HOST is the destination's node root, and the same `cpt node
serve --stdio` runs there as over ssh).  Real VEs on real loop-file btrfs pools; the
destination's VE runs in its own node root's cgroup and run directory.

Two node roots of one machine share the id ranges (CPT_IDMAP_DIR): a VE that contains its
root hands its range over.  Addresses from 198.18.0.0/15 only.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cptcli import CPT, REPO
from ve_node import Node, node_at

pytestmark = [
    pytest.mark.root,
    pytest.mark.destructive,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="VEs and btrfs need root"),
]


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, Node]]:
    base = tmp_path_factory.mktemp("mig")
    ids = base / "ids"
    with node_at(base / "A") as a, node_at(base / "B") as b:
        for n in (a, b):
            n.ids = ids
            n.env["CPT_IDMAP_DIR"] = str(ids)
            n.env["CPT_MIGRATE_TRANSPORT"] = "local"
            n.env.pop("CPT_RUN_DIR", None)
        yield a, b
        for n in (a, b):  # what a test left on either side
            for veid in [*n.created]:
                n.cpt("ve", "stop", veid, "--timeout", "1")
                n.cpt("ve", "destroy", veid)


def ok(node: Node, *args: object, timeout: float = 120) -> str:
    rc, out, err = node.cpt(*args, timeout=timeout)
    assert rc == 0, f"cpt {' '.join(map(str, args))}: rc {rc}: {out}{err}"
    return out


def status(node: Node, veid: str) -> str:
    rc, out, err = node.cpt("ve", "status", veid, "--json")
    if rc != 0:
        return f"error {rc}: {err.strip()}"
    return str(json.loads(out)["status"])


def tree_digest(root: Path) -> dict[str, str]:
    """Every file below `root` (by its path): its contents' digest, mode and owner."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = f"link:{os.readlink(p)}"
                continue
            h = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "-"
            out[rel] = f"{h}:{st.st_mode:o}:{st.st_uid}:{st.st_gid}"
    return out


def private(node: Node, veid: str) -> Path:
    return node.root / "pool" / "private" / veid


def counter_ve(node: Node, veid: str, ip: str, *extra: str) -> Path:
    """VE `veid` running a counter (/root/count, one line a tick, 20 ticks/s) and its
    data: a file and a nested subvolume with a file."""
    script = "i=0; while :; do i=$((i+1)); echo $i > /root/count.tmp; mv /root/count.tmp /root/count; sleep 0.05; done"
    node.create(veid, "--ip", ip, *extra, "--", "/bin/sh", "-c", script)
    area = private(node, veid)
    (area / "root").mkdir(exist_ok=True)
    (area / "root" / "data").write_bytes(os.urandom(1 << 20))
    subprocess.run(["btrfs", "-q", "subvolume", "create", str(area / "srv")], check=True)
    (area / "srv" / "nested.txt").write_text("nested subvolume\n")
    return area


def count(area: Path) -> int:
    for _ in range(100):
        try:
            return int((area / "root" / "count").read_text())
        except (ValueError, FileNotFoundError):
            time.sleep(0.02)
    raise AssertionError(f"{area}/root/count unreadable")


def ticks(area: Path) -> None:
    c = count(area)
    deadline = time.monotonic() + 10
    while count(area) <= c:
        assert time.monotonic() < deadline, f"{area}: the counter does not run"
        time.sleep(0.05)


def gone_from(node: Node, veid: str) -> None:
    """Nothing of the VE left on `node` but its .migrated config."""
    assert status(node, veid) == "migrated"
    assert not private(node, veid).exists()
    assert not (node.root / "pool" / "migrate" / veid).exists()
    assert (node.root / "ve" / f"{veid}.toml.migrated").exists()
    assert not (node.root / "ve" / f"{veid}.toml").exists()


def test_offline_migration_moves_a_running_ve_and_its_area(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    area = counter_ve(a, "m1", "198.18.61.2/24")
    ok(a, "ve", "start", "m1")
    ticks(area)
    ok(a, "ve", "stop", "m1")
    before = tree_digest(area)
    ok(a, "ve", "start", "m1")
    out = ok(a, "migrate", b.root, "m1", "-t")
    assert "migrated" in out and "fs_sync" in out, out
    b.created.append("m1")
    a.created.remove("m1")
    gone_from(a, "m1")
    assert status(b, "m1") == "running"
    barea = private(b, "m1")
    ticks(barea)
    listed = {r["veid"]: r["status"] for r in json.loads(ok(a, "ve", "list", "--json"))}
    assert listed["m1"] == "migrated"
    ok(b, "ve", "stop", "m1")
    after = tree_digest(barea)
    del before["root/count"], after["root/count"]
    assert after == before
    assert (barea / "srv" / "nested.txt").read_text() == "nested subvolume\n"
    got = subprocess.run(["btrfs", "subvolume", "show", str(barea / "srv")], capture_output=True)
    assert got.returncode == 0, "the nested subvolume came as a subvolume"


def test_remove_area_no_keeps_the_area_here(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    area = counter_ve(a, "m2", "198.19.61.3/32")
    rc, _, err = a.cpt("migrate", b.root, "m2", "--remove-area", "no")
    assert rc == 0, err
    b.created.append("m2")
    a.created.remove("m2")
    assert status(a, "m2") == "migrated" and status(b, "m2") == "stopped"
    assert (area / "root" / "data").exists(), "--remove-area no keeps the private area"
    assert (private(b, "m2") / "root" / "data").read_bytes() == (
        area / "root" / "data"
    ).read_bytes()
    # back onto the node that kept the area: refused, saying what to remove (9)
    rc, _, err = b.cpt("migrate", a.root, "m2")
    assert rc == 9, err
    assert f"{area} was kept" in err and "--remove-area no" in err and "remove it" in err, err
    assert status(b, "m2") == "stopped"
    subprocess.run(["btrfs", "-q", "subvolume", "delete", "-R", str(area)], check=False)


def test_keep_dst_leaves_a_failed_destination_for_inspection(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    counter_ve(a, "m3", "198.19.61.4/32")
    ok(a, "ve", "start", "m3")
    env = dict(a.env, CPT_MIGRATE_DST_FAULT="restore:memory")
    p = subprocess.run(
        [*CPT, "migrate", "--online", "--noiter", "--keep-dst", str(b.root), "m3"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 7, p.stderr
    assert status(a, "m3") == "running"
    ticks(private(a, "m3"))
    assert (b.root / "run" / "migrate-m3.json").exists(), "the journal kept"
    assert private(b, "m3").exists(), "the received area kept"
    assert status(b, "m3") == "stopped", "kept, never running"
    # the next migration's pre-flight undoes what was kept, then moves it
    rc, _, err = a.cpt("migrate", "--online", "--noiter", b.root, "m3")
    assert rc == 0, err
    b.created.append("m3")
    a.created.remove("m3")
    assert status(b, "m3") == "running"
    gone_from(a, "m3")
    ok(b, "ve", "stop", "m3")
