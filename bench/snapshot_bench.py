"""Snapshot benchmark through real VEs and the snapshot manager, on the embedded pool.

  frozen window   a running VE whose private area just received 10,000 files holding
                  100 MiB (dirty in the page cache) is checkpointed (`cpt chkpnt`: sync
                  before the freeze, then the filesystem snapshot inside it): the share
                  of the frozen window the snapshot took (DumpStats.fs_snapshot_s, target
                  < 5 ms) and the whole frozen window; median of --rounds, fresh files
                  each round.  In the same run, the physical cost of that snapshot alone
                  (btrfsutil create_snapshot after a sync, no VE) as the floor.
  100 snapshots   `snapshot create` on a stopped VE (one file changed between two),
                  `snapshot list`, `snapshot rollback` to each in turn (each keeps a
                  pre-rollback snapshot); and create/rollback with memory of a running
                  VE (--memory-rounds of them).

Everything runs in this process (the manager's library, no interpreter start-up).
Needs root; prints a note and exits 0 otherwise.

    python bench/snapshot_bench.py [--rounds 5] [--snapshots 100] [--memory-rounds 10]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FILES = 10_000
DATA = 100 << 20
PR_SET_CHILD_SUBREAPER = 36
COUNTER = (
    "import time\n"
    "f = open('/root/count.log', 'a', buffering=1)\n"
    "i = 0\n"
    "while True:\n"
    "    i += 1\n"
    "    f.write(f'{i}\\n')\n"
    "    time.sleep(0.02)\n"
)


def write_tree(top: Path, tag: int) -> None:
    """10,000 files holding 100 MiB in 100 directories, not synced."""
    shutil.rmtree(top, ignore_errors=True)
    blob = os.urandom(DATA // FILES)
    for d in range(100):
        sub = top / f"d{d:03d}"
        sub.mkdir(parents=True)
        for f in range(FILES // 100):
            (sub / f"f{f:03d}").write_bytes(blob[:-8] + tag.to_bytes(8, "little"))


def ms(s: float) -> str:
    return f"{s * 1000:8.2f} ms"


def reap_all() -> None:
    """Reap the VE inits that came to us (between operations: no process is traced then,
    so no ptrace stop can be stolen)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--snapshots", type=int, default=100)
    ap.add_argument("--memory-rounds", type=int, default=10)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("snapshot_bench: needs root (loop devices, VEs); skipped")
        return 0
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    tmp = tempfile.mkdtemp(prefix="cpt-snap-bench-", dir="/var/tmp")
    os.environ["CPT_ROOT"] = tmp
    import btrfsutil

    from cpt.dump.options import DumpOptions
    from cpt.stages.stage import Stage
    from snapshot.manager import SnapshotManager
    from storage import pool

    sm = SnapshotManager()
    mgr = sm.mgr
    out: list[str] = []
    try:
        pool.init(tmp, 8 << 30)
        mgr.create("951", ip="198.18.95.2/24", command=["/usr/bin/python3", "-c", COUNTER])
        mgr.create("952")
        private = Path(mgr.config("951").private)

        # -- the frozen window
        snap_s, frozen_s, floor_s = [], [], []
        scratch = Path(pool.ensure(tmp)) / "floor"
        btrfsutil.create_subvolume(scratch)
        for r in range(args.rounds):
            write_tree(scratch / "data", r)
            os.sync()
            t0 = time.perf_counter()
            btrfsutil.create_snapshot(scratch, f"{scratch}.{r}", read_only=True)
            floor_s.append(time.perf_counter() - t0)
            btrfsutil.delete_subvolume(f"{scratch}.{r}")
            mgr.start("951")
            write_tree(private / "data", r)  # just written: dirty
            stats = mgr.stages("951").chkpnt(Stage.CHKPNT, opts=DumpOptions())
            assert stats is not None
            snap_s.append(stats.fs_snapshot_s)
            frozen_s.append(stats.frozen_s)
            reap_all()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(mgr.node.default_dumpfile("951"))
            catalog = sm.hooks.catalog("951")
            for s in list(catalog.snaps):
                catalog.forget(s, keep_image=True)
        btrfsutil.delete_subvolume(scratch)
        med = statistics.median
        out.append(
            f"frozen window, private area with {FILES} files / {DATA >> 20} MiB just written "
            f"(median of {args.rounds}):"
        )
        verdict = "PASS" if med(snap_s) < 0.005 else "MISS"
        out.append(
            f"  filesystem snapshot in the freeze {ms(med(snap_s))}  target < 5 ms: {verdict}"
        )
        out.append(f"  floor: btrfs snapshot after sync  {ms(med(floor_s))}")
        out.append(f"  whole frozen window (chkpnt)      {ms(med(frozen_s))}")

        # -- 100 snapshots of a stopped VE
        area = Path(mgr.config("952").private)
        create = []
        for i in range(args.snapshots):
            (area / "root" / "changing").write_text(f"{i}\n")
            t0 = time.perf_counter()
            sm.create("952", name=f"s{i}")
            create.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        listed = sm.snapshots("952")
        list_s = time.perf_counter() - t0
        assert len(listed) == args.snapshots
        rollback = []
        for i in range(args.snapshots):
            t0 = time.perf_counter()
            sm.rollback("952", f"s{i}")
            rollback.append(time.perf_counter() - t0)
            assert (area / "root" / "changing").read_text() == f"{i}\n"
        out.append(f"{args.snapshots} snapshots of a stopped VE (filesystem only):")
        out.append(f"  create   median {ms(med(create))}  max {ms(max(create))}")
        out.append(f"  list     {ms(list_s)} for all {len(listed)}")
        out.append(f"  rollback median {ms(med(rollback))}  max {ms(max(rollback))}")

        # -- with memory, a running VE
        shutil.rmtree(private / "data", ignore_errors=True)
        mgr.start("951")
        mcreate, mroll = [], []
        for i in range(args.memory_rounds):
            t0 = time.perf_counter()
            sm.create("951", name=f"m{i}")
            mcreate.append(time.perf_counter() - t0)
        for i in range(args.memory_rounds):
            t0 = time.perf_counter()
            sm.rollback("951", f"m{i}")
            mroll.append(time.perf_counter() - t0)
            reap_all()
        out.append(f"a running VE with memory ({args.memory_rounds} snapshots):")
        out.append(f"  create   median {ms(med(mcreate))}  max {ms(max(mcreate))}")
        out.append(f"  rollback median {ms(med(mroll))}  max {ms(max(mroll))} (stop, "
                   f"roll back, restore)")  # fmt: skip
    finally:
        for veid in ("951", "952"):
            with contextlib.suppress(Exception):
                mgr.stop(veid, timeout=0.5)
            with contextlib.suppress(Exception):
                mgr.destroy(veid)
        reap_all()
        pool.teardown(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
