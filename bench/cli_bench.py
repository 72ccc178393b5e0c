"""The `cpt` commands as users run them: each a separate process, nothing warmed up.

Every timed command is `.venv/bin/cpt ...` started afresh (interpreter start-up, imports
and argument parsing included), on workloads started afresh, with no warm-up of memory:
before each timed step of a large workload (>= 128 MiB) the bench waits until the VM's
free page reporting has handed freed memory back to its host, so the command meets
host-cold memory as a user's command does (ENGINE-NOTES, "Writing the image").  Each
figure is the median of --rounds rounds, with the spread (min-max) and the worst round
against the median.

  start-up      `python -c pass` from the venv (the interpreter's own start), and the wall
                time and `python -X importtime` of `cpt --help`, `cpt chkpnt --help`,
                `cpt ve status VEID` (a VE that does not exist), `cpt image show` (the
                16 MiB image), and of
                `cpt chkpnt` and `cpt restore` failing at once on a missing process or
                file (what the two commands cost before any engine work)
  workloads     fixtures/workloads/counter.c with 0, 16, 256, 1024 MiB of touched memory
                (--sizes), a tree of 100 processes and a process with 10,000 VMAs
                (fixtures/workloads/scale.c): per round `cpt chkpnt --leave-running`
                (wall, and its frozen time from --json), `cpt chkpnt` (dump + kill: fsync
                before the kill), `cpt restore` (wall; the first round's restored
                workload checks itself and must PASS)
  limits        in the same rounds, on the same pages (the restored workload's):
                process_vm_readv into a reused 16 MiB buffer, readv + write() of it to a
                new file beside the images, and the first-touch memset of as much fresh
                memory (a small C helper, one fresh process per round); from 256 MiB on
                also each way the frozen window could put the pages into the image file
                (bench/page_paths.py: write(), O_DIRECT, vmsplice + splice as CRIU's page
                pipes, and cpt's reserve: page cache faulted in before the freeze, readv
                into its mapping in it), each on host-cold memory
  scale         (--scale) trees of 10, 100 and 1,000 processes, 1,000 and 10,000 VMAs,
                1,000 and 10,000 open fds, 100 and 1,000 established TCP connections
                (--tcp-established; the peers are another process of this bench, on
                loopback): dump + kill and restore, per unit, and how the time per unit
                grows (1.0 = linear)

CRIU is not installed on this machine: its figures are the reference speeds of
ENGINE-NOTES (CRIU 4.2 built from source on this machine kind: frozen 0.40 ms per MiB,
restore 0.56 ms per MiB at 256 MiB and 1 GiB; 45-60 ms per command for a small process).

With --baseline CPT (another checkout's .venv/bin/cpt) every round runs the same steps
with that cpt too, on its own fresh workload: before and after in one run.

    python bench/cli_bench.py [--sizes 0,16,256,1024] [--rounds 5] [--scale] [--no-extra]
                              [--baseline CPT] [--json FILE|-] [--strict]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))

import cr_bench as cb  # noqa: E402  (the in-process bench: workloads, physical limits)
import page_paths  # noqa: E402  (the ways pages can go into the image file)
from workloads import build, kill_tree, proc_info  # noqa: E402  (tests/workloads.py)

MiB = 1 << 20
CPT = REPO / ".venv" / "bin" / "cpt"
PYTHON = REPO / ".venv" / "bin" / "python"
SETTLE_MIB = 128
PATHS_MIB = 256  # the page paths are compared from this size on
CMD_TIMEOUT = 600.0
# CRIU 4.2 on this machine kind (ENGINE-NOTES "Reference speeds"), per MiB
CRIU_FROZEN_MS_PER_MIB = 0.40
CRIU_RESTORE_MS_PER_MIB = 0.56
CRIU_SMALL_S = (0.045, 0.060)
TARGET_FROZEN = 1.0  # x CRIU's frozen time
TARGET_RESTORE = 0.8  # x CRIU's restore time
TARGET_RESTORE_MEMSET = 1.2  # x first-touch memset of the same size
TARGET_WORST = 2.0  # worst round / median
TARGET_SMALL_S = 0.120  # chkpnt and restore of 16 MiB, wall
TARGET_STARTUP_S = 0.060  # above the interpreter's start
LINEAR = 1.3  # growth per unit above this is "worse than linear"
_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


# --------------------------------------------------------------------------- helpers


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0


@dataclass
class Series:
    """One figure over the rounds."""

    values: list[float] = field(default_factory=list)

    def add(self, v: float) -> None:
        self.values.append(v)

    @property
    def med(self) -> float:
        return median(self.values)

    @property
    def worst(self) -> float:
        return max(self.values) if self.values else 0.0

    def text(self, unit: str = "ms") -> str:
        if not self.values:
            return "-"
        scale = 1000.0 if unit == "ms" else 1.0
        lo, hi = min(self.values) * scale, max(self.values) * scale
        m = self.med * scale
        worst = f" x{self.worst / self.med:.1f}" if self.med > 0 and len(self.values) > 1 else ""
        if len(self.values) == 1:
            return f"{m:.0f}"
        return f"{m:.0f} [{lo:.0f}-{hi:.0f}]{worst}"

    def to_json(self) -> dict[str, Any]:
        return {
            "median": self.med,
            "min": min(self.values, default=0.0),
            "max": self.worst,
            "values": self.values,
        }


@dataclass
class Run:
    """A finished command: wall time, exit code, its --json document (if any)."""

    wall: float
    rc: int
    doc: dict[str, Any]
    out: str
    err: str


class Cpt:
    """One cpt executable, run as users run it; its run directory is the bench's own."""

    def __init__(self, exe: Path, run_dir: Path, label: str) -> None:
        self.exe = exe
        self.label = label
        self.env = dict(os.environ, CPT_RUN_DIR=str(run_dir))

    def __call__(self, *args: object, check: bool = True, json_out: bool = True) -> Run:
        argv = [str(self.exe), *map(str, args)] + (["--json"] if json_out else [])
        t0 = time.perf_counter()
        p = subprocess.run(
            argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CMD_TIMEOUT,
        )
        wall = time.perf_counter() - t0
        doc: dict[str, Any] = {}
        if json_out and p.returncode == 0:
            with contextlib.suppress(ValueError, IndexError):
                doc = json.loads(p.stdout.strip().splitlines()[-1])
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: exit {p.returncode}\n{p.stdout}{p.stderr}")
        return Run(wall, p.returncode, doc, p.stdout, p.stderr)


