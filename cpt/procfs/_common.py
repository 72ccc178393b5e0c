"""What every parser and the reader share: byte decoding, the kernel's C escapes, reads."""

from __future__ import annotations

import os
import re


def dec(b: bytes) -> str:
    # surrogateescape: names and paths are bytes to the kernel; os.fsencode() gives them back
    return b.decode("utf-8", "surrogateescape")


_C_ESCAPES = {b"n": b"\n", b"t": b"\t", b"r": b"\r", b"f": b"\f", b"v": b"\v", b"a": b"\a",
              b"e": b"\x1b", b"\\": b"\\", b'"': b'"'}  # fmt: skip
_C_ESCAPE_RE = re.compile(rb"\\([0-7]{3}|.)", re.S)


def c_unescape(b: bytes) -> bytes:
    """Undo the kernel's string_escape_mem()/mangle(): \\ooo octal and \\n-style escapes."""
    if b"\\" not in b:
        return b

    def one(m: re.Match[bytes]) -> bytes:
        s = m.group(1)
        if len(s) == 3:
            return bytes([int(s, 8) & 0xFF])
        return _C_ESCAPES.get(s, b"\\" + s)

    return _C_ESCAPE_RE.sub(one, b)


def ints(v: bytes) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split())


def _read_fd(fd: int, hint: int) -> bytes:
    data = os.read(fd, hint)
    if len(data) < hint:
        # a single-record seq file (stat, status, fdinfo, limits, ...) and auxv hand over all
        # they have in one read: a short read is the whole file
        return data
    chunks = [data]
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def read_file(path: str, hint: int = 4096, dir_fd: int | None = None) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return _read_fd(fd, hint)
    finally:
        os.close(fd)


def read_all(path: str) -> bytes:
    # multi-record seq files (maps, smaps, mountinfo, net/*) return at most one kernel buffer
    # (one page) per read(), short or not; FileIO.readall() loops into one growing buffer
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    with open(fd, "rb", buffering=0, closefd=True) as f:
        return f.readall()
