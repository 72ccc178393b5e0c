"""`cpt image show` says what a restore would grant before anyone runs one (issue 11): the
tree's owner, every process's credentials, and every path outside the image a restore
would open, map, create, bind, connect to, watch, mount or roll back."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from cli.main import app
from cptimage import jsonio

GOLDEN = Path(__file__).resolve().parent.parent / "fixtures" / "images"
OWNER = GOLDEN / "tree-owner.img"  # format 1.2: a --pid tree of uid 1000
OLD = GOLDEN / "tree.img"  # format 1.0: no Owner record
VE = GOLDEN / "every-record.img"  # every record type of 1.0, a VE's image

runner = CliRunner()


def show(path: Path, *extra: str) -> str:
    res = runner.invoke(app, ["image", "show", str(path), *extra], terminal_width=200)
    assert res.exit_code == 0, res.output
    return res.output


def show_json(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(show(path, "--json"))
    return doc


def test_owner_and_credentials_are_printed() -> None:
    out = show(OWNER)
    assert "owner of the tree (process 100): uid 1000, gid 1000, groups 1000,27" in out, out
    assert "credentials (uid/gid: real/effective/saved/fs)" in out
    doc = show_json(OWNER)["credentials"]
    assert doc["owner"]["uid"] == [1000] * 4 and doc["owner"]["cap_prm"] == "0x0"
    assert [(c["pid"], c["comm"], c["uid"]) for c in doc["processes"]] == [
        (100, "sh", [1000] * 4),
        (101, "worker", [1000] * 4),
        (103, "logger", [1000] * 4),
    ]


def test_an_image_without_owner_says_it_needs_trust() -> None:
    out = show(OLD)
    assert "owner of the tree: not recorded (format 1.0): a restore needs --trust" in out
    assert show_json(OLD)["credentials"]["owner"] is None


def test_every_external_path_is_listed_with_its_processes() -> None:
    rows = {(p["path"], p["how"]): p["pids"] for p in show_json(OWNER)["paths"]}
    assert rows == {
        ("/dev/pts/0", "open terminal read-write"): [100, 101, 103],
        ("/home/user", "cwd"): [100, 101, 103],
        ("/home/user/log.txt", "open write"): [103],
        ("/usr/bin/worker", "executable"): [100, 101, 103],
        ("/usr/bin/worker", "map"): [100, 101, 103],
    }
    out = show(OWNER)
    assert "paths a restore opens or creates" in out and "/home/user/log.txt" in out


def test_a_ve_image_lists_its_area_snapshot_fifo_watch_queue_and_ghost() -> None:
    paths = show_json(VE)["paths"]
    hows = {(p["path"], p["how"]) for p in paths}
    assert {
        ("/home/user/fifo", "open FIFO read"),
        ("/home/user/log.txt", "watch (inotify)"),
        ("/jobs", "open POSIX message queue"),
        ("/tmp/scratch", "create (a deleted file, from the image)"),
        ("/var/lib/cpt/ve/100", "private area (proven, rolled back)"),
        ("/var/lib/cpt/snap/100@1", "filesystem snapshot"),
    } <= hows, hows
    inside = {p["path"] for p in paths if p["in_ve"]}
    assert "/home/user/fifo" in inside and "/var/lib/cpt/ve/100" not in inside
    assert "(a VE's paths: inside its root)" in show(VE)


def test_a_crafted_image_shows_what_it_would_grant(tmp_path: Path) -> None:
    """The edits an attacker makes are what show prints: root's credentials, a socket
    in /etc, a root-only file."""
    doc = jsonio.decode(OWNER)
    doc = copy.deepcopy(doc)
    recs = [r for s in doc["sections"] for r in s.get("records", [])]
    for c in (r for r in recs if r["record"] == "Creds" and r["pid"] == 101):
        c.update(uid=0, euid=0, suid=0, fsuid=0, cap_eff=0x200000, cap_prm=0x200000)
    files = next(s for s in doc["sections"] if s["type"] == "FILES")["records"]
    sock = next((r for r in files if r["record"] == "UnixSocket"), None)
    assert sock is not None, "the golden has a unix socket"
    sock["name"] = base64.b64encode(b"/etc/rel-planted.sock").decode()
    crafted = tmp_path / "crafted.img"
    with open(crafted, "wb") as f:
        jsonio.encode(doc, f)
    got = show_json(crafted)
    row = next(c for c in got["credentials"]["processes"] if c["pid"] == 101)
    assert row["uid"] == [0, 0, 0, 0] and row["cap_eff"] == "0x200000"
    assert ("/etc/rel-planted.sock", "bind unix socket") in {
        (p["path"], p["how"]) for p in got["paths"]
    }
    out = show(crafted)
    assert "/etc/rel-planted.sock" in out and "0x200000" in out
