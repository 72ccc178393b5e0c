"""Incremental dumps benchmark (issue 15), every figure measured in one run.

Workload: fixtures/workloads/scribble.c (N MiB of anonymous memory, RATE pages rewritten
per second, each page checked against its generation at the end).

  freeze       for N in --sizes (256, 1024), a writer dirtying 1,000 pages/s:
               the frozen time of a `--leave-running` dump (copied in rounds while the
               tree runs, frozen only for the last dirty pages) against a full copy of the
               same tree in the same run: a staged --suspend, then --dump (its pages_s +
               state_s).  Target: frozen <= max(0.1 x full copy, 30 ms), and the frozen
               times of both sizes within 20% of each other (the freeze follows the dirty
               set, not the size)
  overhead     a writer rewriting pages as fast as it can (256 MiB, RATE -1): its pages
               per second without tracking, then with tracking and a round (scan and
               re-protect) every 100 ms; the ratio
  chain        10 pre-dumps of 256 MiB, each on the one before, the writer dirtying about
               1% of the pages between two of them: the bytes on disk of the ten images
               against 1.2 x RSS + 10 x the dirty set (target: at most that)

Everything runs in this process through the library (TreeStages, Tracker): no interpreter
start-up is timed.  Needs root; prints a note and exits 0 otherwise.

    python bench/incr_bench.py [--sizes 256,1024] [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def _writes(wl: Any) -> int:
    return int((wl.dir / "writes").read_text().strip() or 0)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def freeze(size: int, rounds: int, tmp: Path) -> dict[str, Any]:
    from workloads import reaping, start

    from cpt.dump.options import DumpOptions
    from cpt.stages.stage import Stage
    from cpt.stages.trees import TreeStages

    wl = start("scribble", tmp / f"wl-freeze-{size}", str(size), "1000")
    try:
        wl.wait_counter()
        st = TreeStages(wl.pid)
        lr, full = [], []
        parts: list[tuple[float, float, float]] = []  # frozen_s, state_s, pages_s
        for i in range(rounds):
            img = tmp / f"lr-{size}-{i}.img"
            s = st.chkpnt(Stage.CHKPNT, str(img), DumpOptions(leave_running=True))
            assert s is not None
            lr.append(s.frozen_s)
            parts.append((s.frozen_s, s.state_s, s.pages_s))
            img.unlink()
            time.sleep(0.3)
            st.chkpnt(Stage.SUSPEND)
            img = tmp / f"full-{size}-{i}.img"
            s = st.chkpnt(Stage.DUMP, str(img), DumpOptions())
            st.chkpnt(Stage.RESUME)
            assert s is not None
            full.append(s.pages_s + s.state_s)
            img.unlink()
            time.sleep(0.3)
        with reaping(wl):
            verdict = wl.finish()
    finally:
        wl.kill_tree()
    return {
        "size_mib": size,
        "leave_running_frozen_s": min(lr),
        "full_copy_s": min(full),
        "all_leave_running_frozen_s": lr,
        "all_full_copy_s": full,
        # the frozen window of the fastest leave-running dump: per-process state, and the
        # last round (scan, copy of the dirty pages); the rest is seize and release
        "leave_running_state_s": min(parts)[1],
        "leave_running_pages_s": min(parts)[2],
        "workload": verdict,
    }


def overhead(tmp: Path, seconds: float = 2.0) -> dict[str, Any]:
    from workloads import reaping, start

    from cpt.dump.track import Tracker

    wl = start("scribble", tmp / "wl-overhead", "256", "-1")
    try:
        wl.wait_counter()
        time.sleep(0.5)

        def rate(during: Any = None) -> float:
            w0, t0 = _writes(wl), time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                if during is not None:
                    during()
                time.sleep(0.1)
            return (_writes(wl) - w0) / (time.perf_counter() - t0)

        plain = rate()
        with Tracker(wl.pid) as tr:
            tr.round()  # register and protect everything
            scans: list[float] = []

            def one() -> None:
                t = time.perf_counter()
                tr.round()
                scans.append(time.perf_counter() - t)

            tracked = rate(one)
        plain_after = rate()
        with reaping(wl):
            verdict = wl.finish()
    finally:
        wl.kill_tree()
    base = (plain + plain_after) / 2
    return {
        "pages_per_s_untracked": base,
        "pages_per_s_tracked": tracked,
        "ratio": tracked / base if base else 0.0,
        "round_s_median": sorted(scans)[len(scans) // 2] if scans else 0.0,
        "workload": verdict,
    }


def chain(tmp: Path, n: int = 10, size: int = 256) -> dict[str, Any]:
    from workloads import reaping, start

    from cpt.dump.options import DumpOptions
    from cpt.stages.stage import Stage
    from cpt.stages.trees import TreeStages

    pages = (size << 20) // 4096
    per_round = pages // 100  # 1%
    rate = 1000
    wl = start("scribble", tmp / "wl-chain", str(size), str(rate))
    imgs: list[Path] = []
    try:
        wl.wait_counter()
        st = TreeStages(wl.pid)
        rss = _rss(wl.pid)
        for i in range(n):
            img = tmp / f"chain-{i}.img"
            opts = DumpOptions(pre_dump=True, parent=str(imgs[-1]) if imgs else "")
            st.chkpnt(Stage.CHKPNT, str(img), opts)
            imgs.append(img)
            time.sleep(per_round / rate)
        sizes = [p.stat().st_size for p in imgs]
        with reaping(wl):
            verdict = wl.finish()
    finally:
        wl.kill_tree()
    dirty = per_round * 4096
    limit = 1.2 * rss + n * dirty
    return {
        "images": n,
        "rss": rss,
        "dirty_set_bytes": dirty,
        "bytes_on_disk": sum(sizes),
        "limit": limit,
        "sizes": sizes,
        "workload": verdict,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256,1024")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("incr_bench: needs root (ptrace); skipped")
        return 0
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="incr-bench-", dir="/var/tmp") as d:
        tmp = Path(d)
        os.environ.setdefault("CPT_RUN_DIR", str(tmp / "run"))
        out["freeze"] = [freeze(int(s), a.rounds, tmp) for s in a.sizes.split(",")]
        out["overhead"] = overhead(tmp)
        out["chain"] = chain(tmp)
    print("freeze (writer 1,000 pages/s): leave-running frozen vs full copy")
    fr = out["freeze"]
    for f in fr:
        target = max(0.1 * f["full_copy_s"], 0.030)
        ok = "PASS" if f["leave_running_frozen_s"] <= target else "MISS"
        print(
            f"  {f['size_mib']:5d} MiB  frozen {f['leave_running_frozen_s'] * 1000:7.1f} ms  "
            f"full copy {f['full_copy_s'] * 1000:7.1f} ms  target <= {target * 1000:.1f} ms  "
            f"{ok}  ({f['workload']})"
        )
        print(
            f"         of which state {f['leave_running_state_s'] * 1000:.1f} ms, last round "
            f"{f['leave_running_pages_s'] * 1000:.1f} ms, the rest seize and release"
        )
    if len(fr) >= 2:
        a0, a1 = fr[0]["leave_running_frozen_s"], fr[-1]["leave_running_frozen_s"]
        spread = abs(a1 - a0) / max(a0, a1)
        print(
            f"  sizes within {spread * 100:.0f}% (target 20%): {'PASS' if spread <= 0.2 else 'MISS'}"
        )
    ov = out["overhead"]
    print(
        f"overhead: {ov['pages_per_s_untracked']:.0f} pages/s untracked, "
        f"{ov['pages_per_s_tracked']:.0f} tracked (a round every 100 ms, median "
        f"{ov['round_s_median'] * 1000:.1f} ms): ratio {ov['ratio']:.2f}  ({ov['workload']})"
    )
    ch = out["chain"]
    print(
        f"chain: {ch['images']} pre-dumps of {ch['rss'] >> 20} MiB RSS, dirty set "
        f"{ch['dirty_set_bytes'] >> 10} KiB/round: {ch['bytes_on_disk'] >> 20} MiB on disk, "
        f"limit {int(ch['limit']) >> 20} MiB: "
        f"{'PASS' if ch['bytes_on_disk'] <= ch['limit'] else 'MISS'}  ({ch['workload']})"
    )
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
