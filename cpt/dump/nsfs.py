"""Namespace files (nsfs): an fd on /proc/PID/ns/KIND.  One of a namespace its holder is in
is dumped as the holder's own /proc/PID/ns/KIND file, which restore reopens for the
restored process once the tree is built (as other /proc files of the tree's own
processes): the same namespace after restore, the one the tree is restored into.  One of
another namespace is refused."""

from __future__ import annotations

import os
from typing import Any

from cptimage.records import RegFile

from ..errors import UnsupportedError
from ..procfs import FdInfo, FdKind, FdTarget, Proc, fd_path, ns_path
from .fdbase import FdContext, file_flags
from .options import DumpOptions


def _own_name(pid: int, ft: FdTarget) -> str | None:
    """Which of the holder's /proc/PID/ns links names the fd's namespace, or None."""
    assert ft.name is not None
    for name in (ft.name, f"{ft.name}_for_children"):
        try:
            if os.stat(ns_path(pid, name)).st_ino == ft.inode:
                return name
        except OSError:
            continue
    return None


class NsFiles:
    kinds = frozenset({FdKind.NSFS})

    def unsupported(self, pid: int, fd: int, ft: FdTarget, opts: DumpOptions) -> str | None:
        if _own_name(pid, ft) is None:
            return (
                f"process {pid} fd {fd}: a file of namespace {ft.target}, which the process "
                f"is not in; only its own namespaces' files are supported"
            )
        return None

    def key(self, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> tuple[Any, ...]:
        return ("nsfs", ft.inode)

    def dump(self, ctx: FdContext, ident: int, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> Any:
        name = _own_name(pid, ft)
        if name is None:
            raise UnsupportedError(
                f"{ctx.where(pid, fd)}: namespace {ft.target} is no longer its own", pid=pid
            )
        inner = Proc().status(pid).nspid[-1]  # as the holder names itself in /proc
        st = os.stat(fd_path(pid, fd))
        path_id = ctx.paths.add(
            ns_path(inner, name), st, mnt_id=fi.mnt_id, what=ctx.where(pid, fd), pid=pid
        )
        return RegFile(id=ident, path_id=path_id, flags=file_flags(fi), pos=fi.pos)


HANDLER = NsFiles()
