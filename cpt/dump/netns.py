"""The network and UTS namespaces of a VE: links, addresses, routes; hostname, domainname.

Both are read from inside: `in_namespace` (cpt.sys.ns) moves only the CALLING THREAD into
the namespace of the process (setns(2) of a net or uts namespace is per thread), opens what
it needs there and moves the thread back.  The rest of this process, its other threads
included, never leaves its own namespaces.  A netlink socket stays bound to the network
namespace it was created in, so pyroute2's IPRoute is created inside the block: in
pyroute2 0.9 the synchronous IPRoute creates its socket in its constructor, in the calling
thread (it keeps one socket per thread, created lazily in the thread that first uses it,
and starts no thread of its own), and every call of it below runs in that same thread.

What is recorded (SPEC.md: Uts, NetLink, NetAddr, NetRoute):

* links: the loopback and veth interfaces.  Any other kind (bridge, macvlan, ipvlan,
  vlan, vxlan, tun/tap, wireguard, a physical device, ...) is refused with
  UnsupportedError naming the interface and its kind.  The fallback tunnel devices that
  the kernel creates in every namespace once their module is loaded (tunl0, sit0, gre0,
  gretap0, erspan0, ip_vti0, ip6_vti0, ip6tnl0, ip6gre0) are skipped while they are down
  and carry no address: restore finds them again wherever the module is loaded.  Used
  (up or addressed), they are refused like any other kind.  Not recorded: txqueuelen,
  alias, group, qdiscs, per-interface sysctls.  IFF_UP, IFF_NOARP, IFF_PROMISC,
  IFF_ALLMULTI and IFF_MULTICAST are restored from `flags`; the rest of it is state.
* addresses: every IPv4 and IPv6 address but the IPv6 link-local (fe80::/10) ones that
  the kernel generated itself (IFA_PROTO_KERNEL_LL, kernel 5.18+; before 5.18, which does
  not tell, every fe80::/10 address counts as kernel-generated).  Addresses with a peer
  (IFA_LOCAL different from IFA_ADDRESS) are refused.  Lifetimes and the broadcast
  address are not recorded: restore adds permanent addresses without a broadcast.
* routes: what a restore must add itself.  Skipped, because they come back with the
  addresses and links: the local table (255), protocol kernel routes (the prefix routes
  of the addresses, fe80::/64), IPv6 multicast routes, and cached clones.  Refused, as
  the record cannot hold them: multipath, nexthop objects, lightweight tunnels
  (encap), RTA_VIA, metrics (mtu, window, ...), source-specific (IPv6 from) routes,
  TOS, and `onlink` routes.  Not recorded: the IPv6 route preference and expiry.
* policy routing rules other than the kernel's defaults are refused (rules are not
  recorded at all).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import TYPE_CHECKING, Any

from cptimage.records import NetAddr, NetLink, NetRoute, Uts

from .. import interrupts
from ..errors import DumpError, UnsupportedError
from ..sys.ns import in_namespace
from ..sys.uts import uname

# pyroute2 is imported where it is used: importing the package loads all of it (ndb,
# ipdb, conntrack, asyncio; about 100 ms), which every cpt command would otherwise pay
# at start-up, though only the network of a VE needs it.
if TYPE_CHECKING:
    from pyroute2.netlink.exceptions import NetlinkError

NetRecord = NetLink | NetAddr | NetRoute

# <linux/if.h>
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_NOARP = 0x80
IFF_PROMISC = 0x100
IFF_ALLMULTI = 0x200
IFF_MULTICAST = 0x1000
# The interface flags a user sets (and restore restores); the others are state.
IFF_SETTABLE = IFF_UP | IFF_NOARP | IFF_PROMISC | IFF_ALLMULTI | IFF_MULTICAST

ARPHRD_LOOPBACK = 772

# <linux/if_addr.h>: the address flags a user sets (IFA_F_NODAD,
# IFA_F_HOMEADDRESS, IFA_F_MANAGETEMPADDR, IFA_F_NOPREFIXROUTE, IFA_F_MCAUTOJOIN); the
# others (secondary, optimistic, tentative, dadfailed, deprecated, permanent, ...) are
# state.
IFA_F_SETTABLE = 0x02 | 0x10 | 0x100 | 0x200 | 0x400
IFA_PROTO_KERNEL_LL = 3

# <linux/rtnetlink.h>
RT_TABLE_LOCAL = 255
RTPROT_KERNEL = 2
RTN_MULTICAST = 5
RTNH_F_ONLINK = 4
RTM_F_CLONED = 0x200

KIND_LOOPBACK = "loopback"
KIND_VETH = "veth"
SUPPORTED_KINDS = (KIND_LOOPBACK, KIND_VETH)

# The devices a tunnel module creates in every network namespace (fb_tunnels_only_for_init_net=0).
FALLBACK_TUNNELS = {
    "ipip": "tunl0",
    "sit": "sit0",
    "gre": "gre0",
    "gretap": "gretap0",
    "erspan": "erspan0",
    "vti": "ip_vti0",
    "vti6": "ip6_vti0",
    "ip6tnl": "ip6tnl0",
    "ip6gre": "ip6gre0",
}

# ---- UTS ----


def dump_uts(pid: int) -> Uts:
    """The hostname and domainname of the UTS namespace of `pid`."""
    with in_namespace(pid, "uts") as ino:
        _, hostname, _, _, _, domainname = uname()
    return Uts(ns_ino=ino, hostname=hostname, domainname=domainname)


# ---- network ----


def mac_bytes(text: str | None) -> bytes:
    return bytes.fromhex(text.replace(":", "")) if text else b""


def ip_bytes(family: int, text: str | None) -> bytes:
    return socket.inet_pton(family, text) if text else b""


def ip_text(family: int, raw: bytes) -> str:
    return socket.inet_ntop(family, raw)


def link_kind(msg: Any) -> str:
    """ "loopback", or IFLA_INFO_KIND ("veth", "bridge", ...), or "" (a device without one:
    a physical interface)."""
    info = msg.get("IFLA_LINKINFO")
    kind = info.get("IFLA_INFO_KIND") if info is not None else None
    if kind:
        return str(kind)
    if msg["ifi_type"] == ARPHRD_LOOPBACK or msg["flags"] & IFF_LOOPBACK:
        return KIND_LOOPBACK
    return ""


def is_idle_fallback_tunnel(kind: str, name: str, flags: int, has_addresses: bool) -> bool:
    """A tunnel module's per-namespace fallback device, never used: skipped by the dump."""
    return FALLBACK_TUNNELS.get(kind) == name and not flags & IFF_UP and not has_addresses


