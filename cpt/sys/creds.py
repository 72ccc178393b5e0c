"""The calling thread's credentials for filesystem access, switched and put back.

A restorer running as root must open a restored process's files as that process would:
`acting_as` gives the CALLING THREAD ONLY (raw syscalls: glibc's setgroups would change
every thread of the process) the process's fsuid, fsgid, supplementary groups and
effective capabilities for the block, and restores its own afterwards.  Order matters:
the groups and fsgid need CAP_SETGID and the fsuid CAP_SETUID, so they change before the
effective set is lowered, and change back after it is raised again.  The kernel drops the
filesystem capabilities from the effective set when the fsuid leaves 0 and raises them
again when it returns to 0 (capabilities(7)); the explicit capset makes the set exact
either way.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator, Sequence

from cpt.sys._libc import checked_syscall, raw_syscall
from cpt.sys.syscalls import NR

LINUX_CAPABILITY_VERSION_3 = 0x20080522


def setfsuid(uid: int) -> int:
    """setfsuid(2) for this thread; returns the previous fsuid (never fails visibly)."""
    return raw_syscall(NR.setfsuid, uid) & 0xFFFFFFFF


def setfsgid(gid: int) -> int:
    return raw_syscall(NR.setfsgid, gid) & 0xFFFFFFFF


def fsuid() -> int:
    """This thread's fsuid (setfsuid(-1) changes nothing and returns it)."""
    return setfsuid(0xFFFFFFFF)


def fsgid() -> int:
    return setfsgid(0xFFFFFFFF)


def thread_groups() -> list[int]:
    """This thread's supplementary groups (getgroups(2) is per thread in the kernel)."""
    n = checked_syscall("getgroups", None, NR.getgroups, 0, 0)
    buf = (ctypes.c_uint32 * max(n, 1))()
    n = checked_syscall("getgroups", None, NR.getgroups, n, ctypes.addressof(buf))
    return list(buf[:n])


def set_thread_groups(groups: Sequence[int]) -> None:
    """setgroups(2) for this thread only."""
    buf = (ctypes.c_uint32 * max(len(groups), 1))(*groups)
    checked_syscall("setgroups", None, NR.setgroups, len(groups), ctypes.addressof(buf))


def capget() -> tuple[int, int, int]:
    """This thread's (effective, permitted, inheritable) capability sets."""
    hdr = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    checked_syscall("capget", None, NR.capget, ctypes.addressof(hdr), ctypes.addressof(data))
    eff = data[0] | data[3] << 32
    prm = data[1] | data[4] << 32
    inh = data[2] | data[5] << 32
    return eff, prm, inh


def capset(eff: int, prm: int, inh: int) -> None:
    """capset(2) for this thread (pid 0)."""
    hdr = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
    m = 0xFFFFFFFF
    data = (ctypes.c_uint32 * 6)(eff & m, prm & m, inh & m, eff >> 32, prm >> 32, inh >> 32)
    checked_syscall("capset", None, NR.capset, ctypes.addressof(hdr), ctypes.addressof(data))


@contextlib.contextmanager
def acting_as(uid: int, gid: int, groups: Sequence[int], cap_eff: int) -> Iterator[None]:
    """Run the block with this thread's filesystem identity `uid`/`gid`, supplementary
    `groups` and effective capabilities `cap_eff` (within its permitted set): opens,
    creations, binds and permission checks then go as for a process with those
    credentials.  Everything is put back on the way out, even after an error."""
    old_groups = thread_groups()
    eff, prm, inh = capget()
    old_uid, old_gid = fsuid(), fsgid()
    if (uid, gid, sorted(groups), cap_eff & prm) == (old_uid, old_gid, sorted(old_groups), eff):
        yield  # already so (root restoring root's processes): nothing to switch
        return
    regroup = sorted(groups) != sorted(old_groups)  # (a user namespace may deny setgroups)
    try:
        if regroup:
            set_thread_groups(groups)
        setfsgid(gid)
        setfsuid(uid)
        if (fsuid(), fsgid()) != (uid, gid):
            raise PermissionError(0, f"cannot take fsuid {uid} / fsgid {gid}")
        capset(cap_eff & prm, prm, inh)
        yield
    finally:
        capset(eff, prm, inh)  # CAP_SETUID and CAP_SETGID back first
        setfsuid(old_uid)
        setfsgid(old_gid)
        if regroup:
            set_thread_groups(old_groups)
        capset(eff, prm, inh)  # exact again after the kernel's fs-capability fixups
        if (fsuid(), fsgid()) != (old_uid, old_gid):
            raise OSError(0, f"cannot return to fsuid {old_uid} / fsgid {old_gid}")


# capability numbers (linux/capability.h), for messages
CAP_NAMES = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid",
    "setuid", "setpcap", "linux_immutable", "net_bind_service", "net_broadcast",
    "net_admin", "net_raw", "ipc_lock", "ipc_owner", "sys_module", "sys_rawio",
    "sys_chroot", "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice",
    "sys_resource", "sys_time", "sys_tty_config", "mknod", "lease", "audit_write",
    "audit_control", "setfcap", "mac_override", "mac_admin", "syslog", "wake_alarm",
    "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore",
)  # fmt: skip
CAP_SETGID = 6
CAP_SETUID = 7
CAP_SYS_CHROOT = 18


def cap_names(mask: int) -> str:
    """ "cap_setuid,cap_sys_admin" for a capability mask ("none" for 0)."""
    names = [
        f"cap_{CAP_NAMES[i]}" if i < len(CAP_NAMES) else f"cap_{i}"
        for i in range(64)
        if mask >> i & 1
    ]
    return ",".join(names) or "none"


__all__ = [
    "CAP_NAMES",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
    "acting_as",
    "cap_names",
    "capget",
    "capset",
    "fsgid",
    "fsuid",
    "set_thread_groups",
    "setfsgid",
    "setfsuid",
    "thread_groups",
]
