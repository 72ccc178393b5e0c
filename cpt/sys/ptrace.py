"""ptrace(2) and waitpid(2): constants, thin wrappers, wait-status decoding.

Every request goes through the raw syscall (not glibc's variadic `ptrace()`, whose PEEK*
convention differs from the kernel's). A wrapper raises OSError naming the request and the
tid, or NoSuchProcess when the tid is gone. ptrace state belongs to the tracer THREAD:
seize, wait and inject from the same Python thread.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import struct

from cpt.sys._libc import errno_error, get_errno, raw_syscall
from cpt.sys.arch import Regs
from cpt.sys.syscalls import NR

# Requests (include/uapi/linux/ptrace.h, arch/x86/include/uapi/asm/ptrace-abi.h).
PTRACE_TRACEME = 0
PTRACE_PEEKTEXT = 1
PTRACE_PEEKDATA = 2
PTRACE_PEEKUSER = 3
PTRACE_POKETEXT = 4
PTRACE_POKEDATA = 5
PTRACE_POKEUSER = 6
PTRACE_CONT = 7
PTRACE_KILL = 8
PTRACE_SINGLESTEP = 9
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_ATTACH = 16
PTRACE_DETACH = 17
PTRACE_SYSCALL = 24
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETSIGINFO = 0x4202
PTRACE_SETSIGINFO = 0x4203
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208
PTRACE_PEEKSIGINFO = 0x4209
PTRACE_GETSIGMASK = 0x420A
PTRACE_SETSIGMASK = 0x420B
PTRACE_SECCOMP_GET_FILTER = 0x420C
PTRACE_SECCOMP_GET_METADATA = 0x420D
PTRACE_GET_SYSCALL_INFO = 0x420E
PTRACE_GET_RSEQ_CONFIGURATION = 0x420F

# Options (PTRACE_SEIZE data / PTRACE_SETOPTIONS).
PTRACE_O_TRACESYSGOOD = 0x1
PTRACE_O_TRACEFORK = 0x2
PTRACE_O_TRACEVFORK = 0x4
PTRACE_O_TRACECLONE = 0x8
PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_TRACEVFORKDONE = 0x20
PTRACE_O_TRACEEXIT = 0x40
PTRACE_O_TRACESECCOMP = 0x80
PTRACE_O_EXITKILL = 0x100000
PTRACE_O_SUSPEND_SECCOMP = 0x200000

# Events: a stop with status >> 16 == event.
PTRACE_EVENT_FORK = 1
PTRACE_EVENT_VFORK = 2
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_VFORK_DONE = 5
PTRACE_EVENT_EXIT = 6
PTRACE_EVENT_SECCOMP = 7
PTRACE_EVENT_STOP = 128

PTRACE_PEEKSIGINFO_SHARED = 1

# Regset types (include/uapi/linux/elf.h).
NT_PRSTATUS = 1
NT_PRFPREG = 2
NT_X86_XSTATE = 0x202

USER_REGS_SIZE = 216
USER_FPREGS_SIZE = 512
SIGINFO_SIZE = 128
SOCK_FILTER_SIZE = 8  # struct sock_filter: u16 code, u8 jt, u8 jf, u32 k

# waitpid flags (include/uapi/linux/wait.h); __WALL is not exported by the os module.
WNOHANG = 0x1
WUNTRACED = 0x2
WCONTINUED = 0x8
WNOTHREAD = 0x20000000
WALL = 0x40000000
WCLONE = 0x80000000

_REQUEST_NAMES = {
    v: k
    for k, v in globals().items()
    if k.startswith("PTRACE_")
    and not k.startswith(("PTRACE_O_", "PTRACE_EVENT_", "PTRACE_PEEKSIGINFO_S"))
}

_NR_PTRACE = int(NR.ptrace)


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def _ptrace(request: int, tid: int, addr: int = 0, data: int = 0) -> int:
    ret = raw_syscall(_NR_PTRACE, request, tid, addr, data)
    if ret == -1:
        name = _REQUEST_NAMES.get(request, hex(request))
        raise errno_error(get_errno(), f"ptrace({name})", tid)
    return ret


def seize(tid: int, options: int = 0) -> None:
    """PTRACE_SEIZE: attach without stopping; `options` are PTRACE_O_* flags."""
    _ptrace(PTRACE_SEIZE, tid, 0, options)


def interrupt(tid: int) -> None:
    """PTRACE_INTERRUPT: ask a seized tracee to enter PTRACE_EVENT_STOP (wait for it)."""
    _ptrace(PTRACE_INTERRUPT, tid)


def cont(tid: int, sig: int = 0) -> None:
    """PTRACE_CONT, delivering `sig` if the tracee sits in a signal-delivery-stop."""
    _ptrace(PTRACE_CONT, tid, 0, sig)


def detach(tid: int, sig: int = 0) -> None:
    """PTRACE_DETACH (the tracee must be stopped)."""
    _ptrace(PTRACE_DETACH, tid, 0, sig)


def resume_syscall(tid: int, sig: int = 0) -> None:
    """PTRACE_SYSCALL: run to the next syscall-entry or -exit stop."""
    _ptrace(PTRACE_SYSCALL, tid, 0, sig)


def singlestep(tid: int, sig: int = 0) -> None:
    """PTRACE_SINGLESTEP."""
    _ptrace(PTRACE_SINGLESTEP, tid, 0, sig)


def listen(tid: int) -> None:
    """PTRACE_LISTEN: leave a group-stop without resuming (seized tracees only)."""
    _ptrace(PTRACE_LISTEN, tid)


def setoptions(tid: int, options: int) -> None:
    """PTRACE_SETOPTIONS (replaces the whole option set)."""
    _ptrace(PTRACE_SETOPTIONS, tid, 0, options)


def geteventmsg(tid: int) -> int:
    """PTRACE_GETEVENTMSG: new tid after FORK/VFORK/CLONE, exit status after EXIT."""
    msg = ctypes.c_ulong(0)
    _ptrace(PTRACE_GETEVENTMSG, tid, 0, ctypes.addressof(msg))
    return int(msg.value)


def getsiginfo(tid: int) -> bytes:
    """PTRACE_GETSIGINFO: the 128-byte siginfo of the current signal-delivery-stop."""
    buf = ctypes.create_string_buffer(SIGINFO_SIZE)
    _ptrace(PTRACE_GETSIGINFO, tid, 0, ctypes.addressof(buf))
    return buf.raw


def getregset(tid: int, nt: int, size: int) -> bytes:
    """PTRACE_GETREGSET into a `size`-byte buffer; returns what the kernel filled (iov_len)."""
    buf = ctypes.create_string_buffer(size)
    iov = _Iovec(ctypes.addressof(buf), size)
    _ptrace(PTRACE_GETREGSET, tid, nt, ctypes.addressof(iov))
    return buf.raw[: iov.iov_len]


def setregset(tid: int, nt: int, data: bytes) -> None:
    """PTRACE_SETREGSET from `data` (its length is the regset size)."""
    buf = ctypes.create_string_buffer(bytes(data), len(data))
    iov = _Iovec(ctypes.addressof(buf), len(data))
    _ptrace(PTRACE_SETREGSET, tid, nt, ctypes.addressof(iov))


_xstate_size: int | None = None


def xstate_size(tid: int) -> int:
    """Size of NT_X86_XSTATE on this CPU, discovered once from a stopped tracee's iov_len."""
    global _xstate_size
    if _xstate_size is None:
        # The kernel clamps iov_len to the regset size: offer more than any CPU uses.
        _xstate_size = len(getregset(tid, NT_X86_XSTATE, 1 << 16))
    return _xstate_size


