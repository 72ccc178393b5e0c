"""`cpt migrate` between two nodes over real OpenSSH (tests/nodes.py: nodes A and B are
network namespaces with their own node roots and sshd, a client on the same LAN).

Each test checks, after a success or a failure: the VE runs on exactly one node, the other
holds nothing of it (no config, area, cgroup, journal), and the error names the stage.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from nodes import Cluster, NodeNs

pytestmark = [
    pytest.mark.root,
    pytest.mark.destructive,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="VEs, netns and btrfs need root"),
]

COUNTER = (
    "i=0; while :; do i=$((i+1)); echo $i > /root/count.tmp; mv /root/count.tmp /root/count; "
    "sleep 0.05; done"
)


def ok(node: NodeNs, *args: object, timeout: float = 180) -> str:
    rc, out, err = node.cpt(*args, timeout=timeout)
    assert rc == 0, f"{node.label}: cpt {' '.join(map(str, args))}: rc {rc}: {out}{err}"
    return out


def status(node: NodeNs, veid: str) -> str:
    rc, out, err = node.cpt("ve", "status", veid, "--json")
    if rc != 0:
        return "absent"
    return str(json.loads(out)["status"])


def area(node: NodeNs, veid: str) -> Path:
    return node.root / "pool" / "private" / veid


def count(node: NodeNs, veid: str) -> int:
    p = area(node, veid) / "root" / "count"
    for _ in range(100):
        try:
            return int(p.read_text())
        except (ValueError, FileNotFoundError):
            time.sleep(0.02)
    raise AssertionError(f"{p} unreadable")


def ticks(node: NodeNs, veid: str) -> int:
    c = count(node, veid)
    deadline = time.monotonic() + 10
    while (n := count(node, veid)) <= c:
        assert time.monotonic() < deadline, f"{node.label}: VE {veid}'s counter does not run"
        time.sleep(0.05)
    return n


def ve_ip(c: Cluster, host: int) -> str:
    """A VE address off the LAN's subnet (198.19.N.HOST/32): the host side of a VE's veth
    takes the first host of the VE's subnet, which on the LAN is node A's address."""
    return f"198.19.{c.net}.{host}/32"


def counter_ve(c: Cluster, veid: str, host: int = 10) -> NodeNs:
    a = c.a
    ok(a, "ve", "create", veid, "--ip", ve_ip(c, host), "--", "/bin/sh", "-c", COUNTER)
    (area(a, veid) / "root").mkdir(exist_ok=True)
    ok(a, "ve", "start", veid)
    ticks(a, veid)
    return a


def migrate(src: NodeNs, dst: NodeNs, veid: str, *args: str) -> tuple[int, str, str]:
    return src.cpt("migrate", *args, dst.host(), veid, "--ssh-opts", src.ssh_opts())


def only_on(node: NodeNs, other: NodeNs, veid: str) -> None:
    """The VE runs on `node`; `other` holds nothing of it but, if it left there, its
    .migrated config."""
    assert status(node, veid) == "running", status(node, veid)
    ticks(node, veid)
    assert status(other, veid) in ("absent", "migrated"), status(other, veid)
    assert not area(other, veid).exists()
    assert not (other.root / "ve" / f"{veid}.toml").exists()
    assert not (other.root / "run" / f"migrate-{veid}.json").exists()
    assert not list((other.root / "pool").glob(f"migrate/{veid}/*"))


def test_online_noiter_moves_a_running_ve(nodes: Cluster) -> None:
    a, b = nodes.a, nodes.b
    counter_ve(nodes, "201")
    pid_before = a.run(["cat", f"/proc/{_init(a, '201')}/status"]).stdout
    rc, out, err = migrate(a, b, "201", "--online", "--noiter", "-t")
    assert rc == 0, f"{out}{err}"
    assert "total frozen" in out, out
    n = count(b, "201")
    only_on(b, a, "201")
    assert count(b, "201") > n
    assert "NSpid" in pid_before
    ok(b, "ve", "stop", "201")


def _init(node: NodeNs, veid: str) -> int:
    return int(json.loads(ok(node, "ve", "status", veid, "--json"))["init_pid"])
