"""Configure the new network and UTS namespaces of a restored VE from its image.

The namespaces are the new, empty ones of the restored VE's init `pid`.  Like the dump
(cpt/dump/netns.py), this works from inside with only the calling thread moved into them
(`in_namespace` of cpt.sys.ns); the rest of this process stays where it is.

restore_net expects the caller to have created every veth pair already, with its VE end in
the namespace under the recorded name (eth0) and its other end outside; it does not create
links.  It then sets, link by link (in ifindex order, lo first): the MAC address and MTU
(veth), the addresses, the flags IFF_UP/NOARP/PROMISC/ALLMULTI/MULTICAST as recorded; then
the routes, in the recorded order, each through the new ifindex of the link of the
recorded name.  A route whose gateway is reached through a route later in the image is
retried once the others are in.  Addresses and routes the kernel already added (lo's
127.0.0.1/8 and ::1) are not an error ("File exists").
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING, Any

from cptimage.records import NetAddr, NetLink, NetRoute, Uts

from .. import interrupts
from ..dump.netns import (
    IFA_F_SETTABLE,
    IFF_SETTABLE,
    IFF_UP,
    KIND_LOOPBACK,
    KIND_VETH,
    NetRecord,
    ip_text,
    link_kind,
    netlink_reason,
    route_text,
)
from ..errors import RestoreError
from ..sys.ns import in_namespace
from ..sys.uts import setdomainname, sethostname

# pyroute2 is imported where it is used, as in cpt/dump/netns.py (start-up time).
if TYPE_CHECKING:
    from pyroute2.netlink.exceptions import NetlinkError

__all__ = ["restore_net", "restore_uts"]

# A route failing with one of these may need a route that comes later (its gateway's).
_RETRY_ERRNOS = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL, errno.ENETDOWN}


# ---- UTS ----


def restore_uts(pid: int, uts: Uts) -> None:
    """Set the hostname and domainname of the UTS namespace of `pid`."""
    with in_namespace(pid, "uts"):
        try:
            sethostname(uts.hostname)
            setdomainname(uts.domainname)
        except OSError as e:
            why = e.args[1] if len(e.args) > 1 else str(e)
            raise RestoreError(f"UTS namespace of process {pid}: {why}", pid=pid) from e


# ---- network ----


def _fail(pid: int, what: str, e: NetlinkError) -> RestoreError:
    return RestoreError(f"network namespace of process {pid}: {what}: {netlink_reason(e)}", pid=pid)


def _find_links(pid: int, ipr: Any, links: list[NetLink]) -> dict[int, int]:
    """Recorded ifindex -> ifindex of the same link in the new namespace."""
    present = {m.get("IFLA_IFNAME"): m for m in ipr.get_links()}
    loopbacks = [m for m in present.values() if link_kind(m) == KIND_LOOPBACK]
    mapping: dict[int, int] = {}
    for link in links:
        if link.kind == KIND_LOOPBACK:
            found = present.get(link.name) or (loopbacks[0] if loopbacks else None)
            if found is None:
                raise RestoreError(f"process {pid}: no loopback interface", pid=pid)
        elif link.kind == KIND_VETH:
            found = present.get(link.name)
            if found is None:
                raise RestoreError(
                    f"VE interface {link.name} is missing: the network namespace of process "
                    f"{pid} has no interface of that name (the veth pair must be created, "
                    f"its end named {link.name} in that namespace, before the restore)",
                    pid=pid,
                )
            kind = link_kind(found)
            if kind != KIND_VETH:
                raise RestoreError(
                    f"VE interface {link.name} of process {pid} is of kind {kind or 'none'}, "
                    "not veth",
                    pid=pid,
                )
        else:
            raise RestoreError(
                f"interface {link.name} of the image is of kind {link.kind or 'none'}: "
                "only loopback and veth interfaces can be restored",
                pid=pid,
            )
        mapping[link.ifindex] = int(found["index"])
    return mapping


def _mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _add_addr(pid: int, ipr: Any, idx: int, name: str, a: NetAddr) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    text = ip_text(a.family, a.address)
    spec: dict[str, Any] = {
        "index": idx,
        "family": a.family,
        "address": text,
        "prefixlen": a.prefixlen,
        "scope": a.scope,
        "flags": a.flags & IFA_F_SETTABLE,
    }
    if a.family == socket.AF_INET and a.label:
        spec["label"] = a.label
    try:
        ipr.addr("add", **spec)
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise _fail(pid, f"address {text}/{a.prefixlen} on {name}", e) from e


def _configure_link(
    pid: int, ipr: Any, link: NetLink, idx: int, addrs: list[NetAddr], current: Any
) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    want_flags = link.flags & IFF_SETTABLE
    try:
        if link.kind == KIND_LOOPBACK:
            # Up first: the kernel adds lo's own addresses, the recorded ones then exist.
            if link.mtu and link.mtu != current.get("IFLA_MTU"):
                ipr.link("set", index=idx, mtu=link.mtu)
            ipr.link("set", index=idx, flags=want_flags, change=IFF_SETTABLE)
        else:
            if current["flags"] & IFF_UP:
                ipr.link("set", index=idx, state="down")
            spec: dict[str, Any] = {}
            if link.address:
                spec["address"] = _mac_text(link.address)
            if link.mtu:
                spec["mtu"] = link.mtu
            if spec:
                ipr.link("set", index=idx, **spec)
    except NetlinkError as e:
        raise _fail(pid, f"interface {link.name}", e) from e
    for a in addrs:
        _add_addr(pid, ipr, idx, link.name, a)
    if link.kind != KIND_LOOPBACK:
        try:
            ipr.link("set", index=idx, flags=want_flags, change=IFF_SETTABLE)
        except NetlinkError as e:
            raise _fail(pid, f"interface {link.name} flags {want_flags:#x}", e) from e


def _route_spec(r: NetRoute, new_index: dict[int, int]) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "family": r.family,
        "dst_len": r.dst_len,
        "proto": r.protocol,
        "scope": r.scope,
        "type": r.type,
        "table": r.table,
    }
    if r.dst:
        spec["dst"] = ip_text(r.family, r.dst)
    if r.gateway:
        spec["gateway"] = ip_text(r.family, r.gateway)
    if r.prefsrc:
        spec["prefsrc"] = ip_text(r.family, r.prefsrc)
    if r.oif:
        spec["oif"] = new_index[r.oif]
    if r.priority:
        spec["priority"] = r.priority
    return spec


def _add_routes(
    pid: int, ipr: Any, routes: list[NetRoute], new_index: dict[int, int], names: dict[int, str]
) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    for r in routes:
        if r.oif and r.oif not in new_index:
            raise RestoreError(
                f"{route_text(r.family, r.dst, r.dst_len, r.gateway, r.table)} of the image "
                f"goes through ifindex {r.oif}, which is not in the image",
                pid=pid,
            )
    pending = list(routes)
    while pending:
        failed: list[tuple[NetRoute, NetlinkError]] = []
        for r in pending:
            try:
                ipr.route("add", **_route_spec(r, new_index))
            except NetlinkError as e:
                if e.code == errno.EEXIST:
                    continue
                if e.code not in _RETRY_ERRNOS:
                    raise _route_fail(pid, r, names, e) from e
                failed.append((r, e))
        if len(failed) == len(pending):
            first, err = failed[0]
            raise _route_fail(pid, first, names, err) from err
        pending = [r for r, _ in failed]


def _route_fail(pid: int, r: NetRoute, names: dict[int, str], e: NetlinkError) -> RestoreError:
    what = route_text(r.family, r.dst, r.dst_len, r.gateway, r.table)
    if r.oif:
        what += f" dev {names.get(r.oif, r.oif)}"
    return _fail(pid, what, e)


def restore_net(pid: int, records: list[NetRecord]) -> None:
    """Configure the (new) network namespace of `pid` as recorded by dump_net."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    links = sorted((r for r in records if isinstance(r, NetLink)), key=lambda r: r.ifindex)
    addrs = [r for r in records if isinstance(r, NetAddr)]
    routes = [r for r in records if isinstance(r, NetRoute)]
    names = {link.ifindex: link.name for link in links}
    for a in addrs:
        if a.ifindex not in names:
            raise RestoreError(
                f"address {ip_text(a.family, a.address)}/{a.prefixlen} of the image is on "
                f"ifindex {a.ifindex}, which is not in the image",
                pid=pid,
            )
    # no signal raised inside pyroute2's asyncio loop (it would become a RuntimeError)
    with interrupts.deferred(), in_namespace(pid, "net"), IPRoute() as ipr:
        new_index = _find_links(pid, ipr, links)
        for link in links:
            idx = new_index[link.ifindex]
            try:
                current = ipr.get_links(idx)[0]
            except NetlinkError as e:
                raise _fail(pid, f"interface {link.name}", e) from e
            mine = [a for a in addrs if a.ifindex == link.ifindex]
            _configure_link(pid, ipr, link, idx, mine, current)
        _add_routes(pid, ipr, routes, new_index, names)
