"""Sockets: the handler of every socket fd; unix sockets here, TCP, UDP and raw ones in
inet.py, packet and netlink sockets in packet.py and netlink.py, options in sockopts.py.

A socket's state is read from a duplicate of it in the dumper (pidfd_getfd: the same
socket), so nothing is injected: sock_diag for a unix socket's peer, name, accept queue
and shutdown state, getsockopt for options, recvmsg(MSG_PEEK) with SO_PEEK_OFF to walk
every queued message without consuming it (the peek offset is put back afterwards).

What travels with a queued message is read by the same peek: SO_PASSCRED is switched on
for the walk, so every message shows its credentials (pid 0 and the overflow ids: none
were attached), and a peek of a message carrying files (SCM_RIGHTS) installs a new fd of
each in the dumper, which is dumped as any description (FdContext.dump_file) and kept
open until the dump ends.  A stream peek joins messages up to the first that carries
files, and where that one begins cannot be seen: its files go with the last byte of the
run (`_split_at_files`).

A path name that no longer leads to its socket (the file was removed, or another file
took its place) is recorded as deleted: restore binds it and removes it again.  A
relative name is resolved in the holder's cwd; if that is not where it lives, it is
taken as deleted there.

Some facts need the whole tree (is a peer inside it?): `unsupported_sockets` answers them
before freezing, and `finalize` again once every socket is dumped.  Unix facts this
relies on (measured on this kernel):
  - a listener's UNIX_DIAG_ICONS lists the CLIENTS of the connections waiting in its
    accept queue (the embryo socket has no inode; a waiting client shows peer 0);
  - a client's sock_diag wqueue counts bytes it sent that nobody read yet: non-zero for
    a waiting client means data sits in the embryo, which cannot be read without accept;
  - a socket whose peer was closed shows peer 0, its state unchanged;
  - UNIX_DIAG_NAME of a path name ends with its NUL; UNIX_DIAG_VFS gives (inode, kernel
    dev_t) of the socket file;
  - a recvmsg on a socket with a pending error (sk_err: ECONNRESET, a seqpacket peer that
    closed with data unread) returns the error and clears it: it is recorded and given
    back at restore (a stand-in peer closed with unread data);
  - recvmsg on a seqpacket socket that is not connected fails (ENOTCONN): nothing is
    queued on one;
  - an empty datagram that was peeked before is skipped by a peek-offset walk (the
    kernel's skb->peeked): it is not seen, and not carried.
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import errno
import os
import select
import socket
import stat
import struct
from collections.abc import Iterator
from typing import Any

from cptimage.records import ScmFlags, SockState, UnixBind, UnixBindFlags, UnixScm, UnixSocket

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
SCM_MAX_FD = 253  # files one message can carry
_ANC = socket.CMSG_SPACE(SCM_MAX_FD * 4) + socket.CMSG_SPACE(12)
OVERFLOW_ID = 65534  # what a receiver sees as uid/gid when no credentials were attached
SEQPACKET = 5
MAX_MESSAGES = 1 << 20  # a bound on the walk of one queue (a unix queue holds far fewer)


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
    where: str, pid: int, fd: int, s: socket.socket, ino: int, opts: DumpOptions
) -> str | None:
    d = unix_diag(ino).get(ino)
    if d is None:
        return f"{where}: unix socket {ino} is not in this network namespace's table"
    kind = SOCK_TYPES.get(d.type)
    if kind is None:
        return f"{where}: unix socket of type {d.type} is not supported"
    fi = Proc().fdinfo(pid, fd)
    if isinstance(fi.details, UnixSocketFdInfo) and fi.details.scm_fds and opts.root:
        return (
            f"{where}: unix socket carries file descriptors in flight (SCM_RIGHTS); not "
            f"supported in a VE yet"
        )
    if _pending_error(s) and opts.leave_running:
        return (
            f"{where}: unix {kind} socket has a pending error (its peer closed with data "
            f"unread), which reading its queue would clear; checkpoint it without "
            f"--leave-running"
        )
    if d.state == TCP_LISTEN:
        for client in d.icons:
            c = unix_diag(client).get(client)
            if c is not None and c.wqueue:
                return (
                    f"{where}: a connection waiting in the accept queue of unix socket "
                    f"{show_name(sun_name(d.name))} already carries data ({c.wqueue} bytes "
                    f"in flight), which cannot be read without accepting it"
                )
    return sockopts.unsupported(where, s)


def _pending_error(s: socket.socket) -> bool:
    """sk_err is set (read by poll: SO_ERROR or a recvmsg would clear it)."""
    p = select.poll()
    p.register(s.fileno(), select.POLLERR)
    return any(ev & select.POLLERR for _, ev in p.poll(0))


def _same_file(path: bytes, vfs: tuple[int, int] | None) -> bool:
    """Does `path` still name the socket file sock_diag reports (inode, kernel dev_t)?"""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return vfs is not None and (st.st_ino, st.st_dev) == (vfs[0], os.makedev(*decode_kdev(vfs[1])))


class Sockets:
    kinds = frozenset({FdKind.SOCKET})

    def unsupported(self, pid: int, fd: int, ft: FdTarget, opts: DumpOptions) -> str | None:
        where = f"process {pid} fd {fd}"
        if not _same_netns(pid):
            return f"{where}: socket in another network namespace; not supported yet"
        with dup_socket(pid, fd) as s:
            if s.family == socket.AF_UNIX:
                assert ft.inode is not None
                return _unix_unsupported(where, pid, fd, s, ft.inode, opts)
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
            ctx.release.append(lambda killed: _close_in_flight(ctx))
        with dup_socket(pid, fd) as s:
            if s.family == socket.AF_UNIX:
                rec = _dump_unix(ctx, ident, pid, s, ft.inode, fi)
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


def _close_in_flight(ctx: FdContext) -> None:
    for fd in ctx.cache.pop("in_flight_fds", []):
        with contextlib.suppress(OSError):
            os.close(fd)


# --------------------------------------------------------------------------- dump


def _dump_unix(
    ctx: FdContext, ident: int, pid: int, s: socket.socket, ino: int, fi: FdInfo
) -> UnixSocket:
    root = ctx.opts.root
    d = unix_diag(ino)[ino]
    name = sun_name(d.name)
    fmode = fuid = fgid = 0
    if name and name[0] != 0:
        bind = _binding(ctx, ident, pid, name, d.vfs, root)
        if not bind.flags & UnixBindFlags.DELETED:
            path = name if name.startswith(b"/") else os.fsencode(bind.dir) + b"/" + name
            st = os.stat(root.encode() + path)
            fmode, fuid, fgid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
        if bind.flags or bind.dir:
            ctx.extra.append(bind)
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
    if _pending_error(s):
        # the one error a unix socket keeps: its seqpacket/stream peer closed with data
        # unread; the first recvmsg would return it (and clear it): read it now
        with contextlib.suppress(OSError):
            s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        rec.opts |= UNIX_ECONNRESET
    queued = not (d.state == TCP_LISTEN or (d.type == SEQPACKET and d.state != TCP_ESTABLISHED))
    if queued:
        msgs = peek_messages(s, d.type)
        rec.queue = [m.data for m in msgs]
        rec.senders = [m.sender for m in msgs] if d.type != socket.SOCK_STREAM else []
        for i, m in enumerate(msgs):
            if m.creds is None and not m.fds:
                continue
            scm = UnixScm(file_id=ident, index=i)
            if m.creds is not None:
                scm.flags |= ScmFlags.CREDS
                scm.pid, scm.uid, scm.gid = m.creds
            if m.fds:
                assert ctx.dump_file is not None
                held = ctx.cache.setdefault("in_flight_fds", [])
                held += m.fds  # closed when the dump ends
                scm.fds = [ctx.dump_file(f) for f in m.fds]
            ctx.extra.append(scm)
    sockopts.dump(ctx, ident, s)
    return rec


UNIX_ECONNRESET = 1 << 8  # UnixSocket.opts: a pending ECONNRESET (sk_err)


def _binding(
    ctx: FdContext, ident: int, pid: int, name: bytes, vfs: tuple[int, int] | None, root: str
) -> UnixBind:
    """Where a path name lives (a relative one: in the holder's cwd) and whether it still
    leads to this socket."""
    b = UnixBind(file_id=ident)
    path = name
    if not name.startswith(b"/"):
        b.dir = Proc().cwd(pid) if pid != os.getpid() else ""
        path = os.fsencode(b.dir) + b"/" + name
    if not _same_file(root.encode() + path, vfs):
        b.flags |= UnixBindFlags.DELETED
    return b


@dataclasses.dataclass
class Queued:
    """One queued message (a stream: a run of bytes sent alike), as a peek showed it."""

    data: bytes
    sender: bytes = b""  # dgram/seqpacket: the source name
    creds: tuple[int, int, int] | None = None  # pid uid gid, if the message carries them
    fds: list[int] = dataclasses.field(default_factory=list)  # in flight: fds in the dumper


def peek_queue(s: socket.socket, type_: int) -> tuple[list[bytes], list[bytes]]:
    """Every message queued for reading (one blob for a stream), and each one's source
    name (dgram/seqpacket), without consuming anything (files in flight are closed)."""
    msgs = peek_messages(s, type_)
    for m in msgs:
        for f in m.fds:
            os.close(f)
    if type_ == socket.SOCK_STREAM:
        data = b"".join(m.data for m in msgs)
        return ([data] if data else []), []
    return [m.data for m in msgs], [m.sender for m in msgs]


def peek_messages(s: socket.socket, type_: int) -> list[Queued]:
    """Every message queued for reading, with what travels with it, without consuming
    anything: MSG_PEEK from a peek offset that each peek moves on, SO_PASSCRED on for
    the walk (both are put back).

    A seqpacket socket shut down for reading (its peer closed) reads 0 bytes at the end
    of its queue, as it does for an empty message: the walk stops at the first empty
    read once every queued byte (SIOCINQ counts them all) was seen; the empty messages
    it may leave out were the queue's last, which a reader cannot tell from the end."""
    stream = type_ == socket.SOCK_STREAM
    seqpacket = type_ == SEQPACKET
    want = ioctl_int(s, SIOCINQ) if stream or seqpacket else -1
    old_off = s.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF)
    old_cred = s.getsockopt(socket.SOL_SOCKET, SO_PASSCRED)
    s.setsockopt(socket.SOL_SOCKET, SO_PASSCRED, 1)
    s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
    out: list[Queued] = []
    got = 0
    try:
        while not stream or got < want:
            m = _peek_one(s, PEEK_BUF)
            if m is None:
                break
            if stream:
                if not m.data:
                    break  # end of stream
                if m.fds and len(m.data) > 1:
                    out += _split_at_files(m)
                else:
                    out.append(m)
                got += len(m.data)
                continue
            if seqpacket and not m.data and not m.fds and got >= want:
                break  # the end of a queue shut down for reading
            if len(out) >= MAX_MESSAGES:
                raise UnsupportedError(f"more than {MAX_MESSAGES} messages are queued")
            got += len(m.data)
            out.append(m)
    except BaseException:
        for m in out:
            for f in m.fds:
                os.close(f)
        raise
    finally:
        s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, old_off)
        s.setsockopt(socket.SOL_SOCKET, SO_PASSCRED, old_cred)
    return _join_stream(out) if stream else out


