"""A VE's network: a veth pair (host side `cpt<VEID>`, VE side eth0) set up with pyroute2.

The host side carries a gateway address (/32) and a /32 route to the VE's address; the VE
side carries the VE's address and a route to the gateway only: no default route, so a VE
reaches this host (and what the host routes to it), never the outside by itself.

A VE whose address lies in a subnet the node is connected to (its UPLINK: the node's
interface whose connected subnet holds the address, or the interface a node setting
names, `uplink = "IFNAME"` in <root>/node.toml) is reachable from that LAN, as an
OpenVZ venet VE is: while it runs here, the uplink answers ARP for its address (a proxy
neighbour entry of that address alone, `ip neigh add proxy ADDR dev UPLINK`) and the
node forwards between the uplink and the VE's veth, per interface (net.ipv4.conf.IF.
forwarding on those two, never net.ipv4.ip_forward for the whole node; the veth end also
answers the VE's ARP for its LAN peers, proxy_arp).  The host side of such a VE's veth
takes a link-local gateway (169.254.0.1), never an address of the LAN's subnet (which
another machine may hold).  `announce` tells the LAN where the address is now (a
gratuitous ARP from the uplink), after a VE came up here (start, restore, migration).
When the VE stops answering here (suspend, stop, a killed VE, destroy, migrated away)
the proxy entry goes with its route (`blackhole`), and the uplink's forwarding goes back
to what it was once no VE of this node's namespace uses it (the value cpt found is kept
in <run>/uplink-IFNAME.json until then).  A VE whose address is in no connected subnet is
reached through the host's routing only, with the subnet's first host as its gateway.

While the VE is suspended, dumped or stopped, a blackhole route holds its address: once
its veth is gone the host would otherwise route the address out of the machine through
its default route (ENGINE-NOTES).  The blackhole is there from `ve create` to `ve
destroy`, at a worse metric (HOLD_METRIC) than the route through the veth: whenever that
route goes (the link taken down by a suspend, the veth gone with a VE that ended by
itself or was killed), the blackhole answers, with no moment and no daemon in between.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import ipaddress
import json
import os
import socket
import struct
import time
import tomllib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from cpt import interrupts
from cpt.errors import InvalidValue, LockedError, SystemError_
from cpt.procfs.system import read_sysctl, write_sysctl
from cpt.stages.store import DEFAULT_ROOT, node_tag, run_dir, run_path
from cptimage.atomic import atomic_output
from cptimage.errors import quote

# pyroute2 is imported where it is used (see cpt/dump/netns.py): importing the package
# loads all of it, which every cpt command would pay at start-up.
if TYPE_CHECKING:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

VE_IFNAME = "eth0"
HOLD_METRIC = 1_000_000  # the blackhole's: any route through the veth (metric 0) wins
LINK_LOCAL_GATEWAY = "169.254.0.1"
NODE_SETTINGS = "node.toml"  # <root>/node.toml: `uplink = "IFNAME"` overrides the choice
NUD_PERMANENT = 0x80
NTF_PROXY = 0x08
# what cpt turns on on an uplink, and gives back once no VE uses it
UPLINK_SYSCTLS = ("ipv4/conf/{}/forwarding", "ipv4/neigh/{}/proxy_delay")
UPLINK_LOCK_TIMEOUT = 10.0
UPLINK_VALUES = {"ipv4/conf/{}/forwarding": "1", "ipv4/neigh/{}/proxy_delay": "0"}


def host_ifname(veid: str, tag: str | None = None) -> str:
    """The host end of the VE's veth: cpt<VEID> on the default node root, c<tag>.<VEID> on
    another (`tag`: node_tag(), CPT_ROOT's by default: two node roots sharing a network
    namespace never share a name), a digest where that is longer than IFNAMSIZ - 1."""
    tag = node_tag() if tag is None else tag
    name = f"c{tag[:6]}.{veid}" if tag else f"cpt{veid}"
    if len(name) <= 15:  # IFNAMSIZ - 1
        return name
    return ("c" if tag else "cpt") + hashlib.sha256((tag + veid).encode()).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class Uplink:
    """The node's interface on the VE address's LAN, and the node's own address there."""

    ifname: str
    index: int
    address: str


def _addr(ip: str) -> str:
    return ip.split("/")[0]


def uplink_setting(root: str | None = None) -> str:
    """The uplink the node setting names ('' for none: chosen by subnet)."""
    root = os.path.abspath(root or os.environ.get("CPT_ROOT") or DEFAULT_ROOT)
    path = os.path.join(root, NODE_SETTINGS)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return ""
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InvalidValue(f"{path}: unreadable ({e}); correct or remove it") from None
    name = data.get("uplink", "")
    if not isinstance(name, str) or len(name) > 15 or "/" in name:
        raise InvalidValue(f"{path}: uplink {quote(str(name))} is not an interface name")
    return name


