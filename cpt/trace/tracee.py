"""Tracee: one traced thread.

Its ptrace lifecycle is here: PTRACE_SEIZE, PTRACE_INTERRUPT and the wait for its stop,
resume, detach; and its registers and signal mask.  Its memory is memory.py's, syscall
injection inject.py's (the Injection mixin); whole processes are seize.py's.
"""

from __future__ import annotations

import errno
import os
import signal
import time

from cpt.errors import NoSuchProcess
from cpt.procfs import Proc
from cpt.sys import ptrace
from cpt.sys.arch import Regs
from cpt.sys.task import tgkill

from .inject import Injection
from .memory import ThreadMemory

_SIGKILL = signal.SIGKILL

# Injected syscalls must not be filtered by the target's own seccomp filters.
DEFAULT_OPTIONS = ptrace.PTRACE_O_SUSPEND_SECCOMP
_SPIN = 0.001  # how long wait() polls, yielding the CPU, before it sleeps between polls
_PROC = Proc()


def tgid_of(tid: int) -> int:
    """The thread-group id (process id) of a thread, from /proc/TID/status."""
    return _PROC.tgid(tid)


class Tracee(Injection):
    """One traced thread.

    States: `stopped` is True while the thread sits in a ptrace-stop we waited for. After
    an injection the thread is in a SIGTRAP signal-delivery-stop, which `cont`/`detach`
    leave like any other stop (the kernel applies the saved registers' syscall restart).
    """

    def __init__(
        self, tid: int, *, pid: int | None = None, attached: bool = False, options: int = 0
    ) -> None:
        self.tid = tid
        self.pid = pid if pid is not None else tgid_of(tid)
        self.attached = attached
        self.options = options
        self.stopped = False
        self.dead = False
        self.exit_status: int | None = None
        self.stop_status = 0
        # (event, message) of PTRACE_EVENT stops seen while interrupting (fork/clone: new tid).
        self.events: list[tuple[int, int]] = []
        self.memory = ThreadMemory(tid)
        self._init_injection()

    def __repr__(self) -> str:
        state = "dead" if self.dead else "stopped" if self.stopped else "running"
        return f"<Tracee tid={self.tid} pid={self.pid} {state}>"

    # ---- attach / stop / resume --------------------------------------------------------------

    @classmethod
    def attach(
        cls, tid: int, options: int = DEFAULT_OPTIONS, timeout: float | None = 5.0
    ) -> Tracee:
        """PTRACE_SEIZE `tid` and stop it with PTRACE_INTERRUPT."""
        t = cls(tid)
        t.seize(options)
        try:
            t.interrupt(timeout)
        except BaseException:
            t.detach_quietly()
            raise
        return t

    @classmethod
    def adopt(cls, tid: int, options: int, timeout: float | None = 5.0) -> Tracee:
        """A task auto-attached through TRACEFORK/TRACECLONE: wait for its initial stop."""
        t = cls(tid, attached=True, options=options)
        t.wait_stop(timeout)
        return t

    def seize(self, options: int = DEFAULT_OPTIONS) -> None:
        ptrace.seize(self.tid, options)
        self.attached = True
        self.options = options

    def setoptions(self, options: int) -> None:
        ptrace.setoptions(self.tid, options)
        self.options = options

    def wait(self, timeout: float | None = None) -> int:
        """waitpid(tid, __WALL); NoSuchProcess (with `dead` set) if the thread is gone."""
        if timeout is None:
            _, status = ptrace.waitpid(self.tid, ptrace.WALL)
        else:
            now = time.monotonic()
            deadline = now + timeout
            spin_until = now + _SPIN  # a stop that comes at once (a parked thread) is not slept for
            delay = 0.0002
            while True:
                got, status = ptrace.waitpid(self.tid, ptrace.WALL | ptrace.WNOHANG)
                if got:
                    break
                now = time.monotonic()
                if now < spin_until:
                    os.sched_yield()
                    continue
                if now > deadline:
                    raise TimeoutError(
                        f"thread {self.tid} did not stop within {timeout} s "
                        f"(uninterruptible sleep or a cgroup v1 freezer?)"
                    )
                time.sleep(delay)
                delay = min(delay * 2, 0.002)
        if ptrace.is_dead(status):
            self._mark_dead(status)
            raise NoSuchProcess(
                self.tid,
                f"thread {self.tid} of process {self.pid} {ptrace.describe_status(status)}",
            )
        self.stopped = True
        self.stop_status = status
        return status

    def _mark_dead(self, status: int) -> None:
        self.dead = True
        self.stopped = False
        self.attached = False
        self.exit_status = status
        self.close()

    def interrupt(self, timeout: float | None = None) -> int:
        """PTRACE_INTERRUPT and wait for the PTRACE_EVENT_STOP; returns the wait status."""
        if self.stopped:
            # An INTERRUPT sent in a stop stays pending and traps again after the next resume.
            return self.stop_status
        ptrace.interrupt(self.tid)
        return self.wait_interrupted(timeout)

    def wait_interrupted(self, timeout: float | None = None) -> int:
        """The wait half of interrupt(), for a thread already sent PTRACE_INTERRUPT.

        A signal that races the interrupt is delivered (PTRACE_CONT(sig)) and the thread
        interrupted again; other ptrace events are recorded in `events` and stepped over.
        """
        while True:
            status = self.wait(timeout)
            event = ptrace.stop_event(status)
            if event == ptrace.PTRACE_EVENT_STOP:
                return status
            self.stopped = False
            if event:
                # Any trap clears the pending STOP trap (kernel ptrace_stop): interrupt anew.
                self.events.append((event, ptrace.geteventmsg(self.tid)))
                ptrace.cont(self.tid, 0)
            else:
                # A signal-delivery-stop won the race: hand the signal to the thread.
                ptrace.cont(self.tid, ptrace.stop_signal(status))
            ptrace.interrupt(self.tid)

    def wait_stop(self, timeout: float | None = None) -> int:
        """Wait for the initial PTRACE_EVENT_STOP of an auto-attached task."""
        status = self.wait(timeout)
        if not ptrace.is_event_stop(status):
            # Not the attach stop (a signal got in first): fall back to a real interrupt.
            self.stopped = False
            ptrace.cont(self.tid, ptrace.stop_signal(status))
            return self.interrupt(timeout)
        return status

    def cont(self, sig: int = 0) -> None:
        deliver = self._deliverable(sig)
        try:
            ptrace.cont(self.tid, deliver)
        except (OSError, NoSuchProcess) as e:
            gone = isinstance(e, NoSuchProcess) or e.errno == errno.ESRCH
            if deliver == sig or sig != _SIGKILL or not gone:
                raise
            # SIGKILL queued with tgkill killed the thread at once: nothing to restart
        self.stopped = False

    def _deliverable(self, sig: int) -> int:
        """The signal to pass to a ptrace restart.  Only a signal-delivery stop takes one:
        from an event or group stop (where a session parks a thread, inject.py) the kernel
        ignores it, so it is queued to the thread instead, and the restart passes none."""
        if sig and self.stopped and ptrace.stop_event(self.stop_status) != 0:
            tgkill(self.pid, self.tid, sig)
            return 0
        return sig

    def detach(self, sig: int = 0) -> None:
        """PTRACE_DETACH; re-delivers signals swallowed during injections."""
        pending = self.pending_signals
        self.pending_signals = []
        if not sig and pending:
            sig = pending.pop(0)
        ptrace.detach(self.tid, self._deliverable(sig))
        self.stopped = False
        self.attached = False
        for s in pending:
            tgkill(self.pid, self.tid, s)  # rare: a second unblockable signal
        self.close()

    def detach_quietly(self) -> None:
        """Detach if still attached; ignore a thread that is already gone."""
        if not self.attached or self.dead:
            self.close()
            return
        try:
            self.detach()
        except NoSuchProcess:
            self.dead = True
        except OSError as e:
            # ESRCH from a live thread: not in a ptrace-stop; stop it, then detach.
            if e.errno != errno.ESRCH:
                raise
            self.stopped = False
            try:
                self.interrupt(1.0)
                self.detach()
            except (NoSuchProcess, TimeoutError):
                pass
        finally:
            self.close()

    def close(self) -> None:
        self.memory.close()

    # ---- registers and masks -----------------------------------------------------------------

    def get_regs(self) -> Regs:
        return ptrace.getregs(self.tid)

    def set_regs(self, regs: Regs) -> None:
        ptrace.setregs(self.tid, regs)

    def get_fpregs(self) -> bytes:
        return ptrace.getregset(self.tid, ptrace.NT_PRFPREG, ptrace.USER_FPREGS_SIZE)

    def get_xstate(self) -> bytes:
        return ptrace.getregset(self.tid, ptrace.NT_X86_XSTATE, ptrace.xstate_size(self.tid))

    def set_xstate(self, data: bytes) -> None:
        ptrace.setregset(self.tid, ptrace.NT_X86_XSTATE, data)

    def get_sigmask(self) -> int:
        return ptrace.getsigmask(self.tid)

    def set_sigmask(self, mask: int) -> None:
        ptrace.setsigmask(self.tid, mask)

    # ---- memory (memory.py) ------------------------------------------------------------------

    def read_mem(self, addr: int, size: int) -> bytes:
        """Read through /proc/TID/mem (FOLL_FORCE: works on PROT_NONE and read-only pages)."""
        return self.memory.read(addr, size)

    def write_mem(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Write through /proc/TID/mem (also into read-only and PROT_NONE pages)."""
        self.memory.write(addr, data)
