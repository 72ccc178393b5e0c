"""Netlink sockets: socket(AF_NETLINK, protocol), bound to their port id and groups (a
group of a protocol other than route and generic needs CAP_NET_ADMIN, held by the
image's process), connected to their peer, options.  Messages that were queued are not
carried (dump/netlink.py)."""

from __future__ import annotations

import fcntl
import socket
from typing import Any

from cptimage.records import NetlinkSocket

from ..errors import RestoreError
from ..sys.sockopt import CAP_NET_ADMIN, SOL_NETLINK
from . import privilege, sockopts
from .fdbase import SETFL_MASK
from .model import ImageModel
from .pstree import Task

NETLINK_ROUTE = 0
NETLINK_GENERIC = 16
NETLINK_ADD_MEMBERSHIP = 1
FREE_GROUPS = (NETLINK_ROUTE, NETLINK_GENERIC)  # NL_CFG_F_NONROOT_RECV


class NetlinkSockets:
    records = (NetlinkSocket,)

    def open(self, model: ImageModel, desc: Any) -> int:
        r: NetlinkSocket = desc
        where = f"netlink socket {r.ino} (protocol {r.proto}, port {r.portid})"
        groups = [
            32 * w + b + 1 for w, word in enumerate(r.groups) for b in range(32) if word >> b & 1
        ]
        if groups and r.proto not in FREE_GROUPS:
            privilege.require(model, r.id, (CAP_NET_ADMIN,), f"{where}: its groups")
        try:
            s = socket.socket(socket.AF_NETLINK, r.type, r.proto)
        except OSError as e:
            raise RestoreError(f"cannot restore {where}: {e.strerror}") from None
        try:
            sockopts.apply(model, r.id, s, early=True, where=where)
            if r.portid or groups:
                try:
                    s.bind((r.portid, r.groups[0] if r.groups else 0))
                except OSError as e:
                    raise RestoreError(
                        f"cannot restore {where}: bind to port {r.portid}: {e.strerror}"
                    ) from None
            for g in groups:
                if g > 32:  # bind() takes the first 32; the others join one by one
                    s.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, g)
            if r.dst_portid or r.dst_group:
                s.connect((r.dst_portid, r.dst_group))
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
