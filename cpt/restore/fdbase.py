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


class Opener(Protocol):
    records: tuple[type, ...]

    def open(self, model: ImageModel, desc: Any) -> int:
        """Create the description in this process; returns its fd here."""

    def after_install(self, model: ImageModel, task: Task, local: dict[int, int]) -> None:
        """Per process, once its fds are in place (injected; may be a no-op)."""

    def close(self) -> None:
        """Release what the opener holds beyond the descriptions (holders, ...)."""
