"""The restore stub: a 185-byte static ELF, generated here as bytes, that idles in pause().

    ELF64 header | PT_LOAD (R+X, the whole file at STUB_BASE) | PT_GNU_STACK (RW, no exec)
    code:  loop: mov eax, 34 (pause) ; syscall ; jmp loop

No libc, so no glibc rseq registration, no TLS, no heap: after execve the task owns only
the stub page, a stack and the vDSO trio, which restore unmaps or moves. The injector can
use the stub's own `syscall` instruction (STUB_SYSCALL) before the vDSO is touched.

`spawn_stub` creates one with an exact PID (clone3 + set_tid from this process) and stops
it under ptrace; `clone_stub` makes a stub create a child process or a thread with an
exact id by an injected clone3, auto-attached through TRACEFORK/TRACECLONE.
"""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import time
from collections.abc import Callable, Sequence

from cpt.errors import NoSuchProcess, RestoreError
from cpt.procfs import fd_path
from cpt.sys import ptrace
from cpt.sys.clone import (
    CLONE_ARGS_SIZE,
    CLONE_CHILD_CLEARTID,
    CLONE_PARENT,
    CLONE_THREAD_FLAGS,
    clone3_execve,
    pack_clone_args,
    pack_set_tid,
)
from cpt.sys.files import MFD_ALLOW_SEALING, MFD_CLOEXEC, MFD_EXEC, memfd_create
from cpt.sys.syscalls import NR
from cpt.trace.tracee import DEFAULT_OPTIONS, Tracee

# Low, page aligned, above the usual vm.mmap_min_addr (4096 here, 65536 on many distros) and
# below where ld.so, PIE binaries, mmap and the stack go: nothing the kernel places at exec
# lands here, and few dumped layouts use it.
STUB_BASE = 0x10000

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # 64 bytes
_PHDR = struct.Struct("<IIQQQQQQ")  # 56 bytes
_PT_LOAD = 1
_PT_GNU_STACK = 0x6474E551
_PF_X, _PF_W, _PF_R = 1, 2, 4
_CODE = bytes.fromhex(
    "b822000000"  # loop: mov eax, 34   ; pause
    "0f05"  # syscall
    "ebf7"  # jmp loop
)
_CODE_OFFSET = _EHDR.size + 2 * _PHDR.size  # 176
STUB_SIZE = _CODE_OFFSET + len(_CODE)  # 185
STUB_ENTRY = STUB_BASE + _CODE_OFFSET
# The `syscall` instruction of the stub, and where a stub sleeping in pause() has its rip.
STUB_SYSCALL = STUB_ENTRY + 5
STUB_PAUSE_RIP = STUB_SYSCALL + 2

# Options a restorer wants on every stub: children and threads created by injected clone3 are
# auto-attached, the target's seccomp filters (installed late in restore) never block an
# injected call, and if the restorer dies the half-built tree dies with it.
STUB_OPTIONS = (
    DEFAULT_OPTIONS
    | ptrace.PTRACE_O_TRACEFORK
    | ptrace.PTRACE_O_TRACECLONE
    | ptrace.PTRACE_O_TRACEVFORK
    | ptrace.PTRACE_O_EXITKILL
)


def _elf(code: bytes, base: int) -> bytes:
    """A static ELF whose single PT_LOAD (R+X) maps the file at `base`, entry at the code."""
    if base % 4096:
        raise ValueError(f"ELF base {base:#x} is not page aligned")
    size = _CODE_OFFSET + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # ELFCLASS64, LSB, EV_CURRENT, SYSV
    ehdr = _EHDR.pack(
        ident, 2, 62, 1, base + _CODE_OFFSET, _EHDR.size, 0, 0, _EHDR.size, _PHDR.size, 2, 0, 0, 0
    )  # ET_EXEC, EM_X86_64, 2 phdrs, no sections
    load = _PHDR.pack(_PT_LOAD, _PF_R | _PF_X, 0, base, base, size, size, 0x1000)
    # Without PT_GNU_STACK the stack would default to the arch's exec-stack policy.
    stack = _PHDR.pack(_PT_GNU_STACK, _PF_R | _PF_W, 0, 0, 0, 0, 0, 16)
    return ehdr + load + stack + code


