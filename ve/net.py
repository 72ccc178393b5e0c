"""A VE's network: a veth pair (host side `cpt<VEID>`, VE side eth0) set up with pyroute2.

The host side carries a gateway address (/32) and a /32 route to the VE's address; the VE
side carries the VE's address and a route to the gateway only: no default route, so a VE
reaches this host (and what the host routes to it), never the outside by itself.

While the VE is suspended, dumped or stopped, a blackhole route holds its address: once
its veth is gone the host would otherwise route the address out of the machine through
its default route (ENGINE-NOTES).  The blackhole is there from `ve create` to `ve
destroy`, at a worse metric (HOLD_METRIC) than the route through the veth: whenever that
route goes (the link taken down by a suspend, the veth gone with a VE that ended by
itself or was killed), the blackhole answers, with no moment and no daemon in between.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
from collections.abc import Iterator
from typing import TYPE_CHECKING

from cpt import interrupts
from cpt.errors import SystemError_
from cpt.stages.store import node_tag

# pyroute2 is imported where it is used (see cpt/dump/netns.py): importing the package
# loads all of it, which every cpt command would pay at start-up.
if TYPE_CHECKING:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

VE_IFNAME = "eth0"
HOLD_METRIC = 1_000_000  # the blackhole's: any route through the veth (metric 0) wins
LINK_LOCAL_GATEWAY = "169.254.0.1"


def host_ifname(veid: str, tag: str | None = None) -> str:
    """The host end of the VE's veth: cpt<VEID> on the default node root, c<tag>.<VEID> on
    another (`tag`: node_tag(), CPT_ROOT's by default: two node roots sharing a network
    namespace never share a name), a digest where that is longer than IFNAMSIZ - 1."""
    tag = node_tag() if tag is None else tag
    name = f"c{tag[:6]}.{veid}" if tag else f"cpt{veid}"
    if len(name) <= 15:  # IFNAMSIZ - 1
        return name
    return ("c" if tag else "cpt") + hashlib.sha256((tag + veid).encode()).hexdigest()[:12]


def gateway(ip: str) -> str:
    """The host side's address: the first host of the VE's network (the second if that is
    the VE's own), or a link-local address for a /31 or /32."""
    iface = ipaddress.ip_interface(ip)
    if iface.network.prefixlen >= 31:
        return LINK_LOCAL_GATEWAY
    hosts = iface.network.hosts()
    first = next(hosts)
    return str(next(hosts) if first == iface.ip else first)


@contextlib.contextmanager
def _iproute() -> Iterator[IPRoute]:
    """An IPRoute socket, with no signal raised while it is in use: pyroute2 runs an asyncio
    loop, which turns an exception of a signal handler (cpt/interrupts.py) into
    "RuntimeError: Event loop stopped"; the signal is raised once the block is left."""
    from pyroute2 import IPRoute

    with interrupts.deferred(), IPRoute() as ipr:
        yield ipr


def _err(what: str, e: NetlinkError) -> SystemError_:
    return SystemError_(f"{what}: {e.args[1] if len(e.args) > 1 else e}")


def setup_host(veid: str, ip: str, init_pid: int, *, up: bool = True) -> str:
    """Create the pair with its VE end in the network namespace of `init_pid`; set up the
    host end; returns the host interface's name.  With `up` False (a restore) the host
    end stays down and the blackhole route holds the address until the VE resumes."""
    from pyroute2.netlink.exceptions import NetlinkError

    name = host_ifname(veid)
    with _iproute() as ipr:
        try:
            if ipr.link_lookup(ifname=name):
                ipr.link("del", ifname=name)  # a leftover of a VE that died
            ipr.link(
                "add", ifname=name, kind="veth", peer={"ifname": VE_IFNAME, "net_ns_pid": init_pid}
            )
            idx = ipr.link_lookup(ifname=name)[0]
            if ip:
                gw = gateway(ip)
                ipr.addr("add", index=idx, address=gw, prefixlen=32)
            if not up:
                return name
            ipr.link("set", index=idx, state="up")
            if ip:
                addr = ip.split("/")[0]
                ipr.route("replace", dst=f"{addr}/32", oif=idx, prefsrc=gw, priority=0)
        except NetlinkError as e:
            raise _err(f"network of VE {veid} ({name})", e) from e
    return name


def setup_inside(ip: str) -> None:
    """In the VE's network namespace (the calling thread is there: cpt.sys.ns.entered):
    loopback and eth0 up, the address, the gateway route."""
    with _iproute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=lo, state="up")
        if not ip:
            return
        addr, prefix = ip.split("/")
        idx = ipr.link_lookup(ifname=VE_IFNAME)[0]
        ipr.addr("add", index=idx, address=addr, prefixlen=int(prefix))
        ipr.link("set", index=idx, state="up")
        gw = gateway(ip)
        if ipaddress.ip_address(gw) not in ipaddress.ip_interface(ip).network:
            ipr.route("add", dst=f"{gw}/32", oif=idx, scope="link")


