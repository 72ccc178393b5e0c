"""Network and UTS namespaces of a VE: dump, then restore into fresh namespaces.

Every test works on throwaway processes in new network and UTS namespaces (a forked child
that unshares both and execs sleep; it dies with this process) and on veth pairs whose
host ends are named `cptt<4 hex>` and stay DOWN: the VE ends have no carrier, so nothing
is transmitted.  The one exception is the link-local test, whose veth pair has both ends
inside one throwaway namespace (the kernel's IPv6 link-local chatter stays in it).  Only
addresses of 198.18.0.0/15, fd00::/8 and fe80::/10 are configured.  The namespaces are
set up with nsenter + ip (not with the code under test) and checked independently the
same way.  Every child is killed and reaped and every host-side veth deleted in the
fixture's finally.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cpt.dump.netns import (
    IFF_UP,
    dump_net,
    dump_uts,
    is_idle_fallback_tunnel,
    is_kernel_link_local,
)
from cpt.errors import NoSuchProcess, RestoreError, UnsupportedError
from cpt.restore.netns import restore_net, restore_uts
from cpt.sys.ns import CLONE_NEWNET, CLONE_NEWUTS, in_namespace, unshare
from cpt.sys.task import PR_SET_PDEATHSIG, prctl
from cptimage.records import NetAddr, NetLink, NetRoute, Uts

pytestmark = [
    pytest.mark.root,
    pytest.mark.destructive,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and veth need root"),
]

SLEEP = shutil.which("sleep") or "/bin/sleep"
NSENTER = shutil.which("nsenter") or "/usr/bin/nsenter"
IP = shutil.which("ip") or "/usr/sbin/ip"
MAC = "02:cf:74:00:07:02"
MAC_BYTES = bytes.fromhex(MAC.replace(":", ""))
RTN_BLACKHOLE = 6


class Lab:
    """Children in new net+uts namespaces and host-side veths, all removed by close()."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.veths: list[str] = []

    def spawn(self) -> int:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.close(r)
                prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
                unshare(CLONE_NEWNET | CLONE_NEWUTS)
                os.write(w, b"ok")
                os.execv(SLEEP, ["sleep", "600"])
            except BaseException:
                pass
            os._exit(127)
        self.pids.append(pid)
        os.close(w)
        data = b""
        with os.fdopen(r, "rb") as f:
            data = f.read()
        assert data == b"ok", "the namespace child failed to start"
        return pid

    def veth(self, pid: int, peer: str = "eth0") -> str:
        """A veth pair: host end cpttXXXX here (down), `peer` in the namespace of `pid`."""
        with IPRoute() as ipr:
            while True:
                name = f"cptt{secrets.token_hex(2)}"
                if not ipr.link_lookup(ifname=name):
                    break
            self.veths.append(name)
            ipr.link("add", ifname=name, kind="veth", peer={"ifname": peer, "net_ns_pid": pid})
        return name

    def kill(self, pid: int) -> None:
        if pid in self.pids:
            self.pids.remove(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)

    def close(self) -> None:
        try:
            with IPRoute() as ipr:
                for name in self.veths:
                    for idx in ipr.link_lookup(ifname=name):
                        with contextlib.suppress(NetlinkError):
                            ipr.link("del", index=idx)
        finally:
            for pid in list(self.pids):
                with contextlib.suppress(ChildProcessError):
                    self.kill(pid)


@pytest.fixture
def lab() -> Iterator[Lab]:
    the_lab = Lab()
    try:
        yield the_lab
    finally:
        the_lab.close()


def inside(pid: int, *cmd: str, ns: str = "--net") -> str:
    """Run `cmd` in the namespace of `pid` (nsenter), return its stdout."""
    p = subprocess.run(
        [NSENTER, f"--target={pid}", ns, *cmd], capture_output=True, text=True, timeout=30
    )
    assert p.returncode == 0, f"{cmd}: {p.stderr}"
    return p.stdout


