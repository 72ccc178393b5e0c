"""Namespaces and mounts of THIS process: setns, unshare, mount, umount2, pivot_root;
the namespace flags (CLONE_NEW*, one home for cpt); a thread's visit to another process's
namespaces, or to a new one, and back (in_namespace, entered, unshared: the only such
helpers of cpt); a chrooted child for path lookups."""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from cpt.procfs import Proc, ns_path
from cpt.sys._libc import checked_syscall, errno_error, get_errno, libc
from cpt.sys.syscalls import NR

# The namespace flags of clone(2), unshare(2) and setns(2) (include/uapi/linux/sched.h).
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# The name of each namespace kind in /proc/PID/ns/ -> its flag.
NS_FLAGS = {
    "cgroup": CLONE_NEWCGROUP,
    "ipc": CLONE_NEWIPC,
    "mnt": CLONE_NEWNS,
    "net": CLONE_NEWNET,
    "pid": CLONE_NEWPID,
    "time": CLONE_NEWTIME,
    "user": CLONE_NEWUSER,
    "uts": CLONE_NEWUTS,
}
# The namespaces of a VE: its init is created in new ones of these kinds (ve start, and a
# restore of a VE); it shares the host's user, cgroup and time namespaces.
VE_NAMESPACES = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET
# setns(2)/unshare(2) of these move the calling THREAD only: its process's other threads
# stay where they are (mnt needs a single-threaded process, pid applies to children).
PER_THREAD = frozenset({"ipc", "net", "uts"})

_PROC = Proc()
_T = TypeVar("_T")

# mount(2) flags (include/uapi/linux/mount.h): per-mount ones, and the superblock ones
# mountinfo shows among the super options (sync, dirsync, lazytime).
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25

MNT_FORCE = 1
MNT_DETACH = 2
MNT_EXPIRE = 4
UMOUNT_NOFOLLOW = 8


# glibc's mount()/umount2() are plain (non-variadic) syscall wrappers.
_mount = libc.mount
_mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_mount.restype = ctypes.c_int
_umount2 = libc.umount2
_umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_umount2.restype = ctypes.c_int


def _cstr(s: str | bytes | None) -> bytes | None:
    if s is None:
        return None
    return os.fsencode(s)


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2): join the namespace (or, with a pidfd, several) that `fd` refers to."""
    checked_syscall(f"setns(fd {fd}, {nstype:#x})", None, NR.setns, fd, nstype)


def unshare(flags: int) -> None:
    checked_syscall(f"unshare({flags:#x})", None, NR.unshare, flags)


def mount(
    source: str | bytes | None,
    target: str | bytes,
    fstype: str | bytes | None = None,
    flags: int = 0,
    data: str | bytes | None = None,
) -> None:
    """mount(2); `source`, `fstype`, `data` may be None (NULL)."""
    if _mount(_cstr(source), _cstr(target), _cstr(fstype), flags, _cstr(data)) != 0:
        raise errno_error(get_errno(), f"mount({source!r} -> {target!r}, flags {flags:#x})")


def umount2(target: str | bytes, flags: int = 0) -> None:
    if _umount2(_cstr(target), flags) != 0:
        raise errno_error(get_errno(), f"umount2({target!r})")


def pivot_root(new_root: str | bytes, put_old: str | bytes) -> None:
    """pivot_root(2) (glibc has no wrapper)."""
    new = ctypes.create_string_buffer(os.fsencode(new_root))
    old = ctypes.create_string_buffer(os.fsencode(put_old))
    checked_syscall(
        f"pivot_root({new_root!r}, {put_old!r})",
        None,
        NR.pivot_root,
        ctypes.addressof(new),
        ctypes.addressof(old),
    )


def join(pid: int, kinds: Iterable[str]) -> None:
    """setns THIS process into the `kinds` namespaces of process `pid`, in that order: a
    single-threaded process (a forked child) for "mnt", which also moves its root and
    cwd; "pid" applies to the children it forks afterwards.  There is no way back: for a
    visit, see in_namespace."""
    for kind in kinds:
        fd = _PROC.open_ns(pid, kind)
        try:
            setns(fd, NS_FLAGS[kind])
        finally:
            os.close(fd)


@contextlib.contextmanager
def _away(kind: str, go: Callable[[int], _T]) -> Iterator[_T]:
    """`go(flag)` moves the calling thread into another `kind` namespace; then the block
    runs, and the thread comes back to the namespace it was in, whatever happens."""
    if kind not in PER_THREAD:
        raise ValueError(
            f"{kind!r} is not a per-thread namespace ({', '.join(sorted(PER_THREAD))})"
        )
    flag = NS_FLAGS[kind]
    here = os.open(ns_path("thread-self", kind), os.O_RDONLY | os.O_CLOEXEC)
    try:
        result = go(flag)
        try:
            yield result
        finally:
            setns(here, flag)
    finally:
        os.close(here)


def in_namespace(pid: int, kind: str) -> contextlib.AbstractContextManager[int]:
    """Run the block with the calling thread (only) in the `kind` namespace ("ipc", "net"
    or "uts") of process `pid`; yields the namespace's inode.  Other threads of this
    process stay where they are; sockets and IPC objects created in the block belong to
    the namespace entered.  NoSuchProcess/AccessDenied (cpt.procfs) name the process."""

    def go(flag: int) -> int:
        there = _PROC.open_ns(pid, kind)
        try:
            ino = os.fstat(there).st_ino
            setns(there, flag)
        finally:
            os.close(there)
        return ino

    return _away(kind, go)


@contextlib.contextmanager
def entered(pid: int, kinds: Iterable[str]) -> Iterator[None]:
    """in_namespace for several kinds at once, entered in that order, left in reverse."""
    with contextlib.ExitStack() as stack:
        for kind in kinds:
            stack.enter_context(in_namespace(pid, kind))
        yield


def unshared(kind: str) -> contextlib.AbstractContextManager[None]:
    """Run the block with the calling thread (only) in a NEW `kind` namespace ("ipc", "net"
    or "uts"), and come back; processes created in the block stay in it."""

    return _away(kind, unshare)


def in_child(fn: Callable[[], None], *, root: str | None = None, what: str = "") -> None:
    """Run `fn` in a forked child (chrooted into `root` if given: paths then resolve as a
    process with that root sees them) and wait for it; its exception comes back as an
    OSError (with its errno) or RuntimeError carrying the message."""
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            os.close(r)
            if root is not None:
                os.chroot(root)
                os.chdir("/")
            fn()
        except BaseException as e:
            err = e.errno if isinstance(e, OSError) and e.errno else 0
            msg = (e.strerror if isinstance(e, OSError) and e.strerror else str(e)) or repr(e)
            os.write(w, f"{err}\0{msg}".encode()[:4000])
            code = 1
        os._exit(code)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            out = f.read()
    finally:
        os.waitpid(pid, 0)
    if out:
        err_s, _, msg = out.decode(errors="replace").partition("\0")
        if int(err_s):
            raise OSError(int(err_s), msg)
        raise RuntimeError(f"{what}: {msg}" if what else msg)
