"""TCP, UDP, UDP-Lite and raw sockets (IPv4 and IPv6), read from a duplicate of each
(see sockets.py); their options are in sockopts.py.

Listening, unconnected, UDP and raw sockets are described by their addresses, shutdown
state (inet_diag) and options.  A raw socket's peer is read from /proc/net/raw (its
getpeername fails: it has no port).  With --tcp-close, a connected TCP socket (any state
from SYN_SENT to CLOSING) is recorded by its addresses only, without repair state: it is
restored closed.
An established TCP connection (--tcp-established, full chkpnt only) is read in repair
mode, after a drop rule stops its peer's packets (cpt/sys/netfilter.py), in `finalize`:
sequence numbers (TCP_QUEUE_SEQ), both queues (TCP_REPAIR_QUEUE + MSG_PEEK; the send
queue holds sent-not-acked then unsent bytes, SIOCOUTQNSD tells how many are unsent),
MSS, window scales, SACK and timestamps (TCP_INFO, TCP_TIMESTAMP), the window
(TCP_REPAIR_WINDOW).  The duplicates are held until `release`: after a kill the sockets
die in repair mode (no RST: tcp_disconnect in repair mode sends nothing); when the tree
runs on, repair mode is left and the rules are removed first.

Kernel quirks: TCP_REPAIR on sets sk_reuse to SK_FORCE_REUSE and off sets SK_NO_REUSE,
so SO_REUSEADDR is read before and written back after.  Queued UDP datagrams are not
carried: UDP may lose them, and their senders' addresses could not be reproduced.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import TYPE_CHECKING, Any

from cptimage.records import InetFlags, InetSocket, SockState

from ..errors import CptError, NoSuchProcess, UnsupportedError, ZombieProcess
from ..procfs import TCP_STATES, FdInfo, FdKind, Proc
from ..sys import net, sockopt
from . import sockopts
from .eventfds import duplicate_fd
from .fdbase import FdContext, file_flags
from .options import DumpOptions

if TYPE_CHECKING:
    from ..sys import netfilter

IPPROTO_UDP = 17
IPPROTO_TCP = 6
IPPROTO_UDPLITE = 136
IPPROTO_ICMP = 1
IPPROTO_ICMPV6 = 58
UDP_KINDS = (IPPROTO_UDP, IPPROTO_UDPLITE)
# TCP states a connection can be in while a process holds it (--tcp-close carries them)
CONNECTED = (
    SockState.ESTABLISHED, SockState.SYN_SENT, SockState.SYN_RECV, SockState.FIN_WAIT1,
    SockState.FIN_WAIT2, SockState.CLOSE_WAIT, SockState.LAST_ACK, SockState.CLOSING,
)  # fmt: skip


def conn_of(s: socket.socket) -> netfilter.Conn:
    from ..sys import netfilter  # (nft, subprocess, logging: for TCP connections only)

    local, remote = s.getsockname(), s.getpeername()
    return netfilter.Conn(local[0], local[1], remote[0], remote[1])


def unsupported(where: str, s: socket.socket, opts: DumpOptions) -> str | None:
    if s.type == socket.SOCK_RAW:
        return None
    if s.type == socket.SOCK_DGRAM and s.proto in (*UDP_KINDS, IPPROTO_ICMP, IPPROTO_ICMPV6):
        corked = s.proto in UDP_KINDS and s.getsockopt(socket.IPPROTO_UDP, sockopt.UDP_CORK)
        if corked and net.ioctl_int(s, net.SIOCOUTQ):
            return (
                f"{where}: UDP socket {_local(s)} is corked (UDP_CORK) with a datagram "
                f"being built; not supported (uncork it or retry)"
            )
        return None
    if s.type != socket.SOCK_STREAM or s.proto != IPPROTO_TCP:
        return f"{where}: inet socket of type {int(s.type)} protocol {s.proto} is not supported"
    info = net.tcp_info(s)
    if info.state == SockState.LISTEN:
        if info.unacked:
            return (
                f"{where}: {info.unacked} TCP connection(s) wait in the accept queue of "
                f"listener {_local(s)}; not supported yet (accept them or retry)"
            )
        return None
    if info.state == SockState.CLOSE:
        return None
    state = TCP_STATES.get(info.state, str(info.state))
    if opts.tcp_close and info.state in CONNECTED:
        return None
    if info.state != SockState.ESTABLISHED:
        return (
            f"{where}: TCP connection {_conn(s)} in state {state} is not supported (use "
            f"--tcp-close to restore it closed)"
        )
    if not opts.tcp_established:
        return (
            f"{where}: established TCP connection {conn_of(s)}; use --tcp-established to "
            f"checkpoint it (or --tcp-close to restore it closed)"
        )
    if opts.staged and not opts.net_isolated:
        return (
            f"{where}: established TCP connection {conn_of(s)} can only be checkpointed by a "
            f"one-command chkpnt (the connection is held in repair mode from the dump to the "
            f"kill)"
        )
    if s.getsockopt(socket.SOL_SOCKET, net.SO_PEEK_OFF) != -1:
        return f"{where}: TCP socket uses SO_PEEK_OFF; not supported"
    return None


def _conn(s: socket.socket) -> str:
    try:
        return str(conn_of(s))
    except OSError:
        return _local(s)


def _local(s: socket.socket) -> str:
    a = s.getsockname()
    return f"{a[0]}:{a[1]}"


def _addr(family: int, a: str) -> bytes:
    return socket.inet_pton(family, a).ljust(16, b"\0")


def _opts(s: socket.socket) -> int:
    g = s.getsockopt
    o = 0
    if g(socket.SOL_SOCKET, socket.SO_REUSEADDR):
        o |= InetFlags.REUSEADDR
    if g(socket.SOL_SOCKET, socket.SO_REUSEPORT):
        o |= InetFlags.REUSEPORT
    if g(socket.SOL_SOCKET, socket.SO_KEEPALIVE):
        o |= InetFlags.KEEPALIVE
    if s.type == socket.SOCK_STREAM and g(socket.IPPROTO_TCP, socket.TCP_NODELAY):
        o |= InetFlags.NODELAY
    if s.family == socket.AF_INET6 and g(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY):
        o |= InetFlags.V6ONLY
    return o


def dump(ctx: FdContext, ident: int, pid: int, fd: int, s: socket.socket, fi: FdInfo) -> Any:
    tcp = s.type == socket.SOCK_STREAM
    raw = s.type == socket.SOCK_RAW
    state = net.tcp_info(s).state if tcp else SockState.CLOSE
    local = s.getsockname()
    any_ip = "::" if s.family == socket.AF_INET6 else "0.0.0.0"
    remote: tuple[Any, ...] = (any_ip, 0)
    if raw:
        # a raw socket's "port" is its protocol, and getpeername fails on it (no port):
        # its peer is in /proc/net/raw
        local = (local[0], 0)
        peer = _raw_peer(pid, s)
        if peer is not None and peer != any_ip:
            remote = (peer, 0)
            state = SockState.ESTABLISHED
    else:
        with contextlib.suppress(OSError):  # ENOTCONN
            remote = s.getpeername()
            if not tcp:
                state = SockState.ESTABLISHED  # a connected UDP socket
    rec = InetSocket(
        id=ident,
        flags=file_flags(fi),
        family=s.family,
        type=s.type,
        proto=s.proto,
        state=SockState(state),
        shutdown=_shutdown(s, local) if not raw else 0,
        backlog=net.tcp_info(s).sacked if state == SockState.LISTEN else 0,
        src_port=local[1],
        dst_port=remote[1],
        src_addr=_addr(s.family, local[0]),
        dst_addr=_addr(s.family, remote[0]),
        opts=_opts(s),
        sndbuf=s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        rcvbuf=s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        ino=os.fstat(s.fileno()).st_ino,
    )
    sockopts.dump(ctx, ident, s, state=state)
    if tcp and state in CONNECTED and ctx.opts.tcp_close:
        return rec  # no repair state: restored closed
    if tcp and state == SockState.ESTABLISHED:
        # held open until release(): the socket must die in repair mode
        dup = socket.socket(fileno=os.dup(s.fileno()))  # socket.dup() would clear O_NONBLOCK
        ctx.cache.setdefault("tcp", []).append((rec, dup, conn_of(s)))
    return rec


def _raw_peer(pid: int, s: socket.socket) -> str | None:
    ino = os.fstat(s.fileno()).st_ino
    table = "raw6" if s.family == socket.AF_INET6 else "raw"
    found = Proc().inet_sockets(pid, table).get(ino)
    return found.remote[0] if found is not None else None


def _shutdown(s: socket.socket, local: tuple[Any, ...]) -> int:
    """RCV_SHUTDOWN 1 | SEND_SHUTDOWN 2, from inet_diag (no socket call reads it).  A UDP
    socket that was never bound is in no table: its shutdown state is not seen (0)."""
    if s.proto not in (IPPROTO_TCP, *UDP_KINDS) or not local[1]:
        return 0
    ino = os.fstat(s.fileno()).st_ino
    for d in net.inet_diag(s.family, s.proto):
        if d.ino == ino:
            return d.shutdown
    return 0


def finalize(ctx: FdContext) -> None:
    """Drop the peers' packets, then read every established connection in repair mode."""
    conns = ctx.cache.get("tcp", [])
    if not conns:
        return
    if not ctx.opts.net_isolated:  # a suspended VE's link is down: nothing reaches it
        from ..sys import netfilter

        netfilter.drop([c for _, _, c in conns])
        ctx.cache["tcp_rules"] = [c for _, _, c in conns]
    repaired = ctx.cache.setdefault("tcp_repaired", [])
    for rec, s, conn in conns:
        try:
            net.tcp_repair(s, True)
        except OSError as e:
            raise UnsupportedError(f"TCP connection {conn}: TCP_REPAIR: {e.strerror}") from None
        repaired.append(s)
        _read_repair(rec, s)


