"""The socket options the engine carries: their numbers, how their bytes read and write,
and which capability the kernel asks for to set them.

A dump reads every option of this table that applies to a socket (getsockopt) and keeps
those that differ from a fresh socket of the same family, type and protocol; a restore
sets each kept one back, in table order, where the new socket's value differs (setting
one option may change another: IP_TOS sets the priority, so IP_TOS comes first).
`EARLY` options are set before bind (they decide what bind may do), the rest once the
socket is bound, connected, listening and its queue refilled (a filter or a peek offset
would act on the refill itself).

Capabilities are the kernel's checks (net/core/sock.c, net/ipv4/ip_sockglue.c, ...):
`cap` is what a value other than the default needs; `cap_if` narrows it to values the
check applies to.
"""

from __future__ import annotations

import dataclasses
import socket
import struct
from collections.abc import Callable

from ._libc import PinnedBuffer, check, raw_syscall
from .syscalls import NR

SOL_SOCKET = socket.SOL_SOCKET
SOL_IP = socket.IPPROTO_IP
SOL_IPV6 = socket.IPPROTO_IPV6
SOL_TCP = socket.IPPROTO_TCP
SOL_UDP = socket.IPPROTO_UDP
SOL_RAW = 255
SOL_ICMPV6 = 58
SOL_UDPLITE = 136
SOL_PACKET = 263
SOL_NETLINK = 270

# capabilities (include/uapi/linux/capability.h)
CAP_NET_BIND_SERVICE = 10
CAP_NET_BROADCAST = 11
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
CAP_NAMES = {
    CAP_NET_BIND_SERVICE: "CAP_NET_BIND_SERVICE",
    CAP_NET_BROADCAST: "CAP_NET_BROADCAST",
    CAP_NET_ADMIN: "CAP_NET_ADMIN",
    CAP_NET_RAW: "CAP_NET_RAW",
}

SO_REUSEADDR = 2
SO_SNDBUF = 7
SO_RCVBUF = 8
SO_PASSCRED = 16
SO_BINDTODEVICE = 25
SO_ATTACH_FILTER = 26  # also SO_GET_FILTER: the classic BPF program, 8 bytes an instruction
SO_PEEK_OFF = 42
SO_LOCK_FILTER = 44
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SO_BUF_LOCK = 72
SOCK_SNDBUF_LOCK = 1
SOCK_RCVBUF_LOCK = 2
IP_FREEBIND = 15
IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
IPV6_FREEBIND = 78
TCP_MAXSEG = 2
TCP_WINDOW_CLAMP = 10
TCP_CONGESTION = 13
UDP_CORK = 1
PACKET_VERSION = 10
PACKET_RESERVE = 12
PACKET_FANOUT = 18
PACKET_RX_RING = 5
PACKET_TX_RING = 13
PACKET_ADD_MEMBERSHIP = 1

ANY = 0  # a family, type or protocol filter that matches all


@dataclasses.dataclass(frozen=True)
class Opt:
    level: int
    name: int
    label: str  # as the kernel headers spell it
    kind: str = "int"  # int | bytes | str (a NUL-padded name) | filter | buf (a buffer size)
    size: int = 4  # getsockopt buffer (bytes; str: the longest name)
    families: tuple[int, ...] = ()  # () = any family
    types: tuple[int, ...] = ()
    protos: tuple[int, ...] = ()
    early: bool = False  # set before bind
    cap: tuple[int, ...] = ()  # any one of these capabilities lets a non-default value be set
    cap_if: Callable[[bytes], bool] | None = None  # ...only for the values this accepts
    states: tuple[int, ...] = ()  # TCP only: carried in these states (the kernel's own
    # value replaces the user's in others: TCP_MAXSEG is the live MSS once connected)
    always: bool = False  # recorded even when it equals a fresh socket's value

    @property
    def key(self) -> int:
        return (self.level << 32) | self.name


