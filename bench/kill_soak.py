"""Kill soak: `cpt chkpnt` killed at N moments of each kind; 0 workloads may be lost.

Kinds: a process tree and a VE, each a 64 MiB workload (fixtures/workloads/counter.c, its
memory a pattern it checks word by word when it ends), checkpointed full and with
--leave-running, the command killed by SIGKILL and by SIGTERM; the moments spread over
the time a reference run took (tests/killing.py, which tests/test_kill.py uses with 10).

Per kind it prints: tried (commands started), killed (the signal came while the command
ran), held (the workload went on, or its committed dump restored it, and nothing was
left behind), lost (the workload died or was stranded), messy (it held, but something was
wrong: a leftover, a missing message).  At the end each workload checks its memory.

    flock /tmp/cpt-tests.lock .venv/bin/python bench/kill_soak.py [--moments 50]
        [--kinds tree,ve] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from killing import TreeTarget, VeTarget, moments  # noqa: E402  (tests/killing.py)
from ve_node import node_at  # noqa: E402
from workloads import build, start  # noqa: E402

SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM}
MODES = ("full", "leave-running")


def soak(target: TreeTarget | VeTarget, mode: str, sig: int, n: int) -> dict[str, object]:
    span = target.span(mode)
    row: dict[str, object] = dict(span_ms=round(span * 1000), tried=0, killed=0, held=0)
    lost: list[str] = []
    messy: list[str] = []
    for delay in moments(span, n):
        shot, problems = target.trial(mode, sig, delay)
        row["tried"] = int(row["tried"]) + 1  # type: ignore[call-overload]
        row["killed"] = int(row["killed"]) + shot.killed  # type: ignore[call-overload]
        if any(p.startswith("LOST:") for p in problems):
            lost.append(f"{delay * 1000:.0f} ms: " + "; ".join(problems))
            break  # the workload is gone: the rest of this kind cannot run
        row["held"] = int(row["held"]) + 1  # type: ignore[call-overload]
        if problems:
            messy.append(f"{delay * 1000:.0f} ms: " + "; ".join(problems))
    row["lost"] = len(lost)
    row["messy"] = len(messy)
    row["problems"] = lost + messy
    return row


def tree_kind(tmp: Path, mode: str, sig: int, n: int) -> dict[str, object]:
    d = Path(tempfile.mkdtemp(dir=tmp))
    (d / "run").mkdir()
    (d / "dump").mkdir()
    wl = start("counter", d / "wl", "64")
    try:
        row = soak(TreeTarget(wl, d / "run", d / "dump"), mode, sig, n)
        row["self_check"] = wl.finish() if wl.alive() else "lost"
        return row
    finally:
        wl.kill_tree()


def ve_kind(tmp: Path, mode: str, sig: int, n: int, index: int) -> dict[str, object]:
    veid = f"39{index}"
    ip = f"198.18.{70 + index}.2/24"
    with node_at(Path(tempfile.mkdtemp(dir=tmp))) as node:
        launcher = (
            "cd /root; mkdir -p c; setsid bin/counter /root/c 64 </dev/null >c/log 2>&1 & wait"
        )
        node.create(veid, "--ip", ip, "--", "/bin/sh", "-c", launcher)
        private = node.root / "pool" / "private" / veid
        (private / "root" / "bin").mkdir(parents=True)
        shutil.copy(build("counter"), private / "root" / "bin" / "counter")
        rc, _, err = node.cpt("ve", "start", veid)
        assert rc == 0, err
        wl_dir = private / "root" / "c"
        deadline = time.monotonic() + 20
        while not (wl_dir / "ready").exists():
            assert time.monotonic() < deadline, "the VE's workload never became ready"
            time.sleep(0.05)
        row = soak(VeTarget(node, veid, ip, wl_dir), mode, sig, n)
        pid = int((wl_dir / "ready").read_text())
        node.cpt("ve", "exec", veid, "--", "/bin/kill", "-TERM", str(pid))
        deadline = time.monotonic() + 20
        while not (wl_dir / "result").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        result = wl_dir / "result"
        row["self_check"] = result.read_text().strip() if result.exists() else "no result"
        return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--moments", type=int, default=50)
    ap.add_argument("--kinds", default="tree,ve")
    ap.add_argument("--signals", default="KILL,TERM")
    ap.add_argument("--json", help="write the rows here too")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("kill_soak: needs root (ptrace, VEs)", file=sys.stderr)
        return 2
    rows = []
    total = dict(tried=0, killed=0, held=0, lost=0, messy=0)
    with tempfile.TemporaryDirectory(prefix="cpt-kill-soak-") as tmpdir:
        tmp = Path(tmpdir)
        index = 0
        for kind in args.kinds.split(","):
            for mode in MODES:
                for sname in args.signals.split(","):
                    sig = SIGNALS[sname]
                    t0 = time.monotonic()
                    if kind == "tree":
                        row = tree_kind(tmp, mode, sig, args.moments)
                    else:
                        row = ve_kind(tmp, mode, sig, args.moments, index)
                        index += 1
                    row = dict(kind=kind, mode=mode, signal=sname, **row)
                    row["wall_s"] = round(time.monotonic() - t0, 1)
                    rows.append(row)
                    for k in total:
                        total[k] += int(row[k])  # type: ignore[call-overload]
                    print(
                        f"{kind:4} {mode:13} SIG{sname:4} span {row['span_ms']:5} ms  "
                        f"tried {row['tried']:3}  killed {row['killed']:3}  held {row['held']:3}  "
                        f"lost {row['lost']}  messy {row['messy']}  self-check "
                        f"{row['self_check']}  ({row['wall_s']} s)",
                        flush=True,
                    )
                    for p in row["problems"]:  # type: ignore[attr-defined]
                        print(f"    {p}", flush=True)
    print(
        f"total: tried {total['tried']}  killed {total['killed']}  held {total['held']}  "
        f"lost {total['lost']}  messy {total['messy']}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "total": total}, f, indent=1)
    ok = total["lost"] == 0 and all(r["self_check"] == "PASS" for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
