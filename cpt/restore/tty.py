"""Terminals: ptys recreated in the restorer, and the shell job's terminal.

A pty is opened once, in the restorer, at its dumped index when that index is free
(/dev/ptmx hands out the lowest free index: the restorer keeps opening until it gets the
one it wants, then lets the others go), else at another index: the restored processes'
fds then work the same, but /proc/PID/fd names /dev/pts/M instead of /dev/pts/N.  Its
termios, window size and packet mode are set through the master, the slave's unread output
is pushed back into the master, slaves are opened with TIOCGPTPEER; lock and exclusive
state are put back last (they forbid opening the slave).

A controlling terminal is inherited at fork, so it is set in a session leader right after
its setsid(), before the leader forks (TreeBuilder's on_session hook): an injected open of
the slave and TIOCSCTTY.  The foreground group is set once all groups exist, after the
leader's fds are in place (TIOCSPGRP, injected).

A shell job (an EXTERNAL terminal, restore --shell-job): the tree joins the restorer's
session, inheriting its controlling terminal; descriptions of the old terminal become
opens of the restorer's; the job gets the foreground if it had it.  A tree that had no
controlling terminal drops the one it inherited from the restorer (TIOCNOTTY).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from cptimage.records import PtyState, Tty, TtyFlags, TtyInfo, TtyKind

from ..errors import RestoreError
from ..sys import tty as T
from ..sys.files import AT_FDCWD
from ..sys.syscalls import NR
from .fdbase import OPEN_IGNORE, SETFL_MASK
from .model import ImageModel
from .options import RestoreOptions
from .pstree import Task

MAX_HELD = 256  # ptys held at most while looking for a dumped index
O_NOCTTY_RDWR = os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC


@dataclasses.dataclass
class _Pty:
    info: TtyInfo
    master: int  # this restorer's fd
    index: int  # as restored (may differ from info.index)

    @property
    def path(self) -> str:
        return f"/dev/pts/{self.index}"


class Ttys:
    records = (Tty,)

    def __init__(self) -> None:
        self.infos: dict[int, TtyInfo] = {}
        self.states: dict[int, PtyState] = {}
        self._ptys: dict[int, _Pty] = {}  # TtyInfo id -> restored pty
        self.terminal: tuple[int, str] | None = None  # the restorer's own (shell job)
        self._groups: set[int] = set()  # process groups of the tree

    # -- before the tree exists

    def prepare(self, model: ImageModel, opts: RestoreOptions) -> None:
        """Read the image's terminals; a shell job needs --shell-job and a terminal here."""
        self.infos = model.ttys
        self.states = model.pty_states
        self._groups = {p.proc.pgid for p in model.procs.values()}
        external = [i for i in self.infos.values() if i.flags & TtyFlags.EXTERNAL]
        if not external:
            return
        if not opts.shell_job:
            raise RestoreError(
                f"the tree was a shell job (its terminal /dev/pts/{external[0].index} belonged "
                f"to a shell): restore it with --shell-job, from a terminal"
            )
        self.terminal = _own_terminal()

    def open(self, model: ImageModel, desc: Any) -> int:
        info = self.infos.get(desc.tty_id)
        if info is None:
            raise RestoreError(f"terminal description {desc.id} refers to no TtyInfo")
        flags = (desc.flags & ~OPEN_IGNORE) | os.O_NOCTTY | os.O_CLOEXEC
        if info.flags & TtyFlags.EXTERNAL:
            assert self.terminal is not None
            return os.open(self.terminal[1], flags)
        pty = self._ptys.get(info.id) or self._create(info, model.root_prefix + "/dev/ptmx")
        if desc.kind == TtyKind.PTY_MASTER:
            fd = os.dup(pty.master)
            fcntl.fcntl(fd, fcntl.F_SETFL, desc.flags & SETFL_MASK)
            return fd
        return T.open_pty_peer(pty.master, desc.flags & ~OPEN_IGNORE)

    def _create(self, info: TtyInfo, ptmx: str) -> _Pty:
        m = _open_master(info.index, ptmx)
        pty = _Pty(info, m, T.pty_index(m))
        self._ptys[info.id] = pty
        T.set_pty_lock(m, False)  # slaves are opened now; locked again at the end
        if info.termios:
            T.set_termios2(m, info.termios)
        T.set_winsize(m, info.ws_row, info.ws_col, info.ws_xpixel, info.ws_ypixel)
        if info.packet_mode:
            T.set_packet_mode(m, True)
        T.push_input(m, info.data)
        state = self.states.get(info.id)
        if state is not None:  # the slave's owner, mode and unread input (1.7)
            s = T.open_pty_peer(m, os.O_RDWR | os.O_NONBLOCK)
            try:
                os.fchown(s, state.uid, state.gid)
                os.fchmod(s, state.mode & 0o7777)
                T.put_slave_input(m, s, T.get_termios2(m), state.input)
            finally:
                os.close(s)
        return pty

    # -- while the tree is built: sessions, before their leaders fork

    def on_session(self, task: Task, scratch: int) -> None:
        """`task`'s session is settled (a leader after setsid(), or the root of a tree in
        the restorer's session) and it has not forked yet: give it its controlling tty."""
        proc = task.img.proc
        if proc.sid == task.pid:
            for pty in self._ptys.values():
                if pty.info.sid == task.pid:
                    fd = _open_in(task, _put(task, scratch, pty.path), pty.path)
                    _ioctl_checked(task, fd, T.TIOCSCTTY, 0, f"TIOCSCTTY on {pty.path}")
                    task.leader.syscall(NR.close, fd)
            return
        if self.terminal is not None and any(
            i.flags & TtyFlags.EXTERNAL and i.sid == proc.sid for i in self.infos.values()
        ):
            return  # the shell job keeps the restorer's terminal, inherited
        fd = _open_in(task, _put(task, scratch, "/dev/tty"), "/dev/tty", must=False)
        if fd >= 0:  # a terminal inherited from the restorer, which the tree did not have
            _ioctl_checked(task, fd, T.TIOCNOTTY, 0, "TIOCNOTTY")
            task.leader.syscall(NR.close, fd)

    # -- per process, fds in place

    def after_install(self, model: ImageModel, task: Task, local: dict[int, int]) -> None:
        for info in self.infos.values():
            if info.pgrp not in self._groups:
                continue
            if info.flags & TtyFlags.EXTERNAL:
                if task.pid == info.pgrp and self.terminal is not None:
                    _foreground(self.terminal[0], task.host_pid)
            elif task.pid == info.sid and info.pgrp != task.img.proc.pgid:
                self._set_pgrp(model, task, info)
            elif info.sid not in model.procs and task.img.proc.sid == info.sid:
                # its session leader had exited: any member may set the foreground group
                self._set_pgrp(model, task, info)

    def _set_pgrp(self, model: ImageModel, task: Task, info: TtyInfo) -> None:
        sc = task.scratch
        assert sc is not None
        pty = self._ptys[info.id]
        own = [
            f.fd
            for f in task.img.fds
            if isinstance(model.files.get(f.file_id), Tty)
            and model.files[f.file_id].tty_id == info.id
        ]
        fd = own[0] if own else _open_in(task, sc.push_str(pty.path), pty.path)
        try:
            arg = sc.push(info.pgrp.to_bytes(4, "little"))
            _ioctl_checked(task, fd, T.TIOCSPGRP, arg, f"TIOCSPGRP {info.pgrp} on {pty.path}")
        finally:
            sc.reset()
            if not own:
                task.leader.syscall(NR.close, fd)

    def finish(self) -> None:
        """The tree is about to run: no slave is opened any more, lock what was locked."""
        for pty in self._ptys.values():
            if pty.info.exclusive:
                s = T.open_pty_peer(pty.master, os.O_RDWR)
                try:
                    T.set_exclusive(s)
                finally:
                    os.close(s)
            if pty.info.locked:
                T.set_pty_lock(pty.master, True)

    def close(self) -> None:
        for pty in self._ptys.values():
            os.close(pty.master)
        self._ptys.clear()