INET = (socket.AF_INET, socket.AF_INET6)
V4 = (socket.AF_INET,)
V6 = (socket.AF_INET6,)
STREAM = (socket.SOCK_STREAM,)
DGRAM = (socket.SOCK_DGRAM,)
RAW = (socket.SOCK_RAW,)
# the kernel refuses these on a TCP socket, whose value it sets itself (an accepted
# socket's multicast TTL is the SYN's TTL)
NOT_STREAM = (socket.SOCK_DGRAM, socket.SOCK_RAW)
TCP = (socket.IPPROTO_TCP,)
UDP_ANY = (socket.IPPROTO_UDP, SOL_UDPLITE)
UDPLITE = (SOL_UDPLITE,)
CLOSED_OR_LISTEN = (7, 10)  # TCP_CLOSE, TCP_LISTEN
_NETADMIN_OR_RAW = (CAP_NET_ADMIN, CAP_NET_RAW)


def _int(b: bytes) -> int:
    return struct.unpack("i", b[:4].ljust(4, b"\0"))[0]


def _priority_needs_cap(b: bytes) -> bool:
    return not 0 <= _int(b) <= 6  # TC_PRIO_CONTROL and below are free


def _nonzero(b: bytes) -> bool:
    return any(b)


# The order is the order restore sets them in.
OPTIONS: tuple[Opt, ...] = (
    # before bind
    Opt(SOL_SOCKET, SO_BINDTODEVICE, "SO_BINDTODEVICE", "str", 16, early=True),
    # one flag for both families (IPV6_FREEBIND reads the same bit)
    Opt(SOL_IP, IP_FREEBIND, "IP_FREEBIND", families=INET, early=True),
    Opt(SOL_IP, IP_TRANSPARENT, "IP_TRANSPARENT", families=V4, early=True,
        cap=_NETADMIN_OR_RAW, cap_if=_nonzero),
    Opt(SOL_IPV6, IPV6_TRANSPARENT, "IPV6_TRANSPARENT", families=V6, early=True,
        cap=_NETADMIN_OR_RAW, cap_if=_nonzero),
    Opt(SOL_TCP, TCP_MAXSEG, "TCP_MAXSEG", families=INET, types=STREAM, protos=TCP, early=True,
        states=CLOSED_OR_LISTEN),
    Opt(SOL_PACKET, PACKET_VERSION, "PACKET_VERSION", early=True),
    Opt(SOL_PACKET, PACKET_RESERVE, "PACKET_RESERVE", early=True),
    # once bound, connected and refilled
    Opt(SOL_IP, 1, "IP_TOS", families=V4),
    Opt(SOL_IPV6, 67, "IPV6_TCLASS", families=V6),
    Opt(SOL_SOCKET, 12, "SO_PRIORITY", cap=_NETADMIN_OR_RAW, cap_if=_priority_needs_cap),
    Opt(SOL_SOCKET, 36, "SO_MARK", cap=_NETADMIN_OR_RAW, cap_if=_nonzero),
    Opt(SOL_SOCKET, 6, "SO_BROADCAST"),
    Opt(SOL_SOCKET, 5, "SO_DONTROUTE"),
    Opt(SOL_SOCKET, 10, "SO_OOBINLINE"),
    Opt(SOL_SOCKET, 11, "SO_NO_CHECK"),
    Opt(SOL_SOCKET, 13, "SO_LINGER", "bytes", 8),
    Opt(SOL_SOCKET, 18, "SO_RCVLOWAT"),
    Opt(SOL_SOCKET, 20, "SO_RCVTIMEO", "bytes", 16),
    Opt(SOL_SOCKET, 21, "SO_SNDTIMEO", "bytes", 16),
    Opt(SOL_SOCKET, 29, "SO_TIMESTAMP"),
    Opt(SOL_SOCKET, 35, "SO_TIMESTAMPNS"),
    Opt(SOL_SOCKET, 34, "SO_PASSSEC"),
    Opt(SOL_SOCKET, 40, "SO_RXQ_OVFL"),
    Opt(SOL_SOCKET, 41, "SO_WIFI_STATUS"),
    Opt(SOL_SOCKET, 43, "SO_NOFCS"),
    Opt(SOL_SOCKET, 45, "SO_SELECT_ERR_QUEUE"),
    Opt(SOL_SOCKET, 47, "SO_MAX_PACING_RATE", "bytes", 8),
    Opt(SOL_SOCKET, 60, "SO_ZEROCOPY"),
    Opt(SOL_SOCKET, 74, "SO_TXREHASH"),
    Opt(SOL_SOCKET, 75, "SO_RCVMARK"),
    Opt(SOL_SOCKET, 76, "SO_PASSPIDFD"),
    Opt(SOL_IP, 2, "IP_TTL", families=V4),
    Opt(SOL_IP, 3, "IP_HDRINCL", families=V4, types=RAW),
    Opt(SOL_IP, 6, "IP_RECVOPTS", families=V4),
    Opt(SOL_IP, 7, "IP_RETOPTS", families=V4),
    Opt(SOL_IP, 8, "IP_PKTINFO", families=V4),
    Opt(SOL_IP, 10, "IP_MTU_DISCOVER", families=V4),
    Opt(SOL_IP, 11, "IP_RECVERR", families=V4),
    Opt(SOL_IP, 12, "IP_RECVTTL", families=V4),
    Opt(SOL_IP, 13, "IP_RECVTOS", families=V4),
    Opt(SOL_IP, 21, "IP_MINTTL", families=V4),
    Opt(SOL_IP, 22, "IP_NODEFRAG", families=V4, types=RAW),
    Opt(SOL_IP, 24, "IP_BIND_ADDRESS_NO_PORT", families=V4),
    Opt(SOL_IP, 33, "IP_MULTICAST_TTL", families=V4, types=NOT_STREAM),
    Opt(SOL_IP, 34, "IP_MULTICAST_LOOP", families=V4, types=NOT_STREAM),
    Opt(SOL_IP, 49, "IP_MULTICAST_ALL", families=V4),
    Opt(SOL_IPV6, 7, "IPV6_CHECKSUM", families=V6, types=RAW),
    Opt(SOL_IPV6, 16, "IPV6_UNICAST_HOPS", families=V6),
    Opt(SOL_IPV6, 18, "IPV6_MULTICAST_HOPS", families=V6, types=NOT_STREAM),
    Opt(SOL_IPV6, 19, "IPV6_MULTICAST_LOOP", families=V6),
    Opt(SOL_IPV6, 23, "IPV6_MTU_DISCOVER", families=V6),
    Opt(SOL_IPV6, 25, "IPV6_RECVERR", families=V6),
    Opt(SOL_IPV6, 29, "IPV6_MULTICAST_ALL", families=V6),
    Opt(SOL_IPV6, 36, "IPV6_HDRINCL", families=V6, types=RAW),
    Opt(SOL_IPV6, 49, "IPV6_RECVPKTINFO", families=V6),
    Opt(SOL_IPV6, 51, "IPV6_RECVHOPLIMIT", families=V6),
    Opt(SOL_IPV6, 62, "IPV6_DONTFRAG", families=V6),
    Opt(SOL_IPV6, 66, "IPV6_RECVTCLASS", families=V6),
    Opt(SOL_IPV6, 70, "IPV6_AUTOFLOWLABEL", families=V6),
    Opt(SOL_IPV6, 73, "IPV6_MINHOPCOUNT", families=V6),
    Opt(SOL_IPV6, 74, "IPV6_RECVORIGDSTADDR", families=V6),
    Opt(SOL_TCP, 3, "TCP_CORK", families=INET, types=STREAM, protos=TCP),
    Opt(SOL_TCP, 4, "TCP_KEEPIDLE", families=INET, types=STREAM, protos=TCP),
    Opt(SOL_TCP, 5, "TCP_KEEPINTVL", families=INET, types=STREAM, protos=TCP),
    Opt(SOL_TCP, 6, "TCP_KEEPCNT", families=INET, types=STREAM, protos=TCP),
    Opt(SOL_TCP, 7, "TCP_SYNCNT", families=INET, types=STREAM, protos=TCP),
    Opt(SOL_TCP, 8, "TCP_LINGER2", families=INET, types=STREAM, protos=TCP),
    Opt(SOL_TCP, 9, "TCP_DEFER_ACCEPT", families=INET, types=STREAM, protos=TCP),
    Opt(SOL_TCP, TCP_WINDOW_CLAMP, "TCP_WINDOW_CLAMP", families=INET, types=STREAM, protos=TCP,
        states=CLOSED_OR_LISTEN),
    Opt(SOL_TCP, TCP_CONGESTION, "TCP_CONGESTION", "str", 16, families=INET, types=STREAM,
        protos=TCP),
    Opt(SOL_TCP, 16, "TCP_THIN_LINEAR_TIMEOUTS", families=INET, types=STREAM, protos=TCP),
    Opt(SOL_TCP, 18, "TCP_USER_TIMEOUT", families=INET, types=STREAM, protos=TCP),
    Opt(SOL_TCP, 23, "TCP_FASTOPEN", families=INET, types=STREAM, protos=TCP),
    Opt(SOL_TCP, 25, "TCP_NOTSENT_LOWAT", families=INET, types=STREAM, protos=TCP),
    Opt(SOL_TCP, 36, "TCP_INQ", families=INET, types=STREAM, protos=TCP),
    Opt(SOL_UDP, UDP_CORK, "UDP_CORK", families=INET, types=DGRAM, protos=UDP_ANY),
    Opt(SOL_UDP, 103, "UDP_SEGMENT", families=INET, types=DGRAM, protos=UDP_ANY),
    Opt(SOL_UDP, 104, "UDP_GRO", families=INET, types=DGRAM, protos=UDP_ANY),
    Opt(SOL_UDPLITE, 10, "UDPLITE_SEND_CSCOV", families=INET, types=DGRAM, protos=UDPLITE),
    Opt(SOL_UDPLITE, 11, "UDPLITE_RECV_CSCOV", families=INET, types=DGRAM, protos=UDPLITE),
    Opt(SOL_RAW, 1, "ICMP_FILTER", families=V4, types=RAW, protos=(socket.IPPROTO_ICMP,)),
    Opt(SOL_ICMPV6, 1, "ICMPV6_FILTER", "bytes", 32, families=V6, types=RAW,
        protos=(socket.IPPROTO_ICMPV6,)),
    Opt(SOL_PACKET, 8, "PACKET_AUXDATA"),
    Opt(SOL_PACKET, 9, "PACKET_ORIGDEV"),
    Opt(SOL_PACKET, 14, "PACKET_LOSS"),
    Opt(SOL_PACKET, 15, "PACKET_VNET_HDR"),
    Opt(SOL_PACKET, 17, "PACKET_TIMESTAMP"),
    Opt(SOL_PACKET, 20, "PACKET_QDISC_BYPASS"),
    Opt(SOL_PACKET, 23, "PACKET_IGNORE_OUTGOING"),
    Opt(SOL_PACKET, PACKET_FANOUT, "PACKET_FANOUT"),
    Opt(SOL_NETLINK, 3, "NETLINK_PKTINFO"),
    Opt(SOL_NETLINK, 4, "NETLINK_BROADCAST_ERROR"),
    Opt(SOL_NETLINK, 5, "NETLINK_NO_ENOBUFS"),
    Opt(SOL_NETLINK, 8, "NETLINK_LISTEN_ALL_NSID", cap=(CAP_NET_BROADCAST,), cap_if=_nonzero),
    Opt(SOL_NETLINK, 10, "NETLINK_CAP_ACK"),
    Opt(SOL_NETLINK, 11, "NETLINK_EXT_ACK"),
    Opt(SOL_NETLINK, 12, "NETLINK_GET_STRICT_CHK"),
    # buffer sizes (unix and inet sockets keep theirs in their own records), then which
    # of them the user fixed (setting a size locks it: the lock is set back exactly)
    Opt(SOL_SOCKET, SO_SNDBUF, "SO_SNDBUF", "buf", families=(socket.AF_PACKET, socket.AF_NETLINK)),
    Opt(SOL_SOCKET, SO_RCVBUF, "SO_RCVBUF", "buf", families=(socket.AF_PACKET, socket.AF_NETLINK)),
    Opt(SOL_SOCKET, SO_BUF_LOCK, "SO_BUF_LOCK", always=True),
    # last: they act on everything above, the refilled queue included
    Opt(SOL_SOCKET, SO_PEEK_OFF, "SO_PEEK_OFF"),
    Opt(SOL_SOCKET, SO_ATTACH_FILTER, "SO_ATTACH_FILTER", "filter"),
    Opt(SOL_SOCKET, SO_LOCK_FILTER, "SO_LOCK_FILTER"),
)  # fmt: skip
BY_KEY = {o.key: o for o in OPTIONS}
_LEVEL_OF_FAMILY = {SOL_PACKET: socket.AF_PACKET, SOL_NETLINK: socket.AF_NETLINK}


