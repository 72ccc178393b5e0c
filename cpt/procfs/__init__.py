"""The /proc layer: every /proc read and every /proc path of cpt goes through this package.

Two levels, psutil style:

``parse_*``  pure functions from the bytes of one file (or the text of one link) to frozen
             dataclasses; no I/O, so tests feed them captured files (fixtures/proc/).
``Proc``     the reader: one method per file under ``<root>/<pid>/``, with an injectable
             root, and ONE error translator (OSError -> NoSuchProcess, ZombieProcess,
             AccessDenied carrying the pid and the path): see reader.py.

One module per family of files; the grammar of each file is at the top of its module:

    stat      stat, status, task/TID/children
    maps      maps, smaps
    fds       fd/N link targets
    fdinfo    fdinfo/N (eventfd, timerfd, signalfd, epoll, inotify, fanotify, locks, ...)
    ns        ns/* links, mountinfo, uid_map/gid_map/setgroups
    limits    limits
    timers    timers (POSIX timers)
    auxv      auxv
    net       net/unix, net/tcp, tcp6, udp, udp6
    system    host-wide files: sys/ (sysctls), sysvipc/, filesystems, cpuinfo
    paths     the /proc paths handed to other code (fd/N, map_files/, root, ns/, mem,
              pagemap) and their raw opens
    reader    Proc

This package imports nothing of cpt but cpt.errors: the system layer (cpt.sys) stands on it.
"""

from __future__ import annotations

from .auxv import AuxvEntry, parse_auxv
from .fdinfo import (
    EpollInfo,
    EpollTarget,
    EventfdInfo,
    FanotifyInfo,
    FanotifyMark,
    FdDetails,
    FdInfo,
    FileLock,
    InotifyInfo,
    InotifyWatch,
    PidfdInfo,
    PtyMasterInfo,
    SignalfdInfo,
    TimerfdInfo,
    UnixSocketFdInfo,
    decode_kdev,
    parse_fdinfo,
)
from .fds import FdKind, FdTarget, parse_fd_target, split_deleted
from .limits import RLIM_INFINITY, RLIMIT_NAMES, RLimit, parse_limits
from .maps import Vma, VmaKind, parse_maps, parse_smaps_vmflags
from .net import (
    TCP_STATES,
    UNIX_ACCEPTCON,
    InetSocket,
    UnixSocket,
    parse_inet_sockets,
    parse_unix_sockets,
)
from .ns import (
    IdMapping,
    MountInfo,
    format_id_map,
    map_id,
    parse_id_map,
    parse_mountinfo,
    parse_ns_link,
)
from .paths import (
    ROOT,
    clear_refs,
    fd_dir,
    fd_path,
    link_path,
    map_files_path,
    mem_path,
    ns_path,
    open_mem,
    open_pagemap,
    pid_dir,
    pid_exists,
    read_mem,
    root_path,
    write_id_maps,
    write_pid_file,
)
from .reader import Proc
from .stat import (
    ProcStat,
    ProcStatus,
    parse_children,
    parse_stat,
    parse_status,
    stat_processor,
    stat_state,
    status_sigcgt,
    status_tgid,
)
from .system import (
    cpu_flags,
    filesystems,
    parse_cpu_flags,
    parse_filesystems,
    parse_table,
    read_sysctl,
    read_sysctl_int,
    sysctl_path,
    sysvipc,
    write_sysctl,
)
from .timers import (
    SIGEV_NONE,
    SIGEV_SIGNAL,
    SIGEV_THREAD,
    SIGEV_THREAD_ID,
    PosixTimer,
    parse_timers,
)

__all__ = [
    "RLIMIT_NAMES",
    "RLIM_INFINITY",
    "ROOT",
    "SIGEV_NONE",
    "SIGEV_SIGNAL",
    "SIGEV_THREAD",
    "SIGEV_THREAD_ID",
    "TCP_STATES",
    "UNIX_ACCEPTCON",
    "AuxvEntry",
    "EpollInfo",
    "EpollTarget",
    "EventfdInfo",
    "FanotifyInfo",
    "FanotifyMark",
    "FdDetails",
    "FdInfo",
    "FdKind",
    "FdTarget",
    "FileLock",
    "IdMapping",
    "InetSocket",
    "InotifyInfo",
    "InotifyWatch",
    "MountInfo",
    "PidfdInfo",
    "PosixTimer",
    "Proc",
    "ProcStat",
    "ProcStatus",
    "PtyMasterInfo",
    "RLimit",
    "SignalfdInfo",
    "TimerfdInfo",
    "UnixSocket",
    "UnixSocketFdInfo",
    "Vma",
    "VmaKind",
    "clear_refs",
    "cpu_flags",
    "decode_kdev",
    "fd_dir",
    "fd_path",
    "filesystems",
    "format_id_map",
    "link_path",
    "map_files_path",
    "map_id",
    "mem_path",
    "ns_path",
    "open_mem",
    "open_pagemap",
    "parse_auxv",
    "parse_children",
    "parse_cpu_flags",
    "parse_fd_target",
    "parse_fdinfo",
    "parse_filesystems",
    "parse_id_map",
    "parse_inet_sockets",
    "parse_limits",
    "parse_maps",
    "parse_mountinfo",
    "parse_ns_link",
    "parse_smaps_vmflags",
    "parse_stat",
    "parse_status",
    "parse_table",
    "parse_timers",
    "parse_unix_sockets",
    "pid_dir",
    "pid_exists",
    "read_mem",
    "read_sysctl",
    "read_sysctl_int",
    "root_path",
    "split_deleted",
    "stat_processor",
    "stat_state",
    "status_sigcgt",
    "status_tgid",
    "sysctl_path",
    "sysvipc",
    "write_id_maps",
    "write_pid_file",
    "write_sysctl",
]
