"""The ONE place cpt runs external tools (btrfs, losetup, mkfs.btrfs, mount, umount,
lvcreate, nft, ...), for every layer.

Every command is logged (logger "cpt.runner": the argv before, the exit code and duration
after), runs with stdin closed unless `input` is given, in C locale (stable messages to
report), in its own process group, and under a timeout: on expiry the whole group is
killed, so a tool never hangs cpt. A failure becomes a CommandError naming the command, its
exit code and the last line of its stderr.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence

from cpt.errors import CommandError, CommandTimeout

log = logging.getLogger("cpt.runner")

DEFAULT_TIMEOUT = 120.0
# After SIGKILL a task stuck in the kernel (D state) may never die: wait this long for it.
_REAP_TIMEOUT = 5.0

Argv = Sequence[str | os.PathLike[str]]
Stream = subprocess.Popen[bytes]  # a tool started by stream()


def run(
    argv: Argv,
    *,
    check: bool = True,
    input: bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run `argv` and return its result (stdout and stderr as bytes).

    `env` holds variables added to this process's environment. With `check` (the default)
    a non-zero exit raises CommandError; a missing tool or a timeout always raises.
    """
    args = [os.fspath(a) for a in argv]
    cmd = shlex.join(args)
    log.debug("run: %s", cmd)
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "LC_ALL": "C", **(env or {})},
            start_new_session=True,
        )
    except OSError as e:
        raise CommandError(
            f"cannot run {cmd}: {e.strerror}", argv=args, returncode=None, stderr=str(e)
        ) from None
    out, err = _communicate(proc, args, cmd, input, timeout)
    elapsed = (time.monotonic() - started) * 1000
    log.debug("exit %d in %.1f ms: %s", proc.returncode, elapsed, cmd)
    result = subprocess.CompletedProcess(args, proc.returncode, out, err)
    if check and proc.returncode != 0:
        raise _failure(result)
    return result


def stream(argv: Argv, *, stdin: bool = False) -> Stream:
    """Start `argv` for a stream: its stdout a pipe (with `stdin`, its stdin a pipe and its
    stdout discarded), stderr a pipe, in C locale and its own process group, logged.  The
    caller feeds or drains it and waits for it with a bound (a missing tool raises
    CommandError here)."""
    args = [os.fspath(a) for a in argv]
    cmd = shlex.join(args)
    log.debug("stream: %s", cmd)
    try:
        return subprocess.Popen(
            args,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL if stdin else subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "LC_ALL": "C"},
            start_new_session=True,
        )
    except OSError as e:
        raise CommandError(
            f"cannot run {cmd}: {e.strerror}", argv=args, returncode=None, stderr=str(e)
        ) from None


def _failure(result: subprocess.CompletedProcess[bytes]) -> CommandError:
    """The error for a finished command that failed."""
    stderr = result.stderr.decode(errors="replace")
    last = _last_line(stderr) or _last_line(result.stdout.decode(errors="replace"))
    cmd = shlex.join(result.args)
    why = f": {last}" if last else ""
    return CommandError(
        f"{cmd} failed with exit code {result.returncode}{why}",
        argv=result.args,
        returncode=result.returncode,
        stderr=stderr,
    )


def _communicate(
    proc: subprocess.Popen[bytes], args: list[str], cmd: str, input: bytes | None, timeout: float
) -> tuple[bytes, bytes]:
    try:
        return proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        why = f"timed out after {timeout:g} s and was killed"
        if not _reaped(proc):
            why += f"; pid {proc.pid} does not die (stuck in the kernel)"
        log.warning("%s %s", cmd, why)
        raise CommandTimeout(f"{cmd} {why}", argv=args, returncode=None) from None
    except BaseException:
        # Ctrl-C or any error while waiting: the tool must not outlive its caller.
        _kill_group(proc)
        _reaped(proc)
        raise


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _reaped(proc: subprocess.Popen[bytes]) -> bool:
    """Collect a killed command; False if it is still alive after _REAP_TIMEOUT."""
    try:
        # A grandchild in the group could hold the pipes: it was killed with the group.
        proc.communicate(timeout=_REAP_TIMEOUT)
    except subprocess.TimeoutExpired:
        return False
    return True


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