def getsigmask(tid: int) -> int:
    """PTRACE_GETSIGMASK: the blocked set as a u64 (bit n-1 = signal n)."""
    mask = ctypes.c_uint64(0)
    _ptrace(PTRACE_GETSIGMASK, tid, 8, ctypes.addressof(mask))
    return int(mask.value)


def setsigmask(tid: int, mask: int) -> None:
    """PTRACE_SETSIGMASK (the kernel drops SIGKILL and SIGSTOP from the set itself)."""
    value = ctypes.c_uint64(mask & ((1 << 64) - 1))
    _ptrace(PTRACE_SETSIGMASK, tid, 8, ctypes.addressof(value))


_RSEQ_CONF = struct.Struct("<QIIII")  # abi pointer, abi size, signature, flags, pad


def get_rseq_configuration(tid: int) -> tuple[int, int, int, int]:
    """PTRACE_GET_RSEQ_CONFIGURATION -> (abi_pointer, abi_size, signature, flags).

    (0, 0, 0, 0) when the thread has no rseq registered.
    """
    buf = ctypes.create_string_buffer(_RSEQ_CONF.size)
    _ptrace(PTRACE_GET_RSEQ_CONFIGURATION, tid, _RSEQ_CONF.size, ctypes.addressof(buf))
    ptr, size, sig, flags, _pad = _RSEQ_CONF.unpack(buf.raw)
    return ptr, size, sig, flags