def kernel_reports_ifa_proto(release: str | None = None) -> bool:
    """Linux 5.18+ tags the addresses it generates itself with IFA_PROTO (and sends no
    IFA_PROTO for the addresses added by a user)."""
    parts = (release or os.uname().release).split(".")
    try:
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (5, 18)
    except (IndexError, ValueError):
        return True


def is_kernel_link_local(family: int, address: bytes, proto: int | None) -> bool:
    """An IPv6 link-local address generated by the kernel (not recorded).  `proto` is its
    IFA_PROTO, None when the kernel does not tell (then every link-local address counts)."""
    if family != socket.AF_INET6 or not ipaddress.IPv6Address(address).is_link_local:
        return False
    return proto is None or proto == IFA_PROTO_KERNEL_LL


def route_text(family: int, dst: bytes, dst_len: int, gateway: bytes, table: int) -> str:
    where = f"{ip_text(family, dst)}/{dst_len}" if dst else "default"
    via = f" via {ip_text(family, gateway)}" if gateway else ""
    return f"route {where}{via} (table {table})"


def netlink_reason(e: NetlinkError) -> str:
    """The errno text of a netlink error ("File exists")."""
    code = e.code if isinstance(e.code, int) else 0
    return os.strerror(code) if code > 0 else str(e)


def _unsupported(pid: int, what: str) -> UnsupportedError:
    return UnsupportedError(f"network namespace of process {pid}: {what}", pid=pid)


def _links(pid: int, ino: int, msgs: list[Any], addressed: set[int]) -> list[NetLink]:
    out = []
    for m in msgs:
        name = m.get("IFLA_IFNAME") or f"ifindex {m['index']}"
        kind = link_kind(m)
        flags = int(m["flags"])
        if kind not in SUPPORTED_KINDS:
            if is_idle_fallback_tunnel(kind, name, flags, m["index"] in addressed):
                continue
            raise _unsupported(
                pid,
                f"interface {name} (ifindex {m['index']}) is of kind "
                f"{kind or 'none (a physical device)'}: only loopback and veth interfaces "
                "can be checkpointed",
            )
        out.append(
            NetLink(
                ns_ino=ino,
                ifindex=int(m["index"]),
                mtu=int(m.get("IFLA_MTU") or 0),
                flags=flags,
                peer_ifindex=int(m.get("IFLA_LINK") or 0) if kind == KIND_VETH else 0,
                kind=kind,
                name=name,
                address=mac_bytes(m.get("IFLA_ADDRESS")),
            )
        )
    return out


def _addrs(pid: int, ino: int, msgs: list[Any], names: dict[int, str]) -> list[NetAddr]:
    out = []
    for m in msgs:
        family = int(m["family"])
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        local = m.get("IFA_LOCAL")
        address = m.get("IFA_ADDRESS")
        name = names.get(m["index"], f"ifindex {m['index']}")
        if local and address and local != address:
            raise _unsupported(
                pid,
                f"address {local} peer {address} on {name}: point-to-point addresses "
                "cannot be checkpointed",
            )
        raw = ip_bytes(family, local or address)
        proto = m.get("IFA_PROTO")
        if proto is None and kernel_reports_ifa_proto():
            proto = 0  # IFA_PROTO_UNSPEC is left out of the message: added by a user
        if is_kernel_link_local(family, raw, proto):
            continue
        flags = m.get("IFA_FLAGS")
        out.append(
            NetAddr(
                ns_ino=ino,
                ifindex=int(m["index"]),
                family=family,
                prefixlen=int(m["prefixlen"]),
                scope=int(m["scope"]),
                flags=int(flags if flags is not None else m["flags"]),
                address=raw,
                label=m.get("IFA_LABEL") or "",
            )
        )
    return out


