"""Acting as a restored process: its files are opened with its own credentials.

The restorer is root; the image says which files its processes hold.  So that an image
can never reach a file its processes could not, every file, FIFO, inotify watch, socket
file (bind, connect) and ghost file of a restored process is opened or created by the
restorer's thread with THAT process's filesystem credentials switched in for the call
(cpt.sys.creds.acting_as: fsuid, fsgid, supplementary groups and effective capabilities,
this thread only): the kernel then checks every path component, mode and owner exactly
as it would for the process.  Mapped files and the executable are opened the same way
and handed to the process (mm.py).  What the restorer creates belongs to the process's
fsuid and fsgid as it would had the process created it; a chown to another owner the
process could not make is skipped (the file stays the process's own).

An open-file description shared by several processes (after fork) is opened with the
credentials of the first of its holders, in tree order, for which the open succeeds: the
description is then one that process could have opened.  A file the process may open
but whose directory it may not search (a tree started in a private directory) is
reached by the restorer and opened through that fd, still with the process's
credentials, when it is the very file the image names (device and inode).  A process
that opened a file before giving up its privileges (a daemon's log) holds one it could
not open now: only with --trust (the operator vouches for the image) is such a file
opened as the restorer, and then only if it is that very file.  The
credentials a tree's processes may hold at all are trust.py's business.

In a VE that contains its root, the restorer's thread would carry its capabilities over
the HOST into such an open (the VE's root has every capability, in its own namespace
only): there open_held's files (files, FIFOs, mapped files, executables) are opened by
the helper in the VE's user namespace instead (model.ns_opener, userns.Donor.open), with
the process's ids as the VE sees them.  Not yet so: unix socket files, inotify watches
and POSIX queues (as_holders, in_root_as_holders), still made by the restorer's thread
with the process's host ids and capabilities.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from cptimage.records import Creds, NsCreds, PathObj

from ..errors import RestoreError
from ..procfs import fd_path
from ..sys.creds import acting_as
from ..sys.ns import in_child
from .model import ImageModel

T = TypeVar("T")


def holders_creds(model: ImageModel, pids: Sequence[int]) -> list[tuple[int, Creds]]:
    """(pid, credentials) of the processes `pids`, one per distinct filesystem identity;
    none given (a file no process holds): the tree's root."""
    out: list[tuple[int, Creds]] = []
    seen: set[tuple[int, int, tuple[int, ...], int]] = set()
    for pid in pids or [model.root]:
        pi = model.procs.get(pid)
        c = pi.creds if pi is not None else None
        if c is None:
            continue
        key = (c.fsuid, c.fsgid, tuple(c.groups), c.cap_eff)
        if key not in seen:
            seen.add(key)
            out.append((pid, c))
    return out


@contextlib.contextmanager
def acting_for(c: Creds) -> Iterator[None]:
    """This thread opens and creates as a process with the credentials `c` would."""
    with acting_as(c.fsuid, c.fsgid, c.groups, c.cap_eff):
        yield


def who(holders: Sequence[tuple[int, Creds]]) -> str:
    return " or ".join(f"uid {c.fsuid} (process {pid})" for pid, c in holders)


def as_holders(model: ImageModel, pids: Sequence[int], what: str, fn: Callable[[], T]) -> T:
    """fn() with the credentials of the first of `pids` for which it is permitted;
    RestoreError naming them when it is for none (EACCES, EPERM).  Any other OSError of
    fn comes back as it is."""
    holders = holders_creds(model, pids)
    if not holders:
        raise RestoreError(f"{what}: no process of the image with credentials holds it")
    last: PermissionError | None = None
    for _pid, c in holders:
        try:
            with acting_for(c):
                return fn()
        except PermissionError as e:
            last = e
    assert last is not None
    raise _refused(what, holders, last)


