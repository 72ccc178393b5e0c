"""Packet sockets: socket(AF_PACKET) (CAP_NET_RAW, held by the image's process), the
options that come before rings (version, reserve), the rings (empty; a process that has
a ring mapped is refused at dump, cpt/dump/mm.py), the bound interface (by name: its
index may differ), memberships, then the other options (a fanout group needs a bound
socket)."""

from __future__ import annotations

import fcntl
import socket
import struct
from typing import Any

from cptimage.records import PacketSocket

from ..errors import RestoreError
from ..sys import sockopt
from ..sys.sockopt import CAP_NET_RAW
from . import privilege, sockopts
from .fdbase import SETFL_MASK
from .model import ImageModel
from .pstree import Task


class PacketSockets:
    records = (PacketSocket,)

    def open(self, model: ImageModel, desc: Any) -> int:
        r: PacketSocket = desc
        where = f"packet socket {r.ino}"
        privilege.require(model, r.id, (CAP_NET_RAW,), where)
        s = socket.socket(socket.AF_PACKET, r.type, r.proto)
        try:
            sockopts.apply(model, r.id, s, early=True, where=where)
            for name, ring in (
                (sockopt.PACKET_RX_RING, r.rx_ring),
                (sockopt.PACKET_TX_RING, r.tx_ring),
            ):
                if ring:
                    s.setsockopt(sockopt.SOL_PACKET, name, struct.pack("7I", *ring))
            if r.ifindex:
                try:
                    s.bind((r.ifname, socket.ntohs(r.proto)))
                except OSError as e:
                    raise RestoreError(
                        f"{where}: cannot bind it to interface {r.ifname!r}: {e.strerror}"
                    ) from None
            for mreq in r.mclist:
                s.setsockopt(sockopt.SOL_PACKET, sockopt.PACKET_ADD_MEMBERSHIP, mreq)
            sockopts.apply(model, r.id, s, early=False, where=where)
        except OSError as e:
            s.close()
            raise RestoreError(f"cannot restore {where}: {e.strerror}") from None
        except BaseException:
            s.close()
            raise
        fd = s.detach()
        fcntl.fcntl(fd, fcntl.F_SETFL, r.flags & SETFL_MASK)
        return fd

    def after_install(self, model: ImageModel, task: Task, local: dict[int, int]) -> None:
        pass

    def close(self) -> None:
        pass