def _peek_all(s: socket.socket, n: int) -> bytes:
    chunks = []
    while n > 0:
        b = s.recv(n, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        if not b:
            break
        chunks.append(b)
        n -= len(b)
        if n > 0:
            raise UnsupportedError(f"TCP queue: peeked {len(b)} bytes, {n} more expected")
    return b"".join(chunks)


def _read_repair(rec: InetSocket, s: socket.socket) -> None:
    net.tcp_repair_queue(s, net.TCP_RECV_QUEUE)
    rec.rcv_seq = net.tcp_queue_seq(s)
    rec.recv_queue = _peek_all(s, net.ioctl_int(s, net.SIOCINQ))
    net.tcp_repair_queue(s, net.TCP_SEND_QUEUE)
    rec.snd_seq = net.tcp_queue_seq(s)
    rec.send_queue = _peek_all(s, net.ioctl_int(s, net.SIOCOUTQ))
    rec.unsent_len = net.ioctl_int(s, net.SIOCOUTQNSD)
    net.tcp_repair_queue(s, net.TCP_NO_QUEUE)
    info = net.tcp_info(s)
    rec.tcp_opts = info.options
    rec.snd_wscale, rec.rcv_wscale = info.snd_wscale, info.rcv_wscale
    rec.mss = s.getsockopt(socket.IPPROTO_TCP, net.TCP_MAXSEG)  # mss_clamp in repair mode
    rec.timestamp = s.getsockopt(socket.IPPROTO_TCP, net.TCP_TIMESTAMP) & 0xFFFFFFFF
    (rec.snd_wl1, rec.snd_wnd, rec.max_window, rec.rcv_wnd, rec.rcv_wup) = net.tcp_repair_window(s)
    rec.opts |= InetFlags.REPAIR


def release(ctx: FdContext, killed: bool) -> None:
    """After a kill: close the duplicates (the sockets die in repair mode; the rules stay
    for the restore).  Otherwise leave repair mode, remove the rules, close."""
    conns = ctx.cache.pop("tcp", [])
    repaired = ctx.cache.pop("tcp_repaired", [])
    rules = ctx.cache.pop("tcp_rules", [])
    try:
        if not killed:
            for rec, s, _ in conns:
                if s in repaired:
                    net.tcp_repair(s, False)
                    reuse = 1 if rec.opts & InetFlags.REUSEADDR else 0
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuse)
            from ..sys import netfilter

            netfilter.undrop(rules)
    finally:
        for _, s, _ in conns:
            s.close()


def silence(pids: list[int], proc: Proc) -> list[socket.socket]:
    """Put every established TCP connection of these (frozen) processes in repair mode and
    return the duplicates that hold them so: killed then, the connections die without a
    FIN or RST (tcp_disconnect in repair mode sends nothing), and no orphan socket lingers
    retransmitting.  Close the duplicates once the processes are gone."""
    held: list[socket.socket] = []
    for pid in pids:
        try:
            targets = proc.fd_targets(pid)
        except (NoSuchProcess, ZombieProcess):
            continue
        for fd, ft in targets.items():
            if ft.kind is not FdKind.SOCKET:
                continue
            try:
                s = socket.socket(fileno=duplicate_fd(pid, fd))
            except (OSError, CptError):
                continue  # closed or exited meanwhile
            if (
                s.family in (socket.AF_INET, socket.AF_INET6)
                and s.type == socket.SOCK_STREAM
                and net.tcp_info(s).state == SockState.ESTABLISHED
            ):
                with contextlib.suppress(OSError):
                    net.tcp_repair(s, True)
                    held.append(s)
                    continue
            s.close()
    return held
