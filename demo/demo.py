"""`make demo`: the main job of cpt, shown to a new user on a real VE.

A node root of its own (a temporary directory under /var/tmp), whose storage is the
embedded default: a loop-file btrfs pool (`cpt pool init`).  A VE on it runs a CPython
counter with 16 MiB of memory, a second thread and a pipe with unread messages
(fixtures/workloads/counter.py) and a TCP echo server; a client on this host holds a
connection to it.  The VE contains its root: a user namespace maps its ids to a range of
the host's (from id files of the demo's own: a node uses /etc/subuid and /etc/subgid).  The VE is checkpointed (suspend, dump, kill) to one dump file, which
is shown and verified; it is restored: the same in-VE PIDs, the counter continues where
it stopped, the client's connection carries on.  Then a snapshot with memory is taken,
the VE runs on and writes a file, and is rolled back: the file is gone, the processes are
back at the snapshot point with their PIDs.  At the end the workload checks itself
(memory, thread, pipe contents) and says PASS or FAIL; everything is removed.  Every step
runs the real `cpt` command line, as a user would type it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.rule import Rule
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cpt.errors import CptError  # noqa: E402
from cpt.procfs import Proc  # noqa: E402
from cpt.stages.store import node_tag  # noqa: E402
from cpt.sys.cgroup import Freezer  # noqa: E402
from cpt.sys.task import set_child_subreaper  # noqa: E402
from storage import pool  # noqa: E402
from ve.runtime import cgroup_name  # noqa: E402

WORKLOADS = REPO / "fixtures" / "workloads"
CPT = [sys.executable, "-m", "cli.main"]
VEID = "900"
ADDR = "198.18.90.2"  # 198.18.0.0/15: reserved for network tests, never routed out
PORT = 7007
ECHO = (  # a thread per connection
    "import socket, threading\n"
    "def serve(c):\n"
    "    try:\n"
    "        while (d := c.recv(65536)):\n"
    "            c.sendall(d)\n"
    "    except OSError:\n"
    "        pass\n"
    "    c.close()\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    f"s.bind(('0.0.0.0', {PORT})); s.listen()\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    threading.Thread(target=serve, args=(c,), daemon=True).start()\n"
)
LAUNCHER = (
    "mkdir -p /root/wl; "
    "python3 -E -s -B /root/bin/counter.py /root/wl </dev/null >/root/wl/log 2>&1 & "
    "python3 /root/bin/echo.py </dev/null >/dev/null 2>&1 & wait"
)


class Demo:
    def __init__(self, con: Console, root: Path) -> None:
        self.con = con
        self.root = root
        # the VE's id range comes from files of the demo's own (a node uses the machine's
        # /etc/subuid and /etc/subgid): the demo leaves nothing behind in /etc
        self.env = dict(os.environ, CPT_ROOT=str(root), CPT_IDMAP_DIR=str(root / "ids"))
        self.timings: list[tuple[str, float]] = []
        self.private = root / "pool" / "private" / VEID
        self.wl = self.private / "root" / "wl"
        self.client: socket.socket | None = None
        self.created = False

    # -- helpers

    def cpt(self, *args: object, show: bool = True, check: bool = True) -> str:
        argv = [str(a) for a in args]
        self.con.print(Rule(f"[bold cyan]$ cpt {' '.join(argv)}", align="left"))
        t0 = time.perf_counter()
        with self.con.status(f"cpt {argv[0]} ..."):
            p = subprocess.run([*CPT, *argv], cwd=REPO, env=self.env, capture_output=True,
                               text=True)  # fmt: skip
        took = time.perf_counter() - t0
        self.timings.append((f"cpt {' '.join(argv[:2])}", took))
        if show and p.stdout.strip():
            self.con.print(p.stdout.rstrip(), markup=False, highlight=False)
        if p.stderr.strip():
            self.con.print(p.stderr.rstrip(), style="yellow", markup=False)
        if p.returncode and check:
            raise SystemExit(f"demo: `cpt {' '.join(argv)}` failed with exit code {p.returncode}")
        return p.stdout

    def counter(self) -> int:
        try:
            return int((self.wl / "counter").read_text() or 0)
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

    def echo(self, text: str) -> None:
        assert self.client is not None
        self.client.settimeout(30)
        self.client.sendall(text.encode())
        got = b""
        while len(got) < len(text):
            chunk = self.client.recv(4096)
            if not chunk:
                raise SystemExit("demo: the VE closed the connection")
            got += chunk
        self.con.print(f"client -> {ADDR}:{PORT}: {text!r}, echoed {got.decode()!r}")

    # -- the story

    def node(self) -> None:
        self.con.print(Rule("[bold]1. a node: its storage is a loop-file btrfs pool", align="left"))
        self.cpt("pool", "init", "--size", "1G")
        self.cpt("pool", "status")

    def start(self) -> None:
        self.con.print(Rule("[bold]2. a VE: CPython counter (16 MiB, a thread, a pipe) and a "
                            "TCP echo server", align="left"))  # fmt: skip
        self.cpt("ve", "create", VEID, "--ip", f"{ADDR}/24", "--hostname", "demo",
                 "--", "/bin/sh", "-c", LAUNCHER)  # fmt: skip
        self.created = True
        bindir = self.private / "root" / "bin"
        bindir.mkdir(parents=True)
        for name in ("counter.py", "_wl.py"):
            shutil.copy(WORKLOADS / name, bindir / name)
        (bindir / "echo.py").write_text(ECHO)
        self.cpt("ve", "start", VEID)
        deadline = time.monotonic() + 15
        while not (self.wl / "ready").exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"demo: the workload did not start; see {self.wl / 'log'}")
            time.sleep(0.05)
        self.cpt("ve", "exec", VEID, "--", "/bin/sh", "-c",
                 "echo \"inside: $(hostname), PIDs: $(ls /proc | grep -E '^[0-9]+$' | "
                 "tr '\\n' ' ')\"; echo \"root inside: $(id), uid_map $(cat /proc/self/uid_map)\"")  # fmt: skip
        st = (self.wl / "ready").stat()
        self.con.print(
            f"the VE's root is root inside only: its files are uid {st.st_uid} on this host "
            f"({json.loads(self.cpt('ve', 'status', VEID, '--json', show=False))['ids']}, "
            f"its own id range)"
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client = socket.create_connection((ADDR, PORT), timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.echo("hello before the checkpoint")
        self.watch("running", 1.0)

    def checkpoint(self) -> int:
        self.con.print(Rule("[bold]3. checkpoint: suspend, dump, kill", align="left"))
        self.cpt("chkpnt", VEID)
        stopped = self.counter()
        self.cpt("ve", "status", VEID)
        route = subprocess.run(["ip", "route", "show", f"{ADDR}/32"], capture_output=True,
                               text=True).stdout.strip()  # fmt: skip
        self.con.print(f"the counter stopped at {stopped}; the VE's address is held: {route}")
        return stopped

    def inspect(self) -> None:
        self.con.print(Rule("[bold]4. the dump file", align="left"))
        dump = self.root / "dump" / f"Dump.{VEID}"
        st = dump.stat()
        self.con.print(f"{dump}: {st.st_size / 2**20:.1f} MiB, mode {oct(st.st_mode & 0o777)}")
        self.cpt("image", "show", dump)
        self.cpt("image", "verify", "--host", dump)

    def restore(self, stopped: int) -> None:
        self.con.print(Rule("[bold]5. restore: the same VE, where it stopped", align="left"))
        self.cpt("restore", VEID)
        seen = self.watch("restored", 1.5)
        verdict = "continues" if seen[0] >= stopped and seen[-1] > seen[0] else "DID NOT CONTINUE"
        self.con.print(f"stopped at {stopped}, {verdict} from there")
        self.echo("the same connection, after the restore")

    def snapshot(self) -> None:
        self.con.print(Rule("[bold]6. snapshot with memory, run on, roll back", align="left"))
        pids = self.ve_pids()
        self.con.print(f"processes inside the VE (PID: command): {pids}")
        self.cpt("snapshot", "create", VEID, "--name", "before-rollback-demo")
        at = self.counter()
        (self.private / "root" / "note.txt").write_text("written after the snapshot\n")
        ran = self.watch("after the snapshot", 1.0)
        self.cpt("snapshot", "list", VEID)
        self.cpt("snapshot", "rollback", VEID, "before-rollback-demo")
        back = self.watch("after the rollback", 1.0)
        again = self.ve_pids()
        note = (self.private / "root" / "note.txt").exists()
        self.con.print(
            f"counter at the snapshot ~{at}, ran to {ran[-1]}, back to {back[0]} and on; "
            f"note.txt written after the snapshot: {'still there!' if note else 'gone'}; "
            f"processes inside: {'the same PIDs' if again == pids else 'DIFFERENT PIDs'}"
        )
        self.echo_reconnect()

    def ve_pids(self) -> str:
        """The VE's processes as it sees them (NSpid), read from this host."""
        out = []
        proc = Proc()
        cg = Freezer(cgroup_name(VEID, node_tag(str(self.root)))).path
        for pid in Path(cg, "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError, CptError):
                nspid = proc.status(int(pid)).nspid[-1]
                comm = proc.comm(int(pid)).strip()
                out.append((nspid, comm))
        return ", ".join(f"{p}: {c}" for p, c in sorted(out))

    def echo_reconnect(self) -> None:
        """The rollback went back to before the client's connection existed: connect anew."""
        if self.client is not None:
            self.client.close()
        self.client = socket.create_connection((ADDR, PORT), timeout=10)
        self.echo("a new connection to the rolled back VE")

    def finish(self) -> str:
        self.con.print(Rule("[bold]7. the workload checks itself", align="left"))
        pid = int((self.wl / "ready").read_text())
        self.cpt("ve", "exec", VEID, "--", "/bin/kill", "-TERM", pid)
        result = self.wl / "result"
        deadline = time.monotonic() + 15
        while not result.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
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
        if self.client is not None:
            self.client.close()
        if self.created:
            self.cpt("ve", "stop", VEID, "--timeout", "2", show=False, check=False)
            self.cpt("ve", "destroy", VEID, show=False, check=False)
        pool.teardown(str(self.root))


def main() -> int:
    con = Console(highlight=False)
    if os.geteuid() != 0:
        con.print("[red]the demo needs root: checkpoint/restore uses ptrace and namespaces")
        return 1
    # VE inits orphaned by `cpt` come back to us, not to PID 1 (which reaps late here)
    set_child_subreaper()
    root = Path(tempfile.mkdtemp(prefix="cpt-demo-", dir="/var/tmp"))
    demo = Demo(con, root)
    try:
        demo.node()
        demo.start()
        stopped = demo.checkpoint()
        demo.inspect()
        demo.restore(stopped)
        demo.snapshot()
        verdict = demo.finish()
        demo.report()
        return 0 if verdict == "PASS" else 1
    finally:
        demo.cleanup()
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass  # the VE inits that came to us
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