def build_stub(base: int = STUB_BASE) -> bytes:
    """The stub ELF image, loaded at `base` (page aligned)."""
    image = _elf(_CODE, base)
    assert len(image) == STUB_SIZE
    return image


# The reaper: hold no fd, reap every child, exit when the last one is gone.
#     close_range(0, ~0, 0)
#     loop: wait4(-1, NULL, __WALL, NULL) != -ECHILD ? goto loop
#     exit_group(0)
_CLOSE_ALL = bytes.fromhex("b8b401000031ffbeffffffff31d20f05")  # close_range(0,~0,0)
_WAIT4 = bytes.fromhex("b83d00000048c7c7ffffffff31f6ba000000404531d20f05")
_CMP_ECHILD = bytes.fromhex("4883f8f6")  # cmp rax, -ECHILD
_REAPER = (
    _CLOSE_ALL
    + _WAIT4
    + _CMP_ECHILD
    + bytes([0x75, -(len(_WAIT4) + len(_CMP_ECHILD) + 2) & 0xFF])  # jne: wait4 again
    + bytes.fromhex("b8e700000031ff0f05")  # exit_group(0)
    # Never run by the reaper: the two sequences an injection's sigreturn guard needs in a
    # process's own code (cpt/trace/guard.py), which a static program without libc lacks.
    + bytes.fromhex("0f05c3")  # syscall; ret
    + bytes.fromhex("48c7c00f0000000f05")  # mov $15, %rax; syscall (rt_sigreturn)
)


def _init_code() -> bytes:
    """The init of a restore's new PID namespace: first a stub (the same pause loop at the
    same offset, so the restorer drives it like any stub and clones the tree's root from
    it), then sent to INIT_REAPER by the restorer."""
    return _CODE + _REAPER


# where the init's reaper starts (the pause loop comes first, as in the stub)
INIT_REAPER = STUB_ENTRY + len(_CODE)


def build_init(base: int = STUB_BASE) -> bytes:
    """The init ELF of a restore's new PID namespace (see _init_code)."""
    return _elf(_init_code(), base)


def build_reaper(base: int = STUB_BASE) -> bytes:
    """A VE's init: a static program that only reaps (entered at the reaper itself)."""
    return _elf(_REAPER, base)


_memfds: dict[str, tuple[int, int]] = {}  # name -> (fd, owner pid)


def _exec_path(name: str, build: Callable[[], bytes]) -> str:
    """A path any process may execve: a sealed memfd of THIS process, /proc/<pid>/fd/<n>,
    valid while this process lives (created once per process)."""
    return fd_path(os.getpid(), _exec_fd(name, build))


def stub_exec_fd() -> int:
    """The stub's sealed memfd in THIS process: a child that inherits it may execve
    /proc/self/fd/<it> (a child in another user namespace may not reach this process's
    /proc/<pid>/fd, and this process may be gone by the time it execs)."""
    return _exec_fd("cpt-stub", build_stub)


def _exec_fd(name: str, build: Callable[[], bytes]) -> int:
    fd, owner = _memfds.get(name, (-1, -1))
    if owner != os.getpid():
        if fd >= 0:
            # Forked since: the inherited memfd is reachable only as /proc/<parent>/fd/N.
            os.close(fd)
        fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_EXEC)
        os.write(fd, build())
        fcntl.fcntl(
            fd,
            fcntl.F_ADD_SEALS,
            fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE,
        )
        owner = os.getpid()
        _memfds[name] = (fd, owner)
    return fd


def stub_exec_path() -> str:
    return _exec_path("cpt-stub", build_stub)


def init_exec_path() -> str:
    return _exec_path("cpt-init", build_init)


def start_stub(
    set_tid: Sequence[int] | None = None, flags: int = 0, path: str | None = None
) -> int:
    """Start a stub as a child of this process (exit signal SIGCHLD), not traced; returns
    its pid. `set_tid` asks for exact ids, innermost pid namespace first; `flags` are extra
    CLONE_* flags (CLONE_NEWPID makes it the init of a new pid namespace: set_tid=[1, pid]);
    `path` runs another stub-shaped program (the namespace init)."""
    return clone3_execve(path or stub_exec_path(), ["cpt-stub"], [], set_tid=set_tid, flags=flags)