def make_subreaper() -> None:
    """Restored roots (children of a `cpt restore` that exits) come to this process."""
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)


COLD = True  # --warm: no waiting for page reporting between the steps


def cold(size_mib: float) -> None:
    """Before a timed step on a large workload: let page reporting give the memory freed
    so far back to the host (so the step meets host-cold memory, as a user's does)."""
    if COLD and size_mib >= SETTLE_MIB:
        cb.freed()
        cb.settle()


def kill_restored(root: int) -> None:
    """Kill a restored tree (its root is our child now) and reap what comes to us."""
    if root and proc_info(root) is not None:
        kill_tree(root)


# --------------------------------------------------------------------------- start-up


def importtime(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """`python -X importtime` of a cpt command: total µs, by top-level package, slowest."""
    p = subprocess.run(
        [str(PYTHON), "-X", "importtime", *argv],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CMD_TIMEOUT,
    )
    total = 0
    by_pkg: dict[str, int] = {}
    top: list[tuple[int, str]] = []
    for line in p.stderr.splitlines():
        m = _IMPORT_LINE.match(line)
        if not m:
            continue
        self_us, cum_us, indent, name = int(m[1]), int(m[2]), len(m[3]), m[4]
        total += self_us
        pkg = name.split(".")[0]
        by_pkg[pkg] = by_pkg.get(pkg, 0) + self_us
        if indent == 1:
            top.append((cum_us, name))
    pkgs = sorted(by_pkg.items(), key=lambda kv: -kv[1])
    return {
        "total_us": total,
        "packages": dict(pkgs[:8]),
        "modules": [n for _, n in sorted(top, reverse=True)[:5]],
    }


def startup(cpt: Cpt, image16: Path | None, rounds: int, tmp: Path) -> dict[str, Any]:
    """Interpreter start, and the commands that (nearly) do nothing but start."""
    commands: dict[str, list[str]] = {
        "cpt --help": ["--help"],
        "cpt chkpnt --help": ["chkpnt", "--help"],
        "cpt ve status": ["ve", "status", "4242424"],
        "cpt chkpnt (no such pid)": ["chkpnt", "--pid", "999999999", "--dumpfile", str(tmp / "x")],
        "cpt restore (no such file)": ["restore", "--dumpfile", str(tmp / "missing.img")],
    }
    if image16 is not None:
        commands["cpt image show"] = ["image", "show", str(image16)]
    out: dict[str, Any] = {"python -c pass": Series()}
    for name in commands:
        out[name] = Series()
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run([str(PYTHON), "-c", "pass"], check=True)
        out["python -c pass"].add(time.perf_counter() - t0)
        for name, args in commands.items():
            out[name].add(cpt(*args, check=False, json_out=False).wall)
    out["importtime"] = {
        name: importtime([str(cpt.exe), *args], cpt.env) for name, args in commands.items()
    }
    return out


def startup_lines(st: dict[str, Any]) -> list[str]:
    py = st["python -c pass"].med
    lines = [f"  {'python -c pass (the interpreter)':44s} {st['python -c pass'].text()}"]
    for name, s in st.items():
        if name in ("python -c pass", "importtime"):
            continue
        lines.append(f"  {name:44s} {s.text()}   (interpreter + {(s.med - py) * 1000:.0f} ms)")
    lines.append("  python -X importtime (µs of imports; the largest packages; slowest top-level):")
    for name, it in st["importtime"].items():
        pk = ", ".join(f"{k} {v / 1000:.0f}" for k, v in list(it["packages"].items())[:6])
        lines.append(f"    {name:42s} {it['total_us'] / 1000:5.0f} ms: {pk}")
        lines.append(f"    {'':42s} top: {', '.join(it['modules'])}")
    return lines


# --------------------------------------------------------------------------- workloads


@dataclass
class Spec:
    """A workload of the bench: what to start, its size for the per-MiB figures."""

    name: str
    mib: int = 0  # counter's touched memory
    argv: Callable[[], list[str]] | None = None  # else counter MIB
    check_every: bool = False


@dataclass
class Result:
    spec: Spec
    label: str
    lr_wall: Series = field(default_factory=Series)
    lr_frozen: Series = field(default_factory=Series)
    lr_reserve: Series = field(default_factory=Series)
    dump_wall: Series = field(default_factory=Series)
    dump_frozen: Series = field(default_factory=Series)
    dump_sync: Series = field(default_factory=Series)
    restore_wall: Series = field(default_factory=Series)
    restore_engine: Series = field(default_factory=Series)
    readv: Series = field(default_factory=Series)
    readv_write: Series = field(default_factory=Series)
    memset: Series = field(default_factory=Series)
    paths: dict[str, Series] = field(default_factory=dict)
    pages_mib: float = 0.0
    image_mib: float = 0.0
    verdict: str = ""
    reported_mib: float = 0.0  # memory the host took back during timed steps


def counter_argv(binary: Path, directory: Path, mib: int) -> list[str]:
    return [str(binary), str(directory), str(mib)]


def one_round(
    cpt: Cpt,
    spec: Spec,
    res: Result,
    tmp: Path,
    tag: str,
    *,
    check: bool,
    limits: bool,
    memset_exe: Path | None,
    keep_image: Path | None = None,
) -> None:
    counter = build("counter")
    d = tmp / tag
    argv = spec.argv() if spec.argv else None
    wl = cb.Workload(counter, d, spec.mib, [*argv[:1], str(d), *argv[1:]] if argv else None)
    img = tmp / f"{tag}.img"
    restored = 0
    try:
        wl.wait_tick()
        before = cb.reported_kib()
        cold(spec.mib)
        r = cpt("chkpnt", "--pid", wl.pid, "--leave-running", "--dumpfile", img)
        res.lr_wall.add(r.wall)
        res.lr_frozen.add(r.doc.get("frozen_s", 0.0))
        res.lr_reserve.add(r.doc.get("reserve_s", 0.0))
        img.unlink()
        wl.wait_tick()
        cold(spec.mib)
        r = cpt("chkpnt", "--pid", wl.pid, "--dumpfile", img)
        res.dump_wall.add(r.wall)
        res.dump_frozen.add(r.doc.get("frozen_s", 0.0))
        res.dump_sync.add(r.doc.get("sync_s", 0.0))
        res.pages_mib = r.doc.get("pages_bytes", 0) / MiB
        res.image_mib = img.stat().st_size / MiB
        wl.killed()
        cold(spec.mib)
        r = cpt("restore", "--dumpfile", img)
        restored = wl.pid
        wl.restored = True
        res.restore_wall.add(r.wall)
        res.restore_engine.add(r.doc.get("total_s", 0.0))
        res.reported_mib += max(0, cb.reported_kib() - before) / 1024 if before >= 0 else 0
        wl.wait_tick()
        if memset_exe is not None and spec.mib:
            cold(spec.mib)
            out = subprocess.run(
                [str(memset_exe), str(spec.mib), "1"], capture_output=True, text=True, check=True
            ).stdout
            res.memset.add(float(out.split()[1]))
        if limits and spec.mib:
            ranges = cb.dumped_ranges(wl.pid)
            res.readv.add(cb.readv_write(wl.pid, ranges, None)[0])
            cold(spec.mib)
            res.readv_write.add(cb.readv_write(wl.pid, ranges, str(tmp / f"{tag}.raw"))[0])
            if spec.mib >= PATHS_MIB:
                raw = tmp / f"{tag}.raw"
                for name, fn in page_paths.PATHS.items():
                    cold(spec.mib)
                    res.paths.setdefault(name, Series()).add(fn(wl.pid, ranges, raw))
                cold(spec.mib)
                before_s, in_s = page_paths.reserve(wl.pid, ranges, raw)
                res.paths.setdefault("reserve: before the freeze", Series()).add(before_s)
                res.paths.setdefault("reserve: in the freeze", Series()).add(in_s)
        if check:
            res.verdict = wl.finish()
            restored = 0
            if res.verdict != "PASS":
                raise RuntimeError(f"{spec.name}: restored workload: {res.verdict}\n{wl.log()}")
        if keep_image is not None:
            shutil.copyfile(img, keep_image)
    finally:
        kill_restored(restored)
        wl.pid = 0 if restored else wl.pid
        wl.close()
        with contextlib.suppress(FileNotFoundError):
            img.unlink()
        shutil.rmtree(d, ignore_errors=True)


PATH_ROWS = [*page_paths.PATHS, "reserve: before the freeze", "reserve: in the freeze"]


def result_lines(results: list[Result], baseline: bool) -> list[str]:
    rows: list[tuple[str, Callable[[Result], str]]] = [
        ("chkpnt --leave-running, wall", lambda r: r.lr_wall.text()),
        ("  / CRIU 4.2's (its ms)", lambda r: _vs_criu(r.lr_wall, r, 0)),
        ("  frozen", lambda r: r.lr_frozen.text()),
        ("  / CRIU 4.2's frozen (its ms)", lambda r: _vs_criu(r.lr_frozen, r, 1)),
        ("  page area faulted in before the freeze", lambda r: r.lr_reserve.text()),
        ("chkpnt (dump + kill), wall", lambda r: r.dump_wall.text()),
        ("  frozen (fsync before the kill included)", lambda r: r.dump_frozen.text()),
        ("  of which fsync + rename + dir fsync", lambda r: r.dump_sync.text()),
        ("restore, wall", lambda r: r.restore_wall.text()),
        ("  engine (RestoreStats.total_s)", lambda r: r.restore_engine.text()),
        ("  / CRIU 4.2's (its ms)", lambda r: _vs_criu(r.restore_wall, r, 2)),
        ("  / first-touch memset", lambda r: _ratio(r.restore_wall, r.memset)),
        ("  engine / CRIU 4.2's (its ms)", lambda r: _vs_criu(r.restore_engine, r, 2)),
        ("  engine / first-touch memset", lambda r: _ratio(r.restore_engine, r.memset)),
        ("process_vm_readv (16 MiB buffer)", lambda r: r.readv.text()),
        ("readv + write() to a new file", lambda r: r.readv_write.text()),
        ("first-touch memset", lambda r: r.memset.text()),
        ("the frozen part of each page path (page_paths.py):", lambda r: ""),
        *[
            (f"  {name}", (lambda r, name=name: r.paths[name].text() if name in r.paths else "-"))
            for name in PATH_ROWS
        ],
        ("pages / image", lambda r: f"{r.pages_mib:.1f} / {r.image_mib:.1f} MiB"),
        ("restored workload check", lambda r: r.verdict or "-"),
    ]
    cols = [f"{r.spec.name}" + (f" ({r.label})" if baseline else "") for r in results]
    w0 = max(len(n) for n, _ in rows)
    ws = [max(len(c), *(len(fn(r)) for _, fn in rows)) for c, r in zip(cols, results, strict=True)]
    lines = ["  " + " " * w0 + "  " + "  ".join(c.rjust(w) for c, w in zip(cols, ws, strict=True))]
    for name, fn in rows:
        vals = [fn(r).rjust(w) for r, w in zip(results, ws, strict=True)]
        lines.append("  " + name.ljust(w0) + "  " + "  ".join(vals))
    return lines


def _vs_criu(s: Series, r: Result, col: int) -> str:
    """Against CRIU 4.2's reference figure of the same size (ENGINE-NOTES)."""
    ref = cb.CRIU.get(r.spec.mib) if not r.spec.argv else None
    if ref is None or not s.values:
        return "-"
    return f"{s.med / ref[col]:.2f}x ({ref[col] * 1000:.0f})"


def _ratio(a: Series, b: Series) -> str:
    return f"{a.med / b.med:.2f}x" if a.values and b.med else "-"


# --------------------------------------------------------------------------- scale


@dataclass
class ScalePoint:
    what: str
    n: int
    label: str
    dump_wall: Series = field(default_factory=Series)
    dump_frozen: Series = field(default_factory=Series)
    restore_wall: Series = field(default_factory=Series)
    restore_engine: Series = field(default_factory=Series)
    note: str = ""


def scale_argv(procs: int, vmas: int, fds: int) -> Callable[[], list[str]]:
    return lambda: [str(build("scale")), str(procs), str(vmas), str(fds)]


def scale_round(
    cpt: Cpt, pt: ScalePoint, argv: list[str], tmp: Path, tag: str, check: bool
) -> None:
    d = tmp / tag
    counter = build("counter")
    wl = cb.Workload(counter, d, 0, [argv[0], str(d), *argv[1:]])
    img = tmp / f"{tag}.img"
    restored = 0
    try:
        wl.wait_tick()
        r = cpt("chkpnt", "--pid", wl.pid, "--dumpfile", img)
        pt.dump_wall.add(r.wall)
        pt.dump_frozen.add(r.doc.get("frozen_s", 0.0))
        wl.killed()
        r = cpt("restore", "--dumpfile", img)
        restored = wl.pid
        wl.restored = True
        pt.restore_wall.add(r.wall)
        pt.restore_engine.add(r.doc.get("total_s", 0.0))
        wl.wait_tick()
        if check:
            verdict = wl.finish()
            restored = 0
            if verdict != "PASS":
                raise RuntimeError(f"{pt.what} {pt.n}: restored workload: {verdict}\n{wl.log()}")
            pt.note = "PASS"
    finally:
        kill_restored(restored)
        wl.pid = 0 if restored else wl.pid
        wl.close()
        with contextlib.suppress(FileNotFoundError):
            img.unlink()
        shutil.rmtree(d, ignore_errors=True)


# TCP: the server is cr_bench's echo server (a poll loop, inside the dumped tree); the
# clients are another process of the bench, which reports what it saw as JSON.
TCP_CLIENTS = """\
import json, os, select, socket, struct, sys, time
port, n, go, stop = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
open(go, "w").close()
poll = select.poll()
by_fd = {s.fileno(): i for i, s in enumerate(socks)}
for s in socks:
    poll.register(s, select.POLLIN)
seq = [0] * n
pending = {}
errors, echoes, worst = [], 0, 0.0
period = 0.05
due = [time.monotonic() + i * period / n for i in range(n)]
deadline = None
while not errors:
    now = time.monotonic()
    if deadline is None and os.path.exists(stop):
        deadline = now + 30
    if deadline is not None and (not pending or now > deadline):
        break
    for i in range(n):
        if deadline is None and i not in pending and due[i] <= now:
            req = struct.pack("<QQ", i, seq[i]); seq[i] += 1
            socks[i].sendall(req)
            pending[i] = (now, req); due[i] = now + period
    for fd, _ in poll.poll(5):
        i = by_fd[fd]
        try:
            data = socks[i].recv(16, socket.MSG_WAITALL)
        except OSError as e:
            errors.append(f"client {i}: {e}"); break
        sent, req = pending.pop(i, (0.0, b""))
        if data != req:
            errors.append(f"client {i}: echo {data!r} for {req!r}"); break
        echoes += 1
        worst = max(worst, time.monotonic() - sent)
if pending and not errors:
    errors.append(f"{len(pending)} requests never answered")
print(json.dumps({"echoes": echoes, "max_pause_s": worst, "errors": errors[:3]}))
"""


def tcp_round(cpt: Cpt, pt: ScalePoint, tmp: Path, tag: str) -> None:
    d = tmp / tag
    wl = cb.Workload(
        Path(sys.executable), d, 0, [sys.executable, "-I", "-c", cb.ECHO_SERVER, str(d), "0"]
    )
    img = tmp / f"{tag}.img"
    restored = 0
    clients = None
    go, stop = d / "clients-go", d / "clients-stop"
    try:
        port = int((d / "port").read_text())
        clients = subprocess.Popen(
            [sys.executable, "-I", "-c", TCP_CLIENTS, str(port), str(pt.n), str(go), str(stop)],
            stdout=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while not go.exists():
            if clients.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tcp clients did not connect (exit {clients.poll()})")
            time.sleep(0.01)
        time.sleep(0.5)
        r = cpt("chkpnt", "--pid", wl.pid, "--tcp-established", "--dumpfile", img)
        pt.dump_wall.add(r.wall)
        pt.dump_frozen.add(r.doc.get("frozen_s", 0.0))
        wl.killed()
        r = cpt("restore", "--dumpfile", img)
        restored = wl.pid
        wl.restored = True
        pt.restore_wall.add(r.wall)
        pt.restore_engine.add(r.doc.get("total_s", 0.0))
        time.sleep(1.0)  # the clients run on against the restored server
        stop.touch()
        out, _ = clients.communicate(timeout=60)
        seen = json.loads(out.strip().splitlines()[-1])
        if seen["errors"]:
            raise RuntimeError(f"tcp {pt.n}: " + "; ".join(seen["errors"]))
        pt.note = f"{seen['echoes']} echoes intact, no reset; longest pause {seen['max_pause_s'] * 1000:.0f} ms"
    finally:
        if clients is not None and clients.poll() is None:
            clients.kill()
            clients.wait()
        kill_restored(restored)
        wl.pid = 0 if restored else wl.pid
        wl.close()
        with contextlib.suppress(FileNotFoundError):
            img.unlink()
        shutil.rmtree(d, ignore_errors=True)


# per dimension: the points measured, the first one the base of the slopes
SCALE: dict[str, list[int]] = {
    "processes": [1, 10, 100, 1000],
    "VMAs": [0, 1000, 10000],
    "fds": [0, 1000, 10000],
    "TCP connections": [10, 100, 1000],
}


def scale(cpt: Cpt, tmp: Path, rounds: int) -> dict[str, list[ScalePoint]]:
    """Every point of every dimension (the one small process is measured once, and is
    the first point of processes, VMAs and fds)."""
    done: dict[tuple[int, int, int], ScalePoint] = {}
    out: dict[str, list[ScalePoint]] = {}
    for what, ns in SCALE.items():
        pts = []
        for n in ns:
            if what == "TCP connections":
                pt = ScalePoint(what, n, cpt.label)
                for i in range(rounds):
                    tcp_round(cpt, pt, tmp, f"{cpt.label}-tcp{n}-{i}")
            else:
                shape = {"processes": (n, 0, 0), "VMAs": (1, n, 0), "fds": (1, 0, n)}[what]
                if shape not in done:
                    pt = done[shape] = ScalePoint(what, n, cpt.label)
                    for i in range(rounds):
                        tag = f"{cpt.label}-s{'-'.join(map(str, shape))}-{i}"
                        scale_round(cpt, pt, scale_argv(*shape)(), tmp, tag, i == 0)
                pt = dataclasses.replace(done[shape], what=what, n=n)  # same rounds
            pts.append(pt)
            print(f"  done: {what} {n}", flush=True)
        out[what] = pts
    return out


def _slopes(pts: list[ScalePoint]) -> list[tuple[float, float]]:
    """Engine seconds per unit between consecutive points: the dump's frozen time (seize
    to kill, fsync included) and the restore's engine time (wall times carry the
    interpreter's start-up, whose noise on a shared machine hides small per-unit costs)."""
    out = []
    for a, b in itertools.pairwise(pts):
        dn = b.n - a.n
        out.append(
            (
                (b.dump_frozen.med - a.dump_frozen.med) / dn,
                (b.restore_engine.med - a.restore_engine.med) / dn,
            )
        )
    return out


def scale_lines(dims: dict[str, list[ScalePoint]]) -> list[str]:
    lines = [
        "  chkpnt (dump + kill) and restore, wall [min-max] ms, with the dump's frozen time and",
        "  the restore's engine time; per unit: the engine time added per unit since the previous",
        "  point (dump / restore); growth: per unit over the previous step's (1.0 = linear)",
    ]
    for what, pts in dims.items():
        slopes = _slopes(pts)
        for i, pt in enumerate(pts):
            extra = ""
            if i:
                du, ru = slopes[i - 1]
                extra = f"; per unit {du * 1e6:.0f} / {ru * 1e6:.0f} us"
                if i > 1:
                    pd, pr = slopes[i - 2]
                    gd = du / pd if pd > 0 else float("nan")
                    gr = ru / pr if pr > 0 else float("nan")
                    flag = "  WORSE THAN LINEAR" if max(gd, gr) > LINEAR else ""
                    extra += f", growth {gd:.2f} / {gr:.2f}{flag}"
            lines.append(
                f"  {what:15s} {pt.n:6d}: chkpnt {pt.dump_wall.text()} (frozen "
                f"{pt.dump_frozen.text()}), restore {pt.restore_wall.text()} (engine "
                f"{pt.restore_engine.text()}){extra}"
            )
            if pt.note and what == "TCP connections":
                lines.append(f"  {'':23s}{pt.note}")
    return lines


def growth(dims: dict[str, list[ScalePoint]]) -> list[dict[str, Any]]:
    out = []
    for what, pts in dims.items():
        slopes = _slopes(pts)
        for i in range(1, len(slopes)):
            for j, name in enumerate(("dump (frozen)", "restore (engine)")):
                prev, cur = slopes[i - 1][j], slopes[i][j]
                out.append(
                    {
                        "what": f"{what} {pts[i].n} -> {pts[i + 1].n}, {name}",
                        "growth": cur / prev if prev > 0 else 0.0,
                    }
                )
    return out


# --------------------------------------------------------------------------- targets


def targets(results: list[Result], st: dict[str, Any], label: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def target(name: str, value: float, limit: float, unit: str) -> None:
        out.append(
            {"target": name, "value": value, "limit": limit, "pass": value <= limit, "unit": unit}
        )

    for r in results:
        if r.label != label:
            continue
        mib = r.spec.mib
        if mib >= 256 and not r.spec.argv:
            target(
                f"{mib} MiB: frozen (leave-running) <= 1.0 x CRIU 0.40 ms/MiB",
                r.lr_frozen.med,
                TARGET_FROZEN * CRIU_FROZEN_MS_PER_MIB * mib / 1000,
                "s",
            )
            target(
                f"{mib} MiB: restore <= 0.8 x CRIU 0.56 ms/MiB",
                r.restore_wall.med,
                TARGET_RESTORE * CRIU_RESTORE_MS_PER_MIB * mib / 1000,
                "s",
            )
            target(
                f"{mib} MiB: restore's engine (start-up excluded) <= 0.8 x CRIU 0.56 ms/MiB",
                r.restore_engine.med,
                TARGET_RESTORE * CRIU_RESTORE_MS_PER_MIB * mib / 1000,
                "s",
            )
            if r.memset.values:
                target(
                    f"{mib} MiB: restore <= 1.2 x first-touch memset",
                    r.restore_wall.med / r.memset.med,
                    TARGET_RESTORE_MEMSET,
                    "x",
                )
                target(
                    f"{mib} MiB: restore's engine (start-up excluded) <= 1.2 x first-touch memset",
                    r.restore_engine.med / r.memset.med,
                    TARGET_RESTORE_MEMSET,
                    "x",
                )
            target(
                f"{mib} MiB: frozen, worst round <= 2 x median",
                r.lr_frozen.worst / r.lr_frozen.med,
                TARGET_WORST,
                "x",
            )
            target(
                f"{mib} MiB: restore, worst round <= 2 x median",
                r.restore_wall.worst / r.restore_wall.med,
                TARGET_WORST,
                "x",
            )
        if mib == 16 and not r.spec.argv:
            target(
                "16 MiB: cpt chkpnt (dump + kill) <= 120 ms wall",
                r.dump_wall.med,
                TARGET_SMALL_S,
                "s",
            )
            target("16 MiB: cpt restore <= 120 ms wall", r.restore_wall.med, TARGET_SMALL_S, "s")
    if st:
        py = st["python -c pass"].med
        for name in ("cpt --help", "cpt ve status", "cpt image show"):
            if name in st:
                target(
                    f"start-up: {name} <= python + 60 ms (the CLI's part)",
                    st[name].med - py,
                    TARGET_STARTUP_S,
                    "s",
                )
    return out


def target_line(t: dict[str, Any]) -> str:
    v = (
        f"{t['value'] * 1000:.0f} ms (limit {t['limit'] * 1000:.0f} ms)"
        if t["unit"] == "s"
        else f"{t['value']:.2f}x (limit {t['limit']:.2f}x)"
    )
    return f"  {'PASS' if t['pass'] else 'MISS'}  {t['target']}: {v}"


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0,16,256,1024", help="MiB of touched memory")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--no-extra",
        action="store_true",
        help="skip the 100-process tree and the 10,000-VMA process",
    )
    ap.add_argument("--scale", action="store_true", help="also the scale section")
    ap.add_argument("--scale-only", action="store_true", help="only the scale section")
    ap.add_argument("--scale-rounds", type=int, default=3)
    ap.add_argument("--baseline", metavar="CPT", help="another cpt executable to run alongside")
    ap.add_argument(
        "--warm",
        action="store_true",
        help="run the steps back to back (memory the previous step freed is still warm)",
    )
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON ('-': stdout)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("cli_bench: needs root (ptrace, clone3 set_tid); skipped")
        return 0
    if not CPT.exists():
        print(f"cli_bench: {CPT} is missing: run `make setup`")
        return 1
    make_subreaper()
    global COLD
    COLD = not args.warm
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="cpt-cli-bench-", dir="/var/tmp"))
    builds = [Cpt(CPT, tmp / "run", "this")]
    if args.baseline:
        builds.append(Cpt(Path(args.baseline), tmp / "run-base", "baseline"))
    print(f"cli bench ({', '.join(f'{k} {v}' for k, v in cb.machine().items())})", flush=True)
    doc: dict[str, Any] = {"machine": cb.machine()}
    results: list[Result] = []
    st: dict[str, Any] = {}
    checks: list[dict[str, Any]] = []
    try:
        src, memset = tmp / "memset.c", tmp / "memset"
        src.write_text(cb.MEMSET_C)
        subprocess.run(["gcc", "-O2", "-o", str(memset), str(src)], check=True)
        build("counter")
        build("scale")
        if not args.scale_only:
            specs = [Spec(f"{m} MiB", m) for m in sizes]
            if not args.no_extra:
                specs += [
                    Spec("100 processes", argv=scale_argv(100, 0, 0)),
                    Spec("10,000 VMAs", argv=scale_argv(1, 10000, 0)),
                ]
            image16 = tmp / "image16.img"
            for spec in specs:
                per = {b.label: Result(spec, b.label) for b in builds}
                for i in range(args.rounds):
                    for b in builds:
                        one_round(
                            b,
                            spec,
                            per[b.label],
                            tmp,
                            f"{b.label}-{spec.name.replace(' ', '').replace(',', '')}-{i}",
                            check=i == 0,
                            limits=b is builds[0],
                            memset_exe=memset if b is builds[0] else None,
                            keep_image=image16
                            if spec.mib == 16 and not spec.argv and i == 0 and b is builds[0]
                            else None,
                        )
                results += per.values()
                print(f"  done: {spec.name}", flush=True)
            print("start-up (wall, median [min-max] of rounds, ms)")
            for b in builds:
                st_b = startup(b, image16 if image16.exists() else None, args.rounds, tmp)
                if b is builds[0]:
                    st = st_b
                if len(builds) > 1:
                    print(f" {b.label}:")
                print("\n".join(startup_lines(st_b)))
                doc.setdefault("startup", {})[b.label] = {
                    k: (v.to_json() if isinstance(v, Series) else v) for k, v in st_b.items()
                }
            print("workloads: median [min-max] over rounds, ms; xN = worst round / median")
            print("\n".join(result_lines(results, len(builds) > 1)))
            if any(r.reported_mib for r in results):
                print(
                    "  (memory was cold: the host took back "
                    f"{sum(r.reported_mib for r in results):.0f} MiB during timed steps)"
                )
            print(
                "  CRIU is not installed here: its figures are ENGINE-NOTES' reference speeds "
                "(CRIU 4.2 on this machine kind): frozen 0.40 ms/MiB, restore 0.56 ms/MiB, "
                "45-60 ms per command for a small process"
            )
            doc["workloads"] = [
                {
                    "name": r.spec.name,
                    "build": r.label,
                    **{
                        k: getattr(r, k).to_json()
                        for k in (
                            "lr_wall",
                            "lr_frozen",
                            "lr_reserve",
                            "dump_wall",
                            "dump_frozen",
                            "dump_sync",
                            "restore_wall",
                            "restore_engine",
                            "readv",
                            "readv_write",
                            "memset",
                        )
                    },
                    "paths": {k: v.to_json() for k, v in r.paths.items()},
                    "pages_mib": r.pages_mib,
                    "image_mib": r.image_mib,
                    "verdict": r.verdict,
                }
                for r in results
            ]
            checks = targets(results, st, "this")
        if args.scale or args.scale_only:
            doc["scale"] = {}
            for b in builds:
                dims = scale(b, tmp, args.scale_rounds)
                print(f"scale ({b.label}): median [min-max] of {args.scale_rounds} rounds")
                print("\n".join(scale_lines(dims)))
                doc["scale"][b.label] = {
                    "points": [
                        {
                            "what": p.what,
                            "n": p.n,
                            "dump_wall": p.dump_wall.to_json(),
                            "dump_frozen": p.dump_frozen.to_json(),
                            "restore_wall": p.restore_wall.to_json(),
                            "restore_engine": p.restore_engine.to_json(),
                            "note": p.note,
                        }
                        for pts in dims.values()
                        for p in pts
                    ],
                    "growth": growth(dims),
                }
                if b is builds[0]:
                    for g in growth(dims):
                        checks.append(
                            {
                                "target": f"scale: {g['what']}: per unit grows <= {LINEAR}x",
                                "value": g["growth"],
                                "limit": LINEAR,
                                "pass": g["growth"] <= LINEAR,
                                "unit": "x",
                            }
                        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("targets")
    for t in checks:
        print(target_line(t))
    doc["targets"] = checks
    if args.json:
        text = json.dumps(doc, indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 1 if args.strict and not all(t["pass"] for t in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
