"""TCP, UDP, UDP-Lite and raw sockets.  Listeners are all opened first (an established
connection restored in repair mode may share a listener's port; binding the listener
after it would conflict unless the listener has SO_REUSEADDR).

A port the dumped tree held may still be held by a TIME_WAIT it left (a connection it
closed first): a closed TCP socket is bound in repair mode (which forces the reuse, and
may be left on a closed socket), and a listener's bind or listen that fails with
EADDRINUSE is retried once the TIME_WAIT sockets on that very address and port are
destroyed (SOCK_DESTROY, as `ss -K` does): they belong to the connections of the tree
being restored.  A raw socket needs CAP_NET_RAW in the image's credentials.

A TCP connection recorded without repair state (dumped with --tcp-close), or any with
restore --tcp-close, comes back closed: a fresh socket, unbound, shut down both ways, so
that the program reads end-of-file, gets EPIPE on a write and reconnects; the drop rule
of a connection dumped in repair mode is removed.

An established connection is rebuilt in repair mode, in this order: socket, TCP_REPAIR
on, both queue sequence numbers (TCP_QUEUE_SEQ, only allowed while closed), bind (the
port is reused: repair mode forces SK_FORCE_REUSE; IP_FREEBIND for an address this host
no longer has), connect (no SYN in repair mode), TCP_REPAIR_OPTIONS and TCP_TIMESTAMP,
the receive queue, then the send queue (sent-not-acked part, then the unsent part, both
in repair: the unsent bytes go out at the first retransmission), TCP_REPAIR_WINDOW.
It stays in repair mode until `finish`, once the whole tree is restored: a restore that
fails closes it in repair mode, silently, and keeps the peer's drop rule for a retry.
`finish` leaves repair mode (the kernel then sends a window probe), puts SO_REUSEADDR
back (leaving repair mode clears it) and removes the drop rules (cpt/sys/netfilter.py).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import struct
from typing import TYPE_CHECKING, Any

from cptimage.records import InetFlags, InetSocket, SockState

from ..errors import RestoreError
from ..sys import net, sockopt
from ..sys.sockopt import CAP_NET_RAW
from . import privilege, sockopts
from .fdbase import SETFL_MASK
from .model import ImageModel
from .pstree import Task

if TYPE_CHECKING:
    from ..sys import netfilter

IP_FREEBIND = 15
TCP_CONNECTED = (
    SockState.ESTABLISHED, SockState.SYN_SENT, SockState.SYN_RECV, SockState.FIN_WAIT1,
    SockState.FIN_WAIT2, SockState.CLOSE_WAIT, SockState.LAST_ACK, SockState.CLOSING,
)  # fmt: skip


def _ip(family: int, raw: bytes) -> str:
    return socket.inet_ntop(family, raw[:4] if family == socket.AF_INET else raw[:16])


def conn_of(r: InetSocket) -> netfilter.Conn:
    from ..sys import netfilter  # (nft, subprocess, logging: for TCP connections only)

    return netfilter.Conn(
        _ip(r.family, r.src_addr), r.src_port, _ip(r.family, r.dst_addr), r.dst_port
    )


_SHUT = {1: socket.SHUT_RD, 2: socket.SHUT_WR, 3: socket.SHUT_RDWR}
_BUF_LOCK = sockopt.BY_KEY[(socket.SOL_SOCKET << 32) | sockopt.SO_BUF_LOCK]


def _where(r: InetSocket) -> str:
    if r.type == socket.SOCK_RAW:
        return f"raw socket {_ip(r.family, r.src_addr)} protocol {r.proto}"
    if r.type == socket.SOCK_STREAM and r.state in TCP_CONNECTED:
        return f"TCP connection {conn_of(r)}"
    if r.state == SockState.ESTABLISHED:
        return f"UDP socket {_ip(r.family, r.src_addr)}:{r.src_port}"
    return f"socket {_ip(r.family, r.src_addr)}:{r.src_port}"


class InetSockets:
    records = (InetSocket,)

    def __init__(self) -> None:
        self._listeners: dict[int, socket.socket] = {}  # description id -> socket
        self._repair: list[tuple[InetSocket, socket.socket]] = []
        self._closed: list[InetSocket] = []  # connections restored closed
        self._started = False
        self._model: ImageModel | None = None

    def open(self, model: ImageModel, desc: Any) -> int:
        if not self._started:
            self._started = True
            self._model = model
            for r in model.files.values():
                if isinstance(r, InetSocket) and r.state == SockState.LISTEN:
                    self._listeners[r.id] = self._create(r)
        s = self._listeners.pop(desc.id, None) or self._create(desc)
        fd = s.detach()
        fcntl.fcntl(fd, fcntl.F_SETFL, desc.flags & SETFL_MASK)
        return fd

    def _create(self, r: InetSocket) -> socket.socket:
        assert self._model is not None
        where = f"{_where(r)}"
        if r.type == socket.SOCK_RAW:
            privilege.require(self._model, r.id, (CAP_NET_RAW,), f"raw socket ({where})")
        s = socket.socket(r.family, r.type, r.proto)
        try:
            sockopts.apply(self._model, r.id, s, early=True, where=where)
            if r.type == socket.SOCK_STREAM and r.state in TCP_CONNECTED:
                if self._model.tcp_close:
                    self._closed_conn(s, r)
                elif not r.opts & InetFlags.REPAIR:
                    raise RestoreError(
                        f"{where} was checkpointed with --tcp-close (without its state): "
                        f"restore with --tcp-close to have it closed"
                    )
                else:
                    self._established(s, r)
            else:
                self._plain(s, r)
            sockopts.apply(self._model, r.id, s, early=False, where=where)
        except OSError as e:
            s.close()
            raise RestoreError(f"cannot restore {where}: {e.strerror or e}") from None
        except BaseException:
            s.close()
            raise
        return s

    def _options(self, s: socket.socket, r: InetSocket) -> None:
        o = r.opts
        v6only = bool(o & InetFlags.V6ONLY)
        # only where it differs: a raw socket (its "port" is its protocol) refuses any set
        if (
            r.family == socket.AF_INET6
            and s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) != v6only
        ):
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        if o & InetFlags.REUSEPORT:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if o & InetFlags.KEEPALIVE:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if o & InetFlags.NODELAY:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # TCP buffers autotune unless the program fixed them (setting a size locks it)
        assert self._model is not None
        lock = sockopts.value(self._model, r.id, _BUF_LOCK)
        locked = sockopt._int(lock) if lock is not None else 0
        if r.type != socket.SOCK_STREAM or locked & sockopt.SOCK_SNDBUF_LOCK:
            net.set_int(s, socket.SOL_SOCKET, net.SO_SNDBUFFORCE, r.sndbuf // 2)
        if r.type != socket.SOCK_STREAM or locked & sockopt.SOCK_RCVBUF_LOCK:
            net.set_int(s, socket.SOL_SOCKET, net.SO_RCVBUFFORCE, r.rcvbuf // 2)

    def _plain(self, s: socket.socket, r: InetSocket) -> None:
        """Listening, unconnected, closed, UDP or raw: addresses, shutdown and options."""
        self._options(s, r)
        bound = r.src_port or (r.type == socket.SOCK_RAW and any(r.src_addr))
        if bound and r.type == socket.SOCK_STREAM and r.state == SockState.CLOSE:
            # a closed socket keeps its port; a TIME_WAIT on it must not stop the bind
            net.tcp_repair(s, True)
            s.bind(self._local(r))
            net.tcp_repair(s, False)
        elif bound:
            # a TIME_WAIT left by the dumped tree must not stop the bind
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._bind_past_time_wait(s, r, lambda: s.bind(self._local(r)))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, bool(r.opts & InetFlags.REUSEADDR))
        if r.state == SockState.LISTEN:
            self._bind_past_time_wait(s, r, lambda: s.listen(r.backlog))
        elif r.state == SockState.ESTABLISHED:
            s.connect(self._remote(r))
        if r.shutdown in _SHUT:
            try:
                s.shutdown(_SHUT[r.shutdown])
            except OSError as e:  # an unconnected socket: the state is set all the same
                if e.errno != errno.ENOTCONN:
                    raise

    def _bind_past_time_wait(self, s: socket.socket, r: InetSocket, fn: Any) -> None:
        """fn() (bind or listen); on EADDRINUSE, destroy the TIME_WAIT sockets on this
        address and port (the tree's own, from connections it closed) and try again."""
        try:
            fn()
            return
        except OSError as e:
            if e.errno != errno.EADDRINUSE or r.proto != socket.IPPROTO_TCP:
                raise
        ip = _ip(r.family, r.src_addr)
        tw = [
            d
            for d in net.inet_diag(r.family, socket.IPPROTO_TCP, 1 << SockState.TIME_WAIT)
            if d.sport == r.src_port and (d.src == ip or ip in ("0.0.0.0", "::"))
        ]
        if not tw:
            raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))
        for d in tw:
            net.inet_destroy(d)
        fn()

    def _closed_conn(self, s: socket.socket, r: InetSocket) -> None:
        """A connection restored closed (--tcp-close): end-of-file to a reader, EPIPE to
        a writer.  Its drop rule, if it was dumped in repair mode, goes at `finish`."""
        self._options(s, r)
        with contextlib.suppress(OSError):  # ENOTCONN, but the shutdown state is set
            s.shutdown(socket.SHUT_RDWR)
        self._closed.append(r)

    def _local(self, r: InetSocket) -> tuple[Any, ...]:
        return (_ip(r.family, r.src_addr), r.src_port)

    def _remote(self, r: InetSocket) -> tuple[Any, ...]:
        return (_ip(r.family, r.dst_addr), r.dst_port)

    def _established(self, s: socket.socket, r: InetSocket) -> None:
        net.tcp_repair(s, True)
        unacked = len(r.send_queue)
        net.tcp_repair_queue(s, net.TCP_SEND_QUEUE)
        net.set_tcp_queue_seq(s, r.snd_seq - unacked)
        net.tcp_repair_queue(s, net.TCP_RECV_QUEUE)
        net.set_tcp_queue_seq(s, r.rcv_seq - len(r.recv_queue))
        self._options(s, r)
        ip = socket.IPPROTO_IPV6 if r.family == socket.AF_INET6 else socket.IPPROTO_IP
        s.setsockopt(ip, IP_FREEBIND, 1)  # IPV6_FREEBIND has the same number
        s.bind(self._local(r))
        s.setsockopt(ip, IP_FREEBIND, 0)
        s.connect(self._remote(r))
        opts = [(net.TCPOPT_MSS, r.mss)]
        if r.tcp_opts & net.TCPI_OPT_WSCALE:
            opts.append((net.TCPOPT_WINDOW, r.snd_wscale | (r.rcv_wscale << 16)))
        if r.tcp_opts & net.TCPI_OPT_SACK:
            opts.append((net.TCPOPT_SACK_PERM, 0))
        if r.tcp_opts & net.TCPI_OPT_TIMESTAMPS:
            opts.append((net.TCPOPT_TIMESTAMP, 0))
        net.set_tcp_repair_options(s, opts)
        if r.tcp_opts & net.TCPI_OPT_TIMESTAMPS:
            s.setsockopt(socket.IPPROTO_TCP, net.TCP_TIMESTAMP, struct.pack("I", r.timestamp))
        _room(s, r)
        if r.recv_queue:
            net.tcp_repair_queue(s, net.TCP_RECV_QUEUE)
            _send_all(s, r.recv_queue)
        sent = unacked - r.unsent_len
        if sent:
            net.tcp_repair_queue(s, net.TCP_SEND_QUEUE)
            _send_all(s, r.send_queue[:sent])
        net.tcp_repair_queue(s, net.TCP_NO_QUEUE)
        net.set_tcp_repair_window(s, (r.snd_wl1, r.snd_wnd, r.max_window, r.rcv_wnd, r.rcv_wup))
        # not socket.dup(): it clears O_NONBLOCK of the shared file
        self._repair.append((r, socket.socket(fileno=os.dup(s.fileno()))))

    def finish(self) -> None:
        """The tree is restored: the connections leave repair mode, their peers are heard.
        The never-sent part of a send queue is queued now, out of repair mode, so that it
        goes out at once (in repair mode it would count as sent and wait for a timeout)."""
        for r, s in self._repair:
            net.tcp_repair(s, False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, bool(r.opts & InetFlags.REUSEADDR))
            if r.unsent_len:
                _send_all(s, r.send_queue[len(r.send_queue) - r.unsent_len :])
        conns = [conn_of(r) for r, _ in self._repair]
        conns += [conn_of(r) for r in self._closed if r.opts & InetFlags.REPAIR]
        self._close_repair()
        self._closed.clear()
        if conns:
            from ..sys import netfilter

            netfilter.undrop(conns)

    def after_install(self, model: ImageModel, task: Task, local: dict[int, int]) -> None:
        pass

    def _close_repair(self) -> None:
        for _, s in self._repair:
            s.close()
        self._repair.clear()

    def close(self) -> None:
        for s in self._listeners.values():
            s.close()
        self._listeners.clear()
        self._close_repair()


def _room(s: socket.socket, r: InetSocket) -> None:
    """Buffers big enough for the queues.  Only when a fresh socket's are too small:
    setting a TCP buffer size locks it (no more autotuning)."""
    g = s.getsockopt
    if len(r.send_queue) > g(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2:
        net.set_int(s, socket.SOL_SOCKET, net.SO_SNDBUFFORCE, max(r.sndbuf, 2 * len(r.send_queue)))
    if len(r.recv_queue) > g(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2:
        net.set_int(s, socket.SOL_SOCKET, net.SO_RCVBUFFORCE, max(r.rcvbuf, 2 * len(r.recv_queue)))


def _send_all(s: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = s.send(view, socket.MSG_DONTWAIT)
        except BlockingIOError:
            n = 0
        if n <= 0:
            raise OSError(
                errno.ENOBUFS, f"TCP queue refill stopped after {len(data) - len(view)} bytes"
            )
        view = view[n:]
