"""The system layer: the ONLY package of cpt that imports ctypes.

_libc     the libc handle, raw_syscall, errno -> OSError/NoSuchProcess naming the pid
syscalls  x86_64 syscall numbers (NR.mmap, ...) and syscall_name()
arch      Regs (user_regs_struct as a Python object), page size, syscall ABI facts
ptrace    PTRACE_* requests/options/events, wrappers, waitpid and status decoding,
          SyscallFrame (the injector's preallocated register buffers)
mem       process_vm_readv/writev (batched, partial-safe), PAGEMAP_SCAN, PROT/MAP/MADV
task      pidfd_open/getfd, kcmp, get_robust_list, prctl (+ PR_*), tgkill
files     ioctl on a mutable buffer, tee, memfd_create, close_range
tty       terminal ioctls: termios2, window size, pty index/lock/packet mode, TIOCSTI
ns        setns, unshare, mount, umount2, pivot_root
clone     struct clone_args, clone3_execve (exact-PID child that execs at once)
anonfd    signalfd, timerfd (+ TFD_IOC_SET_TICKS), epoll_create1, kcmp(KCMP_EPOLL_TFD)
fsnotify  inotify, name_to_handle_at / open_by_handle_at
"""
