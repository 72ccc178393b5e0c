"""The migration protocol between `cpt migrate` (the source) and `cpt node serve --stdio`
(the destination's agent), over the pipe `ssh HOST cpt node serve --stdio` gives
(SPEC.md section 12, "Migration protocol").

    frame   := "CPTM"  u8 kind  u32 header_len  u64 payload_len  header  payload
    header  := a JSON object (UTF-8): {"op": NAME, ...fields}

kind is REQUEST (source -> destination), REPLY (destination -> source, one per
request, in order) or DATA (a chunk of a stream the request before it announced; the
reply comes after the stream's END).  Every wait is bounded (`timeout`); a peer that
closes the pipe, sends garbage or too much is a ProtocolError, never a hang.  The first
request is `hello`, whose reply carries the agent's PROTOCOL version: a source refuses
another one before anything else happens.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import struct
import time
from typing import Any

from cpt.errors import CptError

PROTOCOL = 1
MAGIC = b"CPTM"
_FRAME = struct.Struct("<4sBIQ")
REQUEST, REPLY, DATA = 1, 2, 3
KINDS = (REQUEST, REPLY, DATA)
MAX_HEADER = 1 << 20
MAX_PAYLOAD = 64 << 20
CHUNK = 4 << 20  # what a stream's DATA frames carry at most
END = "end"  # the op of a stream's last DATA frame (empty payload)


class ProtocolError(CptError):
    """The peer broke the protocol: closed the pipe, timed out, sent garbage."""


class Remote(CptError):
    """The peer answered a request with an error: `kind` says which (proto.ERROR_KINDS)."""

    def __init__(self, kind: str, msg: str) -> None:
        super().__init__(msg)
        self.kind = kind


# what an error reply's "kind" may be; the source maps each to vzmigrate's exit code
ERROR_KINDS = (
    "exists",  # the VEID (or its private area) is already on the destination
    "address",  # one of the VE's addresses is held on the destination
    "kernel",  # the destination's kernel cannot restore the image (image version)
    "cpu",  # the destination's CPU lacks what the image uses
    "space",  # the destination's pool is too small
    "missing",  # the VE's template or a host directory bound into it is missing
    "copy",  # receiving the private area or the image failed
    "restore",  # undump or resume failed on the destination
    "usage",  # a request the agent does not take (unknown op, bad field, wrong order)
    "failed",  # anything else
)


@dataclasses.dataclass
class Message:
    kind: int
    op: str
    fields: dict[str, Any]
    payload: bytes = b""


class Channel:
    """Frames over two file descriptors (read end, write end)."""

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd = rfd
        self.wfd = wfd
        self.sent = 0  # bytes written, payload and framing
        self.received = 0

    # -- writing

    def send(self, frame: int, op: str, payload: bytes | memoryview = b"", **fields: Any) -> None:
        header = json.dumps({"op": op, **fields}, separators=(",", ":")).encode()
        if len(header) > MAX_HEADER or len(payload) > MAX_PAYLOAD:
            raise ProtocolError(f"a {op} message too large to send")
        self._write(_FRAME.pack(MAGIC, frame, len(header), len(payload)) + header)
        if payload:
            self._write(payload)

    def request(self, op: str, payload: bytes = b"", **fields: Any) -> None:
        self.send(REQUEST, op, payload, **fields)

    def reply(self, op: str, **fields: Any) -> None:
        self.send(REPLY, op, **fields)

    def error(self, kind: str, message: str) -> None:
        self.send(REPLY, "error", kind=kind, message=message)

    def _write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.wfd, view)
            except BrokenPipeError:
                raise ProtocolError("the peer closed the connection") from None
            except OSError as e:
                raise ProtocolError(f"cannot write to the peer: {e.strerror}") from None
            view = view[n:]
            self.sent += n

    # -- reading

    def recv(self, timeout: float) -> Message:
        """The next frame, within `timeout` seconds; ProtocolError otherwise."""
        deadline = time.monotonic() + timeout
        head = self._read(_FRAME.size, deadline)
        magic, kind, hlen, plen = _FRAME.unpack(head)
        if magic != MAGIC or kind not in KINDS:
            raise ProtocolError("the peer sent something that is not a cpt migration frame")
        if hlen > MAX_HEADER or plen > MAX_PAYLOAD:
            raise ProtocolError(f"the peer sent a frame too large ({hlen}+{plen} bytes)")
        try:
            fields = json.loads(self._read(hlen, deadline))
        except ValueError:
            raise ProtocolError("the peer sent a frame whose header is not JSON") from None
        if not isinstance(fields, dict) or not isinstance(fields.get("op"), str):
            raise ProtocolError("the peer sent a frame without an operation")
        op = fields.pop("op")
        payload = self._read(plen, deadline) if plen else b""
        return Message(kind, op, fields, payload)

    def answer(self, op: str, timeout: float) -> dict[str, Any]:
        """The reply to request `op`: its fields; Remote for an error reply."""
        msg = self.recv(timeout)
        if msg.kind != REPLY:
            raise ProtocolError(f"the peer sent a {msg.op} frame where the reply to {op} was due")
        if msg.op == "error":
            raise Remote(str(msg.fields.get("kind", "failed")), str(msg.fields.get("message")))
        if msg.op != op:
            raise ProtocolError(f"the peer answered {msg.op} to {op}")
        return msg.fields

    def call(self, op: str, timeout: float, payload: bytes = b"", **fields: Any) -> dict[str, Any]:
        self.request(op, payload, **fields)
        return self.answer(op, timeout)

    def _read(self, n: int, deadline: float) -> bytes:
        out = bytearray()
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProtocolError("the peer did not answer in time")
            ready, _, _ = select.select([self.rfd], [], [], left)
            if not ready:
                continue
            try:
                chunk = os.read(self.rfd, min(n - len(out), 1 << 20))
            except OSError as e:
                raise ProtocolError(f"cannot read from the peer: {e.strerror}") from None
            if not chunk:
                raise ProtocolError("the peer closed the connection")
            out += chunk
            self.received += len(chunk)
        return bytes(out)

    # -- streams

    def send_stream(self, op: str, fd: int, **fields: Any) -> int:
        """Request `op`, then what `fd` gives until EOF as DATA frames, then END; returns
        the bytes sent.  The reply is the caller's to read."""
        self.request(op, **fields)
        total = 0
        while True:
            chunk = os.read(fd, CHUNK)
            if not chunk:
                break
            self.send(DATA, "data", chunk)
            total += len(chunk)
        self.send(DATA, END)
        return total

    def recv_stream(self, sink: Any, timeout: float) -> int:
        """DATA frames until END, each given to `sink(bytes)`; returns the bytes.  `timeout`
        bounds the wait for each frame."""
        total = 0
        while True:
            msg = self.recv(timeout)
            if msg.kind != DATA:
                raise ProtocolError(f"the peer sent {msg.op} inside a data stream")
            if msg.op == END:
                return total
            sink(msg.payload)
            total += len(msg.payload)
