"""Syscalls on other tasks that need no ptrace stop: pidfds, kcmp, robust list, prctl, signals."""

from __future__ import annotations

import ctypes
import dataclasses
import struct

from cpt.sys._libc import checked_syscall
from cpt.sys.syscalls import NR

# kcmp types (include/uapi/linux/kcmp.h).
KCMP_FILE = 0
KCMP_VM = 1
KCMP_FILES = 2
KCMP_FS = 3
KCMP_SIGHAND = 4
KCMP_IO = 5
KCMP_SYSVSEM = 6
KCMP_EPOLL_TFD = 7

PIDFD_NONBLOCK = 0o4000
PIDFD_THREAD = 0o200

# prctl options (include/uapi/linux/prctl.h).
PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_GET_KEEPCAPS = 7
PR_SET_KEEPCAPS = 8
PR_SET_NAME = 15
PR_GET_NAME = 16
PR_GET_SECCOMP = 21
PR_SET_SECCOMP = 22
SECCOMP_MODE_STRICT = 1
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_GET_SECUREBITS = 27
PR_SET_SECUREBITS = 28
PR_SET_TIMERSLACK = 29
PR_GET_TIMERSLACK = 30
PR_SET_MM = 35
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_GET_TID_ADDRESS = 40
PR_SET_THP_DISABLE = 41
PR_GET_THP_DISABLE = 42
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_IS_SET = 1
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_LOWER = 3
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_TIMER_CREATE_RESTORE_IDS = 77
PR_TIMER_CREATE_RESTORE_IDS_GET = 2  # its arg2: 0 off, 1 on, 2 get

# PR_SET_MM sub-options.
PR_SET_MM_START_CODE = 1
PR_SET_MM_END_CODE = 2
PR_SET_MM_START_DATA = 3
PR_SET_MM_END_DATA = 4
PR_SET_MM_START_STACK = 5
PR_SET_MM_START_BRK = 6
PR_SET_MM_BRK = 7
PR_SET_MM_ARG_START = 8
PR_SET_MM_ARG_END = 9
PR_SET_MM_ENV_START = 10
PR_SET_MM_ENV_END = 11
PR_SET_MM_AUXV = 12
PR_SET_MM_EXE_FILE = 13
PR_SET_MM_MAP = 14
PR_SET_MM_MAP_SIZE = 15

# struct prctl_mm_map: start_code end_code start_data end_data start_brk brk start_stack
# arg_start arg_end env_start env_end, auxv pointer, auxv size, exe_fd.
PRCTL_MM_MAP = struct.Struct("<11QQII")
assert PRCTL_MM_MAP.size == 104

SECCOMP_SET_MODE_STRICT = 0
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1 << 0
SECCOMP_FILTER_FLAG_LOG = 1 << 1
SECCOMP_FILTER_FLAG_SPEC_ALLOW = 1 << 2

# The kernel's struct sigaction on x86_64 (rt_sigaction): handler, flags, restorer, mask.
SIGACTION = struct.Struct("<4Q")
# struct itimerval (getitimer/setitimer): interval (sec, usec), value (sec, usec).
ITIMERVAL = struct.Struct("<4q")


def pack_prctl_mm_map(
    start_code: int,
    end_code: int,
    start_data: int,
    end_data: int,
    start_brk: int,
    brk: int,
    start_stack: int,
    arg_start: int,
    arg_end: int,
    env_start: int,
    env_end: int,
    auxv: int,
    auxv_size: int,
    exe_fd: int = -1,
) -> bytes:
    """The 104-byte struct prctl_mm_map for PR_SET_MM_MAP (exe_fd -1 leaves exe alone)."""
    return PRCTL_MM_MAP.pack(
        start_code,
        end_code,
        start_data,
        end_data,
        start_brk,
        brk,
        start_stack,
        arg_start,
        arg_end,
        env_start,
        env_end,
        auxv,
        auxv_size,
        exe_fd & 0xFFFFFFFF,
    )


def pidfd_open(pid: int, flags: int = 0) -> int:
    """pidfd_open(2) -> fd referring to `pid`."""
    return checked_syscall("pidfd_open", pid, NR.pidfd_open, pid, flags)


def pidfd_getfd(pidfd: int, targetfd: int, pid: int | None = None) -> int:
    """pidfd_getfd(2): a duplicate in THIS process of fd `targetfd` of the pidfd's process
    (the same open file description). `pid` only names the error."""
    return checked_syscall(f"pidfd_getfd(fd {targetfd})", pid, NR.pidfd_getfd, pidfd, targetfd, 0)


def pidfd_send_signal(pidfd: int, sig: int, pid: int | None = None) -> None:
    checked_syscall(f"pidfd_send_signal({sig})", pid, NR.pidfd_send_signal, pidfd, sig, 0, 0)


