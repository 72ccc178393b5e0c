"""File locks (with --file-locks): flock, POSIX and OFD locks, read from the lock lines of
/proc/PID/fdinfo/N.

fdinfo shows a lock on the fd whose open file took it, and only in its owner: a POSIX lock
in the process that holds it, a flock or OFD lock (owned by the open-file description) in
every process holding that description, so those are recorded once per description.
Waiters (a blocked F_SETLKW) hold nothing: their interrupted call restarts after restore.
Leases (F_SETLEASE, format 1.6) likewise, owned by the description; a lease being broken
(a conflicting open is waiting for it) is refused.  Without --file-locks a tree holding a
lock or a lease is refused.
"""

from __future__ import annotations

import os

from cptimage.records import FileLock, LockKind

from .. import procfs as P
from ..errors import UnsupportedError
from ..procfs import FdInfo, Proc, fd_path
from .fdbase import FdContext
from .options import DumpOptions

_KINDS = {
    "FLOCK": LockKind.FLOCK, "POSIX": LockKind.POSIX, "OFDLCK": LockKind.OFD, "LEASE": LockKind.LEASE,
}  # fmt: skip
_NAMES = {"FLOCK": "flock", "POSIX": "POSIX", "OFDLCK": "OFD", "LEASE": "lease"}


def describe(lk: P.FileLock, path: str) -> str:
    if lk.kind == "LEASE":
        return f"a {lk.access.lower()} lease on {path}"
    what = f"{_NAMES.get(lk.kind, lk.kind)} {lk.access.lower()} lock"
    end = "EOF" if lk.end is None else str(lk.end)
    return f"a {what} on {path} bytes {lk.start}-{end}"


def lock_problem(pid: int, fd: int, lk: P.FileLock, opts: DumpOptions) -> str | None:
    breaking = lk.kind == "LEASE" and (lk.mode != "ACTIVE" or lk.access not in ("READ", "WRITE"))
    if lk.kind in _KINDS and opts.file_locks and not breaking:
        return None
    where = f"process {pid} fd {fd}"
    try:
        path = os.readlink(fd_path(pid, fd))
    except OSError:
        path = f"inode {lk.ino}"
    if lk.kind not in _KINDS:
        return f"{where}: holds a {lk.kind.lower()} ({lk.access}) on {path}; not supported"
    if breaking:
        return (
            f"{where}: holds a lease on {path} being broken ({lk.mode} {lk.access}): a "
            "conflicting open waits for it; retry once the holder has given it up"
        )
    return f"{where}: holds {describe(lk, path)}: checkpoint with --file-locks"


def unsupported_locks(pid: int, proc: Proc, opts: DumpOptions) -> list[str]:
    """The locks of `pid` that cannot be dumped (run before freezing)."""
    out = []
    for fd, fi in proc.fdinfos(pid).items():
        for lk in fi.locks:
            why = lock_problem(pid, fd, lk, opts)
            if why:
                out.append(why)
    return out


def dump_locks(ctx: FdContext, pid: int, fd: int, file_id: int, fi: FdInfo) -> None:
    """FileLock records for the locks fdinfo shows on fd `fd` of `pid` (description
    `file_id`); a description's lock is taken back by the process that took it if it holds
    the description, else by the first holder seen."""
    seen: dict[tuple[int, ...], FileLock] = ctx.cache.setdefault("locks", {})
    for lk in fi.locks:
        why = lock_problem(pid, fd, lk, ctx.opts)
        if why:
            raise UnsupportedError(why, pid=pid)
        kind = _KINDS[lk.kind]
        write = int(lk.access == "WRITE")
        length = 0 if lk.end is None else lk.end - lk.start + 1
        owner = pid if kind == LockKind.POSIX else 0
        key = (kind, owner, file_id, write, lk.start, length)
        rec = seen.get(key)
        if rec is None:
            seen[key] = rec = FileLock(
                pid=pid, fd=fd, file_id=file_id, kind=kind, write=write, start=lk.start,
                length=length,
            )  # fmt: skip
            ctx.extra.append(rec)
        elif lk.pid == pid != rec.pid:
            rec.pid, rec.fd = pid, fd
