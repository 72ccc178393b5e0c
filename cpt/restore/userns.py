"""The init of a VE that contains its root, at restore: its user namespace comes first.

The order is the one a start takes (ve/boot.py), for the same reasons, done by a forked
helper (the restorer itself stays in the host's namespaces):

  1. a new mount namespace of the HOST's user namespace, where the host's part of the
     VE's mounts is made (mounts.build_host_side: the root, the external binds, the tmpfs
     with device nodes);
  2. a new user namespace; the restorer writes its maps (the image's) and setgroups, and
     puts the helper in the VE's cgroup (`on_spawn`);
  3. the VE's mount (a copy: the host's part comes locked), UTS, IPC, network, cgroup
     (rooted at the VE's cgroup) and PID namespaces, owned by the user namespace; the
     helper becomes root inside it (so the stub it execs has every capability there, and
     none over the host), and clones the stub with CLONE_PARENT: PID 1 of the new PID
     namespace, a child of the restorer, which traces it from then on.

The helper then stays, as the DONOR of the descriptions.  A stub pulls every file it
holds with pidfd_getfd through the pidfd it inherited at fd `slot` (fds.py, mm.py); a
process of the VE's user namespace may not take an fd of the restorer (that needs
ptrace rights over the host's root), but it may take one of the helper, which has the
VE's root's credentials.  So the stubs inherit a pidfd of the helper at `slot`, and
before the stubs pull anything the restorer hands the helper every description it
opened (Donor.mirror: SCM_RIGHTS), which the helper keeps under the same fd numbers.

The helper also OPENS the VE's files for the restorer (Donor.open; creds.open_held): a
file of a restored process must be one that process could open, and the restorer's
own thread, even with the process's host ids, has its capabilities over the HOST (its
CAP_DAC_OVERRIDE opens a root-only host file, or one of an id outside the VE's range).
The helper is root in the VE's user namespace: it takes the process's ids as the VE
sees them (NsCreds) and its effective capabilities, which count in that namespace only,
and opens the path inside the VE's root (openat2 RESOLVE_IN_ROOT on the restorer's fd of
it): the kernel checks it exactly as for the process.

The rest of the VE (its own mounts, hostname, network) is built by ve.py as for any VE;
credentials are set inside the namespace from the NsCreds records (threads.py).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterable

from cptimage.records import IdMap, NsCreds, UserNs

from ..errors import RestoreError
from ..procfs import ROOT, IdMapping, fd_path, format_id_map, write_id_maps
from ..sys.clone import CLONE_PARENT, clone3_execve
from ..sys.creds import acting_as, thread_groups
from ..sys.files import RESOLVE_IN_ROOT, openat2
from ..sys.ns import (
    CLONE_NEWCGROUP,
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
    unshare,
)
from ..sys.task import PR_SET_DUMPABLE, pidfd_open, prctl
from ..trace.tracee import Tracee
from . import mounts
from .model import ImageModel
from .stub import STUB_OPTIONS, attach_stub, stub_exec_fd

# the VE's namespaces, owned by its user namespace
OWNED = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWCGROUP | CLONE_NEWPID
HELPER_TIMEOUT = 30.0
_BATCH = 250  # fds per message (the kernel takes 253)
# an open request: flags, mode, fsuid, fsgid, effective capabilities, number of groups;
# then the groups (u32 each) and the path (empty: reopen the fd sent with it)
_OPEN = struct.Struct("<iIIIQI")


def map_text(entries: list[IdMap]) -> str:
    return format_id_map([IdMapping(e.inside, e.outside, e.count) for e in entries])


class Donor:
    """The helper, alive while the stubs take their files (see the module's docstring)."""

    def __init__(self, pid: int, sock: socket.socket, keep: list[int]) -> None:
        self.pid = pid
        self.sock = sock
        # the helper's own fds (its end of the socket, its /proc), held open here: their
        # numbers are never reused here, so never mirrored over there
        self.keep = keep

    def mirror(self, fds: Iterable[int]) -> None:
        """Give the helper these fds of this process, under the same numbers there."""
        todo = sorted(set(fds))
        try:
            for i in range(0, len(todo), _BATCH):
                batch = todo[i : i + _BATCH]
                socket.send_fds(self.sock, [b"M" + struct.pack(f"<{len(batch)}i", *batch)], batch)
                if _read(self.sock.fileno(), 1) != b"k":
                    raise RestoreError("the VE's user namespace helper did not take its files")
        except OSError as e:
            raise RestoreError(f"handing the files to the VE's user namespace helper: {e}") from e

    def open(self, ref: int, path: str, flags: int, ids: NsCreds, cap_eff: int) -> int:
        """`path` (absolute, inside the root whose fd is `ref`; empty: the file `ref`
        itself, reopened) opened with `flags` by the helper, as a process with the ids
        `ids` in the VE's user namespace and effective capabilities `cap_eff` (there)
        would; its fd here.  OSError as the open failed there (PermissionError: it may
        not); RestoreError if the helper does not answer."""
        groups = list(ids.groups)
        head = _OPEN.pack(flags, 0, ids.fsuid, ids.fsgid, cap_eff, len(groups))
        msg = b"O" + head + struct.pack(f"<{len(groups)}I", *groups) + os.fsencode(path)
        try:
            socket.send_fds(self.sock, [msg], [ref])
            if not select.select([self.sock], [], [], HELPER_TIMEOUT)[0]:
                raise RestoreError("the VE's user namespace helper did not answer an open")
            data, fds, _, _ = socket.recv_fds(self.sock, 4096, 1)
        except OSError as e:
            raise RestoreError(f"asking the VE's user namespace helper to open: {e}") from e
        if data == b"o" and len(fds) == 1:
            return fds[0]
        for fd in fds:
            os.close(fd)
        if data[:1] == b"e" and len(data) >= 5:
            err = struct.unpack_from("<i", data, 1)[0]
            raise OSError(err, os.strerror(err))
        raise RestoreError("the VE's user namespace helper gave no answer to an open")

    def close(self) -> None:
        """Let the helper go (the stubs hold their files now), and reap it."""
        self.sock.close()
        for fd in self.keep:
            os.close(fd)
        _reap(self.pid)


def spawn_init(
    model: ImageModel, userns: UserNs, on_spawn: Callable[[int], None] | None, slot: int
) -> tuple[Tracee, set[int], Donor]:
    """The traced stub of the VE's init in its new user namespace and the namespaces it
    owns; returns it, the mounts already made (the host's part, for ve.build) and the
    donor of the files, whose pidfd the stub holds at fd `slot`."""
    made = mounts.host_side(model.mounts, model.mount_data)
    exe = stub_exec_fd()  # inherited by the helper, and by the stub from it
    ask_r, ask_w = os.pipe2(os.O_CLOEXEC)  # helper -> restorer: the user namespace exists
    ans_r, ans_w = os.pipe2(os.O_CLOEXEC)  # restorer -> helper: its maps are written
    res_r, res_w = os.pipe2(os.O_CLOEXEC)  # helper -> restorer: P<stub pid>, or E<error>
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # the host's /proc for the helper: the VE's root replaces its own (ve.build)
    proc = os.open(ROOT, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    helper = os.fork()
    if helper == 0:  # pragma: no cover - runs in the helper
        try:
            for fd in (ask_r, ans_w, res_r):
                os.close(fd)
            ours.close()
            _helper(model, userns, made, exe, slot, ask_w, ans_r, res_w, theirs, proc)
        finally:
            os._exit(0)
    for fd in (ask_w, ans_r, res_w):
        os.close(fd)
    donor = Donor(helper, ours, [theirs.detach(), proc])
    try:
        try:
            if _read(ask_r, 1) == b"u":
                if on_spawn is not None:
                    on_spawn(helper)  # its cgroup: the VE's, before the cgroup namespace
                write_id_maps(
                    helper,
                    map_text(userns.uid_map),
                    map_text(userns.gid_map),
                    "allow" if userns.setgroups else "deny",
                )
                os.write(ans_w, b"g")
            got = _read(res_r, 4096)
        except OSError as e:
            raise RestoreError(f"the VE's user namespace: {e}") from None
        if not got.startswith(b"P"):
            why = got[1:].decode(errors="replace") if got else "the helper ended without a word"
            raise RestoreError(f"cannot create the VE's user namespace and its init: {why}")
        return attach_stub(int(got[1:]), STUB_OPTIONS), made, donor
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.kill(helper, signal.SIGKILL)
        donor.close()
        raise
    finally:
        for fd in (ask_r, ans_w, res_r):
            os.close(fd)


def _helper(
    model: ImageModel,
    userns: UserNs,
    made: set[int],
    exe: int,
    slot: int,
    ask: int,
    ans: int,
    res: int,
    sock: socket.socket,
    proc: int,
) -> None:  # pragma: no cover - runs in the helper
    try:
        unshare(CLONE_NEWNS)
        mounts.build_host_side(model.mounts, model.mount_data, made)
        os.setgroups([])  # no host group travels into the namespace
        unshare(CLONE_NEWUSER)
        os.write(ask, b"u")
        if _read(ans, 1) != b"g":
            raise RestoreError("the restorer did not map the user namespace")
        unshare(OWNED)
        os.setresgid(0, 0, 0)
        if userns.setgroups:
            os.setgroups([0])
        os.setresuid(0, 0, 0)  # root inside: the stub it execs has every capability there
        prctl(PR_SET_DUMPABLE, 1)  # the ids changed: let the stubs take fds of it
        me = pidfd_open(os.getpid())
        os.dup2(me, slot, inheritable=True)  # the stubs' way to their files: this donor
        os.close(me)
        pid = clone3_execve(fd_path("self", exe), ["cpt-stub"], flags=CLONE_PARENT, exit_signal=0)
        os.write(res, f"P{pid}".encode())
    except BaseException as e:
        msg = str(e) if isinstance(e, RestoreError) else f"{type(e).__name__}: {e}"
        os.write(res, f"E{msg}".encode()[:4000])
        return
    for fd in (ask, ans, res):
        os.close(fd)
    _serve(sock, bool(userns.setgroups), proc)


def _serve(
    sock: socket.socket, setgroups: bool, proc: int
) -> None:  # pragma: no cover - in the helper
    """Keep each fd the restorer sends under the number it has there (M), open files as
    a process of the VE (O: _open; `proc`: the host's /proc); until it hangs up."""
    while True:
        data, fds, _, _ = socket.recv_fds(sock, 4 * _BATCH + 8192, _BATCH)
        if not data:
            return
        if data[:1] == b"O":
            _open(sock, data, fds, setgroups, proc)
            continue
        numbers = struct.unpack(f"<{(len(data) - 1) // 4}i", data[1:])
        # the fds came at the lowest free numbers, which may be numbers still to fill:
        # move them all above, then each to its number
        top = max(numbers) + 1
        moved = []
        for fd in fds:
            moved.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, top))
            os.close(fd)
        for n, fd in zip(numbers, moved, strict=True):
            os.dup2(fd, n, inheritable=False)
            os.close(fd)
        sock.send(b"k")


