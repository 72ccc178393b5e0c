"""Unix sockets: every one of the image is rebuilt at once, at the first open().

Order (each step needs the previous ones):
  1. create: connected pairs with socketpair(); a socket whose peer was closed with a
     socketpair() whose other end stands in for the dead peer; the rest with socket();
  2. bind each name (after removing a stale socket file nobody is bound to), restore the
     file's mode and owner; an accepted socket's name is inherited from its listener and
     is not bound again (it stays unnamed);
  3. listen with the dumped backlog; connect one-sided dgram sockets to their peer's name
     (an outside peer: --ext-unix-sk); connect the clients waiting in an accept queue to
     their listener, in queue order, which recreates the queue;
  4. buffer sizes, then refill every receive queue in order, sent by the socket's peer
     (or, for an unconnected named socket, from the message's source name or an unnamed
     stand-in), so each message lands in the right queue with its boundaries;
  5. close the stand-ins, apply shutdowns, then SO_PASSCRED (an unnamed socket with it
     would autobind on send) and the file flags.

Every lookup of a socket file (the removal of a stale one, bind, connect, a send to a
name) is made with the credentials of a process holding the socket (creds.py), inside a
VE's root for a VE: a socket file is created only where that process could create it,
and owned by it.  Its dumped owner and mode are then set through an O_PATH|O_NOFOLLOW fd
of the very socket file (never by a path that could be a symlink), the owner only when
that process could give it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat
from collections.abc import Callable
from typing import Any

from cptimage.records import SockState, UnixSocket

from ..errors import RestoreError
from ..procfs import decode_kdev, fd_path
from ..sys.net import SO_PASSCRED, SO_RCVBUFFORCE, SO_SNDBUFFORCE, set_int, unix_diag
from .creds import as_holders, in_root_as_holders
from .fdbase import SETFL_MASK
from .model import ImageModel
from .pstree import Task

_SHUT = {1: socket.SHUT_RD, 2: socket.SHUT_WR, 3: socket.SHUT_RDWR}


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
        self._fds: dict[int, int] = {}  # description id -> fd
        self._standins: list[socket.socket] = []
        self._root = ""  # a VE's root as the restorer reaches it (/proc/<init>/root)
        self._model: ImageModel | None = None
        self._ids: dict[int, int] = {}  # ino -> description id (whose holders act)

    def open(self, model: ImageModel, desc: Any) -> int:
        if not self._built:
            self._built = True
            self._root = model.root_prefix
            self._model = model
            self._ids = {r.ino: r.id for r in model.files.values() if isinstance(r, UnixSocket)}
            self._build([r for r in model.files.values() if isinstance(r, UnixSocket)])
        return self._fds.pop(desc.id)

    def _build(self, recs: list[UnixSocket]) -> None:
        by_ino = {r.ino: r for r in recs}
        waiting = {c: r for r in recs if r.state == SockState.LISTEN for c in r.icons}
        peer_of: dict[int, socket.socket] = {}  # ino -> the socket that refills its queue
        for r in recs:
            if r.ino in self._socks:
                continue
            p = by_ino.get(r.peer_ino)
            if p is not None and p.peer_ino == r.ino:
                a, b = socket.socketpair(socket.AF_UNIX, r.type)
                self._socks[r.ino], self._socks[p.ino] = a, b
                peer_of[r.ino], peer_of[p.ino] = b, a
            elif r.state == SockState.ESTABLISHED and r.peer_ino == 0 and r.ino not in waiting:
                a, b = socket.socketpair(socket.AF_UNIX, r.type)  # b stands in for a closed peer
                self._socks[r.ino] = a
                peer_of[r.ino] = b
                self._standins.append(b)
            else:
                self._socks[r.ino] = socket.socket(socket.AF_UNIX, r.type)
        listeners = {r.name for r in recs if r.state == SockState.LISTEN}
        for r in recs:
            if r.name and (r.state == SockState.LISTEN or r.name not in listeners):
                self._bind(r)
        for r in recs:
            s = self._socks[r.ino]
            if r.state == SockState.LISTEN:
                s.listen(r.backlog)
            elif r.ino in peer_of or r.ino in waiting:
                continue
            elif r.peer_ino in by_ino:
                p = by_ino[r.peer_ino]
                self._connect(r, s, p.name, f"its peer {_show(p.name)}")
            elif r.peer_name:
                self._connect(r, s, r.peer_name, f"the outside peer {_show(r.peer_name)}")
        for r in recs:
            for c in r.icons if r.state == SockState.LISTEN else ():
                # a client still in the accept queue: the listener's holders connect it
                self._connect(r, self._socks[c], r.name, f"the listener {_show(r.name)}")
        for r in recs:
            s = self._socks[r.ino]
            set_int(s, socket.SOL_SOCKET, SO_SNDBUFFORCE, r.sndbuf // 2)
            set_int(s, socket.SOL_SOCKET, SO_RCVBUFFORCE, r.rcvbuf // 2)
        for r in recs:
            self._refill(r, by_ino, peer_of)
        for b in self._standins:
            b.close()
        self._standins.clear()
        for r in recs:
            s = self._socks[r.ino]
            if r.shutdown in _SHUT and r.state != SockState.LISTEN:
                with contextlib.suppress(OSError):  # ENOTCONN: a dgram socket, no peer
                    s.shutdown(_SHUT[r.shutdown])
            if r.opts & 1:
                s.setsockopt(socket.SOL_SOCKET, SO_PASSCRED, 1)
            fd = s.detach()
            fcntl.fcntl(fd, fcntl.F_SETFL, r.flags & SETFL_MASK)
            self._fds[r.id] = fd
        self._socks.clear()

    def _holders(self, r: UnixSocket) -> list[int]:
        assert self._model is not None
        return self._model.holders_of_file(self._ids.get(r.ino, r.id))

    def _at(self, r: UnixSocket, name: bytes, what: str, fn: Callable[[], object]) -> None:
        """Run `fn`, which looks up the path `name`, as a process holding `r` and where
        the tree's paths resolve: in a child chrooted into a VE's root (a socket keeps the
        name it was bound with, so the name must be the VE's own); here for an abstract
        name or the host's root."""
        model = self._model
        assert model is not None
        if name[:1] == b"\0":
            fn()  # an abstract name: no file, no permission to check
        elif self._root:
            in_root_as_holders(model, self._holders(r), what, fn, self._root)
        else:
            as_holders(model, self._holders(r), what, fn)

    def _bind(self, r: UnixSocket) -> None:
        s = self._socks[r.ino]
        model = self._model
        assert model is not None
        what = f"cannot bind a unix socket to {_show(r.name)}"
        try:
            if r.name[0] != 0:
                as_holders(model, self._holders(r), what, lambda: free_path(r.name, model))
            self._at(r, r.name, what, lambda: s.bind(r.name))
            if r.name[0] != 0:
                as_holders(
                    model, self._holders(r), what,
                    lambda: set_owner(r.name, r.fuid, r.fgid, r.fmode, model),
                )  # fmt: skip
        except OSError as e:
            raise RestoreError(f"{what}: {e.strerror}") from None

    def _connect(self, r: UnixSocket, s: socket.socket, name: bytes, what: str) -> None:
        msg = f"cannot reconnect a unix socket to {what}"
        try:
            self._at(r, name, msg, lambda: s.connect(name))
        except OSError as e:
            raise RestoreError(f"{msg}: {e.strerror}") from None

    def _refill(
        self, r: UnixSocket, by_ino: dict[int, UnixSocket], peer_of: dict[int, socket.socket]
    ) -> None:
        if not r.queue:
            return
        where = f"unix socket {r.ino}"
        sender = peer_of.get(r.ino)
        if sender is None and r.peer_ino in by_ino:
            sender = self._socks[r.peer_ino]
        named = {x.name: self._socks[x.ino] for x in by_ino.values() if x.name and x.type == 2}
        for i, msg in enumerate(r.queue):
            src = r.senders[i] if i < len(r.senders) else b""
            try:
                if sender is not None and r.type == socket.SOCK_STREAM:
                    _send_all(sender, msg)
                elif sender is not None and r.ino in peer_of:
                    _send_one(sender, msg, None)
                elif sender is not None and r.peer_ino in by_ino:
                    self._send_to(r, sender, msg)
                elif src and src in named:
                    self._send_to(r, named[src], msg)
                else:
                    with socket.socket(socket.AF_UNIX, r.type) as tmp:
                        self._send_to(r, tmp, msg)
            except OSError as e:
                raise RestoreError(
                    f"{where}: cannot refill queued message {i + 1} of {len(r.queue)}: {e.strerror}"
                ) from None

    def _send_to(self, r: UnixSocket, s: socket.socket, msg: bytes) -> None:
        """Send `msg` to `r`'s name (its queue), as a process holding `r`."""
        what = f"unix socket {r.ino}: cannot refill a queued message"
        self._at(r, r.name, what, lambda: _send_one(s, msg, r.name))

    def after_install(self, model: ImageModel, task: Task, local: dict[int, int]) -> None:
        pass

    def close(self) -> None:
        for s in [*self._socks.values(), *self._standins]:
            s.close()
        for fd in self._fds.values():
            os.close(fd)
        self._socks.clear()
        self._standins.clear()
        self._fds.clear()


def _send_all(s: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = s.send(view, socket.MSG_DONTWAIT)
        view = view[n:]


def _send_one(s: socket.socket, msg: bytes, to: bytes | None) -> None:
    n = s.send(msg, socket.MSG_DONTWAIT) if to is None else s.sendto(msg, socket.MSG_DONTWAIT, to)
    if n != len(msg):
        raise OSError(0, f"short send ({n} of {len(msg)} bytes)")