def set_host_link(veid: str, up: bool) -> None:
    """Suspend takes the VE's link down (packets dropped, never answered with a reset)."""
    with _iproute() as ipr:
        found = ipr.link_lookup(ifname=host_ifname(veid))
        if found:
            ipr.link("set", index=found[0], state="up" if up else "down")


def host_link_up(veid: str) -> bool | None:
    """Is the VE's host end of its veth administratively up (None: there is none)?"""
    with _iproute() as ipr:
        found = ipr.link_lookup(ifname=host_ifname(veid))
        if not found:
            return None
        link = ipr.get_links(found[0])[0]
        return bool(link["flags"] & 1)  # IFF_UP


def route_to_ve(veid: str, ip: str) -> None:
    """The VE's address reaches it again (replacing the blackhole)."""
    if not ip:
        return
    with _iproute() as ipr:
        found = ipr.link_lookup(ifname=host_ifname(veid))
        if not found:
            raise SystemError_(f"VE {veid} has no host interface {host_ifname(veid)}")
        addr = ip.split("/")[0]
        ipr.route("replace", dst=f"{addr}/32", oif=found[0], prefsrc=gateway(ip), priority=0)


def blackhole(ip: str) -> None:
    """Hold the VE's address whenever it cannot answer (suspended, dumped, stopped): the
    route through its veth, if any, goes; the blackhole (HOLD_METRIC) stays for good."""
    from pyroute2.netlink.exceptions import NetlinkError

    if not ip:
        return
    dst = f"{ip.split('/')[0]}/32"
    with _iproute() as ipr:
        ipr.route("replace", dst=dst, type="blackhole", priority=HOLD_METRIC)
        for r in ipr.get_routes(family=2):
            if r["type"] != 6 and r["dst_len"] == 32 and r.get_attr("RTA_DST") == dst[:-3]:
                with contextlib.suppress(NetlinkError):
                    ipr.route("del", dst=dst, priority=r.get_attr("RTA_PRIORITY") or 0)


def remove_host_link(veid: str) -> None:
    """Delete the VE's veth pair (both ends), if it is still there."""
    from pyroute2.netlink.exceptions import NetlinkError

    with _iproute() as ipr:
        for idx in ipr.link_lookup(ifname=host_ifname(veid)):
            with contextlib.suppress(NetlinkError):  # gone with its namespace meanwhile
                ipr.link("del", index=idx)


def release(veid: str, ip: str) -> None:
    """Remove everything of the VE's network from the host (destroy)."""
    from pyroute2.netlink.exceptions import NetlinkError

    with _iproute() as ipr:
        for idx in ipr.link_lookup(ifname=host_ifname(veid)):
            ipr.link("del", index=idx)
        while ip:
            try:
                ipr.route("del", dst=f"{ip.split('/')[0]}/32")
            except NetlinkError:
                break  # no route left


def has_blackhole(ip: str) -> bool:
    addr = ip.split("/")[0]
    with _iproute() as ipr:
        for r in ipr.get_routes(family=2):
            if r.get_attr("RTA_DST") == addr and r["dst_len"] == 32 and r["type"] == 6:
                return True
    return False