def applies(o: Opt, family: int, type_: int, proto: int) -> bool:
    fam = _LEVEL_OF_FAMILY.get(o.level)
    if fam is not None and family != fam:
        return False
    return (
        (not o.families or family in o.families)
        and (not o.types or type_ in o.types)
        and (not o.protos or proto in o.protos)
    )


def label(key: int) -> str:
    o = BY_KEY.get(key)
    return o.label if o else f"option {key >> 32}/{key & 0xFFFFFFFF}"


def get(s: socket.socket, o: Opt) -> bytes:
    """The option's bytes as getsockopt gives them (OSError if it does not apply)."""
    if o.kind == "filter":
        return get_filter(s.fileno())
    if o.kind in ("int", "buf"):
        return struct.pack("i", s.getsockopt(o.level, o.name))
    b = s.getsockopt(o.level, o.name, o.size)
    return b.split(b"\0", 1)[0] if o.kind == "str" else b


def set_(s: socket.socket, o: Opt, value: bytes, force: bool = False) -> None:
    """Set the option to the bytes `get` gave.  A buffer size is given as getsockopt reads
    it (twice what setsockopt takes); `force` sets it past the sysctl maximum
    (SO_SNDBUFFORCE/SO_RCVBUFFORCE, CAP_NET_ADMIN)."""
    if o.kind == "filter":
        set_filter(s.fileno(), value)
    elif o.kind == "buf":
        name = {SO_SNDBUF: SO_SNDBUFFORCE, SO_RCVBUF: SO_RCVBUFFORCE}[o.name] if force else o.name
        s.setsockopt(o.level, name, struct.pack("i", _int(value) // 2))
    else:
        s.setsockopt(o.level, o.name, value)


def get_filter(fd: int) -> bytes:
    """The classic BPF program attached with SO_ATTACH_FILTER (empty: none).  OSError
    EACCES: an eBPF program is attached, which has no classic form to read back.

    SO_GET_FILTER counts in instructions, not bytes: asked with length 0 it gives the
    number of instructions, then it fills a buffer of that many instructions."""
    n = _getsockopt_raw(fd, SOL_SOCKET, SO_ATTACH_FILTER, bytearray(0), 0)
    if n == 0:
        return b""
    buf = bytearray(8 * n)
    got = _getsockopt_raw(fd, SOL_SOCKET, SO_ATTACH_FILTER, buf, n)
    return bytes(buf[: 8 * got])


def _getsockopt_raw(fd: int, level: int, name: int, buf: bytearray, length: int) -> int:
    optlen = bytearray(struct.pack("I", length))
    with PinnedBuffer(buf, True) as b, PinnedBuffer(optlen, True) as ln:
        check(raw_syscall(NR.getsockopt, fd, level, name, b.address, ln.address), "getsockopt")
    return struct.unpack("I", optlen)[0]


def set_filter(fd: int, prog: bytes) -> None:
    """SO_ATTACH_FILTER of a classic BPF program (struct sock_fprog: length, pointer)."""
    insns = bytearray(prog)
    with PinnedBuffer(insns, True) as p:
        fprog = bytearray(struct.pack("HxxxxxxQ", len(prog) // 8, p.address))
        with PinnedBuffer(fprog, True) as f:
            check(
                raw_syscall(NR.setsockopt, fd, SOL_SOCKET, SO_ATTACH_FILTER, f.address, len(fprog)),
                "setsockopt(SO_ATTACH_FILTER)",
            )