def ip(pid: int, *args: str) -> None:
    inside(pid, IP, *args)


def ip_json(pid: int, *args: str) -> Any:
    return json.loads(inside(pid, IP, "-j", *args))


def uts_of(pid: int) -> tuple[str, str]:
    out = inside(
        pid, "sh", "-c", "cat /proc/sys/kernel/hostname /proc/sys/kernel/domainname", ns="--uts"
    )
    host, domain = out.splitlines()
    return host, domain


def net_ino(pid: int | str) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


# ---- comparison, ignoring ifindex and ns_ino ----


def normalized(records: list[NetLink | NetAddr | NetRoute]) -> dict[str, list[Any]]:
    names = {r.ifindex: r.name for r in records if isinstance(r, NetLink)}
    out: dict[str, list[Any]] = {"links": [], "addrs": [], "routes": []}
    for r in records:
        if isinstance(r, NetLink):
            out["links"].append((r.name, r.kind, r.mtu, r.flags, r.address))
        elif isinstance(r, NetAddr):
            out["addrs"].append(
                (names[r.ifindex], r.family, r.prefixlen, r.scope, r.flags, r.address, r.label)
            )
        else:
            out["routes"].append(
                (
                    r.family, r.dst_len, r.protocol, r.scope, r.type, r.table,
                    names.get(r.oif, r.oif), r.priority, r.dst, r.gateway, r.prefsrc,
                )
            )  # fmt: skip
    return out


def addr_texts(records: list[NetLink | NetAddr | NetRoute]) -> set[str]:
    return {
        f"{ipaddress.ip_address(r.address)}/{r.prefixlen}"
        for r in records
        if isinstance(r, NetAddr)
    }


def configure_ve(pid: int) -> None:
    """The source VE: lo, eth0 (MTU, MAC, IPv4 + secondary + IPv6), routes, names."""
    ip(pid, "link", "set", "lo", "up")
    ip(pid, "link", "set", "eth0", "address", MAC, "mtu", "1400")
    ip(pid, "addr", "add", "198.18.7.2/24", "dev", "eth0")
    ip(pid, "addr", "add", "198.18.7.3/24", "dev", "eth0", "label", "eth0:1")
    ip(pid, "addr", "add", "fd00:cafe::2/64", "dev", "eth0")
    ip(pid, "link", "set", "eth0", "up")
    ip(pid, "route", "add", "198.18.9.0/24", "via", "198.18.7.1")
    # The default route is dumped before the route to its gateway: restore must retry it.
    ip(pid, "route", "add", "198.18.6.1/32", "dev", "eth0", "scope", "link")
    ip(pid, "route", "add", "default", "via", "198.18.6.1", "src", "198.18.7.2")
    ip(pid, "route", "add", "198.18.10.0/24", "via", "198.18.7.1", "table", "100",
       "metric", "7", "proto", "static")  # fmt: skip
    ip(pid, "route", "add", "blackhole", "198.18.11.0/24")
    ip(pid, "-6", "route", "add", "fd00:beef::/64", "via", "fd00:cafe::1")
    inside(
        pid, "sh", "-c",
        "echo vetest > /proc/sys/kernel/hostname; echo example > /proc/sys/kernel/domainname",
        ns="--uts",
    )  # fmt: skip


# ---- tests ----


