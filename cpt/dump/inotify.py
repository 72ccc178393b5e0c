"""inotify: the instance and its watches, each by path, mask and watch descriptor.

fdinfo names a watched inode by a file handle: open_by_handle_at on a mount of that
filesystem, then readlink, gives its path, which must still lead to the same inode (a
file whose dentry left the cache comes back disconnected, without a usable path: refused).
The restore reproduces each wd by stepping the kernel's cyclic wd allocator with
placeholder watches, one syscall pair per step: wds above MAX_WD are refused.
Events already queued cannot be put back into a new instance: an inotify with unread
events is refused (the process reads them, then the checkpoint can be taken).
"""

from __future__ import annotations

import os
from typing import Any

from cptimage.records import Inotify, InotifyWatch

from ..procfs import FdInfo, FdKind, FdTarget, MountInfo, Proc, decode_kdev, fd_path
from ..procfs import InotifyWatch as WatchInfo
from ..sys.files import ioctl
from ..sys.fsnotify import open_by_handle_at
from ..sys.tty import FIONREAD
from .eventfds import duplicate_fd
from .fdbase import FdContext, file_flags
from .options import DumpOptions

MAX_WD = 100_000  # placeholder add/remove pairs at restore: about 9 us each


class Unresolvable(Exception):
    """Why a watch has no path."""


def watch_path(w: WatchInfo, mounts: list[MountInfo], root: str) -> tuple[str, os.stat_result]:
    """The path of a watched inode as the watching process sees it (`mounts`: its
    mountinfo; `root`: how this process reaches its paths, DumpOptions.root), and its
    lstat."""
    dev = decode_kdev(w.sdev)
    if w.f_handle is None or w.fhandle_type is None:
        raise Unresolvable(f"its filesystem ({dev[0]}:{dev[1]}) gives no file handles")
    # a mount of the filesystem's root resolves any handle; a bind mount only its subtree
    mounts = sorted((m for m in mounts if (m.major, m.minor) == dev), key=lambda m: m.root != "/")
    if not mounts:
        raise Unresolvable(f"no mount of its filesystem ({dev[0]}:{dev[1]}) is visible")
    mfd = os.open(root + mounts[0].mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = open_by_handle_at(mfd, w.fhandle_type, w.f_handle, os.O_PATH | os.O_CLOEXEC)
    except OSError as e:
        raise Unresolvable(f"its file handle does not open ({e.strerror})") from None
    finally:
        os.close(mfd)
    try:
        path = os.readlink(fd_path("self", fd))
    finally:
        os.close(fd)
    try:
        st = os.lstat(root + path)
    except OSError:
        st = None
    # a dentry that left the cache comes back disconnected: its "path" leads elsewhere
    if st is None or st.st_ino != w.ino or (os.major(st.st_dev), os.minor(st.st_dev)) != dev:
        raise Unresolvable(f"its inode {w.ino} has no path that leads to it (got {path!r})")
    return path, st


def unread_bytes(pid: int, fd: int) -> int:
    """Bytes of events queued in the inotify (FIONREAD on a duplicate of the fd)."""
    dup = duplicate_fd(pid, fd)
    try:
        n = bytearray(4)
        ioctl(dup, FIONREAD, n)
        return int.from_bytes(n, "little")
    finally:
        os.close(dup)


class Inotifies:
    kinds = frozenset({FdKind.INOTIFY})

    def unsupported(self, pid: int, fd: int, ft: FdTarget, opts: DumpOptions) -> str | None:
        where = f"process {pid} fd {fd} (inotify)"
        root = opts.root
        mounts = Proc().mountinfo(pid if root else os.getpid())
        for w in Proc().fdinfo(pid, fd).inotify:
            if w.wd > MAX_WD:
                return (
                    f"{where}: watch descriptor {w.wd} is above {MAX_WD}: restoring it would "
                    f"take {w.wd} placeholder watches"
                )
            try:
                watch_path(w, mounts, root)
            except Unresolvable as e:
                return f"{where}: the path of watch {w.wd} (inode {w.ino}) is unknown: {e}"
        n = unread_bytes(pid, fd)
        if n:
            return (
                f"{where}: {n} bytes of events are queued unread; a restored inotify starts "
                f"empty and they would be lost: let the process read them, then checkpoint"
            )
        return None

    def key(self, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> tuple[Any, ...]:
        return ("inotify",)

    def dump(self, ctx: FdContext, ident: int, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> Any:
        root = ctx.opts.root
        mounts = Proc().mountinfo(pid if root else os.getpid())
        for w in fi.inotify:
            path, st = watch_path(w, mounts, root)
            ctx.extra.append(
                InotifyWatch(
                    inotify_id=ident,
                    wd=w.wd,
                    mask=w.mask,
                    ignored_mask=w.ignored_mask,
                    ino=st.st_ino,
                    dev=st.st_dev,
                    path=path,
                )
            )
        return Inotify(id=ident, flags=file_flags(fi))


HANDLER = Inotifies()
