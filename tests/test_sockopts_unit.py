"""Socket options and what travels in unix queues, on real sockets of this process: the
option table read and set back (cpt/sys/sockopt.py, dump/sockopts.py, restore/sockopts.py),
classic BPF filters, peeks that see files and credentials in flight without consuming
them, and the privilege rule's answers from a Creds record."""

from __future__ import annotations

import array
import os
import socket
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest

from cpt.dump import sockopts as dump_sockopts
from cpt.dump.fdbase import FdContext
from cpt.dump.options import DumpOptions
from cpt.dump.sockets import peek_messages
from cpt.errors import RestoreError
from cpt.restore import privilege
from cpt.restore import sockopts as restore_sockopts
from cpt.sys import sockopt
from cptimage.records import VmaKind

FILTER = struct.pack("HBBI", 0x80, 0, 0, 0) + struct.pack("HBBI", 0x16, 0, 0, 0)


def ctx() -> FdContext:
    return FdContext(opts=DumpOptions(), paths=None)  # type: ignore[arg-type]


def model(opts: list, caps: int = ~0) -> SimpleNamespace:
    creds = SimpleNamespace(
        cap_eff=caps & (1 << 64) - 1, uid=0, euid=0, suid=0, gid=0, egid=0, sgid=0
    )
    return SimpleNamespace(
        sock_opts={o.file_id: o for o in opts},
        procs={100: SimpleNamespace(creds=creds)},
        holders=lambda file_id: [100],
    )


def test_filter_reads_back_in_instructions() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        assert sockopt.get_filter(s.fileno()) == b""
        sockopt.set_filter(s.fileno(), FILTER)
        assert sockopt.get_filter(s.fileno()) == FILTER


def test_only_changed_options_are_recorded_and_set_back() -> None:
    c = ctx()
    # as the dump sees a socket (a duplicate by fd: the protocol is read from the kernel)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # in InetSocket.opts, not here
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 13)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x28)
        s.setsockopt(socket.IPPROTO_TCP, 13, b"reno")
        s.setsockopt(socket.SOL_SOCKET, 25, b"lo")
        sockopt.set_filter(s.fileno(), FILTER)
        rec = dump_sockopts.dump(c, 7, s, state=7)
    for f in c.release:
        f(True)
    assert rec is not None and rec.file_id == 7
    labels = [sockopt.label(k) for k in rec.keys]
    assert "TCP_KEEPIDLE" not in labels and "IP_TTL" not in labels, "defaults are not kept"
    for want in (
        "TCP_KEEPINTVL",
        "IP_TOS",
        "TCP_CONGESTION",
        "SO_BINDTODEVICE",
        "SO_ATTACH_FILTER",
    ):
        assert want in labels
    assert (
        labels.index("SO_BINDTODEVICE") < labels.index("IP_TOS") < labels.index("SO_ATTACH_FILTER")
    ), "table order: early ones, then the rest, the filter last"
    m = model([rec])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        restore_sockopts.apply(m, 7, s, early=True, where="t")  # type: ignore[arg-type]
        assert s.getsockopt(socket.SOL_SOCKET, 25, 16).rstrip(b"\0") == b"lo"
        assert s.getsockopt(socket.IPPROTO_IP, socket.IP_TOS) == 0, "not early"
        restore_sockopts.apply(m, 7, s, early=False, where="t")  # type: ignore[arg-type]
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 13
        assert s.getsockopt(socket.IPPROTO_IP, socket.IP_TOS) == 0x28
        assert s.getsockopt(socket.IPPROTO_TCP, 13, 16).rstrip(b"\0") == b"reno"
        assert sockopt.get_filter(s.fileno()) == FILTER