def prepare(
    model: ImageModel, opts: RestoreOptions, openers: Iterable[object]
) -> Callable[[Task, int], None]:
    """Check the image's terminals against the options (before anything is opened);
    returns the TreeBuilder's session hook.  `openers`: the FileRestorer's."""
    ttys = next(op for op in openers if isinstance(op, Ttys))
    ttys.prepare(model, opts)
    return ttys.on_session


def _own_terminal() -> tuple[int, str]:
    """The restorer's controlling terminal, on its stdin, stdout or stderr."""
    for fd in (0, 1, 2):
        if not os.isatty(fd):
            continue
        try:
            os.tcgetpgrp(fd)  # ENOTTY unless it is our controlling terminal
        except OSError:
            continue
        return fd, os.ttyname(fd)
    raise RestoreError(
        "restore --shell-job needs a controlling terminal on stdin, stdout or stderr: run it "
        "from the shell whose job the tree is to become"
    )


def _put(task: Task, addr: int, path: str) -> int:
    """`path` written at `addr` in the task (its creation scratch); returns addr."""
    task.leader.write_mem(addr, path.encode() + b"\0")
    return addr


def _open_in(task: Task, path_addr: int, path: str, must: bool = True) -> int:
    """An injected open of a terminal, its name at `path_addr` (never acquiring it as
    controlling terminal)."""
    fd = task.leader.syscall(NR.openat, AT_FDCWD, path_addr, O_NOCTTY_RDWR, 0)
    if fd < 0 and must:
        raise RestoreError(f"process {task.pid}: cannot open {path} (errno {-fd})", pid=task.pid)
    return fd


def _ioctl_checked(task: Task, fd: int, request: int, arg: int, what: str) -> None:
    ret = task.leader.syscall(NR.ioctl, fd, request, arg)
    if ret < 0:
        raise RestoreError(f"process {task.pid}: {what} failed (errno {-ret})", pid=task.pid)


def _open_master(index: int, ptmx: str = "/dev/ptmx") -> int:
    """A new pty of the devpts instance of `ptmx`, at `index` if that is free."""
    held: list[int] = []
    try:
        while True:
            m = os.open(ptmx, O_NOCTTY_RDWR)
            got = T.pty_index(m)
            if got >= index or len(held) >= MAX_HELD:
                return m
            held.append(m)
    finally:
        for fd in held:
            os.close(fd)


@contextlib.contextmanager
def _sigttou_blocked() -> Iterator[None]:
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _foreground(fd: int, pgrp: int) -> None:
    """Hand the restorer's terminal to the restored job (a background caller of tcsetpgrp
    gets SIGTTOU unless it blocks it)."""
    with _sigttou_blocked():
        os.tcsetpgrp(fd, pgrp)


def wait_shell_job(root: int) -> None:
    """Stay the shell's foreground job until the restored one (our child) ends, as a shell
    job's parent would: a shell takes its terminal back as soon as its job exits."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(root, 0)
