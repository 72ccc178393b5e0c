"""The system layer: the ONLY package of cpt that imports ctypes.  One home per kernel
concept, public names; /proc is read through cpt.procfs, which this package stands on.

_libc     the libc handle, raw_syscall, errno -> OSError/NoSuchProcess naming the pid
syscalls  x86_64 syscall numbers (NR.mmap, ...), the few i386 ones cpt names (NR_I386),
          syscall_name()
arch      Regs (user_regs_struct as a Python object), page size, syscall ABI facts
ptrace    PTRACE_* requests/options/events, wrappers, waitpid and status decoding,
          SyscallFrame (the injector's preallocated register buffers)
mem       process_vm_readv/writev (batched, partial-safe), PAGEMAP_SCAN, PROT/MAP/MADV
task      pidfd_open/getfd, kcmp, get_robust_list, prctl (+ PR_*), tgkill
files     ioctl on a mutable buffer, tee, memfd_create, close_range
tty       terminal ioctls: termios2, window size, pty index/lock/packet mode, TIOCSTI
ns        CLONE_NEW* and VE_NAMESPACES, setns, unshare, mount, umount2, pivot_root; a
          thread's visit to a namespace and back (in_namespace, entered, unshared)
uts       uname (with the domainname), sethostname, setdomainname
ipc       SysV IPC and POSIX message queue syscalls and structures
net       sock_diag, TCP_INFO, TCP_REPAIR and queue ioctls (numbers and layouts)
reflink   FICLONE, syncfs
runner    the one command runner for external tools (every layer uses it)
clone     struct clone_args, clone3_execve (exact-PID child that execs at once)
anonfd    signalfd, timerfd (+ TFD_IOC_SET_TICKS), epoll_create1, userfaultfd,
          kcmp(KCMP_EPOLL_TFD)
fsnotify  inotify, name_to_handle_at / open_by_handle_at
seccomp   seccomp filters in classic BPF (deny lists, the architecture check), install
cgroup    the cgroup v2 freezer (Freezer): a frozen tree's or a VE's cgroup
netfilter the drop rules (nft) that keep a checkpointed TCP connection's peer quiet
host      what an image depends on in its host: kernel, vDSO, CPU features
"""
