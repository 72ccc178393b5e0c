"""clone3(2): struct clone_args, and creating a task that execs at once with an exact PID.

A child of clone3 called through ctypes would return into libffi and the interpreter, i.e.
run Python in a copy of this process. `clone3_execve` instead calls a 49-byte machine-code
trampoline (generated below, on a page mapped R+X only after writing) that does
clone3 -> (child) execve -> exit_group(127) with raw `syscall` instructions only, so the
child never executes a single instruction of Python, glibc or libffi.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import struct
from collections.abc import Callable, Sequence

from cpt.procfs import Proc
from cpt.sys._libc import errno_error, get_errno, raw_syscall
from cpt.sys.mem import PROT_EXEC, PROT_READ
from cpt.sys.syscalls import NR

CLONE_VM = 0x00000100
CLONE_FS = 0x00000200
CLONE_FILES = 0x00000400
CLONE_SIGHAND = 0x00000800
CLONE_PIDFD = 0x00001000
CLONE_PTRACE = 0x00002000
CLONE_VFORK = 0x00004000
CLONE_PARENT = 0x00008000
CLONE_THREAD = 0x00010000
CLONE_SYSVSEM = 0x00040000
CLONE_SETTLS = 0x00080000
CLONE_PARENT_SETTID = 0x00100000
CLONE_CHILD_CLEARTID = 0x00200000
CLONE_DETACHED = 0x00400000
CLONE_UNTRACED = 0x00800000
CLONE_CHILD_SETTID = 0x01000000
CLONE_IO = 0x80000000
CLONE_CLEAR_SIGHAND = 0x100000000
CLONE_INTO_CGROUP = 0x200000000

# The flags of a thread as glibc's pthread_create sets them (minus SETTLS/SETTID: restore
# sets fs_base through registers and the tid address through set_tid_address).
CLONE_THREAD_FLAGS = (
    CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM
)

# struct clone_args (include/uapi/linux/sched.h), CLONE_ARGS_SIZE_VER2.
CLONE_ARGS = struct.Struct("<11Q")
CLONE_ARGS_SIZE = CLONE_ARGS.size  # 88


def pack_clone_args(
    flags: int = 0,
    exit_signal: int = 0,
    set_tid: int = 0,
    set_tid_size: int = 0,
    pidfd: int = 0,
    child_tid: int = 0,
    parent_tid: int = 0,
    stack: int = 0,
    stack_size: int = 0,
    tls: int = 0,
    cgroup: int = 0,
) -> bytes:
    """struct clone_args. Pointer fields (pidfd, child_tid, parent_tid, set_tid) are
    addresses in the memory of the process that executes clone3."""
    return CLONE_ARGS.pack(
        flags,
        pidfd,
        child_tid,
        parent_tid,
        exit_signal,
        stack,
        stack_size,
        tls,
        set_tid,
        set_tid_size,
        cgroup,
    )


def pack_set_tid(tids: Sequence[int]) -> bytes:
    """pid_t set_tid[]: tids[0] is the id in the child's OWN (innermost) pid namespace,
    tids[-1] the id in the outermost one requested (kernel alloc_pid order)."""
    return struct.pack(f"<{len(tids)}i", *tids)


# clone3(rdi=&args, rsi=size) with rdx=path, rcx=argv, r8=envp; see the module docstring.
_TRAMPOLINE = bytes.fromhex(
    "4989d2"  # mov r10, rdx        ; path (rcx is clobbered by syscall)
    "4989c9"  # mov r9, rcx         ; argv
    "b8b3010000"  # mov eax, 435    ; clone3
    "0f05"  # syscall
    "4885c0"  # test rax, rax
    "751e"  # jnz ret             ; parent: pid or -errno
    "4c89d7"  # mov rdi, r10        ; child: execve(path, argv, envp)
    "4c89ce"  # mov rsi, r9
    "4c89c2"  # mov rdx, r8
    "b83b000000"  # mov eax, 59
    "0f05"  # syscall
    "bf7f000000"  # mov edi, 127      ; execve failed: exit_group(127)
    "b8e7000000"  # mov eax, 231
    "0f05"  # syscall
    "0f0b"  # ud2
    "c3"  # ret
)

_tramp_fn: Callable[..., int] | None = None
_tramp_map: mmap.mmap | None = None


def _trampoline() -> Callable[..., int]:
    global _tramp_fn, _tramp_map
    if _tramp_fn is None:
        m = mmap.mmap(-1, mmap.PAGESIZE)
        m.write(_TRAMPOLINE)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
        # Write first, then flip to R+X: the page is never writable and executable at once.
        if raw_syscall(NR.mprotect, addr, mmap.PAGESIZE, PROT_READ | PROT_EXEC) != 0:
            raise errno_error(get_errno(), "mprotect(clone3 trampoline)")
        proto = ctypes.CFUNCTYPE(
            ctypes.c_long,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_char_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
        )
        _tramp_fn = proto(addr)
        _tramp_map = m
    return _tramp_fn


def _cstr_array(items: Sequence[str | bytes]) -> ctypes.Array[ctypes.c_char_p]:
    arr = (ctypes.c_char_p * (len(items) + 1))()
    for i, s in enumerate(items):
        arr[i] = os.fsencode(s)
    arr[len(items)] = None
    return arr


def clone3_execve(
    path: str | bytes,
    argv: Sequence[str | bytes],
    envp: Sequence[str | bytes] = (),
    set_tid: Sequence[int] | None = None,
    flags: int = 0,
    exit_signal: int = signal.SIGCHLD,
) -> int:
    """clone3 a child of this process that immediately execve()s `path`; returns its pid.

    `set_tid` asks for exact ids (see pack_set_tid; EEXIST if taken, needs
    CAP_CHECKPOINT_RESTORE). A child whose execve fails exits with code 127. Must not be
    combined with CLONE_VM/CLONE_THREAD/CLONE_VFORK (the child runs on a COW copy of this
    thread's stack).
    """
    if flags & (CLONE_VM | CLONE_THREAD | CLONE_VFORK | CLONE_SETTLS):
        raise ValueError("clone3_execve: the child must get its own copy of the address space")
    path_b = os.fsencode(path)
    argv_a = _cstr_array(list(argv))
    envp_a = _cstr_array(list(envp))
    tids = list(set_tid or [])
    tid_buf = ctypes.create_string_buffer(pack_set_tid(tids), max(4 * len(tids), 1))
    args = ctypes.create_string_buffer(
        pack_clone_args(
            flags=flags,
            exit_signal=exit_signal,
            set_tid=ctypes.addressof(tid_buf) if tids else 0,
            set_tid_size=len(tids),
        ),
        CLONE_ARGS_SIZE,
    )
    ret = int(
        _trampoline()(
            ctypes.addressof(args),
            CLONE_ARGS_SIZE,
            path_b,
            ctypes.addressof(argv_a),
            ctypes.addressof(envp_a),
        )
    )
    if ret < 0:
        # The trampoline returns the kernel's -errno directly (no libc errno in between).
        want = f" with pid {tids[0]}" if tids else ""
        raise OSError(
            -ret, f"clone3{want} to exec {path_b.decode(errors='replace')}: {os.strerror(-ret)}"
        )
    return ret


# -- fork() into a cgroup

# glibc keeps the thread's kernel tid in its struct pthread (THREAD_SELF); its fork() has
# the kernel write the child's tid there (CLONE_CHILD_SETTID).  Offset of `tid` on x86_64
# since glibc 2.26; checked against gettid() before every use (_tid_address).
_PTHREAD_TID_OFFSET = 0x2D0
# calls through PyDLL keep the GIL: no other Python thread runs between the halves
_py = ctypes.PyDLL(None, use_errno=True)
_py_syscall = _py.syscall
_py_syscall.restype = ctypes.c_long
_py_syscall.argtypes = [ctypes.c_long, ctypes.c_void_p, ctypes.c_size_t]
_pthread_self = _py.pthread_self
_pthread_self.restype = ctypes.c_void_p
_pthread_self.argtypes = []


def _tid_address() -> int | None:
    """The address of this thread's tid in glibc's struct pthread, if it is where this
    module expects it (it holds gettid()); None otherwise."""
    addr = int(_pthread_self() or 0) + _PTHREAD_TID_OFFSET
    if addr == _PTHREAD_TID_OFFSET:
        return None
    if ctypes.c_int32.from_address(addr).value != raw_syscall(NR.gettid):
        return None
    return addr


def _single_threaded() -> bool:
    return len(Proc().tasks(os.getpid())) == 1


def fork_into_cgroup(cgroup_dir: str) -> int | None:
    """os.fork(), the child starting in the cgroup v2 directory `cgroup_dir`
    (clone3 CLONE_INTO_CGROUP): no write to cgroup.procs afterwards, which takes the
    kernel's global threadgroup lock for writing (the first move into a cgroup costs a
    whole RCU grace period, ~10 ms).  Returns 0 in the child and its pid in the parent,
    as os.fork; None (nothing done) where it cannot be done as safely as os.fork: another
    thread runs in this process, or glibc's thread block is not as expected (the caller
    then forks and moves the child itself).

    It is os.fork's own sequence with clone3 in the middle: Python's before-fork step
    (its import lock, os.register_at_fork hooks), the raw clone3 with the GIL held,
    Python's after-fork steps in each half.  What glibc's fork() adds for a process of
    one thread is the child's tid in its thread block, which CLONE_CHILD_SETTID writes
    there as glibc's own fork does (CLONE_CHILD_CLEARTID too)."""
    if not _single_threaded():
        return None
    tid_addr = _tid_address()
    if tid_addr is None:
        return None
    fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        args = ctypes.create_string_buffer(
            pack_clone_args(
                flags=CLONE_INTO_CGROUP | CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID,
                exit_signal=signal.SIGCHLD,
                child_tid=tid_addr,
                cgroup=fd,
            ),
            CLONE_ARGS_SIZE,
        )
        ctypes.pythonapi.PyOS_BeforeFork()
        ret = int(_py_syscall(NR.clone3, ctypes.addressof(args), CLONE_ARGS_SIZE))
        if ret == 0:
            ctypes.pythonapi.PyOS_AfterFork_Child()
            return 0
        err = get_errno() if ret < 0 else 0
        ctypes.pythonapi.PyOS_AfterFork_Parent()
        if ret < 0:
            raise errno_error(err, f"clone3 into cgroup {cgroup_dir}")
        return ret
    finally:
        os.close(fd)
