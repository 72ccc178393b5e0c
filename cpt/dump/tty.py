"""Terminals: the ptys of the tree, and the terminal of a shell job.

A pty whose master the tree holds is dumped whole, as one TtyInfo (index, the session it
controls and its foreground group, termios, window size, lock, packet mode, exclusive
flag, and the output its slave wrote that the master has not read yet), which every Tty
description (a master or slave fd) refers to.  A controlling terminal is not an fd: the
table scans the sessions of the whole tree before any fd is dumped.

A terminal whose master is outside the tree is the invoking shell's (a shell job): with
--shell-job it is recorded as EXTERNAL (restore gives the tree the restorer's terminal),
without it the tree is refused.  Also refused, before freezing and again while dumping:
a session of the tree controlled by a terminal whose master is outside, a controlling
terminal that is not a pty, a pty of another devpts instance, and unread output of a
master in packet mode.  A pty's slave side is dumped as a PtyState (1.7): the owner and
mode of /dev/pts/N and the input the slave has not read (whole lines and a partial
one).  A pty whose slave only processes outside the tree hold is dumped from its master:
restore does not reattach them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

from cptimage.records import PtyState, Tty, TtyFlags, TtyInfo, TtyKind

from ..errors import NoSuchProcess, UnsupportedError
from ..procfs import FdInfo, FdKind, FdTarget, Proc, PtyMasterInfo, fd_path
from ..sys import tty as T
from ..sys.task import pidfd_getfd, pidfd_open
from .fdbase import FdContext, file_flags
from .options import DumpOptions
from .pstree import TaskInfo


@dataclasses.dataclass
class _Pty:
    """What the tree holds of one pty (or of the shell's terminal)."""

    index: int
    master: tuple[int, int] | None = None  # (pid, fd) of one master fd
    slaves: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    sessions: dict[int, int] = dataclasses.field(default_factory=dict)  # sid -> a member pid
    tpgid: int = 0  # foreground group, from the stat of a process it controls


@contextlib.contextmanager
def _grab(pid: int, fd: int) -> Iterator[int]:
    """The same open file as fd `fd` of `pid`, in this process (shares its flags!)."""
    pfd = pidfd_open(pid)
    try:
        mine = pidfd_getfd(pfd, fd, pid)
    finally:
        os.close(pfd)
    try:
        yield mine
    finally:
        os.close(mine)


class TtyTable:
    """The terminals of a tree: scanned at once, checked, then dumped."""

    def __init__(self, tree: dict[int, TaskInfo], root: int, proc: Proc, opts: DumpOptions) -> None:
        self.opts = opts
        self.ptys: dict[int, _Pty] = {}
        self.problems: list[str] = []
        self.records: list[TtyInfo | PtyState] = []
        self._ids: dict[int, int] = {}  # pty index -> TtyInfo id
        sid = tree[root].sid
        self.outside = sid if sid not in tree else 0  # the shell's session, if any
        self._in_tree = {p for p, i in tree.items() if not i.zombie}
        for info in tree.values():
            if not info.zombie:
                with contextlib.suppress(NoSuchProcess):
                    self._scan(info.pid, proc)
        for pty in self.ptys.values():
            self._check(pty)

    def _pty(self, index: int) -> _Pty:
        return self.ptys.setdefault(index, _Pty(index))

    def _scan(self, pid: int, proc: Proc) -> None:
        st = proc.stat(pid)
        if st.tty is not None:
            index = T.pts_index(*st.tty)
            if index is None:
                self.problems.append(
                    f"process {pid}: its controlling terminal (device {st.tty[0]}:{st.tty[1]}) "
                    f"is not a pty; not supported"
                )
            else:
                pty = self._pty(index)
                pty.sessions.setdefault(st.session, pid)
                pty.tpgid = st.tpgid
        targets = {fd: ft for fd, ft in proc.fd_targets(pid).items() if ft.kind in _KINDS}
        if not targets:
            return
        devpts = os.stat(self.opts.root + "/dev/pts/ptmx").st_dev
        for fd, ft in targets.items():
            if ft.kind is FdKind.PTMX:
                details = proc.fdinfo(pid, fd).details
                if isinstance(details, PtyMasterInfo):
                    self._pty(details.index).master = (pid, fd)
                else:  # fdinfo names a master's index since 4.7
                    self.problems.append(f"process {pid} fd {fd}: a pty master of no index")
                continue
            assert ft.index is not None
            if os.stat(fd_path(pid, fd)).st_dev != devpts:
                self.problems.append(
                    f"process {pid} fd {fd}: {ft.path} is a pty of another devpts instance "
                    f"(a container's); not supported"
                )
                continue
            self._pty(ft.index).slaves.append((pid, fd))

    def _check(self, pty: _Pty) -> None:
        name = f"/dev/pts/{pty.index}"
        if pty.master is None:
            self._check_external(pty, name)
            return
        for sid, pid in pty.sessions.items():
            if sid not in self._in_tree:
                self.problems.append(
                    f"process {pid}: its controlling terminal {name} (master in the tree) "
                    f"belongs to session {sid}, whose leader is outside the tree; not supported"
                )
        mpid, mfd = pty.master
        with _grab(mpid, mfd) as m:
            if T.packet_mode(m) and T.pending_input(m):
                self.problems.append(
                    f"process {mpid} fd {mfd}: the master of {name} is in packet mode with "
                    f"output not read yet; not supported"
                )

    def _check_external(self, pty: _Pty, name: str) -> None:
        """A terminal whose master is outside the tree: only the shell's, with --shell-job."""
        shell_tty = pty.sessions.get(self.outside) is not None
        for sid, pid in pty.sessions.items():
            if sid in self._in_tree:
                self.problems.append(
                    f"process {pid}: session {sid} of the tree has the controlling terminal "
                    f"{name}, whose master is outside the tree; not supported"
                )
            elif not self.opts.shell_job:
                self.problems.append(
                    f"process {pid}: its controlling terminal {name} belongs to session {sid} "
                    f"outside the tree (a shell job): checkpoint it with --shell-job"
                )
        for pid, fd in pty.slaves:
            if not self.opts.shell_job:
                self.problems.append(
                    f"process {pid} fd {fd}: {name} is a terminal whose master is outside the "
                    f"tree (a shell job's?): checkpoint it with --shell-job"
                )
            elif not shell_tty:
                self.problems.append(
                    f"process {pid} fd {fd}: {name} is a terminal outside the tree but not "
                    f"the controlling terminal of the shell's session; not supported"
                )

    # -- the dump (the tree is frozen)

    def dump(self) -> list[TtyInfo | PtyState]:
        """One TtyInfo per terminal, a PtyState per pty; raises when a problem was found."""
        if self.problems:
            raise UnsupportedError(self.problems[0])
        for index, pty in sorted(self.ptys.items()):
            ident = len(self._ids) + 1
            self._ids[index] = ident
            if pty.master:
                self.records += _internal(ident, pty)
            else:
                self.records.append(self._external(ident, pty))
        return self.records

    def tty_id(self, index: int) -> int:
        return self._ids[index]

    def _external(self, ident: int, pty: _Pty) -> TtyInfo:
        """The shell's terminal: recorded for the record; restore uses the restorer's."""
        rec = TtyInfo(
            id=ident, index=pty.index, sid=self.outside, pgrp=pty.tpgid, flags=TtyFlags.EXTERNAL
        )
        if pty.slaves:
            with _grab(*pty.slaves[0]) as f:
                _settings(rec, f)
        return rec


def _internal(ident: int, pty: _Pty) -> list[TtyInfo | PtyState]:
    assert pty.master is not None
    sid = next(iter(pty.sessions), 0)
    with _grab(*pty.master) as m:
        rec = TtyInfo(
            id=ident,
            index=pty.index,
            sid=sid,
            pgrp=T.get_pgrp(m) if sid else 0,
            locked=int(T.pty_locked(m)),
            packet_mode=int(T.packet_mode(m)),
        )
        _settings(rec, m)
        rec.data = _unread_output(m)
        out: list[TtyInfo | PtyState] = [rec]
        if not rec.locked:  # a locked pty's slave cannot be opened: nothing to say of it
            peer = T.open_pty_peer(m, os.O_RDONLY | os.O_NONBLOCK)
            try:
                st = os.fstat(peer)
            finally:
                os.close(peer)
            out.append(
                PtyState(
                    tty_id=ident, uid=st.st_uid, gid=st.st_gid, mode=st.st_mode & 0o7777,
                    input=T.take_slave_input(m),
                )
            )  # fmt: skip
    if pty.slaves:
        with _grab(*pty.slaves[0]) as s:
            rec.exclusive = int(T.exclusive(s))
    return out


def _settings(rec: TtyInfo, fd: int) -> None:
    rec.termios = T.get_termios2(fd)
    rec.ws_row, rec.ws_col, rec.ws_xpixel, rec.ws_ypixel = T.get_winsize(fd)


def _unread_output(master: int) -> bytes:
    """What the slave wrote and the master has not read: read, then pushed back (TIOCSTI
    into the master, whose line discipline is raw), so the tree finds it unchanged."""
    n = T.pending_input(master)
    chunks = []
    while n > 0:
        b = os.read(master, n)
        if not b:
            break
        chunks.append(b)
        n -= len(b)
    data = b"".join(chunks)
    T.push_input(master, data)
    return data


_KINDS = (FdKind.PTS, FdKind.PTMX)


def tty_problems(tree: dict[int, TaskInfo], root: int, proc: Proc, opts: DumpOptions) -> list[str]:
    """Why the tree's terminals cannot be dumped (run before freezing)."""
    return TtyTable(tree, root, proc, opts).problems


def dump_ttys(ctx: FdContext, tree: dict[int, TaskInfo], root: int, proc: Proc) -> None:
    """Scan and dump the tree's terminals (frozen) for the Tty handler below."""
    table = TtyTable(tree, root, proc, ctx.opts)
    ctx.extra += table.dump()
    ctx.cache["ttys"] = table


class Ttys:
    kinds = frozenset(_KINDS)

    def unsupported(self, pid: int, fd: int, ft: FdTarget, opts: DumpOptions) -> str | None:
        return None  # decided for the whole tree by TtyTable

    def key(self, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> tuple[Any, ...]:
        return ("tty", _index(ft, fi))

    def dump(self, ctx: FdContext, ident: int, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> Any:
        table: TtyTable = ctx.cache["ttys"]
        master = ft.kind is FdKind.PTMX
        return Tty(
            id=ident,
            flags=file_flags(fi),
            kind=TtyKind.PTY_MASTER if master else TtyKind.PTY_SLAVE,
            tty_id=table.tty_id(_index(ft, fi)),
        )


def _index(ft: FdTarget, fi: FdInfo) -> int:
    if ft.kind is FdKind.PTMX:
        assert isinstance(fi.details, PtyMasterInfo)
        return fi.details.index
    assert ft.index is not None
    return ft.index


HANDLER = Ttys()