def kcmp(pid1: int, pid2: int, type_: int, idx1: int = 0, idx2: int = 0) -> int:
    """kcmp(2): 0 equal, 1 less, 2 greater, 3 not equal (ordering unavailable)."""
    return checked_syscall(
        f"kcmp(type {type_}, {pid1}/{idx1}, {pid2}/{idx2})",
        pid1,
        NR.kcmp,
        pid1,
        pid2,
        type_,
        idx1,
        idx2,
    )


def get_robust_list(tid: int) -> tuple[int, int]:
    """get_robust_list(2) of another thread -> (head address, len)."""
    head = ctypes.c_uint64(0)
    size = ctypes.c_size_t(0)
    checked_syscall(
        "get_robust_list",
        tid,
        NR.get_robust_list,
        tid,
        ctypes.addressof(head),
        ctypes.addressof(size),
    )
    return int(head.value), int(size.value)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2) in THIS process (inject it to act on another one)."""
    return checked_syscall(f"prctl({option})", None, NR.prctl, option, arg2, arg3, arg4, arg5)


def set_child_subreaper(on: bool = True) -> None:
    """Make this process adopt its orphaned descendants (kept across execve)."""
    prctl(PR_SET_CHILD_SUBREAPER, int(on))


def tgkill(tgid: int, tid: int, sig: int) -> None:
    checked_syscall(f"tgkill({sig})", tid, NR.tgkill, tgid, tid, sig)


def gettid() -> int:
    return checked_syscall("gettid", None, NR.gettid)


def prctl_mm_map_size() -> int:
    """PR_SET_MM_MAP_SIZE: the size of struct prctl_mm_map this kernel expects."""
    size = ctypes.c_uint(0)
    checked_syscall(
        "prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE)",
        None,
        NR.prctl,
        PR_SET_MM,
        PR_SET_MM_MAP_SIZE,
        ctypes.addressof(size),
        0,
        0,
    )
    return size.value


# struct sched_attr (include/uapi/linux/sched/types.h), SCHED_ATTR_SIZE_VER0: size, policy,
# flags, nice, priority, runtime, deadline, period.
SCHED_ATTR = struct.Struct("<IIQiIQQQ")
SCHED_NORMAL = 0
SCHED_FIFO = 1
SCHED_RR = 2
SCHED_BATCH = 3
SCHED_IDLE = 5
SCHED_DEADLINE = 6
SCHED_FLAG_RESET_ON_FORK = 0x01


@dataclasses.dataclass(frozen=True)
class SchedAttr:
    policy: int = SCHED_NORMAL
    flags: int = 0  # SCHED_FLAG_RESET_ON_FORK only: the rest are not the thread's own state
    nice: int = 0
    priority: int = 0
    runtime: int = 0
    deadline: int = 0
    period: int = 0


def sched_getattr(tid: int) -> SchedAttr:
    """sched_getattr(2) of any thread (no permission needed)."""
    buf = ctypes.create_string_buffer(SCHED_ATTR.size)
    checked_syscall(
        "sched_getattr", tid, NR.sched_getattr, tid, ctypes.addressof(buf), SCHED_ATTR.size, 0
    )
    _size, policy, flags, nice, prio, runtime, deadline, period = SCHED_ATTR.unpack(buf.raw)
    flags &= SCHED_FLAG_RESET_ON_FORK
    if policy != SCHED_DEADLINE:
        # a fair thread's runtime is its slice: set, it would become a custom slice
        return SchedAttr(policy, flags, nice, prio)
    return SchedAttr(policy, flags, nice, prio, runtime, deadline, period)


def sched_setattr(tid: int, a: SchedAttr) -> None:
    """sched_setattr(2) of thread `tid` (raising its priority needs CAP_SYS_NICE or the
    thread's RLIMIT_NICE/RLIMIT_RTPRIO)."""
    raw = SCHED_ATTR.pack(
        SCHED_ATTR.size, a.policy, a.flags, a.nice, a.priority, a.runtime, a.deadline, a.period
    )
    buf = ctypes.create_string_buffer(raw, len(raw))
    checked_syscall("sched_setattr", tid, NR.sched_setattr, tid, ctypes.addressof(buf), 0)


# membarrier(2) commands (include/uapi/linux/membarrier.h): the REGISTER_* bits are what
# MEMBARRIER_CMD_GET_REGISTRATIONS reports, per mm.
MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED = 1 << 2
MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED = 1 << 4
MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE = 1 << 6
MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ = 1 << 8
MEMBARRIER_CMD_GET_REGISTRATIONS = 1 << 9
MEMBARRIER_REGISTRATIONS = (
    MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED
    | MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED
    | MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE
    | MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ
)
