"""Sockets: the handler of every socket fd; unix sockets here, TCP, UDP and raw ones in
inet.py, packet and netlink sockets in packet.py and netlink.py, options in sockopts.py.

A socket's state is read from a duplicate of it in the dumper (pidfd_getfd: the same
socket), so nothing is injected: sock_diag for a unix socket's peer, name, accept queue
and shutdown state, getsockopt for options, recvmsg(MSG_PEEK) with SO_PEEK_OFF to walk
every queued message without consuming it (the peek offset is reset afterwards).

Some facts need the whole tree (is a peer inside it?): `unsupported_sockets` answers them
before freezing, and `finalize` again once every socket is dumped.  Unix facts this
relies on (measured on this kernel):
  - a listener's UNIX_DIAG_ICONS lists the CLIENTS of the connections waiting in its
    accept queue (the embryo socket has no inode; a waiting client shows peer 0);
  - a client's sock_diag wqueue counts bytes it sent that nobody read yet: non-zero for
    a waiting client means data sits in the embryo, which cannot be read without accept;
  - a socket whose peer was closed shows peer 0, its state unchanged;
  - UNIX_DIAG_NAME of a path name ends with its NUL; UNIX_DIAG_VFS gives (inode, kernel
    dev_t) of the socket file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Iterator
from typing import Any

from cptimage.records import SockState, UnixSocket

from ..errors import NoSuchProcess, UnsupportedError
from ..procfs import (
    FdInfo,
    FdKind,
    FdTarget,
    Proc,
    UnixSocketFdInfo,
    decode_kdev,
    ns_path,
)
from ..sys.net import SIOCINQ, SO_PASSCRED, SO_PEEK_OFF, UnixDiag, ioctl_int, unix_diag
from ..sys.task import pidfd_getfd, pidfd_open
from . import inet, netlink, packet, sockopts
from .fdbase import FdContext, file_flags
from .options import DumpOptions
from .pstree import TaskInfo

SOCK_TYPES = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "dgram", 5: "seqpacket"}
TCP_ESTABLISHED = 1
TCP_LISTEN = 10
PEEK_BUF = 8 << 20  # larger than any unix datagram a default-sized socket can queue


@contextlib.contextmanager
def dup_socket(pid: int, fd: int) -> Iterator[socket.socket]:
    """The socket behind fd `fd` of process `pid`, as a socket object of this process."""
    pfd = pidfd_open(pid)
    try:
        local = pidfd_getfd(pfd, fd, pid)
    finally:
        os.close(pfd)
    s = socket.socket(fileno=local)
    try:
        yield s
    finally:
        s.close()


def _same_netns(pid: int) -> bool:
    return os.stat(ns_path(pid, "net")).st_ino == os.stat(ns_path("thread-self", "net")).st_ino


def sun_name(raw: bytes | None) -> bytes:
    """A bound name as bind() takes it: path names without their trailing NUL."""
    if not raw:
        return b""
    return raw if raw[0] == 0 else raw.split(b"\0", 1)[0]


def show_name(name: bytes) -> str:
    if not name:
        return "unnamed"
    return "@" + name[1:].decode(errors="replace") if name[0] == 0 else name.decode()


# --------------------------------------------------------------------------- per fd


def _unix_unsupported(
    where: str, pid: int, fd: int, s: socket.socket, ino: int, root: str
) -> str | None:
    d = unix_diag(ino).get(ino)
    if d is None:
        return f"{where}: unix socket {ino} is not in this network namespace's table"
    kind = SOCK_TYPES.get(d.type)
    if kind is None:
        return f"{where}: unix socket of type {d.type} is not supported"
    name = sun_name(d.name)
    if name and name[0] != 0:
        if not name.startswith(b"/"):
            return f"{where}: unix socket bound to the relative path {name.decode()!r}"
        if not _same_file(root.encode() + name, d.vfs):
            return (
                f"{where}: the socket file {name.decode()} of this socket was removed or replaced"
            )
    fi = Proc().fdinfo(pid, fd)
    if isinstance(fi.details, UnixSocketFdInfo) and fi.details.scm_fds:
        return f"{where}: unix socket carries file descriptors in flight (SCM_RIGHTS)"
    if s.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF) != -1:
        return f"{where}: unix socket uses SO_PEEK_OFF; not supported"
    if d.state == TCP_LISTEN:
        for client in d.icons:
            c = unix_diag(client).get(client)
            if c is not None and c.wqueue:
                return (
                    f"{where}: a connection waiting in the accept queue of unix socket "
                    f"{show_name(name)} already carries data ({c.wqueue} bytes in flight), "
                    f"which cannot be read without accepting it"
                )
        return None
    if s.getsockopt(socket.SOL_SOCKET, SO_PASSCRED) and _has_queued(s):
        return (
            f"{where}: unix socket with SO_PASSCRED has queued messages whose sender "
            f"credentials cannot be restored yet"
        )
    return None


def _same_file(path: bytes, vfs: tuple[int, int] | None) -> bool:
    """Does `path` still name the socket file sock_diag reports (inode, kernel dev_t)?"""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return vfs is not None and (st.st_ino, st.st_dev) == (vfs[0], os.makedev(*decode_kdev(vfs[1])))


def _has_queued(s: socket.socket) -> bool:
    try:
        s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        return True
    except (BlockingIOError, InterruptedError):
        return False
    except OSError as e:
        if e.errno in (errno.ENOTCONN, errno.EINVAL):
            return False
        raise


class Sockets:
    kinds = frozenset({FdKind.SOCKET})

    def unsupported(self, pid: int, fd: int, ft: FdTarget, opts: DumpOptions) -> str | None:
        where = f"process {pid} fd {fd}"
        if not _same_netns(pid):
            return f"{where}: socket in another network namespace; not supported yet"
        with dup_socket(pid, fd) as s:
            if s.family == socket.AF_UNIX:
                assert ft.inode is not None
                return _unix_unsupported(where, pid, fd, s, ft.inode, opts.root)
            if s.family in (socket.AF_INET, socket.AF_INET6):
                return inet.unsupported(where, s, opts) or sockopts.unsupported(where, s)
            if s.family == socket.AF_PACKET:
                return packet.unsupported(where, s) or sockopts.unsupported(where, s)
            if s.family == socket.AF_NETLINK:
                return netlink.unsupported(where, s) or sockopts.unsupported(where, s)
            return f"{where}: socket of address family {s.family} is not supported"

    def key(self, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> tuple[Any, ...]:
        return ("socket", ft.inode)

    def dump(self, ctx: FdContext, ident: int, pid: int, fd: int, ft: FdTarget, fi: FdInfo) -> Any:
        assert ft.inode is not None
        if "sockets" not in ctx.cache:
            ctx.cache["sockets"] = True
            ctx.finish.append(lambda: self.finalize(ctx))
            ctx.release.append(lambda killed: inet.release(ctx, killed))
        with dup_socket(pid, fd) as s:
            if s.family == socket.AF_UNIX:
                rec = _dump_unix(ident, s, ft.inode, fi, ctx.opts.root)
                ctx.cache.setdefault("unix", {})[rec.ino] = (rec, pid, fd)
                return rec
            if s.family == socket.AF_PACKET:
                return packet.dump(ctx, ident, s, ft.inode, fi)
            if s.family == socket.AF_NETLINK:
                return netlink.dump(ctx, ident, s, ft.inode, fi)
            return inet.dump(ctx, ident, pid, fd, s, fi)

    def finalize(self, ctx: FdContext) -> None:
        """Once every fd is dumped: tree-wide unix checks, then the TCP repair pass."""
        dumped = ctx.cache.get("unix", {})
        where = {ino: (pid, fd) for ino, (_, pid, fd) in dumped.items()}
        problems = unix_tree_problems(where, ctx.opts)
        if problems:
            raise UnsupportedError("; ".join(problems[:3]))
        table = unix_diag()
        for rec, _, _ in dumped.values():
            peer = table.get(rec.peer_ino)
            if rec.peer_ino and rec.peer_ino not in dumped and peer is not None:
                rec.peer_name = sun_name(peer.name)
        inet.finalize(ctx)


# --------------------------------------------------------------------------- dump


def _dump_unix(ident: int, s: socket.socket, ino: int, fi: FdInfo, root: str) -> UnixSocket:
    d = unix_diag(ino)[ino]
    name = sun_name(d.name)
    fmode = fuid = fgid = 0
    if name and name[0] != 0:
        st = os.stat(root.encode() + name)
        fmode, fuid, fgid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    rec = UnixSocket(
        id=ident,
        flags=file_flags(fi),
        type=d.type,
        state=SockState(d.state),
        shutdown=d.shutdown,
        backlog=d.wqueue if d.state == TCP_LISTEN else 0,
        sndbuf=s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        rcvbuf=s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        opts=1 if s.getsockopt(socket.SOL_SOCKET, SO_PASSCRED) else 0,
        ino=ino,
        peer_ino=d.peer,
        name=name,
        fmode=fmode,
        fuid=fuid,
        fgid=fgid,
        icons=list(d.icons),
    )
    if d.state != TCP_LISTEN:
        rec.queue, rec.senders = peek_queue(s, d.type)
    return rec


def peek_queue(s: socket.socket, type_: int) -> tuple[list[bytes], list[bytes]]:
    """Every message queued for reading (one blob for a stream), and each one's source
    name (dgram/seqpacket), without consuming anything: MSG_PEEK from a peek offset that
    each peek moves on; the offset is switched off again afterwards."""
    buf = bytearray(PEEK_BUF)
    msgs: list[bytes] = []
    senders: list[bytes] = []
    stream = type_ == socket.SOCK_STREAM
    want = ioctl_int(s, SIOCINQ) if stream else -1
    got = 0
    s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
    try:
        while not stream or got < want:
            try:
                n, _, flags, addr = s.recvmsg_into([buf], 0, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            if flags & socket.MSG_TRUNC:
                raise UnsupportedError(f"a queued message is larger than {PEEK_BUF} bytes")
            if stream:
                if n == 0:
                    break  # end of stream
                msgs.append(bytes(buf[:n]))
                got += n
                continue
            msgs.append(bytes(buf[:n]))
            senders.append(os.fsencode(addr) if addr else b"")
    finally:
        s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, -1)
    if stream:
        return ([b"".join(msgs)] if msgs else []), []
    return msgs, senders


# --------------------------------------------------------------------------- the whole tree


def _where(where: dict[int, tuple[int, int]], ino: int) -> str:
    pid, fd = where[ino]
    return f"process {pid} fd {fd}"


def unix_tree_problems(where: dict[int, tuple[int, int]], opts: DumpOptions) -> list[str]:
    """What the tree's unix sockets (inode -> (pid, fd)) need that the tree does not hold."""
    table = unix_diag()
    waiting = {c: lino for lino, d in table.items() if d.state == TCP_LISTEN for c in d.icons}
    out = []
    for ino in sorted(where):
        d = table.get(ino)
        if d is None:
            continue
        w = _where(where, ino)
        kind = SOCK_TYPES.get(d.type, str(d.type))
        if d.state == TCP_LISTEN:
            for client in d.icons:
                if client not in where:
                    out.append(
                        f"{w}: a connection from outside the tree (socket {client}) waits in "
                        f"the accept queue of unix socket {show_name(sun_name(d.name))}"
                    )
            continue
        if d.peer == 0 and ino in waiting and waiting[ino] not in where:
            out.append(
                f"{w}: unix {kind} socket waits to be accepted by a listener outside the tree "
                f"({show_name(sun_name(table[waiting[ino]].name))}); a connection cannot be "
                f"handed back to it"
            )
            continue
        if d.peer == 0 or d.peer in where or d.peer not in table:
            continue  # unconnected, inside the tree, or its peer is closed
        peer = table[d.peer]
        pname = sun_name(peer.name)
        what = f"{w}: unix {kind} socket connected to a peer outside the tree ({show_name(pname)})"
        if not opts.ext_unix_sk:
            out.append(f"{what}; use --ext-unix-sk to reconnect it at restore")
        elif d.type != socket.SOCK_DGRAM:
            out.append(
                f"{what}: even with --ext-unix-sk only datagram sockets are reconnected (a new "
                f"{kind} connection is not the one the peer knows)"
            )
        elif not pname:
            out.append(f"{what}: the peer has no name, so it cannot be reconnected at restore")
    out += _named_senders(where, table)
    return out


