"""What the image's processes were allowed to do: a privileged object (a raw or packet
socket, SO_MARK, IP_TRANSPARENT, forged credentials in a queued message...) is recreated
only when a process that holds it held the capability the kernel asks for, as its Creds
record shows.  Every such check goes through `held`."""

from __future__ import annotations

from ..errors import RestoreError
from ..sys.sockopt import CAP_NAMES
from .model import ImageModel

CAP_SETGID = 6
CAP_SETUID = 7
CAP_SYS_ADMIN = 21
_NAMES = {
    **CAP_NAMES,
    CAP_SETGID: "CAP_SETGID",
    CAP_SETUID: "CAP_SETUID",
    CAP_SYS_ADMIN: "CAP_SYS_ADMIN",
}


def cap_name(cap: int) -> str:
    return _NAMES.get(cap, f"capability {cap}")


def held(model: ImageModel, pid: int, cap: int) -> bool:
    """Did process `pid` of the image hold `cap` in its effective set?"""
    pi = model.procs.get(pid)
    return pi is not None and pi.creds is not None and bool(pi.creds.cap_eff >> cap & 1)


def require(model: ImageModel, file_id: int, caps: tuple[int, ...], what: str) -> None:
    """Refuse (RestoreError) unless a process holding description `file_id` held one of
    `caps`.  `what` names the object or option."""
    holders = model.holders(file_id)
    if any(held(model, p, c) for p in holders for c in caps):
        return
    need = " or ".join(cap_name(c) for c in caps)
    who = f"process {holders[0]}" if holders else "no process"
    raise RestoreError(
        f"{what} needs {need}, which {who} holding it did not have at the dump; "
        f"refusing to recreate it"
    )


def may_send_creds(model: ImageModel, pid: int, uid: int, gid: int) -> bool:
    """Could some process of the image have sent these credentials (SCM_CREDENTIALS)?
    The kernel's rule for a sender: its own pid or CAP_SYS_ADMIN, one of its uids or
    CAP_SETUID, one of its gids or CAP_SETGID."""
    for p, pi in model.procs.items():
        c = pi.creds
        if c is None:
            continue
        if (
            (pid == p or held(model, p, CAP_SYS_ADMIN))
            and (uid in (c.uid, c.euid, c.suid) or held(model, p, CAP_SETUID))
            and (gid in (c.gid, c.egid, c.sgid) or held(model, p, CAP_SETGID))
        ):
            return True
    return False
