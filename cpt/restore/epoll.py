"""epoll: the instance is created in the restorer; its targets are registered INSIDE a
restored process, with that process's own fd numbers (an item is keyed by file and fd
number), by an injected epoll_ctl once its fd table is in place.

Each target is registered once, in the first process (parents first) that holds the epoll
and the target's file at the registered fd number.  Readiness comes back by itself from
the targets' state: EPOLL_CTL_ADD polls the target at once.  Two kernel effects: an
edge-triggered item whose target is ready reports that edge once more; and the kernel
adds EPOLLERR|EPOLLHUP on every EPOLL_CTL_ADD, so an EPOLLONESHOT item that had fired
(disarmed: no event bits left) comes back armed for those two only.
"""

from __future__ import annotations

import fcntl
from typing import Any

from cptimage.records import Epoll, EpollTarget

from ..errors import RestoreError
from ..sys.anonfd import EPOLL_CLOEXEC, EPOLL_CTL_ADD, EPOLL_EVENT, epoll_create1
from ..sys.syscalls import NR
from .fdbase import SETFL_MASK
from .model import ImageModel
from .pstree import Task


class Epolls:
    records = (Epoll,)

    def __init__(self) -> None:
        self._pending: dict[int, list[EpollTarget]] = {}  # epoll id -> not registered yet
        self._holders: dict[int, list[int]] = {}  # epoll id -> pids holding it, in order

    def open(self, model: ImageModel, desc: Any) -> int:
        fd = epoll_create1(EPOLL_CLOEXEC)
        if desc.flags & SETFL_MASK:
            fcntl.fcntl(fd, fcntl.F_SETFL, desc.flags & SETFL_MASK)
        self._pending[desc.id] = list(model.epoll_targets.get(desc.id, []))
        self._holders[desc.id] = [
            pid for pid in model.order if any(f.file_id == desc.id for f in model.procs[pid].fds)
        ]
        return fd

    def after_install(self, model: ImageModel, task: Task, local: dict[int, int]) -> None:
        fds = {f.fd: f.file_id for f in task.img.fds}
        for epfd, ident in sorted(fds.items()):
            todo = self._pending.get(ident)
            if todo is None or task.pid not in self._holders[ident]:
                continue
            self._holders[ident].remove(task.pid)
            for t in [t for t in todo if fds.get(t.tfd) == t.target_id]:
                _register(task, epfd, t)
                todo.remove(t)
            if todo and not self._holders[ident]:
                t = todo[0]
                raise RestoreError(
                    f"epoll {ident}: no restored process holds its target {t.target_id} at "
                    f"fd {t.tfd}, where it was registered"
                )

    def close(self) -> None:
        self._pending.clear()
        self._holders.clear()


def _register(task: Task, epfd: int, t: EpollTarget) -> None:
    sc = task.scratch
    assert sc is not None
    addr = sc.push(EPOLL_EVENT.pack(t.events, t.data))
    try:
        task.leader.syscall_checked(NR.epoll_ctl, epfd, EPOLL_CTL_ADD, t.tfd, addr)
    except OSError as e:
        raise RestoreError(
            f"process {task.pid} fd {epfd} (epoll): cannot register fd {t.tfd} "
            f"(events {t.events:#x}): {e.strerror}"
        ) from None
    finally:
        sc.reset()
