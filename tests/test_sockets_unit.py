"""Socket building blocks on real sockets of this process (no root, no other process):
sock_diag decoding, peeking queues without consuming them, rebuilding unix sockets from
records, the nft rule text."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

import pytest
from fake_model import fake_model

from cpt.dump.sockets import peek_queue, show_name, sun_name
from cpt.errors import RestoreError
from cpt.restore.sockets import UnixSockets, free_path
from cpt.sys import netfilter
from cpt.sys.net import SO_PEEK_OFF, tcp_info, unix_diag
from cptimage.records import SockState, UnixSocket


def ino(s: socket.socket) -> int:
    return os.fstat(s.fileno()).st_ino


def test_unix_diag_pair_and_listener(tmp_path: Path) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    b.send(b"12345")
    d = unix_diag(ino(a))[ino(a)]
    assert (d.type, d.state, d.peer, d.rqueue, d.name) == (1, 1, ino(b), 5, None)
    path = str(tmp_path / "l.sock")
    lsn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsn.bind(path)
    lsn.listen(3)
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(path)
    dl = unix_diag(ino(lsn))[ino(lsn)]
    assert dl.icons == (ino(c),), "ICONS names the waiting CLIENT"
    assert (dl.state, dl.rqueue, dl.wqueue) == (10, 1, 3)
    assert sun_name(dl.name) == path.encode() and dl.vfs[0] == os.stat(path).st_ino
    dc = unix_diag(ino(c))[ino(c)]
    assert (dc.peer, dc.wqueue) == (0, 0)
    c.send(b"early")
    assert unix_diag(ino(c))[ino(c)].wqueue > 0, "data sent before accept shows on the client"
    assert unix_diag(1) == {}


def test_peek_dgram_keeps_boundaries_senders_and_queue(tmp_path: Path) -> None:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(b"\0cpt-unit-%d" % os.getpid())
    named = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    named.bind(str(tmp_path / "c.sock"))
    anon = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    msgs = [b"one", b"", b"three" * 1000, b""]
    for i, m in enumerate(msgs):
        (named if i % 2 else anon).sendto(m, srv.getsockname())
    got, senders = peek_queue(srv, socket.SOCK_DGRAM)
    assert got == msgs
    assert senders == [b"", str(tmp_path / "c.sock").encode()] * 2
    assert srv.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF) == -1
    assert [srv.recv(10000, socket.MSG_DONTWAIT) for _ in msgs] == msgs, "nothing consumed"


def test_peek_stream_reads_everything_once() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for i in range(50):
        a.send(bytes([i]) * 1000)
    got, senders = peek_queue(b, socket.SOCK_STREAM)
    assert got == [b"".join(bytes([i]) * 1000 for i in range(50))] and senders == []
    assert peek_queue(a, socket.SOCK_STREAM) == ([], [])
    assert len(b.recv(1 << 20)) == 50000


def test_names() -> None:
    assert sun_name(b"/tmp/x.sock\0") == b"/tmp/x.sock"
    assert sun_name(b"\0abs\0x") == b"\0abs\0x"
    assert sun_name(None) == b""
    assert show_name(b"\0abs") == "@abs" and show_name(b"") == "unnamed"


def test_tcp_info_of_a_listener() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(7)
    c = socket.create_connection(s.getsockname())
    info = tcp_info(s)
    assert (info.state, info.sacked) == (SockState.LISTEN, 7)
    assert info.unacked == 1, "one connection waits in the accept queue"
    assert tcp_info(c).state == SockState.ESTABLISHED


def rec(ident: int, **kw: object) -> UnixSocket:
    base = dict(id=ident, flags=os.O_RDWR, sndbuf=212992, rcvbuf=212992, ino=1000 + ident)
    base.update(kw)
    return UnixSocket(**base)  # type: ignore[arg-type]


def test_rebuild_pairs_listener_and_queues(tmp_path: Path) -> None:
    path = str(tmp_path / "l.sock").encode()
    recs = [
        rec(1, type=5, state=SockState.ESTABLISHED, peer_ino=1002, queue=[b"x", b"", b"yy"]),
        rec(2, type=5, state=SockState.ESTABLISHED, peer_ino=1001, queue=[b"back"]),
        rec(3, type=1, state=SockState.LISTEN, backlog=2, name=path, fmode=0o600, icons=[1004]),
        rec(4, type=1, state=SockState.ESTABLISHED, flags=os.O_RDWR | os.O_NONBLOCK),
        rec(5, type=2, state=SockState.ESTABLISHED, queue=[b"orphan"]),  # its peer was closed
    ]
    model = fake_model(
        files={r.id: r for r in recs},
        unix_bind={},
        unix_scm={},
        sock_opts={},
        holders=lambda ident: [1],
    )
    op = UnixSockets()
    try:
        socks = {r.id: socket.socket(fileno=op.open(model, r)) for r in recs}  # type: ignore[arg-type]
        op.after_build(model, {}, lambda pid: pid)  # type: ignore[arg-type]
    finally:
        op.close()
    nowait = socket.MSG_DONTWAIT
    assert [socks[1].recv(10, nowait) for _ in range(3)] == [b"x", b"", b"yy"]
    assert socks[2].recv(10, nowait) == b"back"
    assert os.stat(path).st_mode & 0o777 == 0o600
    conn, _ = socks[3].accept()
    socks[4].send(b"hello")
    assert conn.recv(10, nowait) == b"hello"
    assert socks[5].recv(10, nowait) == b"orphan"
    assert fcntl.fcntl(socks[4].fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
    for s in socks.values():
        s.close()


def test_free_path_only_removes_stale_sockets(tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    with pytest.raises(RestoreError, match="a live socket"):
        free_path(bytes(stale))
    s.close()
    free_path(bytes(stale))
    assert not stale.exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(RestoreError, match="not a socket"):
        free_path(bytes(tmp_path / "file"))


def test_nft_rules_text() -> None:
    c = netfilter.Conn("198.18.1.1", 4000, "198.18.1.2", 5000)
    assert netfilter._rule(c) == (
        "add rule inet cpt input ip saddr 198.18.1.2 ip daddr 198.18.1.1 tcp sport 5000 "
        'tcp dport 4000 drop comment "cpt 198.18.1.1:4000 198.18.1.2:5000"'
    )
    mapped = netfilter.Conn("::ffff:127.0.0.1", 1, "::ffff:127.0.0.2", 2)
    assert " ip saddr 127.0.0.2 ip daddr 127.0.0.1 " in netfilter._rule(mapped)
    v6 = netfilter.Conn("::1", 1, "::1", 2)
    assert " ip6 saddr ::1 ip6 daddr ::1 " in netfilter._rule(v6)
    assert str(c) == "198.18.1.1:4000 <-> 198.18.1.2:5000"