def _uplink(ipr: IPRoute, ip: str) -> Uplink | None:
    """The uplink of VE address `ip` in this network namespace (None: no connected
    subnet holds it and no setting names one)."""
    if not ip:
        return None
    addr = ipaddress.ip_interface(ip).ip
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    wanted = uplink_setting()
    windex = ipr.link_lookup(ifname=wanted) if wanted else []
    if wanted and not windex:
        raise InvalidValue(
            f"the node setting uplink = {quote(wanted)} ({NODE_SETTINGS}) names no interface "
            f"of this node; correct it"
        )
    for a in sorted(ipr.get_addr(family=family), key=lambda a: a["index"]):
        local = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
        if not local or ipaddress.ip_address(local).is_loopback:
            continue
        if wanted:
            if a["index"] == windex[0]:
                return Uplink(wanted, a["index"], local)
            continue
        if a["prefixlen"] >= addr.max_prefixlen - 1 or ipaddress.ip_address(local) == addr:
            continue  # a /32 or /31 (a veth's gateway) is no LAN
        if addr in ipaddress.ip_network(f"{local}/{a['prefixlen']}", strict=False):
            return Uplink(_ifname(ipr, a), a["index"], local)
    return None


def _ifname(ipr: IPRoute, a: Any) -> str:
    """The interface name of address message `a` (IPv4 carries it; else one link get)."""
    label = a.get_attr("IFA_LABEL")
    if label:
        return str(label)
    return str(ipr.link("get", index=a["index"])[0].get_attr("IFLA_IFNAME"))


def uplink(ip: str) -> Uplink | None:
    """The uplink of VE address `ip` on this node (module docstring)."""
    with _iproute() as ipr:
        return _uplink(ipr, ip)


def gateway(ip: str, up: Uplink | None = None) -> str:
    """The host side's address: link-local for a VE on a LAN of the node (`up`, its
    uplink) or for a /31 or /32; else the first host of the VE's network (the second if
    that is the VE's own)."""
    iface = ipaddress.ip_interface(ip)
    if up is not None or iface.network.prefixlen >= 31:
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


def _sysctl(name: str, value: str) -> None:
    """Write one sysctl of this network namespace (SystemError_ naming it)."""
    try:
        write_sysctl(name, value)
    except OSError as e:
        raise SystemError_(f"cannot set sysctl {name.replace('/', '.')}: {e}") from e


@dataclasses.dataclass(frozen=True)
class HostSide:
    """What setup_host made: the host end's name, the VE's gateway, the uplink (if any)."""

    ifname: str
    gateway: str
    uplink: Uplink | None


def setup_host(veid: str, ip: str, init_pid: int, *, up: bool = True) -> HostSide:
    """Create the pair with its VE end in the network namespace of `init_pid`; set up the
    host end (with `up`, the VE answers at once: route_to_ve).  With `up` False (a
    restore) the host end stays down and the blackhole route holds the address until the
    VE resumes.  One netlink socket for all of it (each costs about a millisecond)."""
    from pyroute2.netlink.exceptions import NetlinkError

    name = host_ifname(veid)
    with _iproute() as ipr:
        try:
            upl = _uplink(ipr, ip)
            peer = {"ifname": VE_IFNAME, "net_ns_pid": init_pid}
            try:
                ipr.link("add", ifname=name, kind="veth", peer=peer)
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise
                ipr.link("del", ifname=name)  # a leftover of a VE that died
                ipr.link("add", ifname=name, kind="veth", peer=peer)
            idx = ipr.link("get", ifname=name)[0]["index"]
            gw = gateway(ip, upl) if ip else ""
            if ip:
                ipr.addr("add", index=idx, address=gw, prefixlen=32)
            if upl is not None:  # it forwards the VE's packets to its LAN, answers its ARP
                _sysctl(f"net/ipv4/conf/{name}/forwarding", "1")
                _sysctl(f"net/ipv4/conf/{name}/proxy_arp", "1")
                _sysctl(f"net/ipv4/neigh/{name}/proxy_delay", "0")
            if up:
                ipr.link("set", index=idx, state="up")
                _serve(ipr, idx, ip, upl)
        except NetlinkError as e:
            raise _err(f"network of VE {veid} ({name})", e) from e
    return HostSide(name, gw, upl)


def setup_inside(ip: str, gw: str) -> None:
    """In the VE's network namespace (the calling thread is there: cpt.sys.ns.entered):
    loopback and eth0 up, the address, the gateway route (`gw`: setup_host's, which
    asked the host's namespace)."""
    with _iproute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=lo, state="up")
        if not ip:
            return
        addr, prefix = ip.split("/")
        idx = ipr.link_lookup(ifname=VE_IFNAME)[0]
        ipr.addr("add", index=idx, address=addr, prefixlen=int(prefix))
        ipr.link("set", index=idx, state="up")
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


