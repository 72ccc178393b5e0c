"""Privileged VEs (`cpt ve create --privileged`, the model before user namespaces) keep
working: lifecycle, a staged checkpoint and restore with an established TCP connection,
a full one, and their image (no user namespace in it).  Every other VE test runs on VEs
that contain their root."""

from __future__ import annotations

import json
import os

import pytest
from test_ve_cr import ECHO, connect, echo, status
from ve_node import Node, route

pytestmark = [
    pytest.mark.root,
    pytest.mark.destructive,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="VEs need root (namespaces, veth, mounts)"),
]


def test_privileged_lifecycle(node: Node) -> None:
    node.create("1301", "--privileged", "--ip", "198.18.130.2/24", "--", "/bin/sh", "-c",
                "sleep 1000")  # fmt: skip
    assert node.cpt("ve", "status", "1301")[1].strip() == "VE 1301 stopped (privileged)"
    assert "cpt-ve-1301" not in ((node.ids / "subuid").read_text()
                                 if (node.ids / "subuid").exists() else "")  # fmt: skip
    assert os.stat(node.root / "pool" / "private" / "1301" / "etc" / "passwd").st_uid == 0
    assert node.cpt("ve", "start", "1301")[0] == 0
    rc, out, _ = node.cpt(
        "ve", "exec", "1301", "--", "/bin/sh", "-c",
        "id -u; cat /proc/self/uid_map; grep Seccomp: /proc/self/status; hostname",
    )  # fmt: skip
    assert rc == 0
    lines = out.split("\n")
    assert lines[0] == "0" and lines[1].split() == ["0", "0", "4294967295"]
    assert lines[2].split() == ["Seccomp:", "0"] and lines[3] == "ve1301"
    assert f"dev {node.ifname('1301')}" in route("198.18.130.2")
    assert node.cpt("ve", "stop", "1301", "--timeout", "1")[0] == 0
    assert node.cpt("ve", "status", "1301")[1].strip() == "VE 1301 stopped (privileged)"


def test_privileged_staged_chkpnt_and_restore_keep_tcp(node: Node) -> None:
    node.create("1302", "--privileged", "--ip", "198.18.130.3/24", "--", "/usr/bin/python3",
                "-c", ECHO)  # fmt: skip
    assert node.cpt("ve", "start", "1302")[0] == 0
    c = connect("198.18.130.3", 7007)
    try:
        assert echo(c, b"before") == b"before"
        for stage in ("--suspend", "--dump", "--kill"):
            rc, _, err = node.cpt("chkpnt", "1302", stage)
            assert rc == 0, f"{stage}: {err}"
        dump = node.root / "dump" / "Dump.1302"
        rc, out, _ = node.cpt("image", "decode", dump)
        doc = json.loads(out)
        names = {r["record"] for s in doc["sections"] for r in s.get("records", [])}
        assert not names & {"UserNs", "NsCreds"}, "a privileged VE has no user namespace"
        assert doc["header"]["flags"] & 0x10 == 0
        rc, _, err = node.cpt("restore", "1302", "--undump")
        assert rc == 0, err
        assert status(node, "1302") == "(privileged)"
        rc, _, err = node.cpt("restore", "1302", "--resume")
        assert rc == 0, err
        assert echo(c, b"after the restore") == b"after the restore"
        # and a full chkpnt and restore
        assert node.cpt("chkpnt", "1302")[0] == 0
        rc, _, err = node.cpt("restore", "1302")
        assert rc == 0, err
        assert echo(c, b"again") == b"again"
    finally:
        c.close()
    assert node.cpt("ve", "stop", "1302", "--timeout", "1")[0] == 0


def test_an_image_restores_only_as_the_kind_of_ve_it_was(node: Node) -> None:
    """A privileged VE's image is refused once the VE contains its root, and the other
    way round: the image's ownership of processes would be wrong."""
    node.create("1303", "--privileged", "--", "/bin/sh", "-c", "sleep 1000")
    assert node.cpt("ve", "start", "1303")[0] == 0
    assert node.cpt("chkpnt", "1303")[0] == 0
    rc, _, err = node.cpt("ve", "set", "1303", "--no-privileged")
    assert rc == 32 and "dump file waiting" in err, err
    dump = node.root / "dump" / "Dump.1303"
    kept = dump.with_name("kept.1303")
    os.rename(dump, kept)
    try:
        assert node.cpt("ve", "set", "1303", "--no-privileged")[0] == 0
        rc, _, err = node.cpt("restore", "1303", "--dumpfile", kept)
        assert rc == 17 and "when it was privileged" in err, err
    finally:
        os.unlink(kept)
    assert node.cpt("ve", "start", "1303")[0] == 0, "it boots as a VE that contains its root"
    rc, out, _ = node.cpt("ve", "exec", "1303", "--", "/bin/cat", "/proc/self/uid_map")
    assert rc == 0 and out.split()[1] != "0"
    assert node.cpt("ve", "stop", "1303", "--timeout", "1")[0] == 0
