"""Socket options set back from a SockOpts record (cpt/sys/sockopt.py lists them): each
where the new socket's value differs, in the record's order; `early` ones before bind,
the rest once the socket is complete.  A value the kernel guards with a capability is
set only if a process holding the socket had it (privilege.py)."""

from __future__ import annotations

import socket

from ..errors import RestoreError
from ..sys import sockopt
from ..sys.sockopt import CAP_NET_ADMIN
from . import privilege
from .model import ImageModel


def value(model: ImageModel, file_id: int, o: sockopt.Opt) -> bytes | None:
    rec = model.sock_opts.get(file_id)
    if rec is None:
        return None
    for k, v in zip(rec.keys, rec.values, strict=False):
        if k == o.key:
            return v
    return None


def apply(model: ImageModel, file_id: int, s: socket.socket, *, early: bool, where: str) -> None:
    rec = model.sock_opts.get(file_id)
    if rec is None:
        return
    for key, v in zip(rec.keys, rec.values, strict=False):
        o = sockopt.BY_KEY.get(key)
        if o is None:
            raise RestoreError(
                f"{where}: the image sets {sockopt.label(key)}, which this cpt does not know"
            )
        if o.early != early:
            continue
        try:
            if sockopt.get(s, o) == v:
                continue
        except OSError:
            pass
        what = f"{where}: {o.label}"
        if o.cap and (o.cap_if is None or o.cap_if(v)):
            privilege.require(model, file_id, o.cap, what)
        try:
            sockopt.set_(s, o, v)
            if o.kind == "buf" and sockopt.get(s, o) != v:
                # above the sysctl maximum: only SO_*BUFFORCE sets it
                privilege.require(model, file_id, (CAP_NET_ADMIN,), what)
                sockopt.set_(s, o, v, force=True)
        except OSError as e:
            raise RestoreError(f"{what}: cannot set it back: {e.strerror}") from None
