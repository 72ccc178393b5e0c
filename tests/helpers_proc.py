"""Small helpers for tests that run real processes: compile a C helper, start it, find free
PIDs, and kill + reap everything a test started, by PID."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from cpt.sys.task import set_child_subreaper

WALL = 0x40000000


def compile_c(outdir: Path, name: str, source: str) -> Path:
    src = outdir / f"{name}.c"
    exe = outdir / name
    src.write_text(source)
    subprocess.run(
        ["gcc", "-O1", "-pthread", "-o", str(exe), str(src)], check=True, capture_output=True
    )
    return exe


def wait_until(pred: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.002)


def proc_state(pid: int) -> str | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return None
    return data[data.rfind(b")") + 2 :].split(b" ", 1)[0].decode()


def free_pids(count: int = 1) -> list[int]:
    """`count` consecutive PIDs that are free now, a random distance above ns_last_pid."""
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    last = int(Path("/proc/sys/kernel/ns_last_pid").read_text())
    for _ in range(200):
        base = last + random.randint(200, 2000)
        if base + count >= pid_max:
            base = random.randint(300, pid_max // 2)
        cand = list(range(base, base + count))
        if not any(os.path.exists(f"/proc/{p}") for p in cand):
            return cand
    raise RuntimeError("no free pid range found")


class Procs:
    """Everything a test started; `cleanup()` SIGKILLs and reaps it by PID.

    The test process becomes a child subreaper, so orphans of killed parents are reparented
    to it and reaped here instead of lingering as zombies (PID 1 reaps them ~1.5 s late).
    """

    def __init__(self) -> None:
        set_child_subreaper(True)
        self.pids: list[int] = []
        self.popens: list[subprocess.Popen[bytes]] = []

    def add(self, pid: int) -> int:
        self.pids.append(pid)
        return pid

    def popen(self, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(argv, **kw)  # type: ignore[call-overload]
        self.popens.append(p)
        self.pids.append(p.pid)
        return p

    def start_ready(
        self, argv: list[str], marker: bytes = b"READY"
    ) -> tuple[subprocess.Popen[bytes], bytes]:
        """Start a helper that prints one line beginning with `marker`; return that line."""
        p = self.popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert p.stdout is not None
        line = p.stdout.readline()
        if not line.startswith(marker):
            raise RuntimeError(f"{argv[0]} printed {line!r} instead of {marker!r}")
        return p, line

    def cleanup(self) -> None:
        for pid in reversed(self.pids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        pending = set(self.pids)
        deadline = time.monotonic() + 5.0
        while pending and time.monotonic() < deadline:
            for pid in list(pending):
                try:
                    got, _ = os.waitpid(pid, WALL | os.WNOHANG)
                except ChildProcessError:
                    got = 0
                if not os.path.exists(f"/proc/{pid}"):
                    pending.discard(pid)
                elif got == 0 and proc_state(pid) == "Z":
                    # A zombie whose parent is still being killed: it will be ours soon.
                    pass
            if pending:
                time.sleep(0.005)
        for p in self.popens:
            for f in (p.stdout, p.stderr, p.stdin):
                if f is not None:
                    f.close()
            p.returncode = p.returncode if p.returncode is not None else -9
