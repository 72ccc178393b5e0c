"""Per-object locks between cpt commands (a tree, a VE): flock on a file in the run dir.

A second command on the same object fails at once with LockedError (exit 9), naming it.
The lock file is removed on release; an opener that raced with the removal finds its
inode no longer at the path and tries again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator

from .errors import LockedError


def run_dir() -> str:
    """Where cpt keeps state between commands: CPT_RUN_DIR, else <CPT_ROOT>/run when a
    node root is given, else /run/cpt."""
    d = os.environ.get("CPT_RUN_DIR")
    if not d:
        root = os.environ.get("CPT_ROOT")
        d = os.path.join(root, "run") if root else "/run/cpt"
    os.makedirs(d, mode=0o700, exist_ok=True)
    return d


@contextlib.contextmanager
def locked(name: str, what: str) -> Iterator[None]:
    """Hold the lock `name`; `what` names the object in the error ("tree 42", "VE 101")."""
    path = os.path.join(run_dir(), name + ".lock")
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise LockedError(
                    f"{what} is locked by another cpt command; retry when it ends"
                ) from None
            raise
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
