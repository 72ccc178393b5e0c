"""The sigreturn guard of an injection session: a tracer killed at ANY moment leaves the
thread as it was.

A thread being dumped must outlive its tracer (a `cpt chkpnt` killed with SIGKILL).  An
injected syscall changes its registers and its signal mask; should the tracer die while
they are changed, the kernel detaches the thread and it runs on from there.  The guard
makes that harmless, the way a signal handler returns:

- before the session's first syscall, a signal frame (struct rt_sigframe) is written on
  the thread's stack, below its red zone: the thread's own registers (with the restart of
  the syscall it was stopped in, as the kernel does on a return without a handler), its
  own signal mask, its alternate signal stack and its FPU/vector state (NT_X86_XSTATE);
  the frame's return address is a restorer, `mov $15, %rax; syscall` (rt_sigreturn), found
  in the process's own code (glibc's and musl's __restore_rt are exactly that);
- each syscall is injected at a `syscall; ret` sequence of the process's code (libc has
  many) with the stack pointer at the frame, and run with PTRACE_SYSCALL (a syscall-exit
  stop, not a single-step trap: a tracer's death in a syscall stop delivers no signal
  when PTRACE_O_TRACESYSGOOD is set, and the kernel stops tracing syscalls at once);
- so, whenever the tracer dies, the thread finishes the syscall, `ret` pops the restorer,
  and rt_sigreturn puts back every register, the mask, the alternate stack and the FPU
  state atomically.  While the tracer lives the thread never gets past the syscall's
  exit stop.

The one syscall that runs before the frame is whole is the session's sigaltstack query
(the alternate stack cannot be read from outside); the provisional frame it runs under
says "no alternate stack", which is the truth for nearly every thread.  A process without
the two sequences in its code (a static program without libc), or a stack the frame cannot
be written to, is injected without the guard (inject.py parks it between syscalls).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cpt.errors import CptError
from cpt.procfs import Proc, VmaKind, read_mem
from cpt.sys.arch import Regs

SYSCALL_RET = b"\x0f\x05\xc3"  # syscall; ret
RESTORERS = (
    b"\x48\xc7\xc0\x0f\x00\x00\x00\x0f\x05",  # mov $15, %rax; syscall (glibc, musl)
    b"\xb8\x0f\x00\x00\x00\x0f\x05",  # mov $15, %eax; syscall
)
RED_ZONE = 128
SS_DISABLE = 2
NO_ALTSTACK = (0, SS_DISABLE, 0)
STACK_T = struct.Struct("<QiiQ")  # ss_sp, ss_flags, pad, ss_size

# struct rt_sigframe (x86-64): pretcode, ucontext (uc_flags, uc_link, uc_stack,
# uc_mcontext = struct sigcontext, uc_sigmask), siginfo; FPU state elsewhere (fpstate).
FRAME_SIZE = 440
_UC_STACK = 24
_MCONTEXT = 48
_SIGMASK = 304
FRAME_HEAD = 48  # pretcode, uc_flags, uc_link, uc_stack: what an altstack fix rewrites
SIGINFO_AT = 312  # 128 bytes rt_sigreturn never reads: the altstack query's buffer
_SC_REGS = ("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
            "rdi", "rsi", "rbp", "rbx", "rdx", "rax", "rcx", "rsp", "rip", "eflags")  # fmt: skip
_SIGCONTEXT = struct.Struct("<18Q4H4QQ64x")  # regs, cs gs fs ss, err trapno oldmask cr2, fpstate
UC_FP_XSTATE = 0x1
UC_SIGCONTEXT_SS = 0x2
UC_STRICT_RESTORE_SS = 0x4
FP_XSTATE_MAGIC1 = 0x46505853
FP_XSTATE_MAGIC2 = 0x46505845
_SW_BYTES = 464  # struct _fpx_sw_bytes inside the 512-byte legacy area
_FXSAVE_SIZE = 512

_ERESTARTSYS, _ERESTARTNOINTR, _ERESTARTNOHAND, _ERESTART_RESTARTBLOCK = 512, 513, 514, 516
_NR_RESTART_SYSCALL = 219
_SCAN_CHUNK = 1 << 16
_PROC = Proc()


@dataclass(frozen=True)
class Gadgets:
    """Addresses in a process's code: `syscall; ret` and an rt_sigreturn restorer."""

    syscall_ret: int
    restorer: int
    restorer_bytes: bytes


_CACHE: dict[int, Gadgets] = {}


def find_gadgets(pid: int) -> Gadgets | None:
    """The two sequences the guard needs, in `pid`'s executable mappings (read, never
    written), or None.  Cached per pid, checked against the bytes at each use."""
    known = _CACHE.get(pid)
    if known is not None and _still_there(pid, known):
        return known
    _CACHE.pop(pid, None)
    syscall_ret = restorer = 0
    restorer_bytes = b""
    try:
        vmas = _PROC.maps(pid)
    except CptError:
        return None
    for v in vmas:
        if not v.exec or v.kind is VmaKind.VSYSCALL:
            continue
        for at in range(v.start, v.end, _SCAN_CHUNK):
            size = min(_SCAN_CHUNK + 16, v.end - at)  # a sequence across chunks
            try:
                data = read_mem(pid, at, size)
            except OSError:
                break  # pages beyond the file's end
            if not syscall_ret and (i := data.find(SYSCALL_RET)) >= 0:
                syscall_ret = at + i
            if not restorer:
                for seq in RESTORERS:
                    if (i := data.find(seq)) >= 0:
                        restorer, restorer_bytes = at + i, seq
                        break
            if syscall_ret and restorer:
                found = Gadgets(syscall_ret, restorer, restorer_bytes)
                _CACHE[pid] = found
                return found
    return None


