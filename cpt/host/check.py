"""`cpt check`: what this host supports for checkpoint and restore, feature by feature.

Like `criu check`: every probe exercises the real mechanism (a seized child, a clone3
with set_tid, an ioctl on our own pagemap, ...) rather than reading a config file.
Required features make the check fail when missing; optional ones (used only by some
operations: soft-dirty tracking, LVM, ...) are reported and never fail it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
from collections.abc import Callable

from ..errors import CptError
from ..procfs import Proc, filesystems, open_pagemap, pid_exists, read_sysctl_int
from ..restore.stub import kill_and_reap, spawn_stub
from ..sys import ptrace
from ..sys.anonfd import UFFD_USER_MODE_ONLY, userfaultfd
from ..sys.cgroup import Freezer, cgroup2_mount
from ..sys.mem import PAGE_IS_PRESENT, pagemap_scan, process_vm_readv, soft_dirty_works
from ..sys.net import TCP_REPAIR
from ..sys.syscalls import NR
from ..sys.task import (
    PR_TIMER_CREATE_RESTORE_IDS,
    PR_TIMER_CREATE_RESTORE_IDS_GET,
    PRCTL_MM_MAP,
    kcmp,
    pidfd_getfd,
    pidfd_open,
    prctl,
    prctl_mm_map_size,
)
from ..sys.uffd import probe_tracking


@dataclasses.dataclass
class Feature:
    name: str
    required: bool
    ok: bool
    detail: str
    used_for: str


def _probe(name: str, required: bool, used_for: str, fn: Callable[[], str]) -> Feature:
    try:
        return Feature(name, required, True, fn(), used_for)
    except (OSError, CptError, ValueError, TimeoutError) as e:
        return Feature(name, required, False, str(e), used_for)


def _ptrace_and_clone3() -> str:
    pid = _free_pid()
    t = spawn_stub([pid])  # clone3 with set_tid, PTRACE_SEIZE + INTERRUPT, SUSPEND_SECCOMP
    try:
        if t.pid != pid:
            raise OSError(f"clone3 set_tid gave {t.pid}, not {pid}")
        regs = t.get_regs()
        size = len(t.get_xstate())
        got = t.syscall(NR.getpid)
        if got != pid:
            raise OSError(f"an injected getpid returned {got}")
        ptrace.get_rseq_configuration(t.tid)
        return f"seize, interrupt, inject (rip {regs.rip:#x}), xstate {size} bytes"
    finally:
        kill_and_reap(t.pid)


def _free_pid() -> int:
    """A free PID some way above the last one given out, wrapping below pid_max as the
    kernel does (a set_tid at or above pid_max is EINVAL)."""
    pid_max = read_sysctl_int("kernel.pid_max")
    last = read_sysctl_int("kernel.ns_last_pid")
    first = 300  # the kernel's RESERVED_PIDS: where PID allocation wraps to
    span = pid_max - first
    for step in range(span):
        pid = first + (last + 1000 - first + step) % span
        if not pid_exists(pid):
            return pid
    raise OSError(f"no free PID below pid_max {pid_max}")


def _vm_rw() -> str:
    stack = next(v for v in Proc().maps(os.getpid()) if v.path == "[stack]")
    buf = bytearray(4096)
    got = process_vm_readv(os.getpid(), [(stack.end - 4096, 4096)], buf)
    return f"process_vm_readv of {got} bytes"


def _pagemap_scan() -> str:
    fd = open_pagemap(os.getpid())
    try:
        maps = Proc().maps(os.getpid())
        stack = next(v for v in maps if v.path == "[stack]")
        regions = pagemap_scan(
            fd,
            stack.start,
            stack.end,
            category_anyof_mask=PAGE_IS_PRESENT,
            return_mask=PAGE_IS_PRESENT,
        )
    finally:
        os.close(fd)
    return f"{len(regions)} present region(s) in our stack"


def _mm_map() -> str:
    size = prctl_mm_map_size()
    if size != PRCTL_MM_MAP.size:
        raise OSError(f"struct prctl_mm_map is {size} bytes here, cpt packs {PRCTL_MM_MAP.size}")
    return f"PR_SET_MM_MAP ({size}-byte map)"


def _pidfd() -> str:
    pfd = pidfd_open(os.getpid())
    try:
        r, w = os.pipe()
        try:
            dup = pidfd_getfd(pfd, r)
            same = kcmp(os.getpid(), os.getpid(), 0, r, dup) == 0
            os.close(dup)
        finally:
            os.close(r)
            os.close(w)
    finally:
        os.close(pfd)
    if not same:
        raise OSError("kcmp does not see the pidfd_getfd copy as the same file")
    return "pidfd_open, pidfd_getfd, kcmp"


def _freezer() -> str:
    mount = cgroup2_mount()
    fz = Freezer(f"check-{os.getpid()}")
    fz.create()
    try:
        if not os.path.exists(os.path.join(fz.path, "cgroup.freeze")):
            raise OSError(f"{fz.path} has no cgroup.freeze (kernel < 5.2?)")
        fz.freeze()
        fz.thaw()
    finally:
        fz.remove()
    return f"cgroup v2 at {mount}"


def _vdso() -> str:
    names = [v.path for v in Proc().maps(os.getpid()) if v.path.startswith("[v")]
    if "[vdso]" not in names:
        raise OSError("no [vdso] mapping")
    return "+".join(n.strip("[]") for n in names if n != "[vsyscall]")


def _soft_dirty() -> str:
    if not soft_dirty_works():
        raise OSError("no soft-dirty bits (CONFIG_MEM_SOFT_DIRTY); cpt does not need them")
    return "soft-dirty bits work"


def _userfaultfd() -> str:
    os.close(userfaultfd(os.O_CLOEXEC | UFFD_USER_MODE_ONLY))
    return "userfaultfd (user-mode faults)"


def _write_tracking() -> str:
    return probe_tracking()


def _tcp_repair() -> str:
    s = socket.socket()
    try:
        s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    finally:
        s.close()
    return "TCP_REPAIR (CAP_NET_ADMIN)"


def _timer_ids() -> str:
    state = prctl(PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_GET)
    return f"PR_TIMER_CREATE_RESTORE_IDS (now {state})"


def _btrfs() -> str:
    if "btrfs" not in filesystems():
        raise OSError("the kernel has no btrfs")
    tool = shutil.which("mkfs.btrfs")
    if tool is None:
        raise OSError("mkfs.btrfs is not installed (btrfs-progs)")
    import btrfsutil  # noqa: F401 - the Python binding snapshots use

    return f"btrfs in the kernel, {tool}, btrfsutil"


def _device_mapper() -> str:
    if not os.path.exists("/dev/mapper/control") and not os.path.isdir("/sys/module/dm_mod"):
        raise OSError("no device-mapper in this kernel: LVM thin snapshots cannot run")
    return "device-mapper present"


def _nftables() -> str:
    tool = shutil.which("nft")
    if tool is None:
        raise OSError("nft is not installed (package nftables)")
    return tool


def _cap_sys_resource() -> str:
    caps = Proc().status(os.getpid()).capeff
    if not caps >> 24 & 1:
        raise OSError(
            "missing: hard rlimits above the restorer's and negative oom_score_adj cannot be "
            "restored"
        )
    return "present"


CHECKS: list[tuple[str, bool, str, Callable[[], str]]] = [
    ("ptrace + clone3(set_tid)", True, "dump and restore", _ptrace_and_clone3),
    ("process_vm_readv/writev", True, "memory", _vm_rw),
    ("PAGEMAP_SCAN", True, "which pages to dump", _pagemap_scan),
    ("PR_SET_MM_MAP", True, "mm fields, auxv, exe", _mm_map),
    ("pidfd_getfd + kcmp", True, "fds", _pidfd),
    ("cgroup v2 freezer", True, "staged suspend/undump", _freezer),
    ("vDSO", True, "restore", _vdso),
    ("TCP_REPAIR", False, "--tcp-established", _tcp_repair),
    ("POSIX timer ids", False, "POSIX timers", _timer_ids),
    ("userfaultfd", False, "memory tracking, lazy restore", _userfaultfd),
    ("write tracking", False, "--pre-dump, --parent, short leave-running freezes", _write_tracking),
    ("soft-dirty", False, "memory tracking (CRIU's way)", _soft_dirty),
    ("nftables", False, "--tcp-established (drop rules)", _nftables),
    ("btrfs", False, "filesystem snapshots", _btrfs),
    ("device-mapper", False, "LVM thin snapshots", _device_mapper),
    ("CAP_SYS_RESOURCE", False, "raising hard rlimits", _cap_sys_resource),
]


def run_checks() -> list[Feature]:
    return [_probe(name, req, use, fn) for name, req, use, fn in CHECKS]


__all__ = ["Feature", "run_checks"]
