"""ptrace of live threads: what dump and restore do to a process from the outside.

    tracee.py    Tracee: one traced thread (seize, interrupt, wait, resume, detach), its
                 registers and signal mask; memory and injection come from the two below
    memory.py    a traced thread's memory through /proc/TID/mem
    inject.py    syscall injection: a session, then syscalls run inside the thread
    pinning.py   tracer and tracee on one CPU while a session runs
    seize.py     whole processes: seize every thread of one, detach, reap the killed
    scratch.py   a scratch mapping in a traced process for injected syscalls' buffers

Everything here runs in ONE Python thread: ptrace state belongs to the tracer thread.
No module here imports ctypes; the kernel interface is cpt.sys.
"""
