"""A minimal job-control shell for the shell-job tests: `python ttyshell.py CMD_FD REPLY_FD`.

Started with a pty slave as stdin and in a new session, it makes that terminal its
controlling terminal, then runs the commands it reads from CMD_FD (one JSON object a
line: {"argv": [...], "out": "path", "fg": true|false}) as jobs, as an interactive shell
does: each job in its own process group, its stdin the terminal, its stdout and stderr
the file `out`; a foreground job ("fg") is given the terminal (tcsetpgrp), which the shell
takes back when that job ends.  The shell does not block on a job: it reaps its children
(it is a subreaper, so a killed job's orphans come back to it) while it reads commands,
and writes to REPLY_FD {"pid": P} when a job starts, {"exited": P, "status": S} when a
child ends.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import select
import signal
import sys
import termios

JOB_SIGNALS = (signal.SIGTTOU, signal.SIGTTIN, signal.SIGTSTP)
PR_SET_CHILD_SUBREAPER = 36


def reply(fd: int, obj: dict[str, object]) -> None:
    os.write(fd, (json.dumps(obj) + "\n").encode())


def start(cmd: dict[str, object]) -> int:
    argv = [str(a) for a in cmd["argv"]]  # type: ignore[attr-defined]
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        if cmd.get("fg"):
            os.tcsetpgrp(0, os.getpid())  # SIGTTOU is ignored: allowed from the background
        for sig in (*JOB_SIGNALS, signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores the last two
            signal.signal(sig, signal.SIG_DFL)
        out = os.open(str(cmd["out"]), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.execvp(argv[0], argv)
    os.setpgid(pid, pid)  # as the child does: whichever runs first
    return pid


def reap(reply_fd: int, fg: set[int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in fg:
            fg.discard(pid)
            os.tcsetpgrp(0, os.getpgrp())
        reply(reply_fd, {"exited": pid, "status": status})


def main() -> None:
    cmd_fd, reply_fd = int(sys.argv[1]), int(sys.argv[2])
    for sig in JOB_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    fg: set[int] = set()
    buf = b""
    while True:
        if select.select([cmd_fd], [], [], 0.01)[0]:
            data = os.read(cmd_fd, 4096)
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                cmd = json.loads(line)
                pid = start(cmd)
                if cmd.get("fg"):
                    fg.add(pid)
                reply(reply_fd, {"pid": pid})
        reap(reply_fd, fg)


if __name__ == "__main__":
    main()
