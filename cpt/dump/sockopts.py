"""Socket options of every family (cpt/sys/sockopt.py lists them): a SockOpts record of
the ones whose value differs from a fresh socket's of the same family, type and protocol
(a probe socket made once per kind and dump), and the ones marked `always`."""

from __future__ import annotations

import errno
import socket
from typing import Any

from cptimage.records import SockOpts

from ..sys import sockopt
from ..sys.sockopt import Opt
from .fdbase import FdContext

_NOT_HERE = (errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOTCONN)


def unsupported(where: str, s: socket.socket) -> str | None:
    """Options the engine cannot read back, found before freezing."""
    try:
        sockopt.get_filter(s.fileno())
    except OSError as e:
        if e.errno == errno.EACCES:
            return f"{where}: an eBPF socket filter (SO_ATTACH_BPF) is attached; not supported"
        raise
    return None


def _probe(ctx: FdContext, family: int, type_: int, proto: int) -> socket.socket | None:
    probes: dict[tuple[int, int, int], Any] = ctx.cache.setdefault("sockopt_probes", {})
    k = (family, type_, proto)
    if k not in probes:
        if not probes:
            ctx.release.append(lambda killed: _close_probes(probes))
        try:
            probes[k] = socket.socket(family, type_, proto)
        except OSError:
            probes[k] = None  # every readable option is recorded then
    return probes[k]


def _close_probes(probes: dict[tuple[int, int, int], Any]) -> None:
    for p in probes.values():
        if p is not None:
            p.close()
    probes.clear()


def read(s: socket.socket, o: Opt) -> bytes | None:
    try:
        return sockopt.get(s, o)
    except OSError as e:
        if e.errno in _NOT_HERE or e.errno == errno.EACCES:
            return None
        raise


def dump(
    ctx: FdContext, ident: int, s: socket.socket, *, state: int = 0, family: int = 0
) -> SockOpts | None:
    """The SockOpts record of socket `s` (description `ident`), or None if every option
    has its default value.  `state`: a TCP socket's state (options valid only in some)."""
    family = family or s.family
    type_, proto = int(s.type), s.proto
    probe = _probe(ctx, family, type_, proto)
    keys: list[int] = []
    values: list[bytes] = []
    for o in sockopt.OPTIONS:
        if not sockopt.applies(o, family, type_, proto):
            continue
        if o.states and state not in o.states:
            continue
        v = read(s, o)
        if v is None:
            continue
        if not o.always and probe is not None and read(probe, o) == v:
            continue
        keys.append(o.key)
        values.append(v)
    if not keys:
        return None
    rec = SockOpts(file_id=ident, keys=keys, values=values)
    ctx.extra.append(rec)
    return rec