def open_held(model: ImageModel, pids: Sequence[int], p: PathObj, flags: int, what: str) -> int:
    """The file `p` opened with `flags` as one of `pids` would.  By its path first
    (as_holders); a file in a directory they may not search (a tree started in a private
    directory) is reached by the restorer and opened through that fd with their
    credentials, if it is the very file the image names (device and inode): the kernel
    then checks their right to the file itself.  With --trust, as the restorer when none
    of them may, if it is that very file (a process that opened it before giving up its
    privileges)."""
    opener = model.ns_opener if p.id not in model.ghost_fds else None
    root = model.root_fd
    try:
        if opener is not None and root is not None:
            return _in_ns(
                model, pids, what, lambda ids, caps: opener.open(root, p.path, flags, ids, caps)
            )
        return as_holders(model, pids, what, lambda: model.open_path(p, flags))
    except RestoreError as e:
        refused = e
    if p.id in model.ghost_fds:
        raise refused
    reached = _reach(model, p)
    if reached is not None:
        try:
            if opener is not None:
                return _in_ns(
                    model, pids, what, lambda ids, caps: opener.open(reached, "", flags, ids, caps)
                )
            return as_holders(model, pids, what, lambda: os.open(fd_path("self", reached), flags))
        except RestoreError as e:
            refused = e
        finally:
            os.close(reached)
    if not getattr(model, "trust", False):
        raise RestoreError(
            f"{refused}; if the process opened it before giving up its privileges and you "
            f"vouch for the image, restore with --trust"
        )
    fd = model.open_path(p, flags)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (p.dev, p.ino):
        os.close(fd)
        raise RestoreError(
            f"{what}: no process of the image may open it, and it is not the file the image "
            f"names (device {st.st_dev}, inode {st.st_ino}; the image: {p.dev}, {p.ino})"
        )
    return fd


def _in_ns(
    model: ImageModel, pids: Sequence[int], what: str, fn: Callable[[NsCreds, int], int]
) -> int:
    """as_holders in the VE's user namespace: fn(ids inside it, effective capabilities)
    for the first of `pids` it permits."""
    holders = holders_creds(model, pids)
    if not holders:
        raise RestoreError(f"{what}: no process of the image with credentials holds it")
    last: PermissionError | None = None
    for pid, c in holders:
        ids = model.procs[pid].ns_creds
        if ids is None:
            raise RestoreError(
                f"{what}: process {pid} has no ids inside the VE's user namespace (NsCreds): "
                f"the image is damaged"
            )
        try:
            return fn(ids, c.cap_eff)
        except PermissionError as e:
            last = e
    assert last is not None
    raise _refused(what, holders, last)


def _reach(model: ImageModel, p: PathObj) -> int | None:
    """An O_PATH fd of `p` as the restorer reaches it, if that is the inode the image
    names (device and inode); None otherwise."""
    try:
        fd = model.open_path(p, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return None
    st = os.fstat(fd)
    if p.ino and (st.st_dev, st.st_ino) == (p.dev, p.ino):
        return fd
    os.close(fd)
    return None


def in_root_as_holders(
    model: ImageModel, pids: Sequence[int], what: str, fn: Callable[[], object], root: str
) -> None:
    """as_holders for a path that must resolve inside the directory `root` (a VE's root,
    where a unix socket's name is looked up as the VE sees it; empty: the host's): fn()
    runs in a child chrooted there, which takes the credentials only after the chroot."""
    holders = holders_creds(model, pids)
    if not holders:
        raise RestoreError(f"{what}: no process of the image with credentials holds it")
    last: PermissionError | None = None
    for _pid, c in holders:

        def run(c: Creds = c) -> None:
            with acting_for(c):
                fn()

        try:
            in_child(run, root=root or None)  # "": the host's root
            return
        except PermissionError as e:
            last = e
    assert last is not None
    raise _refused(what, holders, last)


def _refused(what: str, holders: Sequence[tuple[int, Creds]], e: OSError) -> RestoreError:
    return RestoreError(
        f"{what} as {who(holders)}: {e.strerror}; a restored process gets no file it could "
        f"not open itself"
    )


__all__ = ["acting_for", "as_holders", "holders_creds", "in_root_as_holders", "open_held", "who"]
