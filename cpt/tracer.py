"""The tracer: seize and freeze threads, and run syscalls inside them (syscall injection).

Mechanism (ENGINE-NOTES "Syscall injection"): with the thread in a ptrace-stop, save its
NT_PRSTATUS and signal mask, block every signal, point rip at a `syscall` instruction
(0f 05) already present in the target, load rax = nr, orig_rax = -1 and the arguments,
PTRACE_SINGLESTEP, and wait for the single-step SIGTRAP: the kernel reports it at syscall
exit, before the next instruction is fetched, so rax holds the result. Then put the saved
registers and mask back. A `session()` saves once, runs many syscalls, restores once.

Everything here runs in ONE Python thread: ptrace state belongs to the tracer thread.
This module never imports ctypes; the kernel interface is cpt.sys.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from cpt.errors import InjectionError, NoSuchProcess
from cpt.procfs import Proc, VmaKind, open_mem, read_mem
from cpt.sys import ptrace
from cpt.sys.arch import MAX_ERRNO, SYSCALL_INSN, Regs
from cpt.sys.syscalls import NR, syscall_name
from cpt.sys.task import tgkill

# Injected syscalls must not be filtered by the target's own seccomp filters.
DEFAULT_OPTIONS = ptrace.PTRACE_O_SUSPEND_SECCOMP
ALL_SIGNALS = (1 << 64) - 1
# Signals the kernel forces through a blocked mask when the injected instruction faults; SIGSYS
# is a seccomp RET_TRAP filter (the tracee was seized without PTRACE_O_SUSPEND_SECCOMP).
_FATAL_SIGNALS = frozenset(
    {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGSYS}
)
_CHILD_EVENTS = frozenset(
    {ptrace.PTRACE_EVENT_FORK, ptrace.PTRACE_EVENT_VFORK, ptrace.PTRACE_EVENT_CLONE}
)
_AUTO_ATTACH_OPTIONS = (
    ptrace.PTRACE_O_TRACEFORK | ptrace.PTRACE_O_TRACEVFORK | ptrace.PTRACE_O_TRACECLONE
)
_NO_RETURN = frozenset({int(NR.exit), int(NR.exit_group)})
_PROC = Proc()


def list_tids(pid: int) -> list[int]:
    """Thread ids of `pid` from /proc/PID/task, the leader first."""
    tids = _PROC.tasks(pid)
    if pid in tids:
        tids.remove(pid)
        tids.insert(0, pid)
    return tids


def tgid_of(tid: int) -> int:
    """The thread-group id (process id) of a thread, from /proc/TID/status."""
    return _PROC.tgid(tid)


def find_vdso_syscall(pid: int) -> int:
    """Address of a `syscall` instruction inside the [vdso] of `pid` (read, never written)."""
    for v in _PROC.maps(pid):
        if v.kind is VmaKind.VDSO:
            code = read_mem(pid, v.start, v.size)
            off = code.find(SYSCALL_INSN)
            if off < 0:
                break
            return v.start + off
    raise InjectionError(
        f"process {pid} has no [vdso] with a syscall instruction; set the "
        f"injection address explicitly",
        pid=pid,
    )


class Tracee:
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
        # The same for the last injected syscall: (PTRACE_EVENT_CLONE, new_tid), ...
        self.last_events: list[tuple[int, int]] = []
        # Unblockable signals (SIGSTOP) that stopped the thread during an injection; they are
        # handed back to the kernel by detach().
        self.pending_signals: list[int] = []
        self._syscall_addr: int | None = None
        self._mem_fd: int | None = None
        self._base: Regs | None = None  # registers the current session restores
        self._frame: ptrace.SyscallFrame | None = None
        self._orig_affinity: set[int] | None = None
        self._exec_seen = False

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
            deadline = time.monotonic() + timeout
            delay = 0.0002
            while True:
                got, status = ptrace.waitpid(self.tid, ptrace.WALL | ptrace.WNOHANG)
                if got:
                    break
                if time.monotonic() > deadline:
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
        ptrace.cont(self.tid, sig)
        self.stopped = False

    def detach(self, sig: int = 0) -> None:
        """PTRACE_DETACH; re-delivers signals swallowed during injections."""
        pending = self.pending_signals
        self.pending_signals = []
        if not sig and pending:
            sig = pending.pop(0)
        ptrace.detach(self.tid, sig)
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
        if self._mem_fd is not None:
            os.close(self._mem_fd)
            self._mem_fd = None

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

    # ---- memory --------------------------------------------------------------------------------

    def _mem(self) -> int:
        if self._mem_fd is None:
            self._mem_fd = open_mem(self.tid, os.O_RDWR)
        return self._mem_fd

    def read_mem(self, addr: int, size: int) -> bytes:
        """Read through /proc/TID/mem (FOLL_FORCE: works on PROT_NONE and read-only pages)."""
        fd = self._mem()
        out = bytearray()
        while len(out) < size:
            try:
                chunk = os.pread(fd, size - len(out), addr + len(out))
            except OSError as e:
                raise OSError(
                    e.errno,
                    f"read {size} bytes at {addr + len(out):#x} of pid {self.tid}: {e.strerror}",
                ) from None
            if not chunk:
                raise OSError(
                    errno.EIO, f"read at {addr + len(out):#x} of pid {self.tid}: unmapped address"
                )
            out += chunk
        return bytes(out)

    def write_mem(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Write through /proc/TID/mem (also into read-only and PROT_NONE pages)."""
        fd = self._mem()
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            try:
                n = os.pwrite(fd, view[done:], addr + done)
            except OSError as e:
                raise OSError(
                    e.errno,
                    f"write {len(view)} bytes at {addr + done:#x} of pid {self.tid}: {e.strerror}",
                ) from None
            if n <= 0:
                raise OSError(
                    errno.EIO, f"write at {addr + done:#x} of pid {self.tid}: unmapped address"
                )
            done += n

    # ---- syscall injection ---------------------------------------------------------------------

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
    def session(self, restore: bool = True, pin_cpu: bool = True) -> Iterator[Tracee]:
        """Save registers and mask, block all signals; restore both on exit.

        Nested sessions share the outer one. `restore=False` leaves the last injected
        register state and the all-blocked mask in place (restore sets its own at the end).
        The registers to restore are `session_regs`, which the caller may edit.

        `pin_cpu` runs tracer and tracee on one CPU for the session (both affinities are put
        back at exit, and tasks created by injected clone3 get the tracee's original mask):
        a ptrace round trip across CPUs costs 60-70 us in this VM, on one CPU ~16 us.
        """
        if self._base is not None:
            yield self
            return
        if not self.stopped:
            raise InjectionError(f"thread {self.tid} is not in a ptrace-stop", pid=self.tid)
        base = self.get_regs()
        mask = self.get_sigmask()
        pinned: tuple[set[int], set[int]] | None = None
        try:
            self.set_sigmask(ALL_SIGNALS)
            self._base = base
            self._frame = ptrace.SyscallFrame(self.tid, base)
            self._exec_seen = False
            if pin_cpu:
                pinned = self._pin()
            yield self
        finally:
            self._base = None
            self._frame = None
            if pinned is not None:
                self._unpin(*pinned)
            if restore and not self.dead:
                try:
                    # After an injected execve the old registers belong to a gone image.
                    if not self._exec_seen:
                        self.set_regs(base)
                    self.set_sigmask(mask)
                except NoSuchProcess:
                    self.dead = True

    def _pin(self) -> tuple[set[int], set[int]] | None:
        """Pin tracee and tracer to one CPU both may use; None if that is impossible."""
        try:
            mine = os.sched_getaffinity(0)
            theirs = os.sched_getaffinity(self.tid)
        except OSError:
            return None
        common = mine & theirs
        if not common or (len(mine) == 1 and mine == theirs):
            return None  # no CPU both may use, or both already share their only one
        cpu = _PROC.current_cpu()
        if cpu not in common:
            cpu = min(common)
        try:
            os.sched_setaffinity(self.tid, {cpu})
        except OSError:
            # A cpuset cgroup may forbid the CPU (EINVAL): inject unpinned.
            return None
        self._orig_affinity = theirs
        os.sched_setaffinity(0, {cpu})
        return mine, theirs

    def _unpin(self, mine: set[int], theirs: set[int]) -> None:
        self._orig_affinity = None
        os.sched_setaffinity(0, mine)
        if not self.dead:
            try:
                os.sched_setaffinity(self.tid, theirs)
            except OSError:
                pass  # the thread exited meanwhile (ESRCH)

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

    def _inject(self, nr: int, args: tuple[int, ...]) -> int:
        frame = self._frame
        assert frame is not None
        tid = self.tid
        rip = self.syscall_addr
        frame.load(rip, nr, *args)
        events: list[tuple[int, int]] = []
        self.last_events = events
        self.stopped = False
        ptrace.singlestep(tid, 0)
        while True:
            _, status = ptrace.waitpid(tid, ptrace.WALL)
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
                if sig == signal.SIGTRAP:
                    break  # the single-step trap at syscall exit
                if sig in _FATAL_SIGNALS:
                    raise InjectionError(
                        f"injected {syscall_name(nr)} in pid {tid} at {rip:#x} got "
                        f"{signal.Signals(sig).name}",
                        pid=tid,
                        signal=sig,
                    )
                # Only SIGSTOP/SIGKILL get past the all-blocked mask; keep it for detach().
                self.pending_signals.append(sig)
            elif event in _CHILD_EVENTS:
                # fork/clone events come before the step trap; the message is the new tid.
                child = ptrace.geteventmsg(tid)
                events.append((event, child))
                if self._orig_affinity is not None:
                    # The child inherited the session's one-CPU pinning: give it the real mask.
                    try:
                        os.sched_setaffinity(child, self._orig_affinity)
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
            ptrace.singlestep(tid, 0)
        return frame.result()

    def new_tids(self) -> list[int]:
        """Tids created by the last injected syscall (clone3/fork/vfork events)."""
        return [msg for ev, msg in self.last_events if ev in _CHILD_EVENTS]


