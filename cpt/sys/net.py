"""Socket state the socket module does not decode: sock_diag for unix sockets, TCP_INFO,
TCP_REPAIR and its companions, the queue-length ioctls.

No ctypes is needed here: the socket module speaks netlink and takes raw option buffers;
this module only knows the kernel's numbers and struct layouts.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
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


def unix_diag(ino: int | None = None) -> dict[int, UnixDiag]:
    """Unix sockets of this process's network namespace, by inode: every one, or the one
    with inode `ino` (empty if it does not exist)."""
    flags = NLM_F_REQUEST | (NLM_F_DUMP if ino is None else 0)
    req = _UNIX_DIAG_REQ.pack(
        socket.AF_UNIX, 0, 0, 0xFFFFFFFF, ino or 0, _SHOW_ALL, ~0 & 0xFFFFFFFF, ~0 & 0xFFFFFFFF
    )
    msg = _NLMSGHDR.pack(_NLMSGHDR.size + len(req), SOCK_DIAG_BY_FAMILY, flags, 1, 0) + req
    out: dict[int, UnixDiag] = {}
    with socket.socket(
        socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG
    ) as nl:
        nl.sendto(msg, (0, 0))
        while True:
            buf = nl.recv(1 << 20)
            off = 0
            while off + _NLMSGHDR.size <= len(buf):
                ln, typ, _fl, _seq, _pid = _NLMSGHDR.unpack_from(buf, off)
                if typ == NLMSG_DONE:
                    return out
                if typ == NLMSG_ERROR:
                    err = -struct.unpack_from("<i", buf, off + _NLMSGHDR.size)[0]
                    if err in (0, errno.ENOENT):
                        return out
                    raise OSError(err, f"sock_diag(unix): {errno.errorcode.get(err, err)}")
                d = _unix_diag_msg(buf, off + _NLMSGHDR.size, off + ln)
                out[d.ino] = d
                off += (ln + 3) & ~3
            if ino is not None:
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
