"""The two-node harness itself (tests/nodes.py): namespaces on one LAN, each node's own
root and sshd, `cpt` found by a remote login under that node's root, and nothing left."""

from __future__ import annotations

from pathlib import Path

import pytest
from nodes import Cluster, cluster, leftovers

pytestmark = [pytest.mark.root, pytest.mark.destructive]
SLEEP = ("/bin/sh", "-c", "sleep 1000")


def test_ssh_from_a_runs_cpt_under_b_root(nodes: Cluster) -> None:
    a, b = nodes.a, nodes.b
    p = a.ssh(b, "cpt", "--help")
    assert p.returncode == 0, p.stderr
    assert "migrate" in p.stdout or "chkpnt" in p.stdout
    p = a.ssh(b, "sh", "-c", "'echo $CPT_ROOT; command -v cpt'")
    assert p.returncode == 0, p.stderr
    root, where = p.stdout.split()
    assert root == str(b.root)
    assert where == str(nodes.tmp / "bin" / "cpt")
    rc, _, err = b.cpt("ve", "create", "101", "--privileged")
    assert rc == 0, err
    p = a.ssh(b, "cpt", "ve", "list")
    assert p.returncode == 0, p.stderr
    assert "101" in p.stdout
    rc, out, _ = a.cpt("ve", "list")
    assert rc == 0 and "101" not in out  # A's root is another


def test_a_wrong_host_key_is_refused(nodes: Cluster) -> None:
    kh = nodes.a.known_hosts
    good = kh.read_text()
    # B's line given A's host key: ssh must refuse
    a_key = (nodes.tmp / "sshd-a" / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    lines = [
        f"{nodes.b.addr} {' '.join(a_key)}" if ln.startswith(nodes.b.addr + " ") else ln
        for ln in good.splitlines()
    ]
    kh.write_text("\n".join(lines) + "\n")
    p = nodes.a.ssh(nodes.b, "true")
    assert p.returncode == 255
    assert "host key" in p.stderr.lower() or "HOST IDENTIFICATION" in p.stderr
    kh.write_text(good)
    assert nodes.a.ssh(nodes.b, "true").returncode == 0


def test_the_client_reaches_both_nodes_on_its_connected_subnet_only(nodes: Cluster) -> None:
    routes = nodes.client.sh("ip -4 route show")
    assert (
        routes.strip() == f"198.18.{nodes.net}.0/24 dev eth0 proto kernel scope link src "
        f"198.18.{nodes.net}.100"
    )
    for n in nodes.nodes:
        assert nodes.client.ping(n.addr) and nodes.client.ping(n.addr6), n.name
        assert nodes.client.connect(n.addr, 22) and nodes.client.connect(n.addr6, 22)
    assert not nodes.client.ping(nodes.addr(99), timeout=0.5)  # nobody: no false answer


def test_teardown_leaves_nothing() -> None:
    with cluster() as c:
        rc, _, err = c.a.cpt("ve", "create", "101", "--privileged", "--", *SLEEP)
        assert rc == 0, err
        rc, _, err = c.a.cpt("ve", "start", "101")
        assert rc == 0, err
        keep = c
    assert leftovers(keep) == []


def test_the_same_veid_runs_on_both_nodes_without_sharing_anything(nodes: Cluster) -> None:
    """Each node's cgroups, lock and state files, pool and interfaces derive from its root:
    VE 101 on A and VE 101 on B are two VEs (privileged: an unprivileged VEID is
    machine-wide, its id range one VE's)."""
    from cpt.sys.cgroup import CPT_CGROUP, cgroup2_mount
    from ve.net import host_ifname
    from ve.runtime import cgroup_name, object_name

    ip = nodes.addr(10) + "/24"
    for n in nodes.nodes:
        rc, _, err = n.cpt("ve", "create", "101", "--privileged", "--ip", ip, "--", *SLEEP)
        assert rc == 0, err
        rc, _, err = n.cpt("ve", "start", "101")
        assert rc == 0, err
    cgs = [Path(cgroup2_mount(), CPT_CGROUP, cgroup_name("101", n.tag)) for n in nodes.nodes]
    assert cgs[0] != cgs[1]
    procs = [set((cg / "cgroup.procs").read_text().split()) for cg in cgs]
    assert procs[0] and procs[1] and not procs[0] & procs[1]
    for n in nodes.nodes:
        assert host_ifname("101", n.tag) in n.sh("ip -br link")
        assert (n.root / "run" / f"{object_name('101')}.runtime.json").exists()
    pools = {n.cpt("pool", "status")[1] for n in nodes.nodes}
    assert len(pools) == 2
    rc, _, err = nodes.a.cpt("ve", "stop", "101")
    assert rc == 0, err
    assert not cgs[0].exists()
    assert procs[1] == set((cgs[1] / "cgroup.procs").read_text().split())
    rc, out, _ = nodes.b.cpt("ve", "status", "101")
    assert rc == 0 and out.strip() == "VE 101 running (privileged)", out
    rc, out, _ = nodes.a.cpt("ve", "status", "101")
    assert "stopped" in out


def test_an_unprivileged_veid_is_one_ve_per_machine(nodes: Cluster) -> None:
    rc, _, err = nodes.a.cpt("ve", "create", "102")
    assert rc == 0, err
    rc, _, err = nodes.b.cpt("ve", "create", "102")
    assert rc != 0 and "machine-wide" in err and str(nodes.a.root) in err, err
    assert len(err.strip().splitlines()) == 1
