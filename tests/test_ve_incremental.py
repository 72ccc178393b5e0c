"""Incremental dumps of VEs: pre-dumps and a final dump on them (`cpt chkpnt VEID
--pre-dump`, `--parent`), and snapshots of a running VE, each incremental on the one
before, on a real loop-file btrfs pool with real VEs.

The workload is fixtures/workloads/scribble.c inside the VE: memory rewritten page by
page at a steady rate, each page's generation kept in memory too, so a restore assembled
from images of different moments (a stale page, a lost one) fails its self-check at
SIGTERM.  Addresses are from 198.18.0.0/15 only.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from ve_node import Node
from workloads import build

pytestmark = [
    pytest.mark.root,
    pytest.mark.destructive,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="VEs and btrfs need root"),
]

MIB = 16


def ok(node: Node, *args: object) -> tuple[str, str]:
    rc, out, err = node.cpt(*args)
    assert rc == 0, f"cpt {' '.join(map(str, args))}: {out}{err}"
    return out, err


def _scribble_ve(node: Node, veid: str, ip: str) -> Path:
    """VE `veid` running scribble (MIB MiB, 1,000 pages/s) in /root/s: its directory as
    the host sees it."""
    launcher = (
        f"cd /root; mkdir -p s; setsid bin/scribble /root/s {MIB} 1000 </dev/null "
        ">/root/s/log 2>&1 & wait"
    )
    node.create(veid, "--ip", ip, "--", "/bin/sh", "-c", launcher)
    private = node.root / "pool" / "private" / veid
    bindir = private / "root" / "bin"
    bindir.mkdir(parents=True)
    shutil.copy(build("scribble"), bindir / "scribble")
    ok(node, "ve", "start", veid)
    wl = private / "root" / "s"
    _wait(lambda: (wl / "ready").exists(), f"{wl}/ready never appeared")
    return wl


def _wait(cond, what: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _count(wl: Path) -> int:
    for _ in range(50):
        try:
            return int((wl / "counter").read_text())
        except ValueError:  # caught mid-write
            time.sleep(0.01)
    raise AssertionError(f"{wl}/counter unreadable")


def _runs_on(wl: Path) -> None:
    c = _count(wl)
    _wait(lambda: _count(wl) > c, f"{wl}: the workload does not run")


def _passes(node: Node, veid: str, wl: Path) -> None:
    """scribble's self-check at SIGTERM: every page at the generation its memory says."""
    pid = int((wl / "ready").read_text())
    (wl / "result").unlink(missing_ok=True)
    ok(node, "ve", "exec", veid, "--", "/bin/kill", "-TERM", str(pid))
    _wait(lambda: (wl / "result").exists(), f"{wl}: no result; log: {_log(wl)}")
    assert (wl / "result").read_text() == "PASS\n", _log(wl)


def _log(wl: Path) -> str:
    try:
        return (wl / "log").read_text()[-2000:]
    except FileNotFoundError:
        return "(no log)"


def _tracked(node: Node, veid: str) -> bool:
    """A holder keeps the VE's tracking between commands (its state file says which)."""
    return (node.root / "run" / f"ve-{veid}.track.json").exists()


def test_ve_predumps_then_final_dump_restore(node: Node, tmp_path: Path) -> None:
    wl = _scribble_ve(node, "311", "198.18.31.2/24")
    p1, p2, final = tmp_path / "p1.img", tmp_path / "p2.img", tmp_path / "final.img"
    _, err = ok(node, "chkpnt", "311", "--pre-dump", "--dumpfile", p1)
    assert "notice" not in err, err
    assert _tracked(node, "311"), "the tracking is held between commands"
    _runs_on(wl)
    _, err = ok(node, "chkpnt", "311", "--pre-dump", "--parent", p1, "--dumpfile", p2)
    assert "notice" not in err, err
    assert p2.stat().st_size < (MIB << 20) // 2, "only what changed since p1"
    out, err = ok(node, "chkpnt", "311", "--parent", p2, "--dumpfile", final, "--json")
    assert "notice" not in err, err
    stats = json.loads(out)
    assert {"frozen_s", "pages_s", "state_s"} <= set(stats)
    assert final.stat().st_size < (MIB << 20) // 2
    assert node.cpt("ve", "status", "311")[1].split()[-1] == "stopped"
    assert not _tracked(node, "311"), "the kill ended the tracking"
    out, _ = ok(node, "image", "show", final)
    assert out.count("pre-dump") == 2 and "incremental" in out, out
    ok(node, "image", "verify", final)
    # a pre-dump alone is not restorable
    rc, _, err = node.cpt("restore", "311", "--dumpfile", p2)
    assert rc == 40 and "pre-dump holds memory only" in err and err.count("\n") == 1, err
    ok(node, "restore", "311", "--dumpfile", final)
    _runs_on(wl)
    _passes(node, "311", wl)
    node.cpt("ve", "stop", "311", "--timeout", "1")


def _snaps(node: Node, veid: str) -> dict[str, dict]:  # type: ignore[type-arg]
    out, _ = ok(node, "snapshot", "list", veid, "--json")
    return {s["name"] or str(s["id"]): s for s in json.loads(out)}


def test_ve_snapshots_are_incremental_and_a_middle_one_can_go(node: Node) -> None:
    wl = _scribble_ve(node, "312", "198.18.31.3/24")
    for name in ("s1", "s2", "s3"):
        _, err = ok(node, "snapshot", "create", "312", "--name", name)
        assert "notice" not in err, err
        _runs_on(wl)
    snaps = _snaps(node, "312")
    s1, s2, s3 = snaps["s1"], snaps["s2"], snaps["s3"]
    assert s1["image_parent"] is None and s1["image_size"] > MIB << 20
    assert s2["image_parent"] == s1["id"] and s3["image_parent"] == s2["id"]
    for s in (s2, s3):
        assert s["image_size"] < (MIB << 20) // 2, "each holds the pages written since"
        assert s["held"] == 0
    assert _tracked(node, "312"), "the tracking goes on between snapshots"
    out, _ = ok(node, "snapshot", "list", "312")
    assert f"on {s1['id']}" in out and f"on {s2['id']}" in out
    # the middle one goes: its image stays while s3's chain needs it
    ok(node, "snapshot", "delete", "312", "s2")
    snaps = _snaps(node, "312")
    assert "s2" not in snaps and snaps["s3"]["held"] == s2["image_size"]
    assert Path(s2["image"]).exists() and not Path(s2["fs"]).exists()
    ok(node, "image", "verify", s3["image"])
    rc, _, _ = node.cpt("snapshot", "cleanup", "312", "--orphans")
    assert rc == 0 and Path(s2["image"]).exists(), "a kept image is no orphan"
    # back to s3: its processes from the chain s3 -> (s2) -> s1
    out, _ = ok(node, "snapshot", "rollback", "312", "s3")
    assert "its processes restored" in out
    _runs_on(wl)
    _passes(node, "312", wl)
    # s3 goes too: nothing needs s2's image any more
    ok(node, "snapshot", "delete", "312", "s3")
    assert not Path(s2["image"]).exists() and not Path(s2["image"]).parent.exists()
    assert Path(s1["image"]).exists()
    node.cpt("ve", "stop", "312", "--timeout", "1")