def _named_senders(where: dict[int, tuple[int, int]], table: dict[int, UnixDiag]) -> list[str]:
    """Queued datagrams sent from a name no dgram socket of the tree will hold at restore,
    or queued on a socket nothing could send to again (unbound and unconnected)."""
    names = {sun_name(table[i].name) for i in where if i in table and table[i].type == 2}
    names.discard(b"")
    out = []
    for ino in sorted(where):
        d = table.get(ino)
        if d is None or d.type == socket.SOCK_STREAM or d.state == TCP_LISTEN:
            continue
        if d.peer in where or (d.peer == 0 and d.state == TCP_ESTABLISHED):
            continue  # refilled by its peer (or a stand-in for a closed peer)
        pid, fd = where[ino]
        try:
            with dup_socket(pid, fd) as s:
                _, senders = peek_queue(s, d.type)
        except NoSuchProcess:
            continue
        if senders and not sun_name(d.name):
            out.append(f"{_where(where, ino)}: queued datagrams on an unbound, unconnected socket")
        for src in set(senders) - names - {b""}:
            out.append(
                f"{_where(where, ino)}: a queued datagram comes from {show_name(src)}, a "
                f"socket outside the tree (its source name cannot be recreated)"
            )
    return out


def unsupported_sockets(tree: dict[int, TaskInfo], proc: Proc, opts: DumpOptions) -> list[str]:
    """The tree-wide socket checks, before freezing."""
    where: dict[int, tuple[int, int]] = {}
    for info in tree.values():
        if info.zombie:
            continue
        try:
            targets = proc.fd_targets(info.pid)
        except NoSuchProcess:
            continue
        if not _same_netns(info.pid):
            continue  # refused per fd
        unix = proc.unix_sockets(info.pid)
        for fd, ft in targets.items():
            if ft.kind == FdKind.SOCKET and ft.inode in unix:
                where.setdefault(ft.inode, (info.pid, fd))
    return unix_tree_problems(where, opts) if where else []


HANDLER = Sockets()
