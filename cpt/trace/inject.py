"""Syscall injection: run syscalls inside a traced thread.

Mechanism (ENGINE-NOTES "Syscall injection"): with the thread in a ptrace-stop, save its
NT_PRSTATUS and signal mask, block every signal, point rip at a `syscall` instruction
(0f 05) already present in the target, load rax = nr, orig_rax = -1 and the arguments,
PTRACE_SINGLESTEP, and wait for the single-step SIGTRAP: the kernel reports it at syscall
exit, before the next instruction is fetched, so rax holds the result. Then put the saved
registers and mask back. A `session()` saves once, runs many syscalls, restores once.
A workload's thread, which must outlive a killed tracer, is injected under the sigreturn
guard instead (guard.py): at a `syscall; ret` of its own code, with PTRACE_SYSCALL.

`Injection` is the injecting half of Tracee (tracee.py), which provides the thread: its
id, its stop state and its registers.
"""

from __future__ import annotations

import enum
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Self

from cpt import interrupts
from cpt.errors import CptError, InjectionError, NoSuchProcess
from cpt.procfs import Proc, VmaKind, read_mem
from cpt.sys import ptrace
from cpt.sys.arch import MAX_ERRNO, SYSCALL_INSN, Regs
from cpt.sys.syscalls import NR, syscall_name
from cpt.sys.task import SIGACTION

from . import guard
from .memory import ThreadMemory
from .pinning import Pinned, pin_together

ALL_SIGNALS = (1 << 64) - 1
SIG_IGN = 1
# The mask of a session: every signal, but SIGTRAP for a process that catches it. The
# single-step trap that ends each injected syscall is a forced signal, and the kernel resets a
# forced signal's handler to SIG_DFL when the signal is blocked (force_sig_info_to_task): a
# blocked SIGTRAP would cost such a process its handler at the first injection. For every
# other process SIGTRAP stays blocked: should the tracer die in the middle of an injection,
# the pending trap is then requeued, never delivered (its default action kills). A real
# SIGTRAP arriving meanwhile is told apart by its si_code (user-sent: <= 0) and kept for
# detach like any other signal.
INJECT_MASK = ALL_SIGNALS & ~(1 << (signal.SIGTRAP - 1))
# Signals the kernel forces through a blocked mask when the injected instruction faults; SIGSYS
# is a seccomp RET_TRAP filter (the tracee was seized without PTRACE_O_SUSPEND_SECCOMP).
_FATAL_SIGNALS = frozenset(
    {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGSYS}
)
CHILD_EVENTS = frozenset(
    {ptrace.PTRACE_EVENT_FORK, ptrace.PTRACE_EVENT_VFORK, ptrace.PTRACE_EVENT_CLONE}
)
_NO_RETURN = frozenset({int(NR.exit), int(NR.exit_group)})
# The stop signal of a syscall-entry or -exit stop under PTRACE_O_TRACESYSGOOD.
_SYSCALL_STOP = signal.SIGTRAP | 0x80


class _Mode(enum.Enum):
    """How a session injects (_session)."""

    PLAIN = "plain"  # a thread of ours (EXITKILL): blocked for the session, single steps
    GUARDED = "guarded"  # a workload's thread: the sigreturn guard (guard.py)
    SETTLE = "settle"  # a workload's thread without the guard: parked between syscalls


# The bound on one injected syscall (a frozen or stuck thread never finishes it), and how
# long its wait spins (yielding the CPU to the thread) before it sleeps between polls.
INJECT_TIMEOUT = 30.0
_SPIN = 0.002
_PROC = Proc()


def find_vdso_syscall(pid: int) -> int:
    """Address of a `syscall` instruction of `pid` (read, never written): in its [vdso], or,
    when the process unmapped its vDSO, anywhere in its executable mappings (the two bytes
    0f 05 decode as `syscall` wherever they sit, even inside another instruction)."""
    vmas = _PROC.maps(pid)
    for v in vmas:
        if v.kind is VmaKind.VDSO:
            off = read_mem(pid, v.start, v.size).find(SYSCALL_INSN)
            if off >= 0:
                return v.start + off
    for v in vmas:
        if not v.exec or v.kind in (VmaKind.VDSO, VmaKind.VSYSCALL):
            continue
        for at in range(v.start, v.end, _SCAN_CHUNK):
            size = min(_SCAN_CHUNK + 1, v.end - at)  # one byte more: an insn across chunks
            try:
                off = read_mem(pid, at, size).find(SYSCALL_INSN)
            except OSError:
                break  # a mapping whose pages cannot be read (beyond its file's end)
            if off >= 0:
                return at + off
    raise InjectionError(
        f"process {pid} has no syscall instruction in its vDSO or any executable mapping",
        pid=pid,
    )


