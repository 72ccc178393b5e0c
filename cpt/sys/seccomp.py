"""Seccomp filters in classic BPF, assembled here (no libseccomp), and their installation.

    deny_filter(x86_64, i386, errno)  a program (struct sock_filter[] as bytes) that
                                      answers -errno to the listed syscall numbers
    install(program)                  seccomp(SECCOMP_SET_MODE_FILTER) in the calling thread
    run(program)                      decide one call in Python, as the kernel would (tests)

The program checks the architecture first (struct seccomp_data.arch): an x86_64 call is
matched against the x86_64 numbers, an i386 call (int 0x80, a 32-bit program) against the
i386 numbers, an x32 call (x86_64 arch with __X32_SYSCALL_BIT in the number) gets ENOSYS,
and a call of any other architecture kills the process.  Everything not listed is allowed.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import struct
from collections.abc import Iterable

from cpt.sys._libc import checked_syscall
from cpt.sys.syscalls import NR
from cpt.sys.task import SECCOMP_SET_MODE_FILTER

# include/uapi/linux/audit.h: EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE, EM_386 | LE
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
X32_SYSCALL_BIT = 0x40000000

# include/uapi/linux/seccomp.h
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_DATA = 0x0000FFFF

# include/uapi/linux/filter.h: classic BPF opcodes
BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS: A = u32 at offset k of seccomp_data
BPF_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
BPF_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
BPF_RET_K = 0x06  # BPF_RET | BPF_K

SOCK_FILTER = struct.Struct("<HBBI")  # code, jt, jf, k
SOCK_FPROG = struct.Struct("<H6xQ")  # len, filter pointer
# struct seccomp_data: nr (int), arch (u32), instruction_pointer (u64), args[6] (u64)
OFF_NR, OFF_ARCH = 0, 4
BPF_MAXINSNS = 4096


def deny_filter(x86_64: Iterable[int], i386: Iterable[int], errno: int = errno_mod.EPERM) -> bytes:
    """The program: -`errno` for the listed numbers of each architecture, see above."""
    deny64 = sorted(set(x86_64))
    deny32 = sorted(set(i386))
    # the blocks, in order; each jump's offset counts the instructions after it
    n64 = 2 + len(deny64) + 1  # ld nr, jge x32, the matches, ret allow
    n32 = 2 + len(deny32) + 1  # jeq i386, ld nr, the matches, ret allow
    prog: list[tuple[int, int, int, int]] = []
    # 0: A = arch; not x86_64 -> the i386 block
    prog.append((BPF_LD_W_ABS, 0, 0, OFF_ARCH))
    prog.append((BPF_JEQ_K, 0, n64, AUDIT_ARCH_X86_64))
    # the x86_64 block; the ends after it: [i386 block] x32 kill deny
    x32_at = 2 + n64 + n32
    deny_at = x32_at + 2
    prog.append((BPF_LD_W_ABS, 0, 0, OFF_NR))
    here = len(prog)
    prog.append((BPF_JGE_K, _off(here, x32_at), 0, X32_SYSCALL_BIT))
    for nr in deny64:
        here = len(prog)
        prog.append((BPF_JEQ_K, _off(here, deny_at), 0, nr))
    prog.append((BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    # the i386 block
    here = len(prog)
    prog.append((BPF_JEQ_K, 0, _off(here, x32_at + 1), AUDIT_ARCH_I386))
    prog.append((BPF_LD_W_ABS, 0, 0, OFF_NR))
    for nr in deny32:
        here = len(prog)
        prog.append((BPF_JEQ_K, _off(here, deny_at), 0, nr))
    prog.append((BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    assert len(prog) == x32_at
    prog.append((BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno_mod.ENOSYS))  # x32
    prog.append((BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS))  # another architecture
    prog.append((BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | (errno & SECCOMP_RET_DATA)))
    if len(prog) > BPF_MAXINSNS:
        raise ValueError(f"a seccomp program of {len(prog)} instructions (at most {BPF_MAXINSNS})")
    return b"".join(SOCK_FILTER.pack(*insn) for insn in prog)


def _off(at: int, target: int) -> int:
    """A conditional jump's offset from instruction `at` to `target` (8 bits)."""
    off = target - at - 1
    if not 0 <= off <= 255:
        raise ValueError(f"seccomp jump of {off} instructions (at most 255)")
    return off


def run(program: bytes, nr: int, arch: int = AUDIT_ARCH_X86_64) -> int:
    """What `program` returns for a call `nr` of `arch` (the SECCOMP_RET_* value), by
    interpreting the instructions deny_filter emits (a test's view of a program)."""
    insns = [SOCK_FILTER.unpack_from(program, i) for i in range(0, len(program), 8)]
    data = {OFF_NR: nr & 0xFFFFFFFF, OFF_ARCH: arch}
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == BPF_LD_W_ABS:
            acc = data[k]
            pc += 1
        elif code == BPF_JEQ_K:
            pc += 1 + (jt if acc == k else jf)
        elif code == BPF_JGE_K:
            pc += 1 + (jt if acc >= k else jf)
        elif code == BPF_RET_K:
            return int(k)
        else:
            raise ValueError(f"instruction {pc}: opcode {code:#x} is not one deny_filter emits")


def install(program: bytes, flags: int = 0) -> None:
    """Install `program` in the calling thread (its children inherit it).  Needs
    no_new_privs or CAP_SYS_ADMIN in the thread's user namespace."""
    if not program or len(program) % SOCK_FILTER.size:
        raise ValueError(f"a seccomp program of {len(program)} bytes")
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = ctypes.create_string_buffer(
        SOCK_FPROG.pack(len(program) // SOCK_FILTER.size, ctypes.addressof(buf)), SOCK_FPROG.size
    )
    checked_syscall(
        "seccomp(SET_MODE_FILTER)",
        None,
        NR.seccomp,
        SECCOMP_SET_MODE_FILTER,
        flags,
        ctypes.addressof(fprog),
    )