def peeksiginfo(tid: int, shared: bool, offset: int = 0, count: int = 64) -> list[bytes]:
    """PTRACE_PEEKSIGINFO: up to `count` pending siginfos (128 bytes each) from `offset`.

    `shared` reads the process-wide queue, otherwise the thread's private queue.
    """
    if count <= 0:
        return []
    args = struct.pack("<QIi", offset, PTRACE_PEEKSIGINFO_SHARED if shared else 0, count)
    abuf = ctypes.create_string_buffer(args, len(args))
    out = ctypes.create_string_buffer(SIGINFO_SIZE * count)
    n = _ptrace(PTRACE_PEEKSIGINFO, tid, ctypes.addressof(abuf), ctypes.addressof(out))
    raw = out.raw
    return [raw[i * SIGINFO_SIZE : (i + 1) * SIGINFO_SIZE] for i in range(n)]


def peeksiginfo_all(tid: int, shared: bool) -> list[bytes]:
    """Every pending siginfo of one queue, paging through PTRACE_PEEKSIGINFO."""
    out: list[bytes] = []
    while True:
        chunk = peeksiginfo(tid, shared, len(out), 64)
        out += chunk
        if len(chunk) < 64:
            return out


def seccomp_get_filter(pid: int, idx: int) -> bytes:
    """PTRACE_SECCOMP_GET_FILTER: filter `idx` as raw struct sock_filter[].

    idx 0 is the OLDEST filter, the first installed (measured on 6.18: get_nth_filter counts
    back from the newest by count - idx), so install them in idx order at restore.

    Raises OSError(ENOENT) past the last filter; needs CAP_SYS_ADMIN and a stopped tracee.
    """
    count = _ptrace(PTRACE_SECCOMP_GET_FILTER, pid, idx, 0)
    buf = ctypes.create_string_buffer(count * SOCK_FILTER_SIZE)
    count = _ptrace(PTRACE_SECCOMP_GET_FILTER, pid, idx, ctypes.addressof(buf))
    return buf.raw[: count * SOCK_FILTER_SIZE]


def seccomp_get_filters(pid: int) -> list[bytes]:
    """All seccomp filters of `pid`, oldest (first installed) first; [] when none."""
    out: list[bytes] = []
    while True:
        try:
            out.append(seccomp_get_filter(pid, len(out)))
        except OSError as e:
            if e.errno == errno.ENOENT:
                return out
            # A task not in SECCOMP_MODE_FILTER answers EINVAL, not ENOENT (get_nth_filter).
            if e.errno == errno.EINVAL and not out:
                return out
            raise


def seccomp_get_metadata(pid: int, idx: int) -> int:
    """PTRACE_SECCOMP_GET_METADATA: the SECCOMP_FILTER_FLAG_* flags of filter `idx`."""
    buf = ctypes.create_string_buffer(struct.pack("<QQ", idx, 0), 16)
    _ptrace(PTRACE_SECCOMP_GET_METADATA, pid, 16, ctypes.addressof(buf))
    return int(struct.unpack_from("<Q", buf.raw, 8)[0])


# ---- waitpid and status decoding -------------------------------------------------------------


def waitpid(pid: int, flags: int = WALL) -> tuple[int, int]:
    """waitpid(2) -> (pid, status); (0, 0) with WNOHANG and nothing ready.

    os.waitpid already retries EINTR (PEP 475); ECHILD/others become OSError naming pid.
    """
    try:
        return os.waitpid(pid, flags)
    except ChildProcessError as e:
        raise OSError(
            errno.ECHILD, f"waitpid pid {pid}: not a child or tracee of this thread ({e.strerror})"
        ) from None


def is_stopped(status: int) -> bool:
    return os.WIFSTOPPED(status)


def stop_signal(status: int) -> int:
    """Signal of a stop (SIGTRAP for event stops and single-step traps)."""
    return os.WSTOPSIG(status)


def stop_event(status: int) -> int:
    """PTRACE_EVENT_* of a stop, 0 for a plain signal-delivery-stop."""
    return (status >> 16) & 0xFF


def is_event_stop(status: int) -> bool:
    """A PTRACE_EVENT_STOP: interrupt, group-stop or the initial stop of an auto-attached child."""
    return os.WIFSTOPPED(status) and stop_event(status) == PTRACE_EVENT_STOP


def is_group_stop(status: int) -> bool:
    """An EVENT_STOP caused by a stopping signal (SIGSTOP/TSTP/TTIN/TTOU), not by INTERRUPT."""
    return is_event_stop(status) and stop_signal(status) in (
        signal.SIGSTOP,
        signal.SIGTSTP,
        signal.SIGTTIN,
        signal.SIGTTOU,
    )


