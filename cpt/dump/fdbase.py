"""The contract between the fd table (fds.py) and the modules that dump one kind of open
file each (files.py, pipes.py, ...).

A handler answers three questions about an fd of its kinds: can it be dumped at all
(asked before freezing, and again while dumping), which fds could share its open-file
description (candidates the table compares with kcmp), and what the description is
(its record, plus any records it needs beside: pipe data, epoll targets, ...).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

from ..procfs import FdInfo, FdKind, FdTarget
from .options import DumpOptions
from .paths import PathTable

O_CLOEXEC = 0o2000000


@dataclasses.dataclass
class FdContext:
    """What handlers may use and fill while the tree is dumped."""

    opts: DumpOptions
    paths: PathTable
    extra: list[Any] = dataclasses.field(default_factory=list)  # records beside descriptions
    cache: dict[str, Any] = dataclasses.field(default_factory=dict)  # per-handler state
    ids: dict[tuple[int, int], int] = dataclasses.field(default_factory=dict)  # (pid, fd) -> id
    # work that needs every fd of the tree dumped (an epoll's targets): run once, at the end
    finish: list[Callable[[], None]] = dataclasses.field(default_factory=list)
    # after the dump, once the tree is killed (True) or runs on (False): sockets in repair
    release: list[Callable[[bool], None]] = dataclasses.field(default_factory=list)
    # the description of a file held by fd `fd` of THIS process (a file in flight in a
    # unix socket, received here by a peek): its id, dumped once as any other (the table
    # sets this)
    dump_file: Callable[[int], int] | None = None

    def where(self, pid: int, fd: int) -> str:
        return f"process {pid} fd {fd}"


class Handler(Protocol):
    kinds: frozenset[FdKind]

    def unsupported(self, pid: int, fd: int, ft: FdTarget, opts: DumpOptions) -> str | None:
        """Why this fd cannot be dumped (with the options given), or None."""

    def key(self, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> tuple[Any, ...]:
        """Fds with equal keys may share one open-file description (kcmp decides)."""

    def dump(self, ctx: FdContext, ident: int, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> Any:
        """The description record with id `ident`; extra records go to ctx.extra."""


def file_flags(fi: FdInfo) -> int:
    """The open-file description's flags: fdinfo adds O_CLOEXEC, which belongs to the fd."""
    return fi.flags & ~O_CLOEXEC