def _open(
    sock: socket.socket, data: bytes, fds: list[int], setgroups: bool, proc: int
) -> None:  # pragma: no cover - runs in the helper
    """An open request (Donor.open): answered with the fd (o), or the errno (e)."""
    try:
        flags, mode, uid, gid, caps, n = _OPEN.unpack_from(data, 1)
        at = 1 + _OPEN.size
        groups = list(struct.unpack_from(f"<{n}I", data, at))
        path = os.fsdecode(data[at + 4 * n :])
        if len(fds) != 1:
            raise OSError(errno.EINVAL, "no fd with the request")
        if not setgroups:  # denied in this namespace: the groups stay as they are
            groups = thread_groups()
        with acting_as(uid, gid, groups, caps):
            if path:
                fd = openat2(fds[0], path, flags, mode, RESOLVE_IN_ROOT)
            else:  # through the host's /proc: the VE's shows no process of this one's
                fd = os.open(
                    os.path.relpath(fd_path("self", fds[0]), ROOT), flags, mode, dir_fd=proc
                )
    except OSError as e:  # (acting_as's own refusal has no errno: EPERM)
        err = e.errno or (errno.EPERM if isinstance(e, PermissionError) else errno.EIO)
        sock.send(b"e" + struct.pack("<i", err))
        return
    finally:
        for f in fds:
            os.close(f)
    try:
        socket.send_fds(sock, [b"o"], [fd])
    finally:
        os.close(fd)


def _read(fd: int, n: int) -> bytes:
    """One read of up to `n` bytes, within HELPER_TIMEOUT; b"" at EOF or timeout."""
    deadline = time.monotonic() + HELPER_TIMEOUT
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return b""
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            return os.read(fd, n)


def _reap(pid: int) -> None:
    """Wait for the helper, HELPER_TIMEOUT at most; then kill it."""
    deadline = time.monotonic() + HELPER_TIMEOUT
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return
        time.sleep(0.001)
