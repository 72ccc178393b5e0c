"""The seccomp filter of a VE (ve/seccomp.py, built by cpt/sys/seccomp.py): the program's
decisions for each architecture, the syscall numbers against the kernel's headers, the
list against SPEC.md, and the filter installed in a real process, where every denied
call is answered by the filter."""

from __future__ import annotations

import ctypes
import errno
import os
import re
from pathlib import Path

import pytest

from cpt.sys import seccomp as sc
from cpt.sys.syscalls import NR, NR_I386
from ve import seccomp as ve_seccomp

ROOT = Path(__file__).resolve().parent.parent
HEADERS = Path("/usr/include/x86_64-linux-gnu/asm")


def test_the_program_decides_per_architecture() -> None:
    prog = sc.deny_filter([NR.kexec_load, NR.bpf], [NR_I386.kexec_load], errno.EPERM)
    deny = sc.SECCOMP_RET_ERRNO | errno.EPERM
    assert sc.run(prog, NR.kexec_load) == deny
    assert sc.run(prog, NR.bpf) == deny
    assert sc.run(prog, NR.getpid) == sc.SECCOMP_RET_ALLOW
    assert sc.run(prog, NR.read) == sc.SECCOMP_RET_ALLOW
    # i386 numbers are another table: 283 is kexec_load there, 246 is not
    assert sc.run(prog, NR_I386.kexec_load, sc.AUDIT_ARCH_I386) == deny
    assert sc.run(prog, NR.kexec_load, sc.AUDIT_ARCH_I386) == sc.SECCOMP_RET_ALLOW
    # x32 calls: ENOSYS, whatever the number; another architecture: killed
    x32 = sc.X32_SYSCALL_BIT | NR.getpid
    assert sc.run(prog, x32) == sc.SECCOMP_RET_ERRNO | errno.ENOSYS
    assert sc.run(prog, NR.getpid, 0xC00000B7) == sc.SECCOMP_RET_KILL_PROCESS  # aarch64
    assert len(prog) % 8 == 0


def test_the_ve_filter_denies_its_list_and_nothing_else() -> None:
    prog = ve_seccomp.program()
    deny = sc.SECCOMP_RET_ERRNO | errno.EPERM
    x64, x32 = ve_seccomp.numbers()
    assert {n.name for n in NR if n in x64} | {n.name for n in NR_I386 if n in x32} == set(
        ve_seccomp.DENIED
    )
    for nr in NR:
        want = deny if nr in x64 else sc.SECCOMP_RET_ALLOW
        assert sc.run(prog, nr) == want, nr.name
    for nr in NR_I386:
        want = deny if nr in x32 else sc.SECCOMP_RET_ALLOW
        assert sc.run(prog, nr, sc.AUDIT_ARCH_I386) == want, nr.name


@pytest.mark.skipif(
    not (HEADERS / "unistd_32.h").exists(), reason="the kernel headers (linux-libc-dev) are absent"
)
def test_syscall_numbers_match_the_kernel_headers() -> None:
    for name, table, header in (("x86_64", NR, "unistd_64.h"), ("i386", NR_I386, "unistd_32.h")):
        defs = dict(re.findall(r"#define __NR_(\w+) (\d+)", (HEADERS / header).read_text()))
        for member in table:
            if member.name in defs:
                assert int(defs[member.name]) == member.value, f"{name} {member.name}"
        if table is NR_I386:
            assert all(m.name in defs for m in table)


def test_spec_lists_the_denied_calls_with_their_reasons() -> None:
    spec = (ROOT / "SPEC.md").read_text()
    section = spec.split("### The seccomp filter of a VE", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([a-z0-9_]+)` \| (.+?) \|$", section, re.M))
    assert set(rows) == set(ve_seccomp.DENIED)
    for name, reason in ve_seccomp.DENIED.items():
        assert rows[name] == reason, name


# every denied call with arguments the kernel would refuse on its own (never EPERM for
# root), so that nothing is changed if the filter let one through
_PROBES: dict[str, tuple[int, ...]] = {
    "kexec_load": (0, 0, 0, 0xDEAD0000),
    "kexec_file_load": (-1, -1, 0, 0, 0xDEAD0000),
    "init_module": (0, 0, 0),
    "finit_module": (-1, 0, 0),
    "delete_module": (0, 0),
    "open_by_handle_at": (-1, 0, 0),
    "keyctl": (-1, 0, 0, 0, 0),
    "add_key": (0, 0, 0, 0, 0),
    "request_key": (0, 0, 0, 0),
    "bpf": (-1, 0, 0),
    "perf_event_open": (0, 0, 0, 0, 0),
    "userfaultfd": (-1,),
    "io_uring_setup": (0, 0),
    "io_uring_enter": (-1, 0, 0, 0, 0, 0),
    "io_uring_register": (-1, 0, 0, 0),
    "reboot": (0, 0, 0, 0),
    "swapon": (1, 0),
    "swapoff": (1,),
    "clock_settime": (-1, 0),
    "settimeofday": (1, 1),
    "acct": (1,),
    "lookup_dcookie": (0, 0, 0),
    "quotactl": (0, 0, 0, 0),
    "quotactl_fd": (-1, 0, 0, 0),
    "nfsservctl": (0, 0, 0),
    "iopl": (99,),
    "ioperm": (1 << 20, 1, 1),
    "syslog": (99, 0, 0),
    "uselib": (1,),
}


def _errnos(prog: bytes | None) -> dict[str, int]:
    """In a forked child: install `prog` (None: no filter) and make every probe call."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        out = []
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            if prog is not None:
                sc.install(prog)
            for name, args in _PROBES.items():
                ret = libc.syscall(ctypes.c_long(NR[name]), *(ctypes.c_long(a) for a in args))
                out.append(f"{name}={ctypes.get_errno() if ret == -1 else 0}")
            os.write(w, " ".join(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        text = f.read().decode()
    os.waitpid(pid, 0)
    return {k: int(v) for k, v in (x.split("=") for x in text.split())}


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="compares with what root may do unfiltered")
def test_an_installed_filter_answers_every_denied_call() -> None:
    """With the VE's list and a distinctive errno, every listed call is answered by the
    filter; without the filter the same calls reach the kernel and fail otherwise."""
    assert set(_PROBES) == {n for n in ve_seccomp.DENIED if n in NR.__members__}
    marker = 133  # EHWPOISON: no syscall here returns it
    filtered = _errnos(ve_seccomp.program(marker))
    assert filtered == dict.fromkeys(_PROBES, marker)
    plain = _errnos(None)
    assert set(plain) == set(_PROBES)
    assert marker not in plain.values()
    assert all(e != 0 for e in plain.values()), plain  # nothing was done
    # and the VE's own filter says EPERM
    assert set(_errnos(ve_seccomp.program()).values()) == {errno.EPERM}
