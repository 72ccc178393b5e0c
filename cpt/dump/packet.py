"""Packet sockets (AF_PACKET): type, protocol, bound interface, memberships and rings
from packet_diag; options through sockopts.py.  A ring is carried by its parameters and
comes back empty (packets are a lossy medium, and neither are the packets queued on the
socket carried); a ring mapped into a process is refused (cpt/dump/mm.py)."""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

from cptimage.records import PacketSocket

from ..errors import UnsupportedError
from ..procfs import FdInfo
from ..sys import net
from . import sockopts
from .fdbase import FdContext, file_flags

_MREQ = struct.Struct("<iHH8s")  # struct packet_mreq: ifindex type alen address


def unsupported(where: str, s: socket.socket) -> str | None:
    d = net.packet_diag().get(os.fstat(s.fileno()).st_ino)
    if d is None:
        return f"{where}: packet socket not found by packet_diag"
    if d.type not in (socket.SOCK_RAW, socket.SOCK_DGRAM):
        return f"{where}: packet socket of type {d.type} is not supported"
    for _i, _c, _t, addr in d.mclist:
        if len(addr) > 8:
            return f"{where}: a packet membership with a {len(addr)}-byte address"
    return None


def dump(ctx: FdContext, ident: int, s: socket.socket, ino: int, fi: FdInfo) -> Any:
    d = net.packet_diag().get(ino)
    if d is None:
        raise UnsupportedError(f"packet socket {ino} vanished")
    ifname = ""
    if d.ifindex:
        try:
            ifname = socket.if_indextoname(d.ifindex)
        except OSError:
            ifname = ""
    rec = PacketSocket(
        id=ident,
        flags=file_flags(fi),
        type=d.type,
        proto=socket.htons(d.proto),
        ifindex=d.ifindex,
        ino=ino,
        ifname=ifname,
        rx_ring=list(d.rx_ring),
        tx_ring=list(d.tx_ring),
        mclist=[
            _MREQ.pack(index, typ, len(addr), addr.ljust(8, b"\0"))
            for index, count, typ, addr in d.mclist
            for _ in range(count)
        ],
    )
    sockopts.dump(ctx, ident, s)
    return rec
