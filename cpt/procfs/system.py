"""Host-wide files, not of one process: /proc/sys (sysctls), /proc/sysvipc, /proc/filesystems,
/proc/cpuinfo.

/proc/sys/kernel/* of a namespaced kind (ns_last_pid, {shm,sem,msg}_next_id, ...) and
/proc/sysvipc/* show the namespaces of the CALLING THREAD: read them with the thread inside
the namespace meant (cpt.sys.ns.in_namespace).  Errors are the plain OSError.

Grammar:
  sys/A/B       one value and "\\n" (the sysctl "a.b")
  sysvipc/shm   a header line, then per segment: key shmid perms(octal) size cpid lpid nattch
                uid gid cuid cgid atime dtime ctime rss swap
  sysvipc/sem   key semid perms(octal) nsems uid gid cuid cgid otime ctime
  sysvipc/msg   key msqid perms(octal) cbytes qnum lspid lrpid uid gid cuid cgid stime rtime
                ctime
  filesystems   "[nodev]\\tNAME" lines
  cpuinfo       per CPU, "key\\t: value" lines; "flags" lists the CPU's features
"""

from __future__ import annotations

from .paths import ROOT


def sysctl_path(name: str) -> str:
    """ "kernel.pid_max" (or "kernel/pid_max") -> /proc/sys/kernel/pid_max."""
    return f"{ROOT}/sys/{name if '/' in name else name.replace('.', '/')}"


def read_sysctl(name: str) -> str:
    with open(sysctl_path(name)) as f:
        return f.read().strip()


def read_sysctl_int(name: str) -> int:
    return int(read_sysctl(name))


def write_sysctl(name: str, value: int | str) -> None:
    with open(sysctl_path(name), "w") as f:
        f.write(str(value))


def parse_table(text: str) -> list[list[str]]:
    """The rows of a table with one header line (/proc/sysvipc/*), as lists of fields."""
    return [line.split() for line in text.splitlines()[1:] if line.strip()]


def sysvipc(name: str) -> list[list[str]]:
    """/proc/sysvipc/NAME ("shm", "sem", "msg") of the calling thread's IPC namespace."""
    with open(f"{ROOT}/sysvipc/{name}") as f:
        return parse_table(f.read())


def parse_filesystems(text: str) -> frozenset[str]:
    return frozenset(line.split()[-1] for line in text.splitlines() if line.strip())


def filesystems() -> frozenset[str]:
    """The filesystem types the kernel knows now (a module not loaded yet is missing)."""
    with open(f"{ROOT}/filesystems") as f:
        return parse_filesystems(f.read())


def parse_cpu_flags(text: str) -> frozenset[str]:
    """The "flags" of the first CPU in /proc/cpuinfo (empty if there is none)."""
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_flags() -> frozenset[str]:
    with open(f"{ROOT}/cpuinfo") as f:
        return parse_cpu_flags(f.read())