# ---- whole processes -------------------------------------------------------------------------


def freeze_process(
    pid: int, options: int = DEFAULT_OPTIONS, timeout: float | None = 5.0
) -> list[Tracee]:
    """Seize and interrupt every thread of `pid`, re-reading /proc/PID/task until no new
    thread appears; returns the stopped Tracees, the leader first (if it is not a zombie).

    Threads are seized without fork/clone auto-attach (a thread created meanwhile is found
    by the re-read instead); `options` are applied in full once all threads are stopped.
    On failure every thread seized so far is detached again.
    """
    seize_opts = options & ~_AUTO_ATTACH_OPTIONS
    tracees: dict[int, Tracee] = {}
    gone: set[int] = set()
    try:
        while True:
            new = [t for t in list_tids(pid) if t not in tracees and t not in gone]
            if not new:
                break
            batch: list[Tracee] = []
            for tid in new:
                # A zombie leader (it called pthread_exit) cannot be seized (EPERM).
                if _PROC.state(tid) in (None, "Z", "X"):
                    gone.add(tid)
                    continue
                t = Tracee(tid, pid=pid)
                try:
                    t.seize(seize_opts)
                except NoSuchProcess:
                    gone.add(tid)
                    continue
                except OSError as e:
                    # A thread past exit_notify() refuses PTRACE_SEIZE with EPERM, not ESRCH.
                    if e.errno == errno.EPERM and _PROC.state(tid) in (None, "Z", "X"):
                        gone.add(tid)
                        continue
                    raise
                tracees[tid] = t
                batch.append(t)
                try:
                    ptrace.interrupt(tid)
                except NoSuchProcess:
                    pass  # it died after the seize: the wait below collects its exit
            for t in batch:
                try:
                    t.wait_interrupted(timeout)
                except NoSuchProcess:
                    del tracees[t.tid]
                    gone.add(t.tid)
        if not tracees:
            raise NoSuchProcess(pid)
        if options != seize_opts:
            for t in tracees.values():
                t.setoptions(options)
    except BaseException:
        detach_all(tracees.values())
        raise
    return sorted(tracees.values(), key=lambda t: (t.tid != pid, t.tid))


