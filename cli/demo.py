"""`make demo`: the main job of cpt, shown to a new user on a real workload.

A CPython counter with 16 MiB of memory, a second thread and a pipe with unread messages
(fixtures/workloads/counter.py) is checkpointed to one dump file and killed; the image is
shown and verified; the workload is restored and its counter continues where it stopped;
at the end it checks itself (memory, thread, pipe contents) and says PASS or FAIL.
Every step runs the real `cpt` command line, as a user would type it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.rule import Rule
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
WORKLOAD = REPO / "fixtures" / "workloads" / "counter.py"
CPT = [sys.executable, "-m", "cli.main"]
PR_SET_CHILD_SUBREAPER = 36


class Demo:
    def __init__(self, con: Console, workdir: Path) -> None:
        self.con = con
        self.dir = workdir
        self.dump = workdir / "Dump.demo"
        self.timings: list[tuple[str, float]] = []
        self.pid = 0

    # -- helpers

    def cpt(self, *args: object, show: bool = True) -> str:
        argv = [str(a) for a in args]
        self.con.print(Rule(f"[bold cyan]$ cpt {' '.join(argv)}", align="left"))
        t0 = time.perf_counter()
        with self.con.status(f"cpt {argv[0]} ..."), self.reaping():
            p = subprocess.run([*CPT, *argv], cwd=REPO, capture_output=True, text=True)
        took = time.perf_counter() - t0
        self.timings.append((f"cpt {' '.join(argv[:2])}", took))
        if show:
            self.con.print(p.stdout.rstrip(), markup=False, highlight=False)
        if p.stderr.strip():
            self.con.print(p.stderr.rstrip(), style="yellow", markup=False)
        if p.returncode:
            raise SystemExit(f"demo: `cpt {' '.join(argv)}` failed with exit code {p.returncode}")
        return p.stdout

    @contextlib.contextmanager
    def reaping(self) -> Iterator[None]:
        """Reap the workload if `cpt` kills it: the killed root is OUR child, and `cpt`
        reports a kill done only once its PID is gone (the reaping runs in the background
        because `cpt` is a separate process: no ptrace stop can be stolen)."""
        import threading

        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(0.01):
                with contextlib.suppress(ChildProcessError):
                    if self.pid:
                        os.waitpid(self.pid, os.WNOHANG)

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()

    def counter(self) -> int:
        try:
            return int((self.dir / "counter").read_text() or 0)
        except (OSError, ValueError):
            return -1

    def watch(self, label: str, seconds: float) -> list[int]:
        seen = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            seen.append(self.counter())
            time.sleep(seconds / 5)
        self.con.print(f"{label}: counter " + " -> ".join(str(c) for c in seen))
        return seen

    # -- the story

    def start(self) -> None:
        self.con.print(Rule("[bold]1. a workload: CPython, 16 MiB, a thread, a pipe", align="left"))
        log = open(self.dir / "log", "wb")  # noqa: SIM115 - the workload holds it
        p = subprocess.Popen(
            [sys.executable, "-E", "-s", "-B", str(WORKLOAD), str(self.dir)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        self.pid = p.pid
        deadline = time.monotonic() + 10
        while not (self.dir / "ready").exists():
            if time.monotonic() > deadline or p.poll() is not None:
                raise SystemExit(f"demo: the workload did not start; see {self.dir / 'log'}")
            time.sleep(0.02)
        self.con.print(f"workload PID {self.pid}, counting in {self.dir / 'counter'}")
        self.watch("running", 1.0)

    def checkpoint(self) -> int:
        self.con.print(Rule("[bold]2. checkpoint: suspend, dump, kill", align="left"))
        self.cpt("chkpnt", "--pid", self.pid, "--dumpfile", self.dump)
        stopped = self.counter()
        alive = os.path.exists(f"/proc/{self.pid}")
        self.con.print(
            f"process {self.pid} {'still exists!' if alive else 'is gone'}; "
            f"the counter stopped at {stopped}"
        )
        return stopped

    def inspect(self) -> None:
        self.con.print(Rule("[bold]3. the dump file", align="left"))
        size = self.dump.stat().st_size
        mode = oct(self.dump.stat().st_mode & 0o777)
        self.con.print(f"{self.dump}: {size / 2**20:.1f} MiB, mode {mode}")
        self.cpt("image", "show", self.dump)
        self.cpt("image", "verify", "--host", self.dump)

    def restore(self, stopped: int) -> None:
        self.con.print(Rule("[bold]4. restore: the same process, where it stopped", align="left"))
        self.cpt("restore", "--dumpfile", self.dump)
        seen = self.watch(f"restored PID {self.pid}", 1.5)
        verdict = "continues" if seen[0] >= stopped and seen[-1] > seen[0] else "DID NOT CONTINUE"
        self.con.print(f"stopped at {stopped}, {verdict} from there")

    def finish(self) -> str:
        self.con.print(Rule("[bold]5. the workload checks itself", align="left"))
        os.kill(self.pid, signal.SIGTERM)
        result = self.dir / "result"
        deadline = time.monotonic() + 15
        while not result.exists() and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, os.WNOHANG)
            time.sleep(0.02)
        verdict = result.read_text().strip() if result.exists() else "no verdict"
        style = "bold green" if verdict == "PASS" else "bold red"
        self.con.print(f"memory, thread, pipe messages after restore: [{style}]{verdict}")
        return verdict

    def report(self) -> None:
        t = Table(title="timings (each a separate `cpt` process, interpreter start included)")
        t.add_column("step")
        t.add_column("wall time", justify="right")
        for name, secs in self.timings:
            t.add_row(name, f"{secs * 1000:.0f} ms")
        self.con.print(t)

    def cleanup(self) -> None:
        if self.pid and os.path.exists(f"/proc/{self.pid}"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)


def main() -> int:
    con = Console(highlight=False)
    if os.geteuid() != 0:
        con.print("[red]the demo needs root: checkpoint/restore uses ptrace and clone3(set_tid)")
        return 1
    # orphans and restored roots come back to us, not to PID 1 (which reaps late here)
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    workdir = Path(tempfile.mkdtemp(prefix="cpt-demo-", dir="/var/tmp"))
    demo = Demo(con, workdir)
    try:
        demo.start()
        stopped = demo.checkpoint()
        demo.inspect()
        demo.restore(stopped)
        verdict = demo.finish()
        demo.report()
        return 0 if verdict == "PASS" else 1
    finally:
        demo.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
