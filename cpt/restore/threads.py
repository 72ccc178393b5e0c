"""Threads: creation with exact TIDs, per-thread kernel state, seccomp, credentials and
finally the registers.

Everything here is per thread in the kernel (clear_child_tid, robust list, alt stack,
rseq, comm, seccomp filters, credentials, no_new_privs), so it is injected in each thread.
Credentials come last (ENGINE-NOTES 12b): they may take away what the steps before need.
"""

from __future__ import annotations

import errno
import struct

from cptimage.records import Thread

from ..errors import RestoreError
from ..procfs import read_sysctl_int
from ..sys.arch import ERESTART_RESTARTBLOCK, ERESTARTNOHAND, ERESTARTNOINTR, ERESTARTSYS, Regs
from ..sys.syscalls import NR
from ..sys.task import (
    PR_CAP_AMBIENT,
    PR_CAP_AMBIENT_RAISE,
    PR_CAPBSET_DROP,
    PR_SET_KEEPCAPS,
    PR_SET_NAME,
    PR_SET_NO_NEW_PRIVS,
    PR_SET_SECCOMP,
    PR_SET_SECUREBITS,
    SECCOMP_FILTER_FLAG_LOG,
    SECCOMP_FILTER_FLAG_SPEC_ALLOW,
    SECCOMP_MODE_STRICT,
    SECCOMP_SET_MODE_FILTER,
)
from ..trace.tracee import Tracee
from .pstree import Task
from .stub import clone_stub

SS_ONSTACK, SS_DISABLE = 1, 2
SECBIT_KEEP_CAPS = 1 << 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_RESTART = {-ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND, -ERESTART_RESTARTBLOCK}
_CLONE_ARGS_OFF = 1024  # in the scratch's first page


def _cap_last() -> int:
    return read_sysctl_int("kernel.cap_last_cap")


def create_threads(task: Task) -> None:
    sc = task.scratch
    assert sc is not None
    for th in task.img.threads:
        if th.tid == task.pid:
            continue
        tr = clone_stub(task.leader, sc.addr + _CLONE_ARGS_OFF, set_tid=[th.tid], thread=True)
        task.threads[th.tid] = tr


def setup_thread(task: Task, th: Thread, tr: Tracee) -> None:
    """clear_child_tid, robust list, alternate stack, rseq, comm, seccomp, credentials."""
    sc = task.scratch
    assert sc is not None
    with tr.session(restore=False):
        call = tr.syscall_checked
        call(NR.set_tid_address, th.clear_child_tid)
        if th.robust_head:
            call(NR.set_robust_list, th.robust_head, th.robust_len)
        if not th.sas_flags & SS_DISABLE:
            ss = struct.pack("<QiiQ", th.sas_sp, th.sas_flags & ~SS_ONSTACK, 0, th.sas_size)
            call(NR.sigaltstack, sc.push(ss), 0)
        if th.rseq_ptr:
            call(NR.rseq, th.rseq_ptr, th.rseq_len, 0, th.rseq_sig)
        name = th.comm.encode("utf-8", "surrogateescape")[:15]
        call(NR.prctl, PR_SET_NAME, sc.push(name + b"\0"))
        _seccomp(task, th, tr)
        _creds(task, tr)
        sc.reset()


def _seccomp(task: Task, th: Thread, tr: Tracee) -> None:
    sc = task.scratch
    assert sc is not None
    creds = task.img.creds
    if creds is not None and creds.no_new_privs:
        tr.syscall_checked(NR.prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    filters = sorted((f for f in task.img.seccomp if f.tid == th.tid), key=lambda f: f.index)
    for f in filters:
        prog = sc.push(f.program)
        fprog = sc.push(struct.pack("<H6xQ", len(f.program) // 8, prog))
        # per thread, oldest first: TSYNC and NEW_LISTENER make no sense here
        flags = f.flags & (SECCOMP_FILTER_FLAG_LOG | SECCOMP_FILTER_FLAG_SPEC_ALLOW)
        tr.syscall_checked(NR.seccomp, SECCOMP_SET_MODE_FILTER, flags, fprog)
    if any(s.tid == th.tid for s in task.img.strict):
        # the injected calls after this one pass: the tracer suspends seccomp
        tr.syscall_checked(NR.prctl, PR_SET_SECCOMP, SECCOMP_MODE_STRICT, 0, 0, 0)


def _creds(task: Task, tr: Tracee) -> None:
    c = task.img.creds
    if c is None:
        return
    # in a VE with a user namespace the ids are set inside it, as the VE sees them
    ids = task.img.ns_creds or c
    sc = task.scratch
    assert sc is not None
    call = tr.syscall_checked
    if not task.img.setgroups_denied:
        groups = ids.groups
        call(NR.setgroups, len(groups), sc.push(struct.pack(f"<{len(groups)}I", *groups)))
    elif ids.groups:
        raise RestoreError(
            f"process {task.pid}: its user namespace denies setgroups(2), so its groups "
            f"{ids.groups} cannot be given back",
            pid=task.pid,
        )
    call(NR.setresgid, ids.gid, ids.egid, ids.sgid)
    tr.syscall(NR.setfsgid, ids.fsgid)  # returns the previous fsgid, never an error
    # the bounding set and securebits need CAP_SETPCAP: before the uid changes
    for cap in range(_cap_last() + 1):
        if not c.cap_bnd >> cap & 1:
            call(NR.prctl, PR_CAPBSET_DROP, cap, 0, 0, 0)
    if c.securebits & ~SECBIT_KEEP_CAPS:
        call(NR.prctl, PR_SET_SECUREBITS, c.securebits & ~SECBIT_KEEP_CAPS, 0, 0, 0)
    # keep the permitted set across setresuid (PR_SET_KEEPCAPS needs no privilege)
    call(NR.prctl, PR_SET_KEEPCAPS, 1, 0, 0, 0)
    call(NR.setresuid, ids.uid, ids.euid, ids.suid)
    tr.syscall(NR.setfsuid, ids.fsuid)
    header = struct.pack("<Ii", _LINUX_CAPABILITY_VERSION_3, 0)
    data = struct.pack(
        "<6I",
        c.cap_eff & 0xFFFFFFFF,
        c.cap_prm & 0xFFFFFFFF,
        c.cap_inh & 0xFFFFFFFF,
        c.cap_eff >> 32,
        c.cap_prm >> 32,
        c.cap_inh >> 32,
    )
    call(NR.capset, sc.push(header), sc.push(data))
    for cap in range(_cap_last() + 1):
        if c.cap_amb >> cap & 1:
            call(NR.prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0)
    call(NR.prctl, PR_SET_KEEPCAPS, 1 if c.securebits & SECBIT_KEEP_CAPS else 0, 0, 0, 0)


def set_registers(th: Thread, tr: Tracee) -> None:
    """The dumped registers, with an interrupted syscall set up to restart as the kernel
    would have restarted it; then the signal mask."""
    regs = Regs.from_bytes(th.regs)
    orig, rax = regs.signed("orig_rax"), regs.signed("rax")
    if orig >= 0 and rax in _RESTART:
        if orig == NR.restart_syscall:
            # restart_syscall needs the kernel's restart block, which is not restored
            regs.rax = -errno.EINTR
        else:
            regs.rax = orig  # re-run it; an interrupted relative sleep sleeps anew
            regs.rip -= 2
    regs.orig_rax = -1
    if th.xstate:
        tr.set_xstate(th.xstate)
    tr.set_regs(regs)
    tr.set_sigmask(th.sigmask)