def test_a_guarded_value_needs_the_capability_in_the_image() -> None:
    c = ctx()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, 36, 0x42)  # SO_MARK
        rec = dump_sockopts.dump(c, 9, s)
    for f in c.release:
        f(True)
    assert rec is not None
    no_caps = model([rec], caps=0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        with pytest.raises(RestoreError, match=r"t: SO_MARK needs CAP_NET_ADMIN or CAP_NET_RAW"):
            restore_sockopts.apply(no_caps, 9, s, early=False, where="t")  # type: ignore[arg-type]
        restore_sockopts.apply(model([rec], caps=1 << 12), 9, s, early=False, where="t")  # type: ignore[arg-type]
        assert s.getsockopt(socket.SOL_SOCKET, 36) == 0x42


def test_unknown_option_in_an_image_is_refused() -> None:
    rec = SimpleNamespace(file_id=3, keys=[(1 << 32) | 999], values=[b"\0\0\0\0"])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s, pytest.raises(RestoreError, match="option 1/999, which this cpt does not know"):
        restore_sockopts.apply(model([rec]), 3, s, early=False, where="t")  # type: ignore[arg-type]


def test_peek_sees_files_and_credentials_and_consumes_nothing(tmp_path: Path) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    fd = os.open(path, os.O_RDONLY)
    os.lseek(fd, 42, 0)
    a.sendmsg([b"files"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd, fd]))])
    creds = struct.pack("iII", os.getpid(), os.getuid(), os.getgid())
    a.sendmsg([b"creds"], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds)])
    a.send(b"plain")
    os.close(fd)
    msgs = peek_messages(b, socket.SOCK_DGRAM)
    try:
        assert [m.data for m in msgs] == [b"files", b"creds", b"plain"]
        assert len(msgs[0].fds) == 2 and os.lseek(msgs[0].fds[0], 0, 1) == 42
        assert msgs[1].creds == (os.getpid(), os.getuid(), os.getgid())
        assert msgs[0].creds is None and msgs[2].creds is None, "no credentials attached"
    finally:
        for m in msgs:
            for f in m.fds:
                os.close(f)
    assert b.getsockopt(socket.SOL_SOCKET, 16) == 0, "SO_PASSCRED put back"
    assert b.getsockopt(socket.SOL_SOCKET, 42) == -1, "SO_PEEK_OFF put back"
    assert b.recv(100) == b"files" and b.recv(100) == b"creds" and b.recv(100) == b"plain"


def test_stream_peek_gives_the_files_with_the_last_byte_of_their_run() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    r, w = os.pipe()
    a.send(b"before-")
    a.sendmsg([b"with"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]))])
    a.send(b"-after")
    msgs = peek_messages(b, socket.SOCK_STREAM)
    try:
        assert [(m.data, len(m.fds)) for m in msgs] == [
            (b"before-wit", 0),
            (b"h", 1),
            (b"-after", 0),
        ]
    finally:
        for m in msgs:
            for f in m.fds:
                os.close(f)
        for f in (r, w):
            os.close(f)


def test_who_may_send_which_credentials() -> None:
    def m(caps: int) -> SimpleNamespace:
        creds = SimpleNamespace(
            cap_eff=caps, uid=1000, euid=1000, suid=1000, gid=100, egid=100, sgid=100
        )
        return SimpleNamespace(procs={100: SimpleNamespace(creds=creds)})

    assert privilege.may_send_creds(m(0), 100, 1000, 100)  # type: ignore[arg-type]
    assert not privilege.may_send_creds(m(0), 1, 1000, 100), "another pid needs CAP_SYS_ADMIN"  # type: ignore[arg-type]
    assert not privilege.may_send_creds(m(0), 100, 0, 100), "another uid needs CAP_SETUID"  # type: ignore[arg-type]
    assert privilege.may_send_creds(m(1 << 21 | 1 << 7 | 1 << 6), 1, 0, 0)  # type: ignore[arg-type]


def test_seqpacket_walk_ends_on_a_socket_shut_down_for_reading() -> None:
    """Its end of queue reads 0 bytes, as an empty message does: the walk (which used to
    loop for ever here) stops once every queued byte was seen."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for m in (b"x", b"", b"yy"):
        a.send(m)
    a.close()  # the peer closed: b is shut down for reading
    assert [m.data for m in peek_messages(b, 5)] == [b"x", b"", b"yy"]
    c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    c.send(b"")
    c.send(b"z")
    d.shutdown(socket.SHUT_RD)
    assert [m.data for m in peek_messages(d, 5)] == [b"", b"z"]
    assert d.recv(10) == b"" and d.recv(10) == b"z", "nothing consumed"


@pytest.mark.skipif(os.geteuid() != 0, reason="a packet socket needs CAP_NET_RAW")
def test_a_mapped_packet_ring_is_carried_only_with_its_socket() -> None:
    """The rings of a packet socket an fd holds are mapped again at restore; once no fd
    holds the socket (closed after mmap), the dump refuses before freezing."""
    import ctypes

    from cpt.dump.mm import unsupported_vma, vma_kind
    from cpt.procfs import Proc

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, *[ctypes.c_int] * 3, ctypes.c_long)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.setsockopt(263, 5, struct.pack("4I", 1 << 16, 1, 1 << 11, 32))  # PACKET_RX_RING
    ring = libc.mmap(None, 1 << 16, 3, 1, s.fileno(), 0)  # rw, MAP_SHARED (no dup of the fd)
    assert ring not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
    try:
        (v,) = [v for v in Proc().maps(os.getpid()) if v.path.startswith("socket:[")]
        assert unsupported_vma(os.getpid(), v) is None
        assert vma_kind(v) == VmaKind.PACKET_RING
        s.close()
        why = unsupported_vma(os.getpid(), v)
        assert why is not None and f"mapping {v.start:x}-{v.end:x}" in why, why
        assert "no fd of the process holds the socket" in why, why
    finally:
        libc.munmap(ring, 1 << 16)
        s.close()
