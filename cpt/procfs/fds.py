"""/proc/PID/fd/N: what the link of an fd names.

Grammar of the link text: an absolute path (" (deleted)" appended once unlinked);
"anon_inode:NAME" (NAME mostly "[eventfd]"-style); "KIND:[INODE]" for pipe:, socket: and
the namespace files (net:, mnt:, ...).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

_DELETED = " (deleted)"


def split_deleted(path: str) -> tuple[str, bool]:
    """("/a/b (deleted)") -> ("/a/b", True).

    The kernel appends " (deleted)" to the name of an unlinked file, so a live file whose name
    really ends in " (deleted)" looks the same: confirm with st_nlink == 0 before acting on it.
    """
    if path.endswith(_DELETED):
        return path[: -len(_DELETED)], True
    return path, False


class FdKind(enum.Enum):
    FILE = "file"  # a path (regular file, directory, device, FIFO, ...)
    PIPE = "pipe"  # pipe:[INO]
    SOCKET = "socket"  # socket:[INO]
    NSFS = "nsfs"  # an opened /proc/PID/ns/* file: "net:[INO]"
    EVENTFD = "eventfd"
    TIMERFD = "timerfd"
    SIGNALFD = "signalfd"
    EPOLL = "epoll"
    INOTIFY = "inotify"
    FANOTIFY = "fanotify"
    PIDFD = "pidfd"
    IO_URING = "io_uring"
    BPF = "bpf"  # bpf-map, bpf-prog, bpf_link, bpf_iter, bpf-token
    PERF_EVENT = "perf_event"
    USERFAULTFD = "userfaultfd"
    ANON_INODE = "anon_inode"  # any other anon_inode:NAME
    MEMFD = "memfd"  # /memfd:NAME (deleted)
    PTS = "pts"  # /dev/pts/N
    PTMX = "ptmx"  # /dev/ptmx, /dev/pts/ptmx: a pty master
    MQUEUE = "mqueue"  # a POSIX message queue: its link looks like a path ("/name")
    UNKNOWN = "unknown"


_ANON_KINDS = {
    "[eventfd]": FdKind.EVENTFD,
    "[timerfd]": FdKind.TIMERFD,
    "[signalfd]": FdKind.SIGNALFD,
    "[eventpoll]": FdKind.EPOLL,
    "inotify": FdKind.INOTIFY,  # the one name without brackets
    "[fanotify]": FdKind.FANOTIFY,
    "[pidfd]": FdKind.PIDFD,  # still anon_inode:[pidfd] with pidfs (6.9+)
    "[io_uring]": FdKind.IO_URING,
    "[perf_event]": FdKind.PERF_EVENT,
    "[userfaultfd]": FdKind.USERFAULTFD,
}
_NS_TYPES = frozenset({"cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts"})
_PTS_RE = re.compile(r"/dev/pts/(\d+)")


@dataclass(frozen=True, slots=True)
class FdTarget:
    """What readlink(/proc/PID/fd/N) names."""

    kind: FdKind
    target: str  # the link text as read
    path: str | None = None  # FILE, MEMFD, PTS, PTMX: without " (deleted)"
    deleted: bool = False
    inode: int | None = None  # PIPE, SOCKET, NSFS
    name: str | None = None  # anon_inode NAME, ns type, memfd NAME
    index: int | None = None  # PTS number


def parse_fd_target(target: str) -> FdTarget:
    if target.startswith("/"):
        path, deleted = split_deleted(target)
        if deleted and path.startswith("/memfd:"):
            return FdTarget(FdKind.MEMFD, target, path, True, name=path[7:])
        m = _PTS_RE.fullmatch(path)
        if m:
            return FdTarget(FdKind.PTS, target, path, deleted, index=int(m.group(1)))
        if path in ("/dev/ptmx", "/dev/pts/ptmx"):
            return FdTarget(FdKind.PTMX, target, path, deleted)
        return FdTarget(FdKind.FILE, target, path, deleted)
    if target.startswith("anon_inode:"):
        name = target[11:]
        kind = _ANON_KINDS.get(name)
        if kind is None:
            kind = FdKind.BPF if name.startswith("bpf") else FdKind.ANON_INODE
        return FdTarget(kind, target, name=name)
    # "pipe:[123]", "socket:[123]", "net:[4026531833]": no regex, this runs once per fd
    i = target.find(":[")
    if i > 0 and target[-1] == "]" and target[i + 2 : -1].isdigit():
        what, ino = target[:i], int(target[i + 2 : -1])
        if what == "socket":
            return FdTarget(FdKind.SOCKET, target, inode=ino)
        if what == "pipe":
            return FdTarget(FdKind.PIPE, target, inode=ino)
        if what in _NS_TYPES:
            return FdTarget(FdKind.NSFS, target, inode=ino, name=what)
    return FdTarget(FdKind.UNKNOWN, target)
