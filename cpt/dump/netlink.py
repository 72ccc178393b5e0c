"""Netlink sockets: protocol, bound port id, multicast groups and connected peer from
netlink_diag; options through sockopts.py.

Messages queued for reading are not carried: the kernel sent them, and nothing else
can queue a message that comes from the kernel (port id 0) again.  A socket that holds
some is still dumped: the messages are dropped, as the kernel drops them when a
receive buffer overflows (what programs that listen to a netlink group handle)."""

from __future__ import annotations

import socket
from typing import Any

from cptimage.records import NetlinkSocket

from ..errors import UnsupportedError
from ..procfs import FdInfo
from ..sys import net
from . import sockopts
from .fdbase import FdContext, file_flags

NETLINK_CONNECTED = 1


def unsupported(where: str, s: socket.socket) -> str | None:
    return None


def dump(ctx: FdContext, ident: int, s: socket.socket, ino: int, fi: FdInfo) -> Any:
    d = net.netlink_diag().get(ino)
    if d is None:
        # netlink_diag lists the sockets in the port table and those in groups: one never
        # bound (no port id yet: bind, connect and send give it one) has only its protocol
        if s.getsockname()[0] != 0:
            raise UnsupportedError(f"netlink socket {ino} vanished")
        rec = NetlinkSocket(
            id=ident, flags=file_flags(fi), type=s.type, proto=s.proto, ino=ino, groups=[]
        )
        sockopts.dump(ctx, ident, s, family=socket.AF_NETLINK)
        return rec
    groups = list(d.groups)
    while groups and not groups[-1]:
        groups.pop()
    rec = NetlinkSocket(
        id=ident,
        flags=file_flags(fi),
        type=d.type,
        proto=d.protocol,
        portid=d.portid,
        dst_portid=d.dst_portid if d.state == NETLINK_CONNECTED else 0,
        dst_group=d.dst_group if d.state == NETLINK_CONNECTED else 0,
        ino=ino,
        groups=groups,
    )
    sockopts.dump(ctx, ident, s, family=socket.AF_NETLINK)
    return rec
