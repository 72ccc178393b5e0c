"""The contract between the fd restorer (fds.py) and the modules that recreate one kind of
open file each (files.py, pipes.py, ...).

An opener creates a description in the restorer process and returns its fd there; the
fd table then pulls it into every process that holds it (pidfd_getfd: the same struct
file).  State that only exists relative to a process's own fd numbers (epoll targets,
terminal ownership, locks) is set afterwards, by injection, in `after_install`.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from .model import ImageModel
from .pstree import Task

O_ACCMODE = 0o3
# flags F_SETFL can change; the rest are fixed at open
SETFL_MASK = os.O_APPEND | os.O_NONBLOCK | os.O_ASYNC | os.O_DIRECT | os.O_NOATIME
OPEN_IGNORE = os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_NOCTTY
# a file created with O_TMPFILE keeps __O_TMPFILE and O_DIRECTORY in its flags (fdinfo):
# reopened by path with them, the regular file it is would fail with ENOTDIR
O_TMPFILE_BIT = os.O_TMPFILE & ~os.O_DIRECTORY


def open_flags(flags: int) -> int:
    """The flags to reopen a description by path with (O_CLOEXEC added by the caller)."""
    flags &= ~OPEN_IGNORE
    if flags & O_TMPFILE_BIT:
        flags &= ~os.O_TMPFILE
    if not flags & os.O_PATH:
        # it had its effect at open (the path was no symlink); a ghost's path is the
        # restorer's /proc/PID/fd/N, a symlink O_NOFOLLOW would refuse (ELOOP).  O_PATH
        # keeps it: such an fd may be one of a symlink itself
        flags &= ~os.O_NOFOLLOW
    return flags


class Opener(Protocol):
    records: tuple[type, ...]

    def open(self, model: ImageModel, desc: Any) -> int:
        """Create the description in this process; returns its fd here."""

    def after_install(self, model: ImageModel, task: Task, local: dict[int, int]) -> None:
        """Per process, once its fds are in place (injected; may be a no-op)."""

    def close(self) -> None:
        """Release what the opener holds beyond the descriptions (holders, ...)."""
