"""Credentials: uids, gids, groups, capability sets, securebits, no_new_privs."""

from __future__ import annotations

from cptimage.records import Creds, IdMap, NsCreds, UserNs

from ..errors import DumpError
from ..procfs import ProcStatus
from .probe import Probe


def dump_creds(pid: int, status: ProcStatus, probe: Probe) -> Creds:
    uid, euid, suid, fsuid = status.uid
    gid, egid, sgid, fsgid = status.gid
    return Creds(
        pid=pid,
        uid=uid,
        euid=euid,
        suid=suid,
        fsuid=fsuid,
        gid=gid,
        egid=egid,
        sgid=sgid,
        fsgid=fsgid,
        cap_inh=status.capinh,
        cap_prm=status.capprm,
        cap_eff=status.capeff,
        cap_bnd=status.capbnd,
        cap_amb=status.capamb,
        securebits=probe.securebits,
        no_new_privs=status.no_new_privs,
        groups=list(status.groups),
    )


def dump_ns_creds(pid: int, status: ProcStatus, userns: UserNs) -> NsCreds:
    """The process's ids as its (the VE's) user namespace sees them: /proc shows this host
    the host ids; each goes back through the namespace's maps."""
    uids = [_inside(pid, userns.uid_map, u, "uid") for u in status.uid]
    gids = [_inside(pid, userns.gid_map, g, "gid") for g in status.gid]
    return NsCreds(
        pid=pid,
        uid=uids[0],
        euid=uids[1],
        suid=uids[2],
        fsuid=uids[3],
        gid=gids[0],
        egid=gids[1],
        sgid=gids[2],
        fsgid=gids[3],
        groups=[_inside(pid, userns.gid_map, g, "group") for g in status.groups],
    )


def _inside(pid: int, entries: list[IdMap], host: int, what: str) -> int:
    for e in entries:
        if e.outside <= host < e.outside + e.count:
            return e.inside + host - e.outside
    raise DumpError(
        f"process {pid}: its {what} {host} is not mapped in the VE's user namespace (a "
        f"process of the host that joined the VE?); it cannot be restored inside it",
        pid=pid,
    )
