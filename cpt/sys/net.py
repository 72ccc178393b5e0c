"""Socket state the socket module does not decode: sock_diag for unix sockets, TCP_INFO,
TCP_REPAIR and its companions, the queue-length ioctls.

No ctypes is needed here: the socket module speaks netlink and takes raw option buffers;
this module only knows the kernel's numbers and struct layouts.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import socket
import struct

# ioctls (include/uapi/asm-generic/ioctls.h, linux/sockios.h)
SIOCINQ = 0x541B  # FIONREAD: bytes readable (unix dgram: the first datagram's size)
SIOCOUTQ = 0x5411  # TIOCOUTQ: bytes not yet acknowledged (TCP) / not yet read (unix)
SIOCOUTQNSD = 0x894B  # TCP: bytes not yet sent

SO_PEEK_OFF = 42
SO_PASSCRED = 16
SO_DOMAIN = 39
SO_PROTOCOL = 38
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

# TCP (include/uapi/linux/tcp.h)
TCP_MAXSEG = 2
TCP_INFO = 11
TCP_REPAIR = 19
TCP_REPAIR_QUEUE = 20
TCP_QUEUE_SEQ = 21
TCP_REPAIR_OPTIONS = 22
TCP_TIMESTAMP = 24
TCP_REPAIR_WINDOW = 29
TCP_REPAIR_ON = 1
TCP_REPAIR_OFF = 0
TCP_NO_QUEUE = 0
TCP_RECV_QUEUE = 1
TCP_SEND_QUEUE = 2
TCPOPT_MSS = 2
TCPOPT_WINDOW = 3
TCPOPT_SACK_PERM = 4
TCPOPT_TIMESTAMP = 8
TCPI_OPT_TIMESTAMPS = 1
TCPI_OPT_SACK = 2
TCPI_OPT_WSCALE = 4
TCP_REPAIR_WINDOW_FMT = struct.Struct("<5I")  # snd_wl1 snd_wnd max_window rcv_wnd rcv_wup

# sock_diag (include/uapi/linux/sock_diag.h, unix_diag.h)
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21
NLM_F_ACK = 0x4
DIAG_TIMEOUT = 10.0  # the kernel answers at once; this long means something is wrong
IPPROTO_UDPLITE = 136
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
UDIAG_SHOW_NAME = 0x01
UDIAG_SHOW_VFS = 0x02
UDIAG_SHOW_PEER = 0x04
UDIAG_SHOW_ICONS = 0x08
UDIAG_SHOW_RQLEN = 0x10
UDIAG_SHOW_UID = 0x40
UNIX_DIAG_NAME = 0
UNIX_DIAG_VFS = 1
UNIX_DIAG_PEER = 2
UNIX_DIAG_ICONS = 3
UNIX_DIAG_RQLEN = 4
UNIX_DIAG_SHUTDOWN = 6
UNIX_DIAG_UID = 7
_NLMSGHDR = struct.Struct("<IHHII")
_UNIX_DIAG_REQ = struct.Struct("<BBHIIIII")
_UNIX_DIAG_MSG = struct.Struct("<BBBBIII")
_RTA = struct.Struct("<HH")
_SHOW_ALL = (
    UDIAG_SHOW_NAME
    | UDIAG_SHOW_VFS
    | UDIAG_SHOW_PEER
    | UDIAG_SHOW_ICONS
    | UDIAG_SHOW_RQLEN
    | UDIAG_SHOW_UID
)


@dataclasses.dataclass(frozen=True, slots=True)
class UnixDiag:
    """One unix socket as sock_diag reports it."""

    ino: int
    type: int  # SOCK_STREAM 1, SOCK_DGRAM 2, SOCK_SEQPACKET 5
    state: int  # TCP_ESTABLISHED 1, TCP_CLOSE 7, TCP_LISTEN 10 (sk_state)
    name: bytes | None  # sun_path as bound; abstract names begin with NUL
    vfs: tuple[int, int] | None  # (inode, device) of a path name's socket file
    peer: int  # peer's inode, 0 if none
    icons: tuple[int, ...]  # listeners: inodes of connections waiting in the accept queue
    rqueue: int  # listeners: connections waiting; others: bytes queued for reading
    wqueue: int  # listeners: backlog; others: bytes sent and not yet read by the peer
    shutdown: int  # RCV_SHUTDOWN 1 | SEND_SHUTDOWN 2
    uid: int


def _attrs(buf: bytes, off: int, end: int) -> dict[int, bytes]:
    out = {}
    while off + _RTA.size <= end:
        ln, typ = _RTA.unpack_from(buf, off)
        if ln < _RTA.size:
            break
        out[typ] = buf[off + _RTA.size : off + ln]
        off += (ln + 3) & ~3
    return out


def _unix_diag_msg(buf: bytes, off: int, end: int) -> UnixDiag:
    _fam, typ, state, _pad, ino, _c0, _c1 = _UNIX_DIAG_MSG.unpack_from(buf, off)
    a = _attrs(buf, off + _UNIX_DIAG_MSG.size, end)
    vfs = struct.unpack("<II", a[UNIX_DIAG_VFS][:8]) if UNIX_DIAG_VFS in a else None
    rq, wq = struct.unpack("<II", a[UNIX_DIAG_RQLEN][:8]) if UNIX_DIAG_RQLEN in a else (0, 0)
    icons = a.get(UNIX_DIAG_ICONS, b"")
    return UnixDiag(
        ino=ino,
        type=typ,
        state=state,
        name=a.get(UNIX_DIAG_NAME),
        vfs=(vfs[0], vfs[1]) if vfs else None,
        peer=struct.unpack("<I", a[UNIX_DIAG_PEER][:4])[0] if UNIX_DIAG_PEER in a else 0,
        icons=struct.unpack(f"<{len(icons) // 4}I", icons),
        rqueue=rq,
        wqueue=wq,
        shutdown=a[UNIX_DIAG_SHUTDOWN][0] if UNIX_DIAG_SHUTDOWN in a else 0,
        uid=struct.unpack("<I", a[UNIX_DIAG_UID][:4])[0] if UNIX_DIAG_UID in a else 0,
    )


def _sock_diag(
    req: bytes, dump: bool, what: str, msg_type: int = SOCK_DIAG_BY_FAMILY
) -> list[bytes]:
    """One sock_diag request (a family's request struct): the payload of every answer
    message (its struct and attributes).  ENOENT (nothing matches) is an empty list."""
    flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else 0)
    if msg_type == SOCK_DESTROY:
        flags |= NLM_F_ACK
    msg = _NLMSGHDR.pack(_NLMSGHDR.size + len(req), msg_type, flags, 1, 0) + req
    out: list[bytes] = []
    with socket.socket(
        socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG
    ) as nl:
        nl.settimeout(DIAG_TIMEOUT)
        nl.sendto(msg, (0, 0))
        while True:
            try:
                buf = nl.recv(1 << 20)
            except TimeoutError:
                raise OSError(errno.ETIMEDOUT, f"sock_diag({what}): no answer") from None
            off = 0
            while off + _NLMSGHDR.size <= len(buf):
                ln, typ, _fl, _seq, _pid = _NLMSGHDR.unpack_from(buf, off)
                if typ == NLMSG_DONE:
                    return out
                if typ == NLMSG_ERROR:
                    err = -struct.unpack_from("<i", buf, off + _NLMSGHDR.size)[0]
                    if err in (0, errno.ENOENT):
                        return out
                    raise OSError(err, f"sock_diag({what}): {os.strerror(err)}")
                out.append(buf[off + _NLMSGHDR.size : off + ln])
                off += (ln + 3) & ~3
            if not dump:
                return out


def unix_diag(ino: int | None = None) -> dict[int, UnixDiag]:
    """Unix sockets of this process's network namespace, by inode: every one, or the one
    with inode `ino` (empty if it does not exist)."""
    req = _UNIX_DIAG_REQ.pack(
        socket.AF_UNIX, 0, 0, 0xFFFFFFFF, ino or 0, _SHOW_ALL, ~0 & 0xFFFFFFFF, ~0 & 0xFFFFFFFF
    )
    out: dict[int, UnixDiag] = {}
    for m in _sock_diag(req, ino is None, "unix"):
        d = _unix_diag_msg(m, 0, len(m))
        out[d.ino] = d
    return out


# inet_diag (include/uapi/linux/inet_diag.h): TCP, UDP, UDP-Lite and raw sockets
INET_DIAG_SHUTDOWN = 8
INET_DIAG_REQ_PROTOCOL = 3
_INET_DIAG_REQ = struct.Struct("<BBBBI")  # family protocol ext raw_protocol states; + sockid
_INET_SOCKID = struct.Struct(">HH16s16s")  # sport dport src dst (network order) + if, cookie
_INET_SOCKID_TAIL = struct.Struct("<I8s")
_INET_DIAG_MSG = struct.Struct("<BBBB")  # family state timer retrans; + sockid + 5 u32
_INET_DIAG_MSG_TAIL = struct.Struct("<5I")  # expires rqueue wqueue uid inode
IPPROTO_RAW = 255


@dataclasses.dataclass(frozen=True, slots=True)
class InetDiag:
    """One TCP/UDP/UDP-Lite/raw socket as inet_diag reports it."""

    family: int
    protocol: int
    state: int
    src: str
    sport: int
    dst: str
    dport: int
    ino: int
    shutdown: int  # RCV_SHUTDOWN 1 | SEND_SHUTDOWN 2
    sockid: bytes  # the whole inet_diag_sockid, cookie included (for SOCK_DESTROY)


def _inet_ip(family: int, raw: bytes) -> str:
    return socket.inet_ntop(family, raw[:4] if family == socket.AF_INET else raw)


def inet_diag(family: int, protocol: int, states: int = 0xFFFFFFFF) -> list[InetDiag]:
    """Every socket of `family` and `protocol` (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE;
    any other: every raw socket) in this process's network namespace whose state is in
    the `states` mask (1 << state).  An unbound UDP socket is in no table: not listed."""
    raw = protocol not in (socket.IPPROTO_TCP, socket.IPPROTO_UDP, IPPROTO_UDPLITE)
    # a dump of raw sockets lists every raw protocol (the raw_protocol byte filters only a
    # lookup of one socket): ours are picked by inode
    req = _INET_DIAG_REQ.pack(family, IPPROTO_RAW if raw else protocol, 0, 0, states) + bytes(48)
    out = []
    for m in _sock_diag(req, True, f"inet {family}/{protocol}"):
        fam, state, _t, _r = _INET_DIAG_MSG.unpack_from(m, 0)
        sport, dport, src, dst = _INET_SOCKID.unpack_from(m, 4)
        *_, ino = _INET_DIAG_MSG_TAIL.unpack_from(m, 4 + 48)
        a = _attrs(m, 4 + 48 + 20, len(m))
        out.append(
            InetDiag(
                family=fam,
                protocol=protocol,
                state=state,
                src=_inet_ip(fam, src),
                sport=sport,
                dst=_inet_ip(fam, dst),
                dport=dport,
                ino=ino,
                shutdown=a[INET_DIAG_SHUTDOWN][0] if INET_DIAG_SHUTDOWN in a else 0,
                sockid=m[4 : 4 + 48],
            )
        )
    return out


def inet_destroy(d: InetDiag) -> None:
    """Close one TCP socket the way `ss -K` does (SOCK_DESTROY): it ends without a packet
    for a TIME_WAIT one.  Needs CAP_NET_ADMIN."""
    req = _INET_DIAG_REQ.pack(d.family, d.protocol, 0, 0, 0xFFFFFFFF) + d.sockid
    _sock_diag(req, False, "destroy", SOCK_DESTROY)


# packet_diag (include/uapi/linux/packet_diag.h)
PACKET_SHOW_INFO = 0x01
PACKET_SHOW_MCLIST = 0x02
PACKET_SHOW_RING_CFG = 0x04
PACKET_SHOW_FANOUT = 0x08
PACKET_SHOW_FILTER = 0x20
PACKET_DIAG_INFO = 0
PACKET_DIAG_MCLIST = 1
PACKET_DIAG_RX_RING = 2
PACKET_DIAG_TX_RING = 3
PACKET_DIAG_FANOUT = 4
PDI_RUNNING = 0x1
_PACKET_DIAG_REQ = struct.Struct("<BBHIIII")  # family protocol pad ino show cookie[2]
_PACKET_DIAG_MSG = struct.Struct("<BBHIII")  # family type num ino cookie[2]
_PACKET_DIAG_INFO = struct.Struct("<6I")  # index version reserve copy_thresh tstamp flags
_PACKET_DIAG_MCLIST = struct.Struct("<IIHH32s")  # index count type alen addr[MAX_ADDR_LEN]
_PACKET_DIAG_RING = struct.Struct("<7I")


@dataclasses.dataclass(frozen=True, slots=True)
class PacketDiag:
    ino: int
    type: int  # SOCK_RAW 3, SOCK_DGRAM 2
    proto: int  # the ethertype, host order
    ifindex: int
    version: int  # TPACKET_V1 0, V2 1, V3 2
    reserve: int
    copy_thresh: int
    flags: int  # PDI_*
    mclist: tuple[tuple[int, int, int, bytes], ...]  # (ifindex, count, type, address)
    rx_ring: tuple[int, ...]  # the 7 ring parameters, empty: none
    tx_ring: tuple[int, ...]
    fanout: int | None


def packet_diag() -> dict[int, PacketDiag]:
    """Every packet socket of this process's network namespace, by inode."""
    show = PACKET_SHOW_INFO | PACKET_SHOW_MCLIST | PACKET_SHOW_RING_CFG | PACKET_SHOW_FANOUT
    req = _PACKET_DIAG_REQ.pack(socket.AF_PACKET, 0, 0, 0, show, 0, 0)
    out = {}
    for m in _sock_diag(req, True, "packet"):
        _f, typ, num, ino, _c0, _c1 = _PACKET_DIAG_MSG.unpack_from(m, 0)
        a = _attrs(m, _PACKET_DIAG_MSG.size, len(m))
        index = version = reserve = thresh = flags = 0
        if PACKET_DIAG_INFO in a:
            index, version, reserve, thresh, _ts, flags = _PACKET_DIAG_INFO.unpack_from(
                a[PACKET_DIAG_INFO]
            )
        mc = a.get(PACKET_DIAG_MCLIST, b"")
        mclist = []
        for off in range(0, len(mc) - _PACKET_DIAG_MCLIST.size + 1, _PACKET_DIAG_MCLIST.size):
            i, count, t, alen, addr = _PACKET_DIAG_MCLIST.unpack_from(mc, off)
            mclist.append((i, count, t, addr[:alen]))
        rings = [
            _PACKET_DIAG_RING.unpack(a[k][: _PACKET_DIAG_RING.size]) if k in a else ()
            for k in (PACKET_DIAG_RX_RING, PACKET_DIAG_TX_RING)
        ]
        fan = a.get(PACKET_DIAG_FANOUT)
        out[ino] = PacketDiag(
            ino=ino, type=typ, proto=num, ifindex=index, version=version, reserve=reserve,
            copy_thresh=thresh, flags=flags, mclist=tuple(mclist), rx_ring=tuple(rings[0]),
            tx_ring=tuple(rings[1]),
            fanout=struct.unpack("<I", fan[:4])[0] if fan else None,
        )  # fmt: skip
    return out


# netlink_diag (include/uapi/linux/netlink_diag.h)
NDIAG_PROTO_ALL = 255
NDIAG_SHOW_GROUPS = 0x02
NDIAG_SHOW_FLAGS = 0x08
NETLINK_DIAG_GROUPS = 1
NETLINK_DIAG_FLAGS = 4
_NETLINK_DIAG_REQ = struct.Struct("<BBHIIII")  # family protocol pad ino show cookie[2]
_NETLINK_DIAG_MSG = struct.Struct("<BBBBIIIIII")  # family type proto state portid dst_portid
#                                                  dst_group ino cookie[2]


@dataclasses.dataclass(frozen=True, slots=True)
class NetlinkDiag:
    ino: int
    type: int
    protocol: int
    state: int  # NETLINK_CONNECTED 1
    portid: int
    dst_portid: int
    dst_group: int
    groups: tuple[int, ...]  # the membership bitmap, 32 groups per word
    flags: int  # NDIAG_FLAG_*


def netlink_diag() -> dict[int, NetlinkDiag]:
    """Every netlink socket of this process's network namespace, by inode."""
    req = _NETLINK_DIAG_REQ.pack(
        socket.AF_NETLINK, NDIAG_PROTO_ALL, 0, 0, NDIAG_SHOW_GROUPS | NDIAG_SHOW_FLAGS, 0, 0
    )
    out = {}
    for m in _sock_diag(req, True, "netlink"):
        _f, typ, proto, state, portid, dport, dgroup, ino, _c0, _c1 = _NETLINK_DIAG_MSG.unpack_from(
            m, 0
        )
        a = _attrs(m, _NETLINK_DIAG_MSG.size, len(m))
        g = a.get(NETLINK_DIAG_GROUPS, b"")
        fl = a.get(NETLINK_DIAG_FLAGS)
        out[ino] = NetlinkDiag(
            ino=ino, type=typ, protocol=proto, state=state, portid=portid, dst_portid=dport,
            dst_group=dgroup, groups=struct.unpack(f"<{len(g) // 4}I", g[: len(g) // 4 * 4]),
            flags=struct.unpack("<I", fl[:4])[0] if fl else 0,
        )  # fmt: skip
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class TcpInfo:
    state: int  # TCP_ESTABLISHED 1 ... TCP_LISTEN 10 (include/net/tcp_states.h)
    options: int  # TCPI_OPT_*
    snd_wscale: int
    rcv_wscale: int
    unacked: int  # listeners: connections in the accept queue
    sacked: int  # listeners: the backlog


def tcp_info(s: socket.socket) -> TcpInfo:
    b = s.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 104)
    unacked, sacked = struct.unpack_from("<II", b, 24)
    return TcpInfo(b[0], b[5], b[6] & 0xF, b[6] >> 4, unacked, sacked)


def ioctl_int(s: socket.socket, req: int) -> int:
    return struct.unpack("i", fcntl.ioctl(s.fileno(), req, b"\0\0\0\0"))[0]


def set_int(s: socket.socket, level: int, opt: int, val: int) -> None:
    s.setsockopt(level, opt, struct.pack("i", val))


def tcp_repair(s: socket.socket, on: bool) -> None:
    set_int(s, socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON if on else TCP_REPAIR_OFF)


def tcp_repair_queue(s: socket.socket, queue: int) -> None:
    set_int(s, socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, queue)


def tcp_queue_seq(s: socket.socket) -> int:
    """The selected queue's sequence: rcv_nxt (recv) or write_seq (send)."""
    return s.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ) & 0xFFFFFFFF


def set_tcp_queue_seq(s: socket.socket, seq: int) -> None:
    s.setsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, struct.pack("I", seq & 0xFFFFFFFF))


def tcp_repair_window(s: socket.socket) -> tuple[int, int, int, int, int]:
    b = s.getsockopt(socket.IPPROTO_TCP, TCP_REPAIR_WINDOW, TCP_REPAIR_WINDOW_FMT.size)
    snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup = TCP_REPAIR_WINDOW_FMT.unpack(b)
    return snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup


def set_tcp_repair_window(s: socket.socket, win: tuple[int, int, int, int, int]) -> None:
    s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_WINDOW, TCP_REPAIR_WINDOW_FMT.pack(*win))


def set_tcp_repair_options(s: socket.socket, opts: list[tuple[int, int]]) -> None:
    """struct tcp_repair_opt[]: (code, value) pairs."""
    buf = b"".join(struct.pack("<II", code, val) for code, val in opts)
    s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_OPTIONS, buf)
