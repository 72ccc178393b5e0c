"""The seccomp filter of a VE that contains its root (not of a privileged VE).

Installed in the VE's init before it execs (boot.py) and in every `cpt ve exec` before its
command runs, so every process of the VE has it; the engine dumps and restores it with the
processes (it is just their filter).  A listed call fails with EPERM, as in the default
profiles of docker and podman; the user namespace already takes the host's privileges
away, the filter closes the kernel interfaces that are host-wide or too large to trust.
SPEC.md ("The seccomp filter of a VE") has the same list: tests/test_seccomp.py keeps the
two in step.  The program itself is cpt.sys.seccomp's.
"""

from __future__ import annotations

import errno
import functools

from cpt.sys.seccomp import deny_filter, install
from cpt.sys.syscalls import NR, NR_I386

# name -> why it is denied.  A name absent from one ABI's table is denied in the other.
DENIED: dict[str, str] = {
    "kexec_load": "loads a kernel for the host to boot into",
    "kexec_file_load": "loads a kernel for the host to boot into",
    "init_module": "kernel modules run in the host's kernel",
    "finit_module": "kernel modules run in the host's kernel",
    "delete_module": "kernel modules are the host's",
    "open_by_handle_at": "opens any inode of a mounted filesystem by its handle, past the "
    "VE's mount tree (the 'shocker' escape from a bind mount)",
    "keyctl": "the kernel keyrings are not namespaced: the host's and other VEs' keys",
    "add_key": "the kernel keyrings are not namespaced: the host's and other VEs' keys",
    "request_key": "the kernel keyrings are not namespaced (and may run a host helper)",
    "bpf": "eBPF programs and maps live in the host's kernel; they cannot be checkpointed",
    "perf_event_open": "observes the host's kernel and CPUs; cannot be checkpointed",
    "userfaultfd": "stalls the kernel's accesses to user memory at chosen moments (a "
    "primitive for kernel races); the engine's own use is by injection, which the filter "
    "does not see",
    "io_uring_setup": "a second system-call interface that seccomp does not filter; "
    "cannot be checkpointed",
    "io_uring_enter": "a second system-call interface that seccomp does not filter",
    "io_uring_register": "a second system-call interface that seccomp does not filter",
    "reboot": "a VE stops through cpt (in a PID namespace reboot kills its init)",
    "swapon": "the host's swap",
    "swapoff": "the host's swap",
    "clock_settime": "the host's clock (CLOCK_REALTIME has no namespace)",
    "clock_settime64": "the host's clock (CLOCK_REALTIME has no namespace)",
    "settimeofday": "the host's clock",
    "stime": "the host's clock",
    "acct": "process accounting records the whole host",
    "lookup_dcookie": "kernel profiling",
    "quotactl": "quotas of the host's block devices",
    "quotactl_fd": "quotas of the host's filesystems",
    "nfsservctl": "the kernel NFS server (gone from the kernel; stays denied)",
    "iopl": "raw I/O port access",
    "ioperm": "raw I/O port access",
    "syslog": "the host kernel's log buffer (read and clear)",
    "uselib": "the obsolete a.out library loader",
    "vm86": "virtual 8086 mode (i386)",
    "vm86old": "virtual 8086 mode (i386)",
}

# Allowed on purpose, with the reason (SPEC.md lists them too).
ALLOWED_NOTES: dict[str, str] = {
    "adjtimex, clock_adjtime": "reading the clock's state (NTP clients); a change needs "
    "CAP_SYS_TIME in the initial user namespace, which a VE never has",
    "mount, umount2, pivot_root, unshare, setns": "the VE's own namespaces: the kernel "
    "confines them to the VE's user namespace, and the mounts from the host are locked",
    "ptrace, process_vm_readv, process_vm_writev, kcmp": "confined to the VE's processes "
    "by its user and PID namespaces",
    "name_to_handle_at": "only names an inode; opening a handle is what is denied",
}


def numbers() -> tuple[list[int], list[int]]:
    """The denied (x86_64, i386) syscall numbers."""
    x64 = [int(NR[n]) for n in DENIED if n in NR.__members__]
    x32 = [int(NR_I386[n]) for n in DENIED if n in NR_I386.__members__]
    return x64, x32


@functools.cache
def program(err: int = errno.EPERM) -> bytes:
    """The VE's filter (struct sock_filter[]); `err` is the errno of a denied call."""
    x64, x32 = numbers()
    return deny_filter(x64, x32, err)


def apply() -> None:
    """Install the VE's filter in this process (as the VE's root: CAP_SYS_ADMIN in its
    user namespace lets it do without no_new_privs, so set-id programs keep working)."""
    install(program())