def _peek_one(s: socket.socket, size: int) -> Queued | None:
    flags = socket.MSG_PEEK | socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC
    try:
        data, anc, mflags, addr = s.recvmsg(size, _ANC, flags)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError as e:
        if e.errno in (errno.ENOTCONN, errno.EINVAL):
            return None
        raise
    m = Queued(data, os.fsencode(addr) if addr else b"")
    for level, typ, body in anc:
        if level != socket.SOL_SOCKET:
            continue
        if typ == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(body[: len(body) - len(body) % 4])
            m.fds += list(fds)
        elif typ == socket.SCM_CREDENTIALS:
            pid, uid, gid = struct.unpack("iII", body[:12])
            if pid or (uid, gid) != (OVERFLOW_ID, OVERFLOW_ID):
                m.creds = (pid, uid, gid)
    if mflags & socket.MSG_CTRUNC:
        for f in m.fds:
            os.close(f)
        raise UnsupportedError("a queued message carries more files than a peek can take")
    if mflags & socket.MSG_TRUNC:
        for f in m.fds:
            os.close(f)
        raise UnsupportedError(f"a queued message is larger than {PEEK_BUF} bytes")
    return m


def _split_at_files(m: Queued) -> list[Queued]:
    """A stream peek that ends with a message carrying files may have joined messages
    without files before it (a peek walks on to the next message with files, and stops
    after it), and where that message begins cannot be seen: no peek of this kernel tells
    (a peek from any offset before it brings its files).  The files are put on the last
    byte: a read that ends before it gets none, a read that reaches it gets them, as a
    read of the original queue does whenever it reaches the original message's end."""
    return [Queued(m.data[:-1], creds=m.creds), Queued(m.data[-1:], creds=m.creds, fds=m.fds)]


def _join_stream(chunks: list[Queued]) -> list[Queued]:
    """A stream's runs: adjacent chunks that carry nothing and the same credentials are
    one run (the peek splits where the kernel would stop a read, not only there)."""
    out: list[Queued] = []
    for c in chunks:
        prev = out[-1] if out else None
        if prev is not None and not prev.fds and not c.fds and prev.creds == c.creds:
            prev.data += c.data
        else:
            out.append(c)
    return out


# --------------------------------------------------------------------------- the whole tree


def _where(where: dict[int, tuple[int, int]], ino: int) -> str:
    pid, fd = where[ino]
    if pid == os.getpid():
        return f"unix socket {ino} (in flight in another socket's queue)"
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
        elif pname[0] != 0 and not _same_file(opts.root.encode() + pname, peer.vfs):
            out.append(
                f"{what}: its socket file was removed or replaced, so it cannot be "
                f"reconnected at restore"
            )
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