_SCAN_CHUNK = 1 << 16


class Injection:
    """Sessions and injected syscalls of one traced thread (a mixin of Tracee)."""

    # The thread, as Tracee keeps it.
    tid: int
    memory: ThreadMemory
    stopped: bool
    dead: bool
    stop_status: int
    # The same as Tracee.events for the last injected syscall: (PTRACE_EVENT_CLONE, new_tid)
    last_events: list[tuple[int, int]]
    # Unblockable signals (SIGSTOP) that stopped the thread during an injection; they are
    # handed back to the kernel by Tracee.detach().
    pending_signals: list[int]

    def get_regs(self) -> Regs:
        raise NotImplementedError

    def set_regs(self, regs: Regs) -> None:
        raise NotImplementedError

    def get_sigmask(self) -> int:
        raise NotImplementedError

    def set_sigmask(self, mask: int) -> None:
        raise NotImplementedError

    options: int

    def setoptions(self, options: int) -> None:
        raise NotImplementedError

    def get_xstate(self) -> bytes:
        raise NotImplementedError

    def read_mem(self, addr: int, size: int) -> bytes:
        raise NotImplementedError

    def write_mem(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError

    def _mark_dead(self, status: int) -> None:
        raise NotImplementedError

    def _init_injection(self) -> None:
        self.last_events = []
        self.pending_signals = []
        self._syscall_addr: int | None = None
        self._base: Regs | None = None  # registers the current session restores
        self._frame: ptrace.SyscallFrame | None = None
        self._pinned: Pinned | None = None
        self._exec_seen = False
        self._stepped = False  # single-stepped since the thread's last interrupt stop
        self._mode = _Mode.PLAIN  # of the open session (_session)
        self._guard_frame: guard.Frame | None = None
        self._syscall_ret = 0  # guarded: the process's `syscall; ret` the session injects at
        self._unsettled = False  # an injected syscall whose registers and mask are not back
        self._mask = 0  # the thread's own mask, saved by the session
        self._inject_mask = ALL_SIGNALS
        self._no_trap = False  # inject through syscall stops, not a single-step trap

    @property
    def syscall_addr(self) -> int:
        """Address of the `syscall` instruction injections run; default: found in [vdso]."""
        if self._syscall_addr is None:
            self._syscall_addr = find_vdso_syscall(self.tid)
        return self._syscall_addr

    @syscall_addr.setter
    def syscall_addr(self, addr: int | None) -> None:
        self._syscall_addr = addr

    @contextmanager
    def session(self, restore: bool = True, pin_cpu: bool = True) -> Iterator[Self]:
        """Save registers and mask, block every signal (SIGTRAP: see INJECT_MASK); restore both.

        Nested sessions share the outer one.  A signal of interrupts.py arriving in a
        session is raised when it ends: the thread is never left half-injected.
        `restore=False` leaves the last injected register state and the all-blocked mask
        in place (restore sets its own at the end).  The registers to restore are
        `session_regs`, which the caller may edit.

        A thread that must outlive its tracer (one not traced with PTRACE_O_EXITKILL: a
        workload being dumped) is injected under the sigreturn guard (guard.py): a tracer
        killed (SIGKILL) at any moment of the session leaves it exactly as it was, its
        registers, signal mask, alternate stack and FPU state.  Where the guard cannot be
        set up, it gets its registers and mask back after each syscall and waits for the
        next one parked in an interrupt stop (only the instant of a syscall is then
        exposed).  Unguarded, the thread would run on from the injected registers with
        every signal blocked for good (found by tests/test_kill.py: a VE's init died of
        it, and a workload no longer answered SIGTERM).

        `pin_cpu` runs tracer and tracee on one CPU for the session (pinning.py); a thread
        that must outlive its tracer keeps its own CPU mask (the tracer joins its CPU).
        """
        if self._base is not None:
            yield self
            return
        if not self.stopped:
            raise InjectionError(f"thread {self.tid} is not in a ptrace-stop", pid=self.tid)
        with interrupts.deferred():  # a signal never cuts a session (nor its undoing)
            yield from self._session(restore, pin_cpu)

    def _catches_sigtrap(self) -> bool:
        try:
            return bool(_PROC.caught_signals(self.tid) >> (signal.SIGTRAP - 1) & 1)
        except (CptError, ValueError):
            return False  # gone: the injection will say so

    def keep_sigtrap_handler(self) -> None:
        """In a session: the process now catches SIGTRAP (restore installed its handler):
        unblock SIGTRAP so that the following injections keep the handler."""
        self._inject_mask = INJECT_MASK
        if self._mode is not _Mode.SETTLE:
            self.set_sigmask(INJECT_MASK)

    def _outlives_tracer(self) -> bool:
        """Whether the thread goes on if its tracer dies (not traced with EXITKILL)."""
        return not self.options & ptrace.PTRACE_O_EXITKILL

    def _session(self, restore: bool, pin_cpu: bool) -> Iterator[Self]:
        base = self.get_regs()
        mask = self.get_sigmask()
        mode = _Mode.PLAIN
        try:
            self._inject_mask = INJECT_MASK if self._catches_sigtrap() else ALL_SIGNALS
            self._mask = mask
            self._unsettled = False
            self._exec_seen = False
            self._base = base
            if restore and self._outlives_tracer():
                mode = _Mode.GUARDED if self._guard(base, mask) else _Mode.SETTLE
            self._mode = mode
            if mode is not _Mode.SETTLE:
                self.set_sigmask(self._inject_mask)
            if mode is _Mode.GUARDED:
                self._query_altstack()
            else:
                self._frame = ptrace.SyscallFrame(self.tid, base)
            if pin_cpu:
                self._pinned = pin_together(self.tid, tracee_too=mode is _Mode.PLAIN)
            yield self
        finally:
            self._base = None
            self._frame = None
            self._mode = _Mode.PLAIN
            try:
                if mode is _Mode.GUARDED and not self.dead:
                    # Parked with the guard's registers, the mask first: whenever the
                    # tracer dies meanwhile, the frame returns the thread to `base`.
                    self._park()
                    self.set_sigmask(mask)
                    if not self._exec_seen:
                        self.set_regs(base)
                elif restore and not self.dead and (mode is _Mode.PLAIN or self._unsettled):
                    # After an injected execve the old registers belong to a gone image.
                    if not self._exec_seen:
                        self.set_regs(base)
                    self.set_sigmask(mask)
                    self._park()
            except NoSuchProcess:
                self.dead = True
            finally:
                if self._pinned is not None:
                    pinned, self._pinned = self._pinned, None
                    pinned.undo(tracee_alive=not self.dead)

    def _guard(self, base: Regs, mask: int) -> bool:
        """Set up the sigreturn guard (guard.py) for this session; False where it cannot
        be (no gadgets in the process's code, a stack the frame cannot be written to)."""
        gadgets = guard.find_gadgets(self.tid)
        if gadgets is None:
            return False
        try:
            fp = guard.fp_area(self.get_xstate())
        except OSError:
            fp = b""
        frame = guard.build_frame(base, mask, fp, gadgets.restorer, guard.NO_ALTSTACK)
        if not guard.fits_stack(self.tid, frame, base.rsp):
            return False
        try:
            self.write_mem(frame.addr, frame.data)
        except OSError:
            return False
        if not self.options & ptrace.PTRACE_O_TRACESYSGOOD:
            self.setoptions(self.options | ptrace.PTRACE_O_TRACESYSGOOD)
        self._guard_frame = frame
        self._syscall_ret = gadgets.syscall_ret
        # From here a resumed thread returns through the frame (rt_sigreturn at once).
        parked = base.copy()
        parked.rip = gadgets.restorer
        parked.rsp = frame.addr + 8
        parked.orig_rax = -1
        self.set_regs(parked)
        guarded = base.copy()
        guarded.rsp = frame.addr
        self._frame = ptrace.SyscallFrame(self.tid, guarded)
        return True

    def _query_altstack(self) -> None:
        """The thread's alternate signal stack, into the frame (the provisional frame says
        there is none: right for nearly every thread, should the tracer die meanwhile)."""
        frame = self._guard_frame
        assert frame is not None
        if self._inject(NR.sigaltstack, (0, frame.altstack_buf)) != 0:
            return
        sp, flags, _pad, size = guard.STACK_T.unpack(
            self.read_mem(frame.altstack_buf, guard.STACK_T.size)
        )
        if (sp, flags, size) != guard.NO_ALTSTACK:
            fixed = frame.with_altstack((sp, flags, size))
            self.write_mem(frame.addr, fixed.data[: guard.FRAME_HEAD])
            self._guard_frame = fixed

    def _park(self) -> None:
        """Move the thread from the stop of its last injected syscall (a single-step trap
        or, guarded, a syscall-exit stop) into a PTRACE_EVENT_STOP.

        A single-step trap is a SIGTRAP signal-delivery-stop with the single-step flag
        still set: if the tracer died there (SIGKILL), the kernel would detach the thread
        and deliver it that SIGTRAP, which kills it.  From an interrupt stop a tracer's
        death just lets it run on.  PTRACE_INTERRUPT, then PTRACE_CONT(0) cancels the
        SIGTRAP and clears the step flag, and the pending interrupt traps before any user
        instruction runs.  Registers set in an interrupt stop also get the kernel's
        restart of an interrupted syscall when the thread resumes; in a syscall stop they
        would not.
        """
        if not self._stepped:
            return
        self._stepped = False
        ptrace.interrupt(self.tid)
        self.stopped = False
        ptrace.cont(self.tid, 0)
        self.wait_interrupted(INJECT_TIMEOUT)

    def wait_interrupted(self, timeout: float | None = None) -> int:
        raise NotImplementedError

    @property
    def session_regs(self) -> Regs:
        if self._base is None:
            raise InjectionError("no injection session is open", pid=self.tid)
        return self._base

    def syscall(self, nr: int, *args: int) -> int:
        """Run syscall `nr` in the thread; returns the raw signed result (-errno on error).

        Events of the call (a clone3 child's tid, ...) are in `last_events` afterwards.
        """
        if len(args) > 6:
            raise ValueError("a syscall takes at most 6 arguments")
        if self._base is not None:
            return self._inject(nr, args)
        with self.session():
            return self._inject(nr, args)

    def syscall_checked(self, nr: int, *args: int) -> int:
        """syscall(), raising OSError(errno, '... pid ... name ...') on -4095..-1."""
        ret = self.syscall(nr, *args)
        if -MAX_ERRNO <= ret <= -1:
            argstr = ", ".join(hex(a) if a > 0xFFFF else str(a) for a in args)
            raise OSError(
                -ret,
                f"injected {syscall_name(nr)}({argstr}) in pid {self.tid}: {os.strerror(-ret)}",
            )
        return ret

    def syscall_without_trap(self, nr: int, *args: int) -> int:
        """syscall() run to its syscall-exit stop (PTRACE_SYSCALL) instead of a single-step
        trap: a ptrace stop, not a signal.  The single-step trap is a forced SIGTRAP, and
        the kernel resets an ignored (or blocked) SIGTRAP to SIG_DFL when it forces one
        (force_sig_info_to_task): the injections that give back an ignored SIGTRAP go
        this way.  For calls without fork, exec or exit events."""
        self._no_trap = True
        try:
            return self.syscall(nr, *args)
        finally:
            self._no_trap = False

    def ignore_sigtrap(self, flags: int, restorer: int, mask: int) -> None:
        """Set SIGTRAP's action back to SIG_IGN (with its flags, restorer and mask) as the
        last injection into a process that ignored it: each earlier injection's forced
        trap reset it to SIG_DFL.  The struct goes below the thread's stack pointer (past
        the red zone; the bytes there are put back), as a scratch mapping would need
        injections of its own.  Under the sigreturn guard, whose frame lies there, it goes
        in the frame's siginfo, which rt_sigreturn never reads."""
        with self.session():
            memory = self.memory
            frame = self._guard_frame if self._mode is _Mode.GUARDED else None
            below = (self.session_regs.rsp - 4096) & ~63
            addr = frame.altstack_buf if frame is not None else below
            act = SIGACTION.pack(SIG_IGN, flags, restorer, mask)
            saved = memory.read(addr, len(act))
            memory.write(addr, act)
            try:
                ret = self.syscall_without_trap(NR.rt_sigaction, signal.SIGTRAP, addr, 0, 8)
            finally:
                memory.write(addr, saved)
            if ret < 0:
                raise InjectionError(
                    f"process {self.tid}: cannot give SIGTRAP back its SIG_IGN action "
                    f"({os.strerror(-ret)})",
                    pid=self.tid,
                )

    def _inject(self, nr: int, args: tuple[int, ...]) -> int:
        frame = self._frame
        assert frame is not None
        tid = self.tid
        guarded = self._mode is _Mode.GUARDED
        # Guarded: at the process's `syscall; ret`, run to the syscall's exit stop; else at
        # a `syscall` instruction, single-stepped over.
        rip = self._syscall_ret if guarded else self.syscall_addr
        # By syscall stops (PTRACE_SYSCALL), not a single-step trap: guarded, or asked for
        # (syscall_without_trap: a forced step trap resets an ignored SIGTRAP).
        stops = guarded or self._no_trap
        resume = ptrace.resume_syscall if stops else ptrace.singlestep
        frame.load(rip, nr, *args)
        events: list[tuple[int, int]] = []
        self.last_events = events
        if self._mode is _Mode.SETTLE:
            self.set_sigmask(self._inject_mask)
            self._unsettled = True  # until _settle: the session's end puts things back
        self.stopped = False
        self._stepped = True
        entered = False  # by syscall stops: the syscall-entry stop was seen
        resume(tid, 0)
        deadline = time.monotonic() + INJECT_TIMEOUT
        while True:
            status = self._wait_step(nr, deadline)
            if ptrace.is_dead(status):
                self._mark_dead(status)
                if nr in _NO_RETURN:
                    return 0
                raise NoSuchProcess(
                    tid,
                    f"thread {tid} {ptrace.describe_status(status)} "
                    f"during injected {syscall_name(nr)}",
                )
            self.stopped = True
            self.stop_status = status
            event = ptrace.stop_event(status)
            sig = ptrace.stop_signal(status)
            if event == 0:
                if stops and (
                    sig == _SYSCALL_STOP or (sig == signal.SIGTRAP and _is_step_trap(tid))
                ):
                    if entered:
                        break  # the syscall's exit stop
                    entered = True
                elif not stops and sig == signal.SIGTRAP and _is_step_trap(tid):
                    break  # the single-step trap at syscall exit
                elif sig in _FATAL_SIGNALS:
                    raise InjectionError(
                        f"injected {syscall_name(nr)} in pid {tid} at {rip:#x} got "
                        f"{signal.Signals(sig).name}",
                        pid=tid,
                        signal=sig,
                    )
                else:
                    # Only SIGSTOP/SIGKILL (and a sent SIGTRAP) get past the mask; keep it
                    # for detach().
                    self.pending_signals.append(sig)
            elif event in CHILD_EVENTS:
                # fork/clone events come before the step trap; the message is the new tid.
                child = ptrace.geteventmsg(tid)
                events.append((event, child))
                if self._pinned is not None:
                    # The child inherited the session's one-CPU pinning: give it the real mask.
                    try:
                        os.sched_setaffinity(child, self._pinned.theirs)
                    except OSError:
                        pass
            elif event == ptrace.PTRACE_EVENT_EXIT:
                events.append((event, ptrace.geteventmsg(tid)))
                return 0  # exit/exit_group (or a kill) never returns; the thread is exiting
            elif event == ptrace.PTRACE_EVENT_EXEC:
                # Step once more to finish execve, else rax reads execve's in-kernel 0.
                events.append((event, ptrace.geteventmsg(tid)))
                self._exec_seen = True
                self._syscall_addr = None
            # PTRACE_EVENT_STOP here is a stale interrupt or group-stop trap: step on.
            self.stopped = False
            resume(tid, 0)
        result = frame.result()
        if self._mode is _Mode.SETTLE:
            self._settle(frame)
        return result

    def _settle(self, frame: ptrace.SyscallFrame) -> None:
        """After one injected syscall of a thread that outlives its tracer: park it in an
        interrupt stop (still with every signal blocked, so none is delivered meanwhile),
        then give it its own registers and mask back until the next syscall."""
        self._park()
        if not self._exec_seen:
            frame.restore_base()
        self.set_sigmask(self._mask)
        self._unsettled = False

    def _wait_step(self, nr: int, deadline: float) -> int:
        """The next wait status of the thread running injected syscall `nr`, waited for
        with a bound: a thread frozen by a cgroup freezer, or asleep in the kernel, never
        comes back from its step.  Polled: a blocking waitpid has no timeout, and the
        thread, pinned to our CPU, runs as soon as we yield (as fast as blocking here)."""
        tid = self.tid
        spin_until = time.monotonic() + _SPIN
        delay = 0.0001
        while True:
            got, status = ptrace.waitpid(tid, ptrace.WALL | ptrace.WNOHANG)
            if got:
                return status
            now = time.monotonic()
            if now < spin_until:
                os.sched_yield()
                continue
            if now > deadline:
                raise InjectionError(
                    f"thread {tid} did not come back from injected {syscall_name(nr)} "
                    f"within {INJECT_TIMEOUT:.0f} s: frozen by a cgroup freezer, or stuck in "
                    f"the kernel (state {_PROC.state(tid) or '?'})",
                    pid=tid,
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.005)

    def new_tids(self) -> list[int]:
        """Tids created by the last injected syscall (clone3/fork/vfork events)."""
        return [msg for ev, msg in self.last_events if ev in CHILD_EVENTS]


def _is_step_trap(tid: int) -> bool:
    """Whether the thread's SIGTRAP stop is the kernel's trap (si_code > 0: TRAP_TRACE, ...)
    rather than a SIGTRAP sent by kill/tgkill/sigqueue (si_code <= 0)."""
    si_code = int.from_bytes(ptrace.getsiginfo(tid)[8:12], "little", signed=True)
    return si_code > 0
