"""The migration protocol (ve/proto.py) over a pipe pair, and its documentation: frames
round-trip, every wait is bounded, garbage and a closed peer are errors, never hangs."""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import pytest

from ve import proto
from ve.migrate import CODES, split_host


def pair() -> tuple[proto.Channel, proto.Channel, list[int]]:
    a_r, b_w = os.pipe()
    b_r, a_w = os.pipe()
    return proto.Channel(a_r, a_w), proto.Channel(b_r, b_w), [a_r, a_w, b_r, b_w]


def test_request_reply_and_a_stream_round_trip() -> None:
    a, b, fds = pair()
    try:
        a.request("hello", proto_version=1)
        msg = b.recv(1.0)
        assert (msg.kind, msg.op, msg.fields) == (proto.REQUEST, "hello", {"proto_version": 1})
        b.reply("hello", proto=1, root="/x")
        assert a.answer("hello", 1.0) == {"proto": 1, "root": "/x"}
        r, w = os.pipe()
        os.write(w, b"x" * 30_000)  # below the pipes' capacity: no reader thread needed
        os.close(w)
        assert a.send_stream("recv_image", r) == 30_000
        os.close(r)
        assert b.recv(1.0).op == "recv_image"
        got = bytearray()
        assert b.recv_stream(got.extend, 1.0) == 30_000
        assert got == b"x" * 30_000
        b.error("exists", "VE 1 exists on the destination")
        with pytest.raises(proto.Remote) as e:
            a.answer("preflight", 1.0)
        assert e.value.kind == "exists" and "VE 1" in str(e.value)
    finally:
        for fd in fds:
            os.close(fd)


@pytest.mark.parametrize(
    ("sent", "error"),
    [
        (b"", "in time"),
        (b"HTTP/1.1 200 OK\r\n\r\n", "not a cpt migration frame"),
        (struct.pack("<4sBIQ", b"CPTM", 2, 10, 1 << 40), "too large"),
        (struct.pack("<4sBIQ", b"CPTM", 2, 3, 0) + b"[1]", "without an operation"),
        (struct.pack("<4sBIQ", b"CPTM", 2, 3, 0) + b"{x}", "not JSON"),
        (None, "closed"),
    ],
)
def test_silence_garbage_and_a_closed_peer_are_errors(sent: bytes | None, error: str) -> None:
    a, _, fds = pair()
    try:
        if sent is None:
            os.close(fds.pop(3))
        elif sent:
            os.write(fds[3], sent)
        t0 = time.monotonic()
        with pytest.raises(proto.ProtocolError, match=error):
            a.recv(0.3)
        assert time.monotonic() - t0 < 2
    finally:
        for fd in fds:
            os.close(fd)


def test_host_syntax() -> None:
    assert split_host("root@node2:2222") == ("root@node2", "2222")
    assert split_host("node2") == ("node2", "")
    for bad in ("", "-oProxyCommand=x", "a b", "n:0", "n:x"):
        with pytest.raises(Exception, match="HOST"):
            split_host(bad)


def test_spec_lists_the_exit_codes_of_migrate() -> None:
    spec = (Path(__file__).resolve().parent.parent / "SPEC.md").read_text()
    part = spec.split("### Exit codes of `cpt migrate`", 1)[1]
    rows = {
        int(r.split("|")[1]) for r in part.splitlines() if r.startswith("| ") and r[2].isdigit()
    }
    assert rows - {0} == set(CODES)
