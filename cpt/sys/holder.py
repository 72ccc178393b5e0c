"""A holder: a small process that keeps file descriptors open between cpt commands, and
ends when the process it watches ends.

Write tracking lasts only while its userfaultfds are open somewhere (cpt/dump/track.py);
a command that must leave it running (a pre-dump) hands them to a holder.  The holder is
a fresh interpreter (`python -I -S`, nothing of cpt imported) that inherits the fds at the
same numbers, detaches itself (double fork: it is nobody's child to wait for), says its PID
on a pipe, and sleeps in poll() on a pidfd of the watched process: when that process exits
the holder exits, so it never outlives what it holds.  It ptraces nothing and freezes
nothing.  A later command takes the fds with pidfd_getfd (`take`) and ends it with SIGTERM
(`stop`).  A holder is known by its PID, its start time and its name (comm `cpt-holder`).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from collections.abc import Sequence

from cpt.errors import NoSuchProcess
from cpt.procfs import Proc
from cpt.sys.task import pidfd_getfd, pidfd_open

COMM = "cpt-holder"
SPAWN_TIMEOUT = 10.0

# The holder's whole program.  argv: COMM WATCH_PIDFD READY_FD LABEL.  PR_SET_NAME through
# ctypes: `ps` shows what it is.  The first fork's parent exits at once (cpt waits for it);
# the second process holds the fds until the watched process exits or SIGTERM comes.
PROGRAM = r"""
import ctypes, os, select, sys
watch, ready = int(sys.argv[2]), int(sys.argv[3])
if os.fork():
    os._exit(0)
os.setsid()
try:
    ctypes.CDLL(None).prctl(15, b"cpt-holder", 0, 0, 0)
except Exception:
    pass
os.write(ready, b"%d\n" % os.getpid())
os.close(ready)
p = select.poll()
p.register(watch, select.POLLIN)
while True:
    try:
        if p.poll():
            os._exit(0)
    except InterruptedError:
        pass
"""

_PROC = Proc()


def spawn(watch: int, fds: Sequence[int], label: str = "") -> tuple[int, int]:
    """A holder of `fds` (at the same numbers) that lives until process `watch` exits.
    Returns its (pid, starttime).  Raises NoSuchProcess if `watch` is gone already."""
    import subprocess  # (a holder is started by a pre-dump only)

    pidfd = pidfd_open(watch)
    r, w = os.pipe()
    try:
        argv = [sys.executable, "-I", "-S", "-c", PROGRAM, COMM, str(pidfd), str(w), label]
        child = subprocess.Popen(
            argv,
            pass_fds=[pidfd, w, *fds],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(w)
        w = -1
        try:
            child.wait(SPAWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            raise OSError(f"the fd holder did not start within {SPAWN_TIMEOUT:.0f} s") from None
        if not select.select([r], [], [], SPAWN_TIMEOUT)[0]:
            raise OSError("the fd holder did not say its PID")
        text = os.read(r, 64).decode().strip()
        if not text.isdigit():
            raise OSError(f"the fd holder exited at once (watched process {watch} gone?)")
        pid = int(text)
    finally:
        os.close(pidfd)
        os.close(r)
        if w >= 0:
            os.close(w)
    return pid, _start_of(pid)


def _start_of(pid: int) -> int:
    return _PROC.stat(pid).starttime


def alive(pid: int, start: int) -> bool:
    """Is the holder (pid, starttime) still running (a zombie is not)?"""
    try:
        st = _PROC.stat(pid)
    except NoSuchProcess:
        return False
    return st.starttime == start and st.state not in ("Z", "X") and st.comm == COMM


def take(pid: int, start: int, fds: Sequence[int]) -> list[int]:
    """Duplicates in THIS process of the holder's fds (the same open files)."""
    if not alive(pid, start):
        raise NoSuchProcess(pid, f"the fd holder {pid} is gone")
    pidfd = pidfd_open(pid)
    out: list[int] = []
    try:
        for fd in fds:
            out.append(pidfd_getfd(pidfd, fd, pid))
    except BaseException:
        for fd in out:
            os.close(fd)
        raise
    finally:
        os.close(pidfd)
    return out


def stop(pid: int, start: int, timeout: float = 5.0) -> None:
    """End the holder (its fds close with it); waits until it is gone or a zombie."""
    if not alive(pid, start):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid, start) and time.monotonic() < deadline:
        time.sleep(0.002)


__all__ = ["COMM", "alive", "spawn", "stop", "take"]