def spawn_stub(
    set_tid: Sequence[int] | None = None,
    options: int = STUB_OPTIONS,
    timeout: float = 5.0,
    flags: int = 0,
    path: str | None = None,
) -> Tracee:
    """Start a stub, PTRACE_SEIZE it and stop it once it runs stub code (normally asleep in
    pause()). The returned Tracee injects through STUB_SYSCALL. On failure the stub is
    killed and reaped."""
    return attach_stub(start_stub(set_tid, flags, path), options, timeout)


def attach_stub(pid: int, options: int = STUB_OPTIONS, timeout: float = 5.0) -> Tracee:
    """PTRACE_SEIZE the stub `pid` (a child of this process that is about to run, or runs,
    the stub's code) and stop it in the stub's code; see spawn_stub."""
    try:
        t = Tracee(pid, pid=pid)
        t.seize(options)
        deadline = time.monotonic() + timeout
        while True:
            t.interrupt(timeout)
            rip = t.get_regs().rip
            if STUB_BASE <= rip < STUB_BASE + STUB_SIZE:
                break
            # Stopped before its execve (still in this process's clone3 trampoline): go on.
            t.cont()
            if time.monotonic() > deadline:
                raise RestoreError(f"stub {pid} did not reach its code within {timeout} s", pid=pid)
            time.sleep(0.0002)
        t.syscall_addr = STUB_SYSCALL
        return t
    except NoSuchProcess as e:
        raise RestoreError(
            f"stub {pid} died before it could be stopped ({e}); execve of "
            f"{stub_exec_path()} failed?",
            pid=pid,
        ) from e
    except BaseException:
        kill_and_reap(pid)
        raise


def kill_and_reap(pid: int) -> None:
    """SIGKILL a child of this process and reap it (ignores one that is already gone)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, ptrace.WALL)
    except ChildProcessError:
        pass


def clone_stub(
    parent: Tracee,
    scratch: int,
    set_tid: Sequence[int] | None = None,
    thread: bool = False,
    child_tid: int = 0,
    timeout: float = 5.0,
    sibling: bool = False,
    share: int = 0,
) -> Tracee:
    """Make the stub `parent` clone3 a child process (or, with `thread`, a thread) with
    the exact ids `set_tid`, by injection; returns the new task, stopped and attached.

    `scratch` is writable memory in the parent (>= 88 + 4 * len(set_tid) bytes) for the
    struct clone_args and the set_tid array. The parent must be traced with TRACEFORK (or
    TRACECLONE for a thread). A thread gets no stack of its own: fine for stubs, which never
    touch the stack. With `child_tid`, the thread gets CLONE_CHILD_CLEARTID at that address.
    With `sibling`, the child is the parent's sibling (CLONE_PARENT: its parent is the
    stub's parent, its session and group the stub's); clone3 then wants exit signal 0 (the
    child takes the stub's, SIGCHLD) and the kernel reports a clone event (TRACECLONE).
    `share`: CLONE_FILES and CLONE_FS, for a child sharing its parent's.
    """
    tids = list(set_tid or [])
    clone_event = thread or sibling
    need = ptrace.PTRACE_O_TRACECLONE if clone_event else ptrace.PTRACE_O_TRACEFORK
    if not parent.options & need:
        raise ValueError(
            f"pid {parent.tid} is not traced with "
            f"{'TRACECLONE' if clone_event else 'TRACEFORK'}: the child would escape"
        )
    flags = CLONE_THREAD_FLAGS if thread else CLONE_PARENT if sibling else 0
    flags |= share
    if child_tid:
        flags |= CLONE_CHILD_CLEARTID
    args = pack_clone_args(
        flags=flags,
        exit_signal=0 if clone_event else signal.SIGCHLD,
        set_tid=scratch + CLONE_ARGS_SIZE if tids else 0,
        set_tid_size=len(tids),
        child_tid=child_tid,
    )
    parent.write_mem(scratch, args + pack_set_tid(tids))
    ret = parent.syscall_checked(NR.clone3, scratch, CLONE_ARGS_SIZE)
    new = parent.new_tids()
    if not new:
        raise RestoreError(
            f"injected clone3 in pid {parent.tid} returned {ret} but reported no fork/clone event",
            pid=parent.tid,
        )
    child = Tracee.adopt(new[0], options=parent.options, timeout=timeout)
    child.syscall_addr = parent.syscall_addr
    return child
