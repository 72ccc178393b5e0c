"""A VE on its node's LAN (ve/net.py): reached by its own address from another machine
through the node's uplink (proxy ARP for its address alone, forwarding per interface),
moved to another node by hand and reached there with no change on the client (the new
node announces it), and nothing of it left on a node it left.  Two nodes and a client
on one test LAN (tests/nodes.py)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from nodes import Cluster, NodeNs

from ve.net import host_ifname

pytestmark = [pytest.mark.root, pytest.mark.destructive]
PORT = 7007
SERVER = (
    "import socket\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    f"s.bind(('0.0.0.0', {PORT})); s.listen()\n"
    "while True:\n"
    " c, _ = s.accept()\n"
    " while (b := c.recv(65536)): c.sendall(b)\n"
    " c.close()\n"
)


def lan_state(n: NodeNs, addr: str) -> dict[str, object]:
    """What the node does for `addr` on its LAN: proxy entries, forwarding, routes."""
    return {
        "proxy": n.sh(f"ip neigh show proxy {addr}").split(),
        "uplink forwarding": n.sysctl("ipv4/conf/eth0/forwarding"),
        "uplink proxy_delay": n.sysctl("ipv4/neigh/eth0/proxy_delay"),
        "ip_forward": n.sysctl("ipv4/ip_forward"),
        "route": n.sh(f"ip route show {addr}/32").strip(),
    }


def left(n: NodeNs, addr: str, before: dict[str, object]) -> None:
    """The node no longer answers for `addr` and has given the uplink back; the
    blackhole holds the address (the VE's config is still here)."""
    now = lan_state(n, addr)
    assert now["proxy"] == [], now
    assert now["uplink forwarding"] == before["uplink forwarding"] == "0"
    assert now["uplink proxy_delay"] == before["uplink proxy_delay"]
    assert now["ip_forward"] == "0"
    assert now["route"].startswith(f"blackhole {addr}"), now["route"]


def test_a_ve_is_reached_from_the_lan_and_moves_to_another_node(nodes: Cluster) -> None:
    a, b, client = nodes.a, nodes.b, nodes.client
    addr = nodes.addr(10)
    client_routes = client.sh("ip -4 route; ip -6 route")
    before = {n.name: lan_state(n, addr) for n in nodes.nodes}
    for n in nodes.nodes:  # the same VE, privileged: both configs may exist at once
        rc, _, err = n.cpt("ve", "create", "101", "--privileged", "--ip", f"{addr}/24", "--",
                           "/usr/bin/python3", "-c", SERVER)  # fmt: skip
        assert rc == 0, err
    rc, _, err = a.cpt("ve", "start", "101")
    assert rc == 0, err
    on_a = lan_state(a, addr)
    assert on_a["proxy"][:3] == [addr, "dev", "eth0"], on_a
    assert on_a["uplink forwarding"] == "1" and on_a["ip_forward"] == "0", on_a
    veth = host_ifname("101", a.tag)
    assert a.sysctl(f"ipv4/conf/{veth}/forwarding") == "1"
    assert a.sysctl(f"ipv4/conf/{veth}/proxy_arp") == "1"
    # the host side takes no address of the LAN's subnet: a link-local gateway
    assert a.sh(f"ip -4 -br addr show dev {veth}").split()[2:] == ["169.254.0.1/32"]
    assert on_a["route"].startswith(f"{addr} dev {veth}") and f"src {a.addr}" in on_a["route"]
    assert client.echo(addr, PORT, b"hello A" * 1000) == b"hello A" * 1000
    assert client.neighbour(addr)[0] == a.mac(), "the client reached it through A's uplink"
    # the VE reaches the client too (the host end answers its ARP, forwards)
    rc, out, err = a.cpt("ve", "exec", "101", "--", "/usr/bin/python3", "-c",
                         f"import socket; socket.create_connection(('{nodes.addr(1)}', 22), "
                         f"timeout=3).close(); print('ok')")  # fmt: skip
    assert rc == 0 and out.strip() == "ok", err

    rc, _, err = a.cpt("ve", "stop", "101")
    assert rc == 0, err
    left(a, addr, before[a.name])
    assert not client.ping(addr, timeout=0.5), "A no longer answers for it"
    time.sleep(1.1)  # the client's ARP locktime (1 s): an update within it is ignored
    stale = client.neighbour(addr)
    assert stale is not None and stale[0] == a.mac(), stale

    rc, _, err = b.cpt("ve", "start", "101")
    assert rc == 0, err
    # announced at the start: the client's entry is B's before any traffic to it
    assert client.neighbour(addr)[0] == b.mac()
    assert client.echo(addr, PORT, b"hello B") == b"hello B"
    assert client.sh("ip -4 route; ip -6 route") == client_routes
    left(a, addr, before[a.name])  # A stays quiet while B serves

    rc, _, err = b.cpt("ve", "stop", "101")
    assert rc == 0, err
    left(b, addr, before[b.name])
    for n in nodes.nodes:
        rc, _, err = n.cpt("ve", "destroy", "101")
        assert rc == 0, err
        assert n.sh(f"ip route show {addr}/32").strip() == ""


def test_suspend_stops_the_answers_and_resume_announces(nodes: Cluster) -> None:
    a, client = nodes.a, nodes.client
    addr = nodes.addr(11)
    before = lan_state(a, addr)
    rc, _, err = a.cpt("ve", "create", "102", "--ip", f"{addr}/24", "--",
                       "/usr/bin/python3", "-c", SERVER)  # fmt: skip
    assert rc == 0, err
    rc, _, err = a.cpt("ve", "start", "102")
    assert rc == 0, err
    assert client.echo(addr, PORT, b"x") == b"x"
    rc, _, err = a.cpt("chkpnt", "102", "--suspend")
    assert rc == 0, err
    left(a, addr, before)
    rc, _, err = a.cpt("chkpnt", "102", "--resume")
    assert rc == 0, err
    assert lan_state(a, addr)["proxy"][:3] == [addr, "dev", "eth0"]
    assert client.echo(addr, PORT, b"again") == b"again"
    rc, _, err = a.cpt("chkpnt", "102")  # dumped: gone from the LAN
    assert rc == 0, err
    left(a, addr, before)
    rc, _, err = a.cpt("restore", "102")
    assert rc == 0, err
    assert client.echo(addr, PORT, b"restored") == b"restored"
    rc, _, err = a.cpt("ve", "stop", "102")
    assert rc == 0, err
    left(a, addr, before)


def test_announce_sends_an_unsolicited_neighbour_advertisement(nodes: Cluster) -> None:
    """IPv6: the client's entry for an address moves to A's MAC at announce()."""
    a, b, client = nodes.a, nodes.b, nodes.client
    addr = nodes.addr6(10)
    b.sh(f"ip -6 addr add {addr}/64 dev eth0 nodad")  # B holds it first
    assert client.ping(addr)
    assert client.neighbour(addr)[0] == b.mac()
    b.sh(f"ip -6 addr del {addr}/64 dev eth0")
    code = f"from ve.net import announce; print(announce('{addr}/64'))"
    p = a.run([sys.executable, "-c", code])
    assert p.returncode == 0 and p.stdout.strip() == "eth0", p.stderr
    got = client.neighbour(addr)
    assert got is not None and got[0] == a.mac(), got
    # and IPv4: gratuitous ARP from the uplink
    addr4 = nodes.addr(12)
    b.sh(f"ip addr add {addr4}/24 dev eth0")
    assert client.ping(addr4)
    assert client.neighbour(addr4)[0] == b.mac()
    b.sh(f"ip addr del {addr4}/24 dev eth0")
    time.sleep(1.1)  # ARP locktime
    code = f"from ve.net import announce; print(announce('{addr4}/24'))"
    p = a.run([sys.executable, "-c", code])
    assert p.returncode == 0 and p.stdout.strip() == "eth0", p.stderr
    assert client.neighbour(addr4)[0] == a.mac()
    # off the LAN: nothing sent
    p = a.run([sys.executable, "-c", "from ve.net import announce; "
               "print(announce('198.19.1.1/24'))"])  # fmt: skip
    assert p.stdout.strip() == "None", p.stderr


def test_the_uplink_is_given_back_when_its_last_ve_leaves(nodes: Cluster) -> None:
    a = nodes.a
    addrs = {"103": nodes.addr(13), "104": nodes.addr(14)}
    before = lan_state(a, addrs["103"])
    for veid, addr in addrs.items():
        rc, _, err = a.cpt("ve", "create", veid, "--privileged", "--ip", f"{addr}/24", "--",
                           "/usr/bin/python3", "-c", SERVER)  # fmt: skip
        assert rc == 0, err
        rc, _, err = a.cpt("ve", "start", veid)
        assert rc == 0, err
    rc, _, err = a.cpt("ve", "stop", "103")
    assert rc == 0, err
    still = lan_state(a, addrs["104"])
    assert still["proxy"][:3] == [addrs["104"], "dev", "eth0"] and still["uplink forwarding"] == "1"
    assert lan_state(a, addrs["103"])["proxy"] == []
    assert nodes.client.echo(addrs["104"], PORT, b"104") == b"104"
    assert not nodes.client.ping(addrs["103"], timeout=0.5)
    rc, _, err = a.cpt("ve", "stop", "104")
    assert rc == 0, err
    left(a, addrs["104"], before)
    assert not (a.root / "run" / "uplink-eth0.json").exists()


def test_a_node_setting_names_the_uplink(nodes: Cluster) -> None:
    a = nodes.a
    addr = nodes.addr(15)
    # a second interface on the same subnet: by subnet alone eth0 (the first) is chosen
    a.sh(f"ip link add side0 type veth peer name side1 && ip addr add {nodes.addr(200)}/24 "
         "dev side0 && ip link set side0 up && ip link set side1 up")  # fmt: skip
    (a.root / "node.toml").write_text('uplink = "side0"\n')
    rc, _, err = a.cpt("ve", "create", "105", "--privileged", "--ip", f"{addr}/24", "--",
                       "/bin/sh", "-c", "sleep 1000")  # fmt: skip
    assert rc == 0, err
    rc, _, err = a.cpt("ve", "start", "105")
    assert rc == 0, err
    assert a.sh(f"ip neigh show proxy {addr}").split()[:3] == [addr, "dev", "side0"]
    assert a.sysctl("ipv4/conf/side0/forwarding") == "1"
    assert a.sysctl("ipv4/conf/eth0/forwarding") == "0"
    rc, _, err = a.cpt("ve", "stop", "105")
    assert rc == 0, err
    assert a.sysctl("ipv4/conf/side0/forwarding") == "0"
    (a.root / "node.toml").write_text('uplink = "nosuch0"\n')
    rc, _, err = a.cpt("ve", "start", "105")
    assert rc == 21, (rc, err)  # exit 21: an invalid value, named with its file
    assert "nosuch0" in err and "node.toml" in err and len(err.strip().splitlines()) == 1, err
    assert "stopped" in a.cpt("ve", "status", "105")[1]
    assert a.sh(f"ip link show {host_ifname('105', a.tag)} 2>&1 || true").count("state UP") == 0
    (a.root / "node.toml").unlink()


def test_a_ve_moved_between_two_node_roots_of_one_machine_keeps_its_id_range(
    nodes: Cluster,
) -> None:
    """Issue 12: its registration is handed over (IdRegistry.take_over on the arriving
    node), never released and taken again; the source's destroy releases nothing."""
    import tomllib

    from ve.idmap import IdRegistry

    a, b = nodes.a, nodes.b
    addr = nodes.addr(16)
    rc, _, err = a.cpt("ve", "create", "106", "--ip", f"{addr}/24", "--",
                       "/usr/bin/python3", "-c", SERVER)  # fmt: skip
    assert rc == 0, err
    cfg = tomllib.loads((a.root / "ve" / "106.toml").read_text())
    base = cfg["id_base"]
    assert base >= 100000
    assert a.cpt("ve", "start", "106")[0] == 0
    rc, _, err = a.cpt("ve", "exec", "106", "--", "/bin/sh", "-c", "echo mine > /root/mine")
    assert rc == 0, err
    assert a.cpt("ve", "stop", "106")[0] == 0
    # the move by hand: the area (its owners are the VE's range) and the config
    rc, _, err = b.cpt("pool", "init")
    assert rc == 0, err
    src, dst = Path(cfg["private"]), b.root / "pool" / "private" / "106"
    b.sh(
        f"mkdir -p -m 700 {dst.parent} && btrfs subvolume create {dst} >/dev/null && "
        f"cp -a {src}/. {dst}/"
    )
    (b.root / "ve").mkdir(exist_ok=True)
    (b.root / "ve" / "106.toml").write_text(
        (a.root / "ve" / "106.toml").read_text().replace(str(src), str(dst))
    )
    rc, _, err = b.cpt("ve", "start", "106")
    assert rc == 21 and "registered on this machine for node root" in err, (rc, err)
    ids = IdRegistry(str(nodes.tmp / "ids"))
    assert ids.take_over("106", str(b.root), base) == str(a.root)
    rc, _, err = b.cpt("ve", "start", "106")
    assert rc == 0, err
    assert nodes.client.echo(addr, PORT, b"moved") == b"moved"
    assert (dst / "root" / "mine").stat().st_uid == base, "the area still the VE's range's"
    rc, out, _ = b.cpt("ve", "exec", "106", "--", "/bin/sh", "-c", "cat /root/mine; id -u")
    assert rc == 0 and out.split() == ["mine", "0"], out
    rc, _, err = a.cpt("ve", "start", "106")  # the source may not start it any more
    assert rc == 21 and str(b.root) in err, (rc, err)
    rc, _, err = a.cpt("ve", "destroy", "106")
    assert rc == 0, err
    h = ids.holders()["106"]
    assert (h.root, h.base) == (str(b.root), base), "the source's destroy released nothing"
    assert b.cpt("ve", "stop", "106")[0] == 0