def test_in_namespace_moves_only_the_calling_thread(lab: Lab) -> None:
    pid = lab.spawn()
    main_tid = threading.get_native_id()
    own = net_ino("thread-self")
    seen: dict[str, Any] = {}
    entered = threading.Event()
    leave = threading.Event()

    def worker() -> None:
        try:
            with in_namespace(pid, "net") as ino:
                seen["ino"] = ino
                seen["thread"] = net_ino("thread-self")
                tasks = len(os.listdir("/proc/self/task"))
                with IPRoute() as ipr:
                    seen["extra_tasks"] = len(os.listdir("/proc/self/task")) - tasks
                    seen["links"] = [m.get("IFLA_IFNAME") for m in ipr.get_links()]
                entered.set()
                leave.wait(10)
            seen["after"] = net_ino("thread-self")
        finally:
            entered.set()

    t = threading.Thread(target=worker)
    t.start()
    try:
        assert entered.wait(10)
        # While the worker is inside, this thread (and the process) stays in its own.
        assert net_ino(f"self/task/{main_tid}") == own
        assert net_ino("thread-self") == own
    finally:
        leave.set()
        t.join(10)
    assert seen["ino"] == seen["thread"] == net_ino(pid) != own
    assert seen["links"] == ["lo"]  # IPRoute's socket was created in the child's namespace
    assert seen["extra_tasks"] == 0  # and IPRoute started no thread of its own
    assert seen["after"] == own
    with pytest.raises(ValueError), in_namespace(pid, "mnt"):
        pass
    lab.kill(pid)
    with pytest.raises(NoSuchProcess):
        dump_net(pid)


def test_dump_and_restore_into_fresh_namespaces(lab: Lab) -> None:
    host_name = socket.gethostname()
    src = lab.spawn()
    host_a = lab.veth(src)
    configure_ve(src)

    records = dump_net(src)
    uts = dump_uts(src)

    assert uts == Uts(ns_ino=os.stat(f"/proc/{src}/ns/uts").st_ino, hostname="vetest",
                      domainname="example")  # fmt: skip
    assert socket.gethostname() == host_name
    assert {r.ns_ino for r in records} == {net_ino(src)}
    links = {r.name: r for r in records if isinstance(r, NetLink)}
    assert set(links) == {"lo", "eth0"}
    eth0 = links["eth0"]
    with IPRoute() as ipr:
        host_idx = ipr.link_lookup(ifname=host_a)[0]
    assert (eth0.kind, eth0.mtu, eth0.address) == ("veth", 1400, MAC_BYTES)
    assert eth0.peer_ifindex == host_idx
    assert eth0.flags & IFF_UP and links["lo"].flags & IFF_UP
    assert links["lo"].kind == "loopback"
    assert addr_texts(records) == {
        "127.0.0.1/8", "::1/128", "198.18.7.2/24", "198.18.7.3/24", "fd00:cafe::2/64",
    }  # fmt: skip
    labels = {
        str(ipaddress.ip_address(r.address)): r.label for r in records if isinstance(r, NetAddr)
    }
    assert labels["198.18.7.3"] == "eth0:1"
    routes = [r for r in records if isinstance(r, NetRoute)]
    assert all(r.table != 255 and r.protocol != 2 for r in routes)
    assert len(routes) == 6, routes
    dsts = [(r.dst, r.dst_len) for r in routes]
    # The default route comes before the route to its gateway: restore needs the retry.
    assert dsts.index((b"", 0)) < dsts.index((socket.inet_aton("198.18.6.1"), 32))
    table100 = [r for r in routes if r.table == 100]
    assert len(table100) == 1 and table100[0].priority == 7 and table100[0].protocol == 4
    assert any(r.type == RTN_BLACKHOLE and r.oif == 0 for r in routes)

    lab.kill(src)

    dst = lab.spawn()
    lab.veth(dst)
    restore_net(dst, records)
    restore_uts(dst, uts)

    again = dump_net(dst)
    assert normalized(again) == normalized(records)
    assert {r.ns_ino for r in again} == {net_ino(dst)}
    assert dump_uts(dst).hostname == "vetest"
    assert socket.gethostname() == host_name  # this process kept its own

    # Checked without cpt: ip and /proc/sys/kernel inside the new namespaces.
    assert uts_of(dst) == ("vetest", "example")
    (link,) = ip_json(dst, "link", "show", "eth0")
    assert link["mtu"] == 1400 and link["address"] == MAC and "UP" in link["flags"]
    (addrs,) = ip_json(dst, "addr", "show", "eth0")
    have = {f"{a['local']}/{a['prefixlen']}" for a in addrs["addr_info"] if a["scope"] != "link"}
    assert have == {"198.18.7.2/24", "198.18.7.3/24", "fd00:cafe::2/64"}
    v4 = ip_json(dst, "-4", "route", "show", "table", "all")
    assert {"dst": "198.18.9.0/24", "gateway": "198.18.7.1", "dev": "eth0"}.items() <= next(
        r for r in v4 if r["dst"] == "198.18.9.0/24"
    ).items()
    default = next(r for r in v4 if r["dst"] == "default")
    assert default["gateway"] == "198.18.6.1" and default["prefsrc"] == "198.18.7.2"
    v6 = ip_json(dst, "-6", "route", "show")
    assert any(r["dst"] == "fd00:beef::/64" and r.get("gateway") == "fd00:cafe::1" for r in v6)

    # A second restore into the same namespace changes nothing ("File exists").
    restore_net(dst, records)
    assert normalized(dump_net(dst)) == normalized(records)