def detach_all(tracees: Iterable[Tracee]) -> None:
    """Detach every tracee still attached; threads that died meanwhile are skipped."""
    first: BaseException | None = None
    for t in tracees:
        try:
            t.detach_quietly()
        except OSError as e:
            first = first or e
    if first is not None:
        raise first


def reap_traced(tracees: Iterable[Tracee], timeout: float = 5.0) -> None:
    """Collect the exit of killed traced threads, so their real parents can reap them.

    All of them are polled together, not one after another: the kernel reports a
    thread-group leader's exit only once every other thread of the group has been reaped,
    and the init of a PID namespace exits only once every process of its namespace is
    gone, each of which waits for us first.
    """
    pending = [t for t in tracees if not t.dead]
    deadline = time.monotonic() + timeout
    delay = 0.0002
    while pending:
        progressed = False
        for t in list(pending):
            try:
                t.wait(0)
            except NoSuchProcess:
                pending.remove(t)
                progressed = True
                continue
            except TimeoutError:
                continue
            progressed = True  # a stop on the way out (an exit event): let it go on
            with contextlib.suppress(OSError, NoSuchProcess):
                t.cont()
        if not pending or time.monotonic() > deadline:
            return
        if not progressed:
            time.sleep(delay)
            delay = min(delay * 2, 0.002)
        else:
            delay = 0.0002