def is_exited(status: int) -> bool:
    return os.WIFEXITED(status)


def exit_code(status: int) -> int:
    return os.WEXITSTATUS(status)


def is_signaled(status: int) -> bool:
    return os.WIFSIGNALED(status)


def term_signal(status: int) -> int:
    return os.WTERMSIG(status)


def is_dead(status: int) -> bool:
    """The task exited or was killed: no more ptrace stops will follow."""
    return os.WIFEXITED(status) or os.WIFSIGNALED(status)


def describe_status(status: int) -> str:
    """Human-readable wait status for error messages."""
    if os.WIFEXITED(status):
        return f"exited with code {os.WEXITSTATUS(status)}"
    if os.WIFSIGNALED(status):
        return f"killed by {_signame(os.WTERMSIG(status))}"
    if os.WIFSTOPPED(status):
        ev = stop_event(status)
        sig = _signame(os.WSTOPSIG(status))
        return f"stopped by {sig}" + (f" (ptrace event {ev})" if ev else "")
    return f"status {status:#x}"


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


# ---- registers as Regs objects ---------------------------------------------------------------


def getregs(tid: int) -> Regs:
    """NT_PRSTATUS as a Regs object."""
    return Regs.from_bytes(getregset(tid, NT_PRSTATUS, USER_REGS_SIZE))


def setregs(tid: int, regs: Regs) -> None:
    setregset(tid, NT_PRSTATUS, regs.to_bytes())


class SyscallFrame:
    """Preallocated NT_PRSTATUS buffers for many injections into one thread.

    `base` is the register file every injection starts from (the saved registers); `load`
    writes rip/rax/orig_rax/arguments into a copy and SETREGSETs it, `result` GETREGSETs
    and returns rax as a signed int. Two struct.pack_into calls and three syscalls per
    injection, no per-call allocation: this is the injector's hot path.
    """

    # r10 r9 r8 rax are contiguous at 56..88; rdx rsi rdi orig_rax rip at 96..136.
    _LOW = struct.Struct("<4Q")
    _HIGH = struct.Struct("<5Q")
    _RAX = struct.Struct("<q")

    __slots__ = ("_base", "_base_iov", "_in", "_in_iov", "_out", "_out_iov", "tid")

    def __init__(self, tid: int, base: Regs) -> None:
        self.tid = tid
        self._in = ctypes.create_string_buffer(base.to_bytes(), USER_REGS_SIZE)
        self._in_iov = _Iovec(ctypes.addressof(self._in), USER_REGS_SIZE)
        self._base = ctypes.create_string_buffer(base.to_bytes(), USER_REGS_SIZE)
        self._base_iov = _Iovec(ctypes.addressof(self._base), USER_REGS_SIZE)
        self._out = ctypes.create_string_buffer(USER_REGS_SIZE)
        self._out_iov = _Iovec(ctypes.addressof(self._out), USER_REGS_SIZE)

    def load(
        self,
        rip: int,
        nr: int,
        a1: int = 0,
        a2: int = 0,
        a3: int = 0,
        a4: int = 0,
        a5: int = 0,
        a6: int = 0,
    ) -> None:
        m = (1 << 64) - 1
        self._LOW.pack_into(self._in, 56, a4 & m, a6 & m, a5 & m, nr & m)
        # orig_rax = -1: no syscall to restart, the kernel's restart logic keeps away.
        self._HIGH.pack_into(self._in, 96, a3 & m, a2 & m, a1 & m, m, rip & m)
        self._in_iov.iov_len = USER_REGS_SIZE
        _ptrace(PTRACE_SETREGSET, self.tid, NT_PRSTATUS, ctypes.addressof(self._in_iov))

    def restore_base(self) -> None:
        """SETREGSET the base registers again (the thread's own, between injections)."""
        self._base_iov.iov_len = USER_REGS_SIZE
        _ptrace(PTRACE_SETREGSET, self.tid, NT_PRSTATUS, ctypes.addressof(self._base_iov))

    def result(self) -> int:
        self._out_iov.iov_len = USER_REGS_SIZE
        _ptrace(PTRACE_GETREGSET, self.tid, NT_PRSTATUS, ctypes.addressof(self._out_iov))
        return int(self._RAX.unpack_from(self._out, 80)[0])

    def regs(self) -> Regs:
        """The registers fetched by the last result()."""
        return Regs.from_bytes(self._out.raw)