def test_restore_without_the_ve_interface(lab: Lab) -> None:
    pid = lab.spawn()
    records: list[NetLink | NetAddr | NetRoute] = [
        NetLink(ns_ino=1, ifindex=1, mtu=65536, flags=IFF_UP | 0x8, kind="loopback", name="lo",
                address=bytes(6)),
        NetLink(ns_ino=1, ifindex=7, mtu=1500, flags=IFF_UP, kind="veth", name="eth0",
                address=bytes.fromhex("02cf74000703")),
    ]  # fmt: skip
    with pytest.raises(RestoreError, match="VE interface eth0 is missing"):
        restore_net(pid, records)


def test_restore_keeps_a_down_link_down(lab: Lab) -> None:
    pid = lab.spawn()
    lab.veth(pid)
    ip(pid, "link", "set", "eth0", "up")  # the caller left it up: the image says down
    records: list[NetLink | NetAddr | NetRoute] = [
        NetLink(ns_ino=1, ifindex=1, mtu=65536, flags=IFF_UP | 0x8, kind="loopback", name="lo",
                address=bytes(6)),
        NetLink(ns_ino=1, ifindex=9, mtu=1450, flags=0x1002, kind="veth", name="eth0",
                address=bytes.fromhex("02cf74000704")),
        NetAddr(ns_ino=1, ifindex=9, family=socket.AF_INET, prefixlen=24, scope=0, flags=0x80,
                address=socket.inet_aton("198.18.8.2"), label="eth0"),
    ]  # fmt: skip
    restore_net(pid, records)
    (link,) = ip_json(pid, "addr", "show", "eth0")
    assert "UP" not in link["flags"] and link["mtu"] == 1450
    assert link["address"] == "02:cf:74:00:07:04"
    assert [a["local"] for a in link["addr_info"]] == ["198.18.8.2"]
    (lo,) = ip_json(pid, "link", "show", "lo")
    assert "UP" in lo["flags"]


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        ([["link", "add", "br0", "type", "bridge"]], r"br0 .*bridge"),
        ([["tuntap", "add", "tap0", "mode", "tap"]], r"tap0 .*tun"),
        ([["link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "4789"]], r"vx0 .*vxlan"),
        ([["rule", "add", "from", "198.18.7.0/24", "table", "100"]], r"rule"),
        ([["route", "add", "198.18.12.0/24", "dev", "lo", "mtu", "1300"]], r"metrics"),
        ([["route", "add", "198.18.12.0/24", "via", "198.18.7.1", "dev", "lo", "onlink"]],
         r"onlink"),
        ([["addr", "add", "198.18.13.1", "peer", "198.18.13.2", "dev", "lo"]], r"point-to-point"),
    ],
)  # fmt: skip
def test_dump_refuses(lab: Lab, setup: list[list[str]], match: str | None) -> None:
    pid = lab.spawn()
    ip(pid, "link", "set", "lo", "up")
    for cmd in setup:
        p = subprocess.run([NSENTER, f"--target={pid}", "--net", IP, *cmd], capture_output=True)
        if p.returncode != 0:
            pytest.skip(f"ip {' '.join(cmd)}: {p.stderr.decode().strip()}")
    with pytest.raises(UnsupportedError, match=match) as exc:
        dump_net(pid)
    assert f"process {pid}" in str(exc.value)


def test_kernel_link_local_addresses_and_routes_are_left_out(lab: Lab) -> None:
    pid = lab.spawn()
    # A veth pair with both ends inside the throwaway namespace: carrier, so the kernel
    # generates link-local addresses and routes; frames never leave the namespace.
    inside(pid, "sh", "-c",
           "echo 0 > /proc/sys/net/ipv6/conf/default/dad_transmits;"
           " echo 0 > /proc/sys/net/ipv6/conf/default/router_solicitations")  # fmt: skip
    ip(pid, "link", "add", "va", "type", "veth", "peer", "name", "vb")
    ip(pid, "link", "set", "va", "up")
    ip(pid, "link", "set", "vb", "up")
    ip(pid, "addr", "add", "fe80::1234/64", "dev", "va")
    deadline = time.monotonic() + 10
    while True:
        lls = [
            a
            for link in ip_json(pid, "-6", "addr", "show", "scope", "link")
            for a in link["addr_info"]
        ]
        if len(lls) >= 3:
            break
        assert time.monotonic() < deadline, lls
        time.sleep(0.1)
    routes = ip_json(pid, "-6", "route", "show", "table", "all")
    assert any(r["dst"].startswith("ff00::") for r in routes)
    assert any(r["dst"].startswith("fe80::") for r in routes)

    records = dump_net(pid)
    addrs = {str(ipaddress.ip_address(r.address)) for r in records if isinstance(r, NetAddr)}
    assert "fe80::1234" in addrs  # added by hand: kept
    assert not {a for a in addrs if a.startswith("fe80:")} - {"fe80::1234"}
    assert [r for r in records if isinstance(r, NetRoute)] == []
    links = {r.name: r for r in records if isinstance(r, NetLink)}
    assert links["va"].peer_ifindex == links["vb"].ifindex
    assert links["vb"].peer_ifindex == links["va"].ifindex


def test_predicates() -> None:
    assert is_idle_fallback_tunnel("ipip", "tunl0", 0x80, False)
    assert not is_idle_fallback_tunnel("ipip", "tunl0", IFF_UP, False)
    assert not is_idle_fallback_tunnel("ipip", "tunl0", 0, True)
    assert not is_idle_fallback_tunnel("ipip", "tun1", 0, False)
    assert not is_idle_fallback_tunnel("bridge", "br0", 0, False)
    ll = socket.inet_pton(socket.AF_INET6, "fe80::1")
    assert is_kernel_link_local(socket.AF_INET6, ll, 3)
    assert is_kernel_link_local(socket.AF_INET6, ll, None)
    assert not is_kernel_link_local(socket.AF_INET6, ll, 0)
    ula = socket.inet_pton(socket.AF_INET6, "fd00:cafe::2")
    assert not is_kernel_link_local(socket.AF_INET6, ula, 3)
    assert not is_kernel_link_local(socket.AF_INET, socket.inet_aton("198.18.7.2"), None)


def test_restore_uts_in_a_thread_leaves_this_process_alone(lab: Lab) -> None:
    pid = lab.spawn()
    mine = (socket.gethostname(), dump_uts(os.getpid()).domainname)
    t = threading.Thread(
        target=restore_uts, args=(pid, Uts(ns_ino=0, hostname="ve-two", domainname="example"))
    )
    t.start()
    t.join(10)
    assert uts_of(pid) == ("ve-two", "example")
    assert (socket.gethostname(), dump_uts(os.getpid()).domainname) == mine
