"""Start-up benchmark: the real `cpt` commands as fresh processes, as users run them.

Each command is a new process of the venv's console script (.venv/bin/cpt, or --cpt), with
this process's environment (PYTHONDONTWRITEBYTECODE included), nothing warmed; in the same
run, the interpreter's own start (`python -c pass` of the same interpreter) is the
baseline.  Per round:

  python -c pass          the interpreter alone (site, the editable-install finder)
  cpt --help              the root help (typer and rich render it)
  cpt ve status VEID      a VE that does not exist under a temporary --root (exit 21):
                          start-up, the VE layer and one config lookup
  cpt image show IMG      the summary of the 16 MiB workload's image (made by the chkpnt
                          of the previous round; the first round shows a fresh one)
  cpt chkpnt --pid PID    dump + kill of fixtures/workloads/counter.c with 16 MiB of
                          touched memory (fsync included)
  cpt restore             of that image, --pidfile; the restored root is then SIGKILLed
                          (this process is a child subreaper: it reaps it by PID)

Targets (issue 13): --help, ve status, image show at most `python -c pass` + 60 ms (median);
chkpnt and restore of 16 MiB at most 120 ms wall each.  Prints median, min and max of
--rounds rounds (default 5).  Needs root for chkpnt/restore (without it only the first
three are timed).  Exit 1 on a missed target only with --strict.

    python bench/startup_bench.py [--rounds 5] [--mib 16] [--json FILE|-] [--strict]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

START_BUDGET_S = 0.060  # over `python -c pass`
CR_BUDGET_S = 0.120  # chkpnt, restore of 16 MiB, wall


def timed(argv: list[str], ok: tuple[int, ...] = (0,)) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    elapsed = time.perf_counter() - t0
    if p.returncode not in ok:
        raise RuntimeError(
            f"{' '.join(argv)}: exit {p.returncode}\n{p.stderr.decode(errors='replace')}"
        )
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mib", type=int, default=16)
    ap.add_argument("--cpt", default=str(Path(sys.executable).parent / "cpt"))
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--strict", action="store_true")
    args = ap.parse_args()

    cpt = [args.cpt]
    root = os.geteuid() == 0
    samples: dict[str, list[float]] = {}

    def add(name: str, s: float) -> None:
        samples.setdefault(name, []).append(s)

    tmp = tempfile.mkdtemp(prefix="cpt-startup-")
    img = os.path.join(tmp, "w.img")
    workloads = []
    try:
        if root:
            from cr_bench import Workload  # the benchmarks' workload (counter.c, its parent)
            from workloads import build

            from cpt.sys.task import set_child_subreaper

            set_child_subreaper(True)
            binary = build("counter")
        for rnd in range(args.rounds):
            add("python -c pass", timed([sys.executable, "-c", "pass"]))
            add("cpt --help", timed([*cpt, "--help"]))
            add(
                "cpt ve status",
                timed([*cpt, "--root", os.path.join(tmp, "node"), "ve", "status", "101"], (21,)),
            )
            if not root:
                continue
            w = Workload(binary, Path(tmp) / f"w{rnd}", args.mib)
            workloads.append(w)
            if rnd == 0:  # image show needs an image: the first round's comes first
                add(
                    "cpt chkpnt --pid",
                    timed([*cpt, "chkpnt", "--pid", str(w.pid), "--dumpfile", img]),
                )
                add("cpt image show", timed([*cpt, "image", "show", img]))
            else:
                add("cpt image show", timed([*cpt, "image", "show", img]))
                os.unlink(img)
                add(
                    "cpt chkpnt --pid",
                    timed([*cpt, "chkpnt", "--pid", str(w.pid), "--dumpfile", img]),
                )
            w.killed()
            pidfile = os.path.join(tmp, "pid")
            add(
                "cpt restore",
                timed([*cpt, "restore", "--dumpfile", img, "--pidfile", pidfile]),
            )
            pid = int(Path(pidfile).read_text())
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    finally:
        for w in workloads:
            w.pid = 0
            w.close()
        shutil.rmtree(tmp, ignore_errors=True)

    base = statistics.median(samples["python -c pass"])
    rows = []
    for name, xs in samples.items():
        med = statistics.median(xs)
        if name in ("cpt --help", "cpt ve status", "cpt image show"):
            budget = base + START_BUDGET_S
        elif name in ("cpt chkpnt --pid", "cpt restore"):
            budget = CR_BUDGET_S
        else:
            budget = None
        rows.append(
            {
                "command": name,
                "median_ms": med * 1000,
                "min_ms": min(xs) * 1000,
                "max_ms": max(xs) * 1000,
                "over_python_ms": (med - base) * 1000,
                "budget_ms": budget * 1000 if budget is not None else None,
                "pass": None if budget is None else med <= budget,
            }
        )
    load = os.getloadavg()[0]
    print(f"start-up, {args.rounds} rounds, {args.mib} MiB workload, load {load:.2f}")
    print(f"{'command':20} {'median':>8} {'min':>8} {'max':>8} {'-python':>8} {'budget':>8}")
    for r in rows:
        verdict = "" if r["pass"] is None else ("PASS" if r["pass"] else "MISS")
        budget = f"{r['budget_ms']:8.1f}" if r["budget_ms"] is not None else " " * 8
        print(
            f"{r['command']:20} {r['median_ms']:8.1f} {r['min_ms']:8.1f} {r['max_ms']:8.1f} "
            f"{r['over_python_ms']:8.1f} {budget} {verdict}"
        )
    if args.json:
        doc = json.dumps({"rounds": args.rounds, "mib": args.mib, "load": load, "rows": rows})
        if args.json == "-":
            print(doc)
        else:
            Path(args.json).write_text(doc + "\n")
    missed = [r["command"] for r in rows if r["pass"] is False]
    return 1 if (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