def route_to_ve(veid: str, ip: str) -> Uplink | None:
    """The VE's address reaches it again (replacing the blackhole), and, on a LAN of
    the node, its uplink answers for it and forwards to it; returns that uplink."""
    from pyroute2.netlink.exceptions import NetlinkError

    if not ip:
        return None
    with _iproute() as ipr:
        found = ipr.link_lookup(ifname=host_ifname(veid))
        if not found:
            raise SystemError_(f"VE {veid} has no host interface {host_ifname(veid)}")
        upl = _uplink(ipr, ip)
        try:
            _serve(ipr, found[0], ip, upl)
        except NetlinkError as e:
            raise _err(f"network of VE {veid} on {upl.ifname if upl else 'this host'}", e) from e
    return upl


def _serve(ipr: IPRoute, idx: int, ip: str, upl: Uplink | None) -> None:
    """The route to the VE through its veth (index `idx`); on a LAN, the uplink's proxy
    entry for its address and the uplink's forwarding."""
    if not ip:
        return
    src = upl.address if upl is not None else gateway(ip)
    ipr.route("replace", dst=f"{_addr(ip)}/32", oif=idx, prefsrc=src, priority=0)
    if upl is not None:
        with _uplinks_locked():
            _uplink_on(upl)
            ipr.neigh("replace", dst=_addr(ip), ifindex=upl.index, flags=NTF_PROXY,
                      state=NUD_PERMANENT)  # fmt: skip


