"""The /proc layer's parsers at scale: maps of 10,000 lines, 10,000 fdinfo files.

Moved out of the tests (a timed assertion in a test fails on a loaded machine): the
figures and their budgets are printed here, best of 5.

    .venv/bin/python bench/procfs_bench.py [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from helpers_procfs import FIX, PID, best_ms  # noqa: E402
from test_procfs_maps import _synthetic_maps  # noqa: E402

from cpt.procfs import Proc, parse_fdinfo, parse_maps  # noqa: E402

BUDGET_MS = {"parse_maps 10k lines": 50.0, "parse_fdinfo 10k (zoo's mix)": 150.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    data = _synthetic_maps(10_000)
    zoo = Proc(str(FIX / "zoo"))
    fds = [fd for fd, _ in zoo.fds(PID)]
    raws = [(FIX / "zoo" / str(PID) / "fdinfo" / str(fd)).read_bytes() for fd in fds]
    mix = (raws * (10_000 // len(raws) + 1))[:10_000]
    t0 = time.perf_counter()
    figures = {
        "parse_maps 10k lines": best_ms(lambda: parse_maps(data)),
        "parse_fdinfo 10k (zoo's mix)": best_ms(lambda: [parse_fdinfo(d) for d in mix]),
    }
    missed = False
    for name, ms in figures.items():
        budget = BUDGET_MS[name]
        verdict = "PASS" if ms < budget else "MISS"
        missed |= ms >= budget
        print(f"{name:32} {ms:7.1f} ms  (budget {budget:.0f} ms)  {verdict}")
    print(f"({time.perf_counter() - t0:.1f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
