"""The sockets of a network namespace: /proc/PID/net/unix, tcp, tcp6, udp, udp6.

Grammar:
  net/unix    "%pK: REFCNT PROTO FLAGS TYPE ST INODE [PATH]" hex except INODE; abstract '@'
  net/tcp*    "SL: LOCAL:PORT REMOTE:PORT ST TX:RX ... UID TIMEOUT INODE ..." addresses are
              32-bit words in host byte order, hex
"""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass

from ._common import dec

UNIX_ACCEPTCON = 0x10000  # __SO_ACCEPTCON in the Flags column: a listening socket
TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
              6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
              11: "CLOSING", 12: "NEW_SYN_RECV"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class UnixSocket:
    inode: int
    refcount: int
    flags: int
    type: int  # SOCK_STREAM 1, SOCK_DGRAM 2, SOCK_SEQPACKET 5
    state: int  # SS_UNCONNECTED 1, SS_CONNECTING 2, SS_CONNECTED 3, SS_DISCONNECTING 4
    path: str | None  # None if unbound; "@name" for an abstract name (every NUL shown as '@')
    abstract: bool

    @property
    def listening(self) -> bool:
        return bool(self.flags & UNIX_ACCEPTCON)


def parse_unix_sockets(data: bytes) -> dict[int, UnixSocket]:
    """inode -> socket.  A path holding a newline would split its line: not handled."""
    out = {}
    for line in data.split(b"\n")[1:]:
        f = line.split(None, 7)
        if len(f) < 7:
            continue
        path = dec(f[7]) if len(f) == 8 else None
        ino = int(f[6])
        out[ino] = UnixSocket(
            ino,
            int(f[1], 16),
            int(f[3], 16),
            int(f[4], 16),
            int(f[5], 16),
            path,
            bool(path and path[0] == "@"),
        )
    return out


@dataclass(frozen=True, slots=True)
class InetSocket:
    inode: int
    family: int  # AF_INET 2, AF_INET6 10
    local: tuple[str, int]
    remote: tuple[str, int]
    state: int  # TCP_STATES; UDP uses 7 (CLOSE) unconnected and 1 connected
    tx_queue: int
    rx_queue: int
    uid: int


def _inet_addr(h: bytes) -> str:
    raw = bytes.fromhex(h.decode())
    # each 32-bit word is printed with %08X from a __be32 read as a host integer, so on a
    # little-endian host every word comes out byte-reversed
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(raw))


def _endpoint(b: bytes) -> tuple[str, int]:
    a, _, p = b.partition(b":")
    return _inet_addr(a), int(p, 16)


def parse_inet_sockets(data: bytes, family: int) -> dict[int, InetSocket]:
    """inode -> socket for net/tcp, tcp6, udp, udp6.

    Sockets with inode 0 (TIME_WAIT, request socks, orphans) belong to no fd: skipped.
    """
    out = {}
    for line in data.split(b"\n")[1:]:
        f = line.split()
        if len(f) < 10:
            continue
        ino = int(f[9])
        if ino == 0:
            continue
        tx, _, rx = f[4].partition(b":")
        out[ino] = InetSocket(
            ino,
            family,
            _endpoint(f[1]),
            _endpoint(f[2]),
            int(f[3], 16),
            int(tx, 16),
            int(rx, 16),
            int(f[7]),
        )
    return out


INET_FAMILY = {"tcp": 2, "udp": 2, "tcp6": 10, "udp6": 10, "raw": 2, "raw6": 10}
