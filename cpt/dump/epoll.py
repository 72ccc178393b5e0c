"""epoll: the instance, and each registered target with its events and data.

The kernel keys an epoll item by (file, fd number): the restore registers it again with
epoll_ctl inside a restored process holding that file at that fd number.  So every target
must still be open at its registration number in each process holding the epoll (checked
with kcmp(KCMP_EPOLL_TFD)); an item whose fd was closed (or reused) after registration,
while its file lives on through another fd, cannot be recreated and is refused.
"""

from __future__ import annotations

import errno
from typing import Any

from cptimage.records import Epoll, EpollTarget

from ..procfs import EpollTarget as TargetInfo
from ..procfs import FdInfo, FdKind, FdTarget, Proc
from ..sys.anonfd import kcmp_epoll_tfd
from .fdbase import FdContext, file_flags
from .options import DumpOptions


def numbered(targets: tuple[TargetInfo, ...]) -> list[tuple[TargetInfo, int]]:
    """Each target with its `toff`: the how-many-th item with that fd number it is (fdinfo
    and kcmp both walk the epoll's tree in the same order)."""
    seen: dict[int, int] = {}
    out = []
    for t in targets:
        out.append((t, seen.get(t.tfd, 0)))
        seen[t.tfd] = seen.get(t.tfd, 0) + 1
    return out


class Epolls:
    kinds = frozenset({FdKind.EPOLL})

    def unsupported(self, pid: int, fd: int, ft: FdTarget, opts: DumpOptions) -> str | None:
        for t, toff in numbered(Proc().fdinfo(pid, fd).epoll):
            try:
                if kcmp_epoll_tfd(pid, t.tfd, pid, fd, t.tfd, toff) == 0:
                    continue
                now = f"fd {t.tfd} is another file now"
            except OSError as e:
                if e.errno != errno.EBADF:
                    raise
                now = f"fd {t.tfd} was closed"
            return (
                f"process {pid} fd {fd}: epoll watches a file registered as fd {t.tfd}, but {now} "
                f"(the watched file lives on elsewhere): an epoll item is keyed by fd number and "
                f"cannot be recreated; remove it with EPOLL_CTL_DEL before closing fd {t.tfd}"
            )
        return None

    def key(self, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> tuple[Any, ...]:
        return ("epoll",)

    def dump(self, ctx: FdContext, ident: int, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> Any:
        targets = [
            EpollTarget(epoll_id=ident, tfd=t.tfd, events=t.events, data=t.data) for t in fi.epoll
        ]
        ctx.extra += targets

        def resolve() -> None:
            # the target fds of this process are all dumped by now (they are open: checked)
            for rec in targets:
                rec.target_id = ctx.ids[(pid, rec.tfd)]

        ctx.finish.append(resolve)
        return Epoll(id=ident, flags=file_flags(fi))


HANDLER = Epolls()
