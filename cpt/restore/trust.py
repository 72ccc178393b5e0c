"""What a restore trusts: a dump file is code that root will run.

The dump file.  Every reader of a restore or a `ve start` (a tree's or a VE's dump file,
named or the default one, and each parent of an image chain) opens it with
`open_dumpfile`, which takes only

- a regular file (not a FIFO, a device or a directory), reached without following a
  symbolic link in its last component (cptimage.container.open_regular: O_NOFOLLOW,
  O_NONBLOCK; exit 40 otherwise, as for any image file);
- owned by root (or by the user running cpt) and writable by no one else (neither its
  group nor others): a file a user could have written is a user's program (exit 17);

checked with fstat on the open fd, and that same fd is what is read, never the path
again, so nothing can change between the check and the read.  `trust` (--trust) waives
the owner and mode check for a file the operator vouches for; the first always holds.  `waiting` says whether such a file is there
(what `ve status` calls a waiting dump).

The credentials.  An image's processes get no more than its tree's owner had: a tree
dumped by --pid records its owner's credentials (Owner, format 1.2: its root process's
at the dump), and `check_credentials` refuses a process whose ids, groups, capability
sets, no_new_privs or root directory go beyond them, unless --trust; a tree image
without an Owner (format 1.0, or one removed) needs --trust.  Every live process must
carry its credentials (a process without a Creds record would run as root).  A VE's
image is tied to its configuration instead (ve/stages.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import stat
from collections.abc import Iterator
from typing import BinaryIO

from cptimage.container import open_regular
from cptimage.records import Creds, Owner, SectionType, SourceKind

from ..errors import RestoreError
from ..sys.creds import CAP_SETGID, CAP_SETUID, CAP_SYS_CHROOT, cap_names
from .model import ImageModel

TRUST_HINT = "remove it, or restore with --trust if you vouch for it"
_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a directory",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symbolic link",
}


def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def refusal(path: str, st: os.stat_result, trust: bool = False) -> str | None:
    """Why the file `st` describes may not be restored (None: it may), naming its owner
    and mode."""
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        return f"{path} is {kind}, not a dump file: refusing to read it"
    if trust:
        return None
    owner, mode = _user(st.st_uid), f"mode {stat.S_IMODE(st.st_mode):04o}"
    if st.st_uid not in (0, os.geteuid()):
        return (
            f"{path} is owned by {owner} ({mode}), not by root: a dump file another user "
            f"could have written is refused; {TRUST_HINT}"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (
            f"{path} ({owner}, {mode}) is writable by its group or others: a dump file "
            f"another user could have written is refused; {TRUST_HINT}"
        )
    return None


def open_dumpfile(path: str, *, trust: bool = False) -> BinaryIO:
    """The dump file `path`, open for reading, after the checks above: a symlink or a
    file that is not regular is refused by cptimage's open_regular (ImageError, exit 40:
    never followed, never waited on), a file another user could have written here
    (RestoreError, exit 17, naming its owner and mode)."""
    f = open_regular(path, what="a dump")
    try:
        why = refusal(path, os.fstat(f.fileno()), trust)
        if why:
            raise RestoreError(why)
    except BaseException:
        f.close()
        raise
    f.raw.name = path  # type: ignore[attr-defined]  # what ImageReader and verify name
    return f


@contextlib.contextmanager
def opened(path: str, *, trust: bool = False) -> Iterator[BinaryIO]:
    f = open_dumpfile(path, trust=trust)
    try:
        yield f
    finally:
        f.close()


def waiting(path: str) -> bool:
    """Whether a dump file that a restore would read is at `path` (a planted one, a
    symlink, a FIFO or a file of another user is not)."""
    try:
        pfd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
            return False
        raise
    try:
        st = os.fstat(pfd)
    finally:
        os.close(pfd)
    return not stat.S_ISLNK(st.st_mode) and refusal(path, st) is None


# --------------------------------------------------------------------------- credentials


def _ids(c: Creds | Owner, kind: str) -> set[int]:
    if kind == "uid":
        return {c.uid, c.euid, c.suid, c.fsuid}
    return {c.gid, c.egid, c.sgid, c.fsgid}


def above(c: Creds, owner: Owner, root_dir: str = "/") -> list[str]:
    """What the credentials `c` (and the root directory) hold beyond `owner`'s: what a
    process of the owner could not have got without a privileged program's help."""
    out = []
    if not owner.cap_prm >> CAP_SETUID & 1:
        uids = sorted(_ids(c, "uid") - _ids(owner, "uid"))
        if uids:
            out.append("uid " + ",".join(map(str, uids)))
    if not owner.cap_prm >> CAP_SETGID & 1:
        allowed = _ids(owner, "gid") | set(owner.groups)
        gids = sorted((_ids(c, "gid") | set(c.groups)) - allowed)
        if gids:
            out.append("gid " + ",".join(map(str, gids)))
    caps = (c.cap_prm | c.cap_eff | c.cap_amb) & ~owner.cap_prm
    caps |= c.cap_inh & ~(owner.cap_prm | owner.cap_inh)
    if caps:
        out.append("capabilities " + cap_names(caps))
    bnd = c.cap_bnd & ~owner.cap_bnd
    if bnd:
        out.append("bounding set " + cap_names(bnd))
    if owner.no_new_privs and not c.no_new_privs:
        out.append("no no_new_privs")
    if root_dir != "/" and not owner.cap_prm >> CAP_SYS_CHROOT & 1:
        out.append(f"root directory {root_dir} (chroot needs cap_sys_chroot)")
    return out


def owner_text(o: Owner) -> str:
    caps = "no capabilities" if not o.cap_prm else f"capabilities {cap_names(o.cap_prm)}"
    return f"uid {o.uid}, gid {o.gid}, {caps}"


def check_credentials(model: ImageModel, *, trust: bool = False) -> None:
    """Refuse (RestoreError) an image whose processes would get more than its tree's
    owner had, or that lacks a live process's credentials."""
    for pid in model.order:
        pi = model.procs[pid]
        if not pi.zombie and pi.creds is None:
            raise RestoreError(
                f"process {pid} ({pi.proc.comm}) has no credentials in the image (no Creds "
                f"record): it would run as root; the image is damaged"
            )
    if model.header.source_kind == SourceKind.VE or trust:
        return
    owners = [r for r in model.reader.records(SectionType.PROCESS) if isinstance(r, Owner)]
    if not owners:
        raise RestoreError(
            "the image does not record its tree's owner (format 1.0, or the record was "
            "removed), so its processes' credentials cannot be checked; restore it with "
            "--trust if you vouch for it"
        )
    owner = owners[0]
    for pid in model.order:
        pi = model.procs[pid]
        if pi.creds is None:
            continue
        root_id = pi.task.root_id if pi.task is not None else 0
        root_dir = model.paths[root_id].path if root_id in model.paths else "/"
        extra = above(pi.creds, owner, root_dir)
        if extra:
            raise RestoreError(
                f"process {pid} ({pi.proc.comm}) holds {'; '.join(extra)}, beyond its tree's "
                f"owner ({owner_text(owner)}): refusing to restore it; restore with --trust "
                f"if you vouch for the image",
                pid=pid,
            )


__all__ = [
    "TRUST_HINT",
    "above",
    "check_credentials",
    "open_dumpfile",
    "opened",
    "owner_text",
    "refusal",
    "waiting",
]
