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
description is then one that process could have opened.  The credentials a tree's
processes may hold at all are trust.py's business.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from cptimage.records import Creds

from ..errors import RestoreError
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


def in_root_as_holders(
    model: ImageModel, pids: Sequence[int], what: str, fn: Callable[[], object], root: str
) -> None:
    """as_holders for a path that must resolve inside the directory `root` (a VE's root,
    where a unix socket's name is looked up as the VE sees it): fn() runs in a child
    chrooted there, which takes the credentials only after the chroot."""
    holders = holders_creds(model, pids)
    if not holders:
        raise RestoreError(f"{what}: no process of the image with credentials holds it")
    last: PermissionError | None = None
    for _pid, c in holders:

        def run(c: Creds = c) -> None:
            with acting_for(c):
                fn()

        try:
            in_child(run, root=root)
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


__all__ = ["acting_for", "as_holders", "holders_creds", "in_root_as_holders", "who"]