def fits_stack(pid: int, frame: Frame, rsp: int) -> bool:
    """Whether the frame lies in the writable private mapping the stack pointer is in (a
    thread near the end of its stack, or on a stack of odd shape, gets no guard: the frame
    would land in another mapping)."""
    try:
        vmas = _PROC.maps(pid)
    except CptError:
        return False
    return any(
        v.start <= frame.addr and rsp <= v.end and v.write and not v.perms.endswith("s")
        for v in vmas
    )


def _still_there(pid: int, g: Gadgets) -> bool:
    try:
        return (
            read_mem(pid, g.syscall_ret, len(SYSCALL_RET)) == SYSCALL_RET
            and read_mem(pid, g.restorer, len(g.restorer_bytes)) == g.restorer_bytes
        )
    except OSError:
        return False


def resumed(base: Regs) -> Regs:
    """The registers the thread resumes with from its stop when no handler runs: a
    syscall it was stopped in is restarted (as arch_do_signal_or_restart does); rt_sigreturn
    itself never restarts one."""
    regs = base.copy()
    if regs.signed("orig_rax") >= 0:
        err = -regs.signed("rax")
        if err in (_ERESTARTSYS, _ERESTARTNOINTR, _ERESTARTNOHAND):
            regs.rax = regs.orig_rax
            regs.rip -= 2
        elif err == _ERESTART_RESTARTBLOCK:
            regs.rax = _NR_RESTART_SYSCALL
            regs.rip -= 2
    return regs


def fp_area(xstate: bytes | None) -> bytes:
    """The signal frame's FPU state from NT_X86_XSTATE: the XSAVE image (its software bytes
    name its size) followed by FP_XSTATE_MAGIC2; an image without them restores as the
    legacy FXSAVE area only; none: no FPU state (the kernel then resets it)."""
    if not xstate or len(xstate) < _FXSAVE_SIZE:
        return b""
    magic1, _extended, _features, size = struct.unpack_from("<IIQI", xstate, _SW_BYTES)
    if magic1 != FP_XSTATE_MAGIC1 or not _FXSAVE_SIZE < size <= len(xstate):
        return xstate[:_FXSAVE_SIZE]
    return xstate[:size] + struct.pack("<I", FP_XSTATE_MAGIC2)


@dataclass(frozen=True)
class Frame:
    """A signal frame laid out below a stack pointer: `addr` is where the injected
    syscalls' stack pointer goes (the frame's return address), `data` what to write there."""

    addr: int
    data: bytes

    @property
    def altstack_buf(self) -> int:
        return self.addr + SIGINFO_AT

    def with_altstack(self, altstack: tuple[int, int, int]) -> Frame:
        d = bytearray(self.data)
        STACK_T.pack_into(d, _UC_STACK, altstack[0], altstack[1], 0, altstack[2])
        return Frame(self.addr, bytes(d))


def build_frame(
    base: Regs, mask: int, fp: bytes, restorer: int, altstack: tuple[int, int, int]
) -> Frame:
    """The frame that returns the thread to `base` with `mask`, `fp` and `altstack`."""
    top = base.rsp - RED_ZONE
    fp_addr = (top - len(fp)) & ~63 if fp else top
    addr = ((fp_addr - FRAME_SIZE) & ~15) - 8  # as the kernel aligns a frame
    regs = resumed(base)
    out = bytearray(top - addr)
    struct.pack_into("<Q", out, 0, restorer)
    flags = (
        UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS | (UC_FP_XSTATE if len(fp) > _FXSAVE_SIZE else 0)
    )
    struct.pack_into("<QQ", out, 8, flags, 0)
    STACK_T.pack_into(out, _UC_STACK, altstack[0], altstack[1], 0, altstack[2])
    m = (1 << 64) - 1
    _SIGCONTEXT.pack_into(
        out, _MCONTEXT,
        *(getattr(regs, r) & m for r in _SC_REGS),
        regs.cs & 0xFFFF, regs.gs & 0xFFFF, regs.fs & 0xFFFF, regs.ss & 0xFFFF,
        0, 0, mask & m, 0,
        fp_addr if fp else 0,
    )  # fmt: skip
    struct.pack_into("<Q", out, _SIGMASK, mask & m)
    if fp:
        out[fp_addr - addr : fp_addr - addr + len(fp)] = fp
    return Frame(addr, bytes(out))


__all__ = [
    "NO_ALTSTACK",
    "STACK_T",
    "Frame",
    "Gadgets",
    "build_frame",
    "find_gadgets",
    "fits_stack",
    "fp_area",
    "resumed",
]