@contextlib.contextmanager
def _uplinks_locked() -> Iterator[None]:
    """One cpt command at a time turns uplinks on or gives them back (a VE starting while
    another stops must not find the uplink given back under its new proxy entry)."""
    fd = os.open(run_path("uplinks", ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + UPLINK_LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LockedError(
                        f"the node's uplinks ({run_path('uplinks', '.lock')}) stay locked by "
                        f"another cpt command; retry when it ends"
                    ) from None
                time.sleep(0.005)
        yield
    finally:
        os.close(fd)


def _uplink_record(ifname: str) -> str:
    return run_path(f"uplink-{ifname}", ".json")


def _uplink_on(upl: Uplink) -> None:
    """Forwarding and immediate proxy answers (no random delay) on the uplink; the first
    VE that needs them keeps the uplink's own values in the run directory."""
    keys = [k.format(upl.ifname) for k in UPLINK_SYSCTLS]
    want = {k.format(upl.ifname): v for k, v in UPLINK_VALUES.items()}
    now = {k: read_sysctl(f"net/{k}") for k in keys}
    if now == want:
        return
    path = _uplink_record(upl.ifname)
    if not os.path.exists(path):
        with atomic_output(path, mode=0o600) as f:
            f.write(json.dumps(now).encode())
    for k in keys:
        _sysctl(f"net/{k}", want[k])


def _give_back_uplinks(ipr: IPRoute) -> None:
    """Give every uplink cpt turned on (a record in the run directory) its own values
    back once no proxy entry is left on it; what was so before cpt stays."""
    used = {n["ifindex"] for n in _proxies(ipr)}
    prefix, suffix = "uplink-", ".json"
    for name in os.listdir(run_dir()):
        if not (name.startswith(prefix) and name.endswith(suffix)):
            continue
        ifname = name[len(prefix) : -len(suffix)]
        found = ipr.link_lookup(ifname=ifname)
        if found and found[0] in used:
            continue
        path = _uplink_record(ifname)
        try:
            with open(path) as f:
                before = json.load(f)
        except (FileNotFoundError, ValueError):
            before = {}  # a damaged record: the values stay as they are
        for k, v in before.items():
            if found and k in {x.format(ifname) for x in UPLINK_SYSCTLS}:
                _sysctl(f"net/{k}", str(v))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _proxies(ipr: IPRoute) -> list[dict[str, object]]:
    """The proxy neighbour entries of this namespace (IPv4): {ifindex, dst}."""
    from pyroute2.netlink.exceptions import NetlinkError

    out: list[dict[str, object]] = []
    with contextlib.suppress(NetlinkError):
        # the kernel dumps proxy entries only to a request with NTF_PROXY in ndm_flags;
        # a dump_filter keeps pyroute2 from turning the flags into a filter of its own
        for n in ipr.neigh("dump", family=socket.AF_INET, flags=NTF_PROXY, dump_filter={}):
            if n["flags"] & NTF_PROXY:
                out.append({"ifindex": n["ifindex"], "dst": n.get_attr("NDA_DST")})
    return out


def _withdraw(ipr: IPRoute, ip: str) -> None:
    """The uplink no longer answers for `ip` (its proxy entry goes, on any interface)."""
    from pyroute2.netlink.exceptions import NetlinkError

    addr = _addr(ip)
    with _uplinks_locked():
        for n in _proxies(ipr):
            if n["dst"] == addr:
                with contextlib.suppress(NetlinkError):
                    ipr.neigh("del", dst=addr, ifindex=n["ifindex"], flags=NTF_PROXY)
        _give_back_uplinks(ipr)


def blackhole(ip: str) -> None:
    """Hold the VE's address whenever it cannot answer (suspended, dumped, stopped): the
    route through its veth, if any, goes; the blackhole (HOLD_METRIC) stays for good; the
    uplink stops answering ARP for it."""
    from pyroute2.netlink.exceptions import NetlinkError

    if not ip:
        return
    dst = f"{_addr(ip)}/32"
    with _iproute() as ipr:
        ipr.route("replace", dst=dst, type="blackhole", priority=HOLD_METRIC)
        for r in ipr.get_routes(family=2):
            if r["type"] != 6 and r["dst_len"] == 32 and r.get_attr("RTA_DST") == dst[:-3]:
                with contextlib.suppress(NetlinkError):
                    ipr.route("del", dst=dst, priority=r.get_attr("RTA_PRIORITY") or 0)
        _withdraw(ipr, ip)


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
        if not ip:
            return
        for r in ipr.get_routes(family=2):  # the blackhole (the veth's route went with it)
            if r.get_attr("RTA_DST") == _addr(ip) and r["dst_len"] == 32 and r["type"] == 6:
                with contextlib.suppress(NetlinkError):
                    ipr.route("del", dst=f"{_addr(ip)}/32", type="blackhole",
                              priority=r.get_attr("RTA_PRIORITY") or 0)  # fmt: skip
        _withdraw(ipr, ip)


def has_blackhole(ip: str) -> bool:
    addr = _addr(ip)
    with _iproute() as ipr:
        for r in ipr.get_routes(family=2):
            if r.get_attr("RTA_DST") == addr and r["dst_len"] == 32 and r["type"] == 6:
                return True
    return False


def answers(ip: str) -> list[str]:
    """The interfaces of this node that answer ARP for `ip` (its proxy entries)."""
    with _iproute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        return [str(names.get(n["ifindex"], n["ifindex"])) for n in _proxies(ipr)
                if n["dst"] == _addr(ip)]  # fmt: skip


# -- telling the LAN where an address is


def announce(ip: str, count: int = 1, *, via: Uplink | None = None) -> str | None:
    """Tell the LAN of VE address `ip` that it is reached through this node now: a
    gratuitous ARP (IPv4: a broadcast ARP request for the address from itself, with the
    uplink's MAC, which the proxy answers come from) or an unsolicited neighbour
    advertisement (IPv6: to all nodes, Override set, the uplink's link-layer address),
    sent `count` times from the uplink (`via`: the uplink, when the caller has it; else
    it is looked up).  Peers that had the address in their neighbour table take the new
    MAC at once, before any traffic.  Returns the uplink's name; None (nothing sent)
    when the address is on no LAN of this node.  Call it once the VE answers here
    (after its resume)."""
    if not ip:
        return None
    upl = via or uplink(ip)
    if upl is None:
        return None
    addr = ipaddress.ip_address(_addr(ip))
    try:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
            s.bind((upl.ifname, 0))
            mac = s.getsockname()[4]  # the uplink's hardware address
            for _ in range(count):
                if addr.version == 4:
                    _send_garp(s, addr.packed, mac)
                else:
                    _send_na(upl, addr.packed, mac)
    except OSError as e:
        raise SystemError_(f"cannot announce {addr} on {upl.ifname}: {e.strerror}") from e
    return upl.ifname


def _send_garp(s: socket.socket, addr: bytes, mac: bytes) -> None:
    """On `s` (a packet socket bound to the uplink)."""
    frame = b"\xff" * 6 + mac + struct.pack("!H", 0x0806)  # Ethernet: to all, ARP
    # ARP request: Ethernet/IPv4, sender = target = the address (RFC 5227 announcement)
    frame += struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + addr + b"\0" * 6 + addr
    s.send(frame)


def _send_na(upl: Uplink, addr: bytes, mac: bytes) -> None:
    # ICMPv6 neighbour advertisement: type 136, flags Override (not Router, not
    # Solicited), the target, option 2 (target link-layer address); the kernel sums it
    na = struct.pack("!BBHI", 136, 0, 0, 0x20000000) + addr + struct.pack("!BB", 2, 1) + mac
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, upl.ifname.encode())
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, upl.index)
        s.sendto(na, ("ff02::1", 0, 0, upl.index))
