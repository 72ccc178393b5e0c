"""Credentials: uids, gids, groups, capability sets, securebits, no_new_privs."""

from __future__ import annotations

from cptimage.records import Creds

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
