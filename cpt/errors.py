"""Domain errors of the engine.

Every error carries what a user needs in one line: the process (pid), the resource
(fd, mapping, file) and what to do.  The CLI maps each class to a documented exit code
(see SPEC.md, "Exit codes"); nothing below cli/ prints or exits.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

from cptimage.errors import shorten


class CptError(Exception):
    """Base class of every error cpt reports to a user."""

    def __init__(self, msg: str, *, pid: int | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.pid = pid

    def __str__(self) -> str:
        return self.msg


class NoSuchProcess(CptError):
    """The process vanished or never existed."""

    def __init__(self, pid: int, msg: str | None = None, *, path: str | None = None) -> None:
        super().__init__(msg or f"process {pid} does not exist", pid=pid)
        self.path = path  # the /proc file that told, when cpt.procfs raised it


class ZombieProcess(NoSuchProcess):
    """The process is a zombie: its /proc entries are mostly gone."""

    def __init__(self, pid: int, msg: str | None = None, *, path: str | None = None) -> None:
        super().__init__(pid, msg or f"process {pid} is a zombie", path=path)


class AccessDenied(CptError):
    """The kernel refused access (EPERM/EACCES) to a process resource."""

    def __init__(self, msg: str, *, pid: int | None = None, path: str | None = None) -> None:
        super().__init__(msg, pid=pid)
        self.path = path  # the /proc file refused, when cpt.procfs raised it


class SystemError_(CptError):
    """A system call failed in a way that is not the user's input (vzctl exit 3)."""


class UsageError(CptError):
    """Invalid syntax or combination of options (vzctl exit 20)."""


class InvalidValue(CptError):
    """An option value is invalid (vzctl exit 21)."""


class DumpError(CptError):
    """Checkpoint failed (vzctl exit 16); the workload has been left running."""


class UnsupportedError(DumpError):
    """The tree holds a resource cpt cannot checkpoint yet; refused before freezing."""


class RestoreError(CptError):
    """Restore failed (vzctl exit 17); nothing of the tree was left alive."""


class CodedError(CptError):
    """An error whose exit code is its own (`code`): `cpt migrate`'s, vzmigrate's table."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code


class LockedError(CptError):
    """Another cpt command holds the lock (vzctl exit 9)."""


class NotRunning(CptError):
    """The VE or process tree is not running (vzctl exit 31)."""


class AlreadyRunning(CptError):
    """The VE or process tree is already running (vzctl exit 32)."""


class InjectionError(CptError):
    """A syscall injected into a traced task hit a fatal signal (SIGSEGV, SIGBUS, SIGILL,
    SIGFPE) or an unexpected stop; the task's registers and signal mask were restored."""

    def __init__(self, msg: str, *, pid: int | None = None, signal: int | None = None) -> None:
        super().__init__(msg, pid=pid)
        self.signal = signal


class CommandError(SystemError_):
    """An external tool failed: the command, its exit code and the last line it wrote to
    stderr. `returncode` is None when the tool could not be started or was killed."""

    def __init__(
        self, msg: str, *, argv: Sequence[str], returncode: int | None, stderr: str = ""
    ) -> None:
        super().__init__(msg)
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr


class CommandTimeout(CommandError):
    """An external tool ran longer than its timeout and was killed."""


def os_error_text(e: OSError) -> str:
    """An OSError in words, never Python's bare "[Errno 22] Invalid argument": the file(s)
    it names, what the kernel said and the errno's name ("Invalid argument (EINVAL)")."""
    why = e.strerror or str(e)
    name = errno.errorcode.get(e.errno) if e.errno is not None else None
    if name and e.strerror == os.strerror(e.errno or 0):  # not a message of cpt's own
        why = f"{why} ({name})"
    files = [str(f) for f in (e.filename, e.filename2) if f is not None]
    if not files:
        return why
    names = " -> ".join(shorten(f, 160) for f in files)
    return f"{names}: {why}"