_ROUTE_REFUSED = {
    "RTA_MULTIPATH": "a multipath route",
    "RTA_NH_ID": "a route through a nexthop object",
    "RTA_ENCAP": "a lightweight tunnel (encap) route",
    "RTA_VIA": "a route via another address family",
    "RTA_METRICS": "a route with metrics (mtu, window, ...)",
}


def _routes(pid: int, ino: int, msgs: list[Any], names: dict[int, str]) -> list[NetRoute]:
    out = []
    for m in msgs:
        family = int(m["family"])
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        table = int(m.get("RTA_TABLE") or m["table"])
        proto = int(m["proto"])
        rtype = int(m["type"])
        if table == RT_TABLE_LOCAL or proto == RTPROT_KERNEL or m["flags"] & RTM_F_CLONED:
            continue
        if family == socket.AF_INET6 and rtype == RTN_MULTICAST:
            continue
        dst = ip_bytes(family, m.get("RTA_DST"))
        gateway = ip_bytes(family, m.get("RTA_GATEWAY"))
        what = route_text(family, dst, int(m["dst_len"]), gateway, table)
        for attr, why in _ROUTE_REFUSED.items():
            value = m.get(attr)
            if value is not None and (attr != "RTA_METRICS" or value.get("attrs")):
                raise _unsupported(pid, f"{what} is {why}, which cannot be checkpointed")
        if m["src_len"] or m["tos"]:
            raise _unsupported(pid, f"{what} has a source prefix or a TOS: not supported")
        if m["flags"] & RTNH_F_ONLINK:
            raise _unsupported(pid, f"{what} is an onlink route: not supported")
        oif = int(m.get("RTA_OIF") or 0)
        if oif and oif not in names:
            raise _unsupported(pid, f"{what} goes through ifindex {oif}, an unrecorded link")
        out.append(
            NetRoute(
                ns_ino=ino,
                family=family,
                dst_len=int(m["dst_len"]),
                protocol=proto,
                scope=int(m["scope"]),
                type=rtype,
                table=table,
                oif=oif,
                priority=int(m.get("RTA_PRIORITY") or 0),
                dst=dst,
                gateway=gateway,
                prefsrc=ip_bytes(family, m.get("RTA_PREFSRC")),
            )
        )
    return out


def _check_rules(pid: int, msgs: list[Any]) -> None:
    for m in msgs:
        proto = m.get("FRA_PROTOCOL")
        if proto is not None and proto != RTPROT_KERNEL:
            raise _unsupported(
                pid,
                f"policy routing rule (priority {m.get('FRA_PRIORITY') or 0}, table "
                f"{m.get('FRA_TABLE') or m['table']}): rules cannot be checkpointed",
            )


def dump_net(pid: int) -> list[NetRecord]:
    """The links, addresses and routes of the network namespace of `pid`, in that order
    (links by ifindex, addresses and routes in the kernel's order)."""
    from pyroute2 import IPRoute  # on first use: see the note at the imports
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        # no signal raised inside pyroute2's asyncio loop (it would become a RuntimeError)
        with interrupts.deferred(), in_namespace(pid, "net") as ino, IPRoute() as ipr:
            links = sorted(ipr.get_links(), key=lambda m: int(m["index"]))
            addrs = list(ipr.get_addr())
            routes = list(ipr.route("dump"))
            rules = [*ipr.get_rules(family=socket.AF_INET), *ipr.get_rules(family=socket.AF_INET6)]
    except NetlinkError as e:
        raise DumpError(
            f"network namespace of process {pid}: netlink: {netlink_reason(e)}", pid=pid
        ) from e
    addressed = {int(a["index"]) for a in addrs}
    out: list[NetRecord] = []
    out.extend(_links(pid, ino, links, addressed))
    names = {r.ifindex: r.name for r in out if isinstance(r, NetLink)}
    out.extend(_addrs(pid, ino, [a for a in addrs if int(a["index"]) in names], names))
    out.extend(_routes(pid, ino, routes, names))
    _check_rules(pid, rules)
    return out


__all__ = [
    "IFA_F_SETTABLE",
    "IFF_SETTABLE",
    "IFF_UP",
    "KIND_LOOPBACK",
    "KIND_VETH",
    "NetRecord",
    "dump_net",
    "dump_uts",
    "ip_text",
    "link_kind",
    "netlink_reason",
    "route_text",
]
