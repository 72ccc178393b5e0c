"""TCP and UDP sockets.  Listeners are all opened first (an established connection
restored in repair mode may share a listener's port; binding the listener after it
would conflict unless the listener has SO_REUSEADDR).

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

import errno
import fcntl
import os
import socket
import struct
from typing import Any

from cptimage.records import InetFlags, InetSocket, SockState

from ..errors import RestoreError
from ..sys import net, netfilter
from .fdbase import SETFL_MASK
from .model import ImageModel
from .pstree import Task

IP_FREEBIND = 15


def _ip(family: int, raw: bytes) -> str:
    return socket.inet_ntop(family, raw[:4] if family == socket.AF_INET else raw[:16])


def conn_of(r: InetSocket) -> netfilter.Conn:
    return netfilter.Conn(
        _ip(r.family, r.src_addr), r.src_port, _ip(r.family, r.dst_addr), r.dst_port
    )


def _where(r: InetSocket) -> str:
    if r.state == SockState.ESTABLISHED:
        return f"TCP connection {conn_of(r)}" if r.type == socket.SOCK_STREAM else "UDP socket"
    return f"socket {_ip(r.family, r.src_addr)}:{r.src_port}"


class InetSockets:
    records = (InetSocket,)

    def __init__(self) -> None:
        self._listeners: dict[int, socket.socket] = {}  # description id -> socket
        self._repair: list[tuple[InetSocket, socket.socket]] = []
        self._started = False

    def open(self, model: ImageModel, desc: Any) -> int:
        if not self._started:
            self._started = True
            for r in model.files.values():
                if isinstance(r, InetSocket) and r.state == SockState.LISTEN:
                    self._listeners[r.id] = self._create(r)
        s = self._listeners.pop(desc.id, None) or self._create(desc)
        fd = s.detach()
        fcntl.fcntl(fd, fcntl.F_SETFL, desc.flags & SETFL_MASK)
        return fd

    def _create(self, r: InetSocket) -> socket.socket:
        s = socket.socket(r.family, r.type, r.proto)
        try:
            if r.state == SockState.ESTABLISHED and r.type == socket.SOCK_STREAM:
                self._established(s, r)
            else:
                self._plain(s, r)
        except OSError as e:
            s.close()
            raise RestoreError(f"cannot restore {_where(r)}: {e.strerror or e}") from None
        except BaseException:
            s.close()
            raise
        return s

    def _options(self, s: socket.socket, r: InetSocket) -> None:
        o = r.opts
        if r.family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, bool(o & InetFlags.V6ONLY))
        if o & InetFlags.REUSEPORT:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if o & InetFlags.KEEPALIVE:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if o & InetFlags.NODELAY:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if r.type == socket.SOCK_DGRAM:  # TCP buffers autotune: setting them would lock them
            net.set_int(s, socket.SOL_SOCKET, net.SO_SNDBUFFORCE, r.sndbuf // 2)
            net.set_int(s, socket.SOL_SOCKET, net.SO_RCVBUFFORCE, r.rcvbuf // 2)

    def _plain(self, s: socket.socket, r: InetSocket) -> None:
        """Listening, unconnected or UDP: addresses and options."""
        self._options(s, r)
        if r.src_port:
            # a TIME_WAIT left by the dumped tree must not stop the bind
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(self._local(r))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, bool(r.opts & InetFlags.REUSEADDR))
        if r.state == SockState.LISTEN:
            s.listen(r.backlog)
        elif r.state == SockState.ESTABLISHED:
            s.connect(self._remote(r))

    def _local(self, r: InetSocket) -> tuple[Any, ...]:
        return (_ip(r.family, r.src_addr), r.src_port)

    def _remote(self, r: InetSocket) -> tuple[Any, ...]:
        return (_ip(r.family, r.dst_addr), r.dst_port)

    def _established(self, s: socket.socket, r: InetSocket) -> None:
        if not r.opts & InetFlags.REPAIR:
            raise RestoreError(f"{_where(r)}: the image holds no repair state for it")
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
        self._close_repair()
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
