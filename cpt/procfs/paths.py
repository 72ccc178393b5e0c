"""The /proc paths the engine hands to other code, and the raw opens of them.

Not every /proc access is a file to parse: a dump reopens a file of the tree through
/proc/PID/fd/N or /proc/PID/map_files/A-B, reads pages through /proc/PID/mem, resolves a
VE's files under /proc/PID/root, and an injected syscall opens "/proc/self/fd/N" inside
the tracee.  Those paths are built here, so that every /proc path of the engine is in this
package.  They name the live /proc (ROOT); the Proc reader takes another root for captured
trees.  Errors are NOT translated: the callers handle the OSError they expect (a closed fd
is not a vanished process).

``pid`` is a number, or "self" / "thread-self" (the calling process / thread; inside an
injected syscall, the tracee).
"""

from __future__ import annotations

import os

ROOT = "/proc"

Pid = int | str


def pid_dir(pid: Pid) -> str:
    return f"{ROOT}/{pid}"


def pid_of_path(path: str) -> int | None:
    """The PID (or TID) a path /proc/PID or /proc/PID/... names, else None (/proc/self is
    never in a dump's paths: the kernel resolves it to the number)."""
    head, sep, rest = path.partition(f"{ROOT}/")
    if head or not sep:
        return None
    num = rest.split("/", 1)[0]
    return int(num) if num.isdigit() and num.isascii() else None


def pid_exists(pid: int) -> bool:
    """Is there a /proc/PID (a process, a zombie, or a thread id)?"""
    return os.path.exists(f"{ROOT}/{pid}")


def link_path(pid: Pid, name: str) -> str:
    """/proc/PID/NAME: cwd, root, exe, fd/N, map_files/A-B, ..."""
    return f"{ROOT}/{pid}/{name}"


def fd_dir(pid: Pid) -> str:
    return f"{ROOT}/{pid}/fd"


def fd_path(pid: Pid, fd: int) -> str:
    """/proc/PID/fd/N: opens the same file (a new description of it), stat()s it."""
    return f"{ROOT}/{pid}/fd/{fd}"


def map_files_path(pid: Pid, start: int, end: int) -> str:
    """/proc/PID/map_files/START-END: the file of a mapping (CAP_SYS_ADMIN to open)."""
    return f"{ROOT}/{pid}/map_files/{start:x}-{end:x}"


def root_path(pid: Pid) -> str:
    """/proc/PID/root: the process's root directory, a prefix to reach its files."""
    return f"{ROOT}/{pid}/root"


def ns_path(pid: Pid, kind: str) -> str:
    """/proc/PID/ns/KIND (kind: ipc, mnt, net, pid, uts, ...)."""
    return f"{ROOT}/{pid}/ns/{kind}"


def mem_path(pid: Pid) -> str:
    return f"{ROOT}/{pid}/mem"


def open_mem(pid: Pid, flags: int = os.O_RDONLY) -> int:
    """An fd on /proc/PID/mem (O_RDWR to write a stopped tracee's memory)."""
    return os.open(mem_path(pid), flags | os.O_CLOEXEC)


def read_mem(pid: Pid, addr: int, size: int) -> bytes:
    """Bytes of the process's memory through /proc/PID/mem (may be short at a hole)."""
    fd = open_mem(pid)
    try:
        return os.pread(fd, size, addr)
    finally:
        os.close(fd)


def open_pagemap(pid: Pid) -> int:
    """An O_RDONLY fd on /proc/PID/pagemap (close it with os.close)."""
    return os.open(f"{ROOT}/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)


def clear_refs(pid: Pid, what: int) -> None:
    """Write /proc/PID/clear_refs (4: clear the soft-dirty bits)."""
    with open(f"{ROOT}/{pid}/clear_refs", "w") as f:
        f.write(str(what))


def write_pid_file(pid: Pid, name: str, value: int) -> None:
    """Write a number to /proc/PID/NAME (oom_score_adj, timerslack_ns, ...)."""
    with open(f"{ROOT}/{pid}/{name}", "w") as f:
        f.write(str(value))


def write_id_maps(pid: Pid, uid_map: str, gid_map: str, setgroups: str | None = None) -> None:
    """Give the user namespace of process `pid` its maps (text as ns.format_id_map makes
    it), setgroups first ("allow"/"deny"; the kernel takes it only before gid_map).  Each
    file is written once, whole: the kernel accepts one write per map."""
    if setgroups is not None:
        with open(f"{ROOT}/{pid}/setgroups", "w") as f:
            f.write(setgroups)
    for name, text in (("uid_map", uid_map), ("gid_map", gid_map)):
        fd = os.open(f"{ROOT}/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            data = text.encode()
            if os.write(fd, data) != len(data):
                raise OSError(f"{ROOT}/{pid}/{name}: short write")
        finally:
            os.close(fd)
