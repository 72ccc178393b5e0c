"""Unix sockets: every one of the image is created at the first open(); names, queues
and the rest are given once the tree's processes exist (`after_build`: a queued
message's credentials name a process, which must exist to be named).

Order (each step needs the previous ones):
  1. open: connected pairs with socketpair(); a socket whose peer was closed with a
     socketpair() whose other end stands in for the dead peer; the rest with socket();
     buffer sizes.  Each description's fd goes to the fd table;
  2. names.  A name whose file was removed or replaced since the bind (UnixBind DELETED)
     is bound while whatever now holds its path is moved aside, kept only for as long as
     the connections and messages that need it are restored (a listener's waiting
     clients, a datagram socket connected to it, datagrams sent to it), then removed and
     the path given back.  These come one at a time, before the sockets of the tree that
     hold the same path now.  The others: bind each name (after removing a stale socket
     file nobody is bound to), restore the file's mode and owner; a relative name is bound
     from its directory (UnixBind dir).  An accepted socket's name is inherited from its
     listener and is not bound again (it stays unnamed);
  3. listen with the dumped backlog; connect one-sided dgram sockets to their peer's name
     (an outside peer: --ext-unix-sk); connect the clients waiting in an accept queue to
     their listener, in queue order, which recreates the queue;
  4. refill every receive queue in order, sent by the socket's peer (or, for an
     unconnected named socket, from the message's source name or an unnamed stand-in),
     so each message lands in the right queue with its boundaries, its files in flight
     (SCM_RIGHTS: descriptions opened by the fd table) and its credentials
     (SCM_CREDENTIALS, which the restorer may send for any process that exists);
  5. close the stand-ins (one that must leave ECONNRESET behind closes with a byte
     unread), apply shutdowns, then SO_PASSCRED (an unnamed socket with it would
     autobind on send), the other options (a filter or a peek offset last: they would
     act on the refill) and the file flags.

Every lookup of a socket file (the removal of a stale one, bind, connect, a send to a
name, moving aside what holds a removed name's path) is made with the credentials of a
process holding the socket (creds.py), inside a VE's root for a VE: a socket file is
created only where that process could create it, and owned by it.  Its dumped owner and
mode are then set through an O_PATH|O_NOFOLLOW fd of the very socket file (never by a
path that could be a symlink), the owner only when that process could give it.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import functools
import os
import socket
import stat
import struct
from collections.abc import Callable
from typing import Any

from cptimage.records import ScmFlags, SockState, UnixBindFlags, UnixScm, UnixSocket

from ..errors import RestoreError
from ..procfs import decode_kdev, fd_path, pid_exists
from ..sys.net import SO_PASSCRED, SO_RCVBUFFORCE, SO_SNDBUFFORCE, set_int, unix_diag
from . import privilege, sockopts
from .creds import as_holders, in_root_as_holders
from .fdbase import SETFL_MASK
from .model import ImageModel
from .pstree import Task

_SHUT = {1: socket.SHUT_RD, 2: socket.SHUT_WR, 3: socket.SHUT_RDWR}
UNIX_ECONNRESET = 1 << 8  # UnixSocket.opts: a pending ECONNRESET (see dump/sockets.py)


def _show(name: bytes) -> str:
    return "@" + name[1:].decode(errors="replace") if name[:1] == b"\0" else name.decode()


def free_path(path: bytes, model: ImageModel | None = None) -> None:
    """Make room for binding `path` (where `model`'s processes see it): remove a stale
    socket file that no socket is bound to; refuse anything else in the way."""
    d, name = os.path.split(os.fsdecode(path))
    try:
        dfd = model.open(d, _DIR) if model is not None else os.open(d, _DIR)
    except FileNotFoundError:
        return  # bind will say
    try:
        try:
            st = os.lstat(name, dir_fd=dfd)
        except FileNotFoundError:
            return
        where = f"cannot bind a unix socket to {path.decode()}"
        if not stat.S_ISSOCK(st.st_mode):
            raise RestoreError(f"{where}: a file that is not a socket is in the way")
        for diag in unix_diag().values():
            vfs = diag.vfs
            if vfs and vfs[0] == st.st_ino and os.makedev(*decode_kdev(vfs[1])) == st.st_dev:
                raise RestoreError(f"{where}: a live socket (inode {diag.ino}) is bound to it")
        os.unlink(name, dir_fd=dfd)
    finally:
        os.close(dfd)


_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


def set_owner(path: bytes, uid: int, gid: int, mode: int, model: ImageModel | None = None) -> None:
    """Give the socket file `path` its dumped owner and mode through an O_PATH|O_NOFOLLOW
    fd of it: never through a symlink put in its place.  A chown the caller may not make
    (another owner, for a process that could not give it) is skipped."""
    flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
    name = os.fsdecode(path)
    fd = model.open(name, flags) if model is not None else os.open(name, flags)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise RestoreError(f"{name} is no longer the socket just bound there")
        via = fd_path("self", fd)  # chown/chmod of an O_PATH fd: through its magic link
        with contextlib.suppress(PermissionError):
            os.chown(via, uid, gid)
        os.chmod(via, mode)
    finally:
        os.close(fd)


class UnixSockets:
    records = (UnixSocket,)

    def __init__(self) -> None:
        self._built = False
        self._socks: dict[int, socket.socket] = {}  # ino -> socket
        self._fds: dict[int, int] = {}  # description id -> fd handed to the fd table
        self._standins: dict[int, socket.socket] = {}  # ino -> the stand-in for its dead peer
        self._root = ""  # a VE's root as the restorer reaches it (/proc/<init>/root)
        self._recs: list[UnixSocket] = []
        self._by_ino: dict[int, UnixSocket] = {}
        self._peer_of: dict[int, socket.socket] = {}  # ino -> the socket that refills its queue
        self._model: ImageModel | None = None
        self._local: dict[int, int] = {}
        self._waiting: set[int] = set()  # clients waiting in an accept queue

    def open(self, model: ImageModel, desc: Any) -> int:
        if not self._built:
            self._built = True
            self._root = model.root_prefix
            self._model = model
            self._create([r for r in model.files.values() if isinstance(r, UnixSocket)])
        return self._fds.pop(desc.id)

    # ----------------------------------------------------------------- 1. sockets

    def _create(self, recs: list[UnixSocket]) -> None:
        self._recs = recs
        by_ino = self._by_ino = {r.ino: r for r in recs}
        waiting = self._waiting = {c for r in recs if r.state == SockState.LISTEN for c in r.icons}
        # a dgram socket others connected to shows ESTABLISHED with no peer of its own,
        # as one whose peer was closed does: it gets no stand-in (its clients connect to it)
        targets = {r.peer_ino for r in recs if r.peer_ino}
        for r in recs:
            if r.ino in self._socks:
                continue
            p = by_ino.get(r.peer_ino)
            if p is not None and p.peer_ino == r.ino:
                a, b = socket.socketpair(socket.AF_UNIX, r.type)
                self._socks[r.ino], self._socks[p.ino] = a, b
                self._peer_of[r.ino], self._peer_of[p.ino] = b, a
            elif (
                r.state == SockState.ESTABLISHED
                and r.peer_ino == 0
                and r.ino not in waiting
                and r.ino not in targets
            ):
                a, b = socket.socketpair(socket.AF_UNIX, r.type)  # b stands in for a closed peer
                self._socks[r.ino] = a
                self._peer_of[r.ino] = b
                self._standins[r.ino] = b
            else:
                self._socks[r.ino] = socket.socket(socket.AF_UNIX, r.type)
        for r in recs:
            s = self._socks[r.ino]
            set_int(s, socket.SOL_SOCKET, SO_SNDBUFFORCE, r.sndbuf // 2)
            set_int(s, socket.SOL_SOCKET, SO_RCVBUFFORCE, r.rcvbuf // 2)
            self._fds[r.id] = os.dup(s.fileno())

    # ----------------------------------------------------------------- 2-5.

    def after_build(
        self, model: ImageModel, local: dict[int, int], host_pid: Callable[[int], int]
    ) -> None:
        """The tree's processes exist (as stubs): names, connections, queues, options."""
        if not self._recs:
            return
        self._local = local
        recs = self._recs
        for r in recs:
            sockopts.apply(model, r.id, self._socks[r.ino], early=True, where=self._where(r))
        deleted = [r for r in recs if self._deleted(r)]
        taken = {r.name for r in deleted}
        done: set[int] = set()  # queues already refilled
        listeners = {r.name for r in recs if r.state == SockState.LISTEN}
        # names nobody else needs first: a deleted socket's queue may hold their datagrams
        for r in recs:
            if self._bound_here(r, listeners) and not self._deleted(r) and r.name not in taken:
                self._bind(r)
        for r in deleted:
            if self._bound_here(r, listeners):
                self._deleted_name(r, done, host_pid)
        for r in recs:
            if self._bound_here(r, listeners) and not self._deleted(r) and r.name in taken:
                self._bind(r)
        for r in recs:
            if self._deleted(r):
                continue
            if r.state == SockState.LISTEN:
                self._socks[r.ino].listen(r.backlog)
                for ino in r.icons:
                    self._connect(self._socks[ino], r, f"the listener {_show(r.name)}")
            for c in self._one_sided(r):
                self._connect(self._socks[c.ino], r, f"its peer {_show(r.name)}", by=c)
        for r in recs:
            if r.peer_ino not in self._by_ino and r.peer_name and r.ino not in self._peer_of:
                self._connect_outside(r)
        for r in recs:
            if r.ino not in done:
                self._refill(r, host_pid)
        for ino, b in self._standins.items():
            if self._by_ino[ino].opts & UNIX_ECONNRESET:
                # a peer that closes with data unread leaves ECONNRESET on the survivor
                with contextlib.suppress(OSError):
                    self._socks[ino].send(b"\0", socket.MSG_DONTWAIT)
            b.close()
        self._standins.clear()
        for r in recs:
            s = self._socks[r.ino]
            if r.shutdown in _SHUT and r.state != SockState.LISTEN:
                with contextlib.suppress(OSError):  # ENOTCONN: a dgram socket, no peer
                    s.shutdown(_SHUT[r.shutdown])
            if r.opts & 1:
                s.setsockopt(socket.SOL_SOCKET, SO_PASSCRED, 1)
            sockopts.apply(model, r.id, s, early=False, where=self._where(r))
            fcntl.fcntl(s.fileno(), fcntl.F_SETFL, r.flags & SETFL_MASK)
        for s in self._socks.values():
            s.close()
        self._socks.clear()

    def _where(self, r: UnixSocket) -> str:
        return f"unix socket {_show(r.name) if r.name else r.ino}"

    def _deleted(self, r: UnixSocket) -> bool:
        b = self._model.unix_bind.get(r.id) if self._model else None
        return b is not None and bool(b.flags & UnixBindFlags.DELETED)

    def _dir(self, r: UnixSocket) -> str:
        b = self._model.unix_bind.get(r.id) if self._model else None
        return b.dir if b is not None else ""

    @staticmethod
    def _bound_here(r: UnixSocket, listeners: set[bytes]) -> bool:
        """Has a name to bind: an accepted socket shares its listener's (not bound)."""
        return bool(r.name) and (r.state == SockState.LISTEN or r.name not in listeners)

    def _one_sided(self, r: UnixSocket) -> list[UnixSocket]:
        """The dgram sockets connected to `r` that `r` is not connected to."""
        return [
            c
            for c in self._recs
            if c.peer_ino == r.ino and c.ino not in self._peer_of
            and c.state != SockState.LISTEN and c.ino not in self._waiting
        ]  # fmt: skip

    def _holders(self, r: UnixSocket) -> list[int]:
        """The processes whose credentials act for `r` (a socket only in flight: those
        holding the socket it travels in)."""
        assert self._model is not None
        return self._model.holders(r.id)

    def _as(self, r: UnixSocket, what: str, fn: Callable[[], object]) -> object:
        assert self._model is not None
        return as_holders(self._model, self._holders(r), what, fn)

    def _seen(self, r: UnixSocket) -> bytes:
        """The socket file's path as the tree's processes see it (a relative name joined
        to the directory it was bound in)."""
        d = self._dir(r)
        return r.name if r.name.startswith(b"/") or not d else os.fsencode(d) + b"/" + r.name

    def _path(self, r: UnixSocket) -> bytes:
        """Where the restorer reaches the socket file of a path name."""
        return self._root.encode() + self._seen(r)

    def _at(
        self,
        r: UnixSocket | None,
        name: bytes,
        what: str,
        fn: Callable[[], object],
        by: UnixSocket | None = None,
    ) -> None:
        """Run `fn`, which looks up the path `name`, as a process holding `by` (else `r`)
        and where the tree's paths resolve: in a child chrooted into a VE's root (a socket
        keeps the name it was bound with, so the name must be the VE's own) and in the
        directory a relative name was bound in; here for an abstract name or the host's
        root."""
        model = self._model
        assert model is not None
        if not name or name[:1] == b"\0":
            fn()  # an abstract name: no file, no permission to check
            return
        who = by or r
        holders = self._holders(who) if who is not None else []
        d = self._dir(r) if r is not None and not name.startswith(b"/") else ""
        if self._root or d:

            def run() -> None:
                if d:
                    os.chdir(d)
                fn()

            in_root_as_holders(model, holders, what, run, self._root)
        else:
            as_holders(model, holders, what, fn)

    def _bind(self, r: UnixSocket) -> None:
        s = self._socks[r.ino]
        model = self._model
        assert model is not None
        what = f"cannot bind a unix socket to {_show(r.name)}"
        try:
            if r.name[0] != 0:
                self._as(r, what, lambda: free_path(self._seen(r), model))
            self._at(r, r.name, what, lambda: s.bind(r.name))
            if r.name[0] != 0:
                self._as(r, what, lambda: set_owner(self._seen(r), r.fuid, r.fgid, r.fmode, model))
        except OSError as e:
            raise RestoreError(f"{what}: {e.strerror}") from None

    def _deleted_name(self, r: UnixSocket, done: set[int], host_pid: Callable[[int], int]) -> None:
        """A name whose file is gone: bound with the path free, used, removed again (each
        step on the file system as a process holding the socket)."""
        path = self._path(r)
        aside = path + b".cpt-aside-%d" % os.getpid()
        moved = False
        created: list[bytes] = []
        what = f"cannot bind a unix socket to {_show(r.name)} (its file was removed since)"
        try:
            if os.path.lexists(path):
                # whatever holds the path now, given back below
                self._as(r, what, lambda: os.rename(path, aside))
                moved = True
            else:
                parent = os.path.dirname(path)
                while parent and not os.path.isdir(parent):  # a removed directory too
                    created.append(parent)
                    parent = os.path.dirname(parent)
                for dpath in reversed(created):
                    self._as(r, what, functools.partial(os.mkdir, dpath, 0o700))
            s = self._socks[r.ino]
            try:
                self._at(r, r.name, what, lambda: s.bind(r.name))
            except OSError as e:
                raise RestoreError(f"{what}: {e.strerror}") from None
            if r.state == SockState.LISTEN:
                s.listen(r.backlog)
                for ino in r.icons:
                    self._connect(self._socks[ino], r, f"the listener {_show(r.name)}")
            for c in self._one_sided(r):
                self._connect(self._socks[c.ino], r, f"its peer {_show(r.name)}", by=c)
            self._refill(r, host_pid)
            done.add(r.ino)
            self._as(r, what, lambda: os.unlink(path))
        finally:
            for dpath in created:
                with contextlib.suppress(OSError, RestoreError):
                    self._as(r, what, functools.partial(os.rmdir, dpath))
            if moved:
                self._as(r, what, lambda: os.rename(aside, path))

    def _connect(
        self, s: socket.socket, to: UnixSocket, what: str, by: UnixSocket | None = None
    ) -> None:
        """Connect `s` to `to`'s name, as a process holding `by` (else `to`: a client
        waiting in an accept queue is connected by the listener's holders)."""
        msg = f"cannot reconnect a unix socket to {what}"
        try:
            self._at(to, to.name, msg, lambda: s.connect(to.name), by=by)
        except OSError as e:
            raise RestoreError(f"{msg}: {e.strerror}") from None

    def _connect_outside(self, r: UnixSocket) -> None:
        s = self._socks[r.ino]
        msg = f"cannot reconnect a unix socket to the outside peer {_show(r.peer_name)}"
        try:
            self._at(None, r.peer_name, msg, lambda: s.connect(r.peer_name), by=r)
        except OSError as e:
            raise RestoreError(f"{msg}: {e.strerror}") from None

    # ----------------------------------------------------------------- 4. queues

    def _refill(self, r: UnixSocket, host_pid: Callable[[int], int]) -> None:
        if not r.queue:
            return
        assert self._model is not None
        model = self._model
        where = f"unix socket {r.ino}"
        by_ino = self._by_ino
        sender = self._peer_of.get(r.ino)
        if sender is None and r.peer_ino in by_ino:
            sender = self._socks[r.peer_ino]
        named: dict[bytes, socket.socket] = {}
        for x in self._recs:  # a live name over a deleted one of the same path
            if (
                x.name
                and x.type == socket.SOCK_DGRAM
                and (x.name not in named or not self._deleted(x))
            ):
                named[x.name] = self._socks[x.ino]
        aux = {m.index: m for m in model.unix_scm.get(r.id, [])}
        for i, msg in enumerate(r.queue):
            src = r.senders[i] if i < len(r.senders) else b""
            anc = self._ancillary(r, aux.get(i), host_pid)
            try:
                if sender is not None and r.type == socket.SOCK_STREAM:
                    _send_all(sender, msg, anc)
                elif sender is not None and r.ino in self._peer_of:
                    _send_one(sender, msg, anc, None)
                elif sender is not None and r.peer_ino in by_ino:
                    self._send_to(r, sender, msg, anc)
                elif src and src in named:
                    self._send_to(r, named[src], msg, anc)
                else:
                    with socket.socket(socket.AF_UNIX, r.type) as tmp:
                        self._send_to(r, tmp, msg, anc)
            except OSError as e:
                raise RestoreError(
                    f"{where}: cannot refill queued message {i + 1} of {len(r.queue)}: {e.strerror}"
                ) from None

    def _ancillary(
        self, r: UnixSocket, m: UnixScm | None, host_pid: Callable[[int], int]
    ) -> list[tuple[int, int, bytes]]:
        if m is None:
            return []
        assert self._model is not None
        anc = []
        if m.flags & ScmFlags.CREDS:
            if not privilege.may_send_creds(self._model, m.pid, m.uid, m.gid):
                raise RestoreError(
                    f"unix socket {r.ino}: queued message {m.index + 1} carries credentials "
                    f"(pid {m.pid}, uid {m.uid}, gid {m.gid}) that no process of the image "
                    f"could have sent; refusing to forge them"
                )
            pid = host_pid(m.pid)
            if not pid or not pid_exists(pid):
                raise RestoreError(
                    f"unix socket {r.ino}: queued message {m.index + 1} carries the "
                    f"credentials of process {m.pid}, which no longer exists"
                )
            anc.append(
                (socket.SOL_SOCKET, socket.SCM_CREDENTIALS, struct.pack("iII", pid, m.uid, m.gid))
            )
        if m.fds:
            missing = [f for f in m.fds if f not in self._local]
            if missing:
                raise RestoreError(
                    f"unix socket {r.ino}: the files in flight {missing} were not opened"
                )
            fds = array.array("i", [self._local[f] for f in m.fds])
            anc.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes()))
        return anc

    def _send_to(
        self, r: UnixSocket, s: socket.socket, msg: bytes, anc: list[tuple[int, int, bytes]]
    ) -> None:
        """Send `msg` to `r`'s name (its queue), as a process holding `r`."""
        what = f"unix socket {r.ino}: cannot refill a queued message"
        self._at(r, r.name, what, lambda: _send_one(s, msg, anc, r.name))

    def after_install(self, model: ImageModel, task: Task, local: dict[int, int]) -> None:
        pass

    def close(self) -> None:
        for s in [*self._socks.values(), *self._standins.values()]:
            s.close()
        for fd in self._fds.values():
            os.close(fd)
        self._socks.clear()
        self._standins.clear()
        self._fds.clear()


def _send_all(s: socket.socket, data: bytes, anc: list[tuple[int, int, bytes]]) -> None:
    view = memoryview(data)
    while view:
        n = s.sendmsg([view], anc, socket.MSG_DONTWAIT)
        anc = []  # the files and credentials go with the first part
        view = view[n:]


def _send_one(
    s: socket.socket, msg: bytes, anc: list[tuple[int, int, bytes]], to: bytes | None
) -> None:
    if to is None:
        n = s.sendmsg([msg], anc, socket.MSG_DONTWAIT)
    else:
        n = s.sendmsg([msg], anc, socket.MSG_DONTWAIT, to)
    if n != len(msg):
        raise OSError(0, f"short send ({n} of {len(msg)} bytes)")
