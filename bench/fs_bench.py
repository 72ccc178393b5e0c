"""Filesystem snapshot benchmark: what a snapshot adds to a checkpoint's frozen window, and
the snapshot manager's basic operations, on the embedded loop-file btrfs pool.

  frozen window   an area of 10,000 files holding 100 MiB just written (dirty in the page
                  cache): sync() before the freeze, then the read-only snapshot, which is
                  all the frozen window pays (target: < 5 ms); and the same snapshot
                  without the sync, for comparison (btrfs then flushes the dirty data
                  inside the snapshot). Median of --rounds, fresh data each round.
  restore check   changed_since on that area: nothing changed (ctransid fast path), then
                  one file changed (send --no-data against a temporary snapshot)
  100 snapshots   create (one file changed between two), list (info of each), rollback
                  to each in turn (every rollback keeps a pre-rollback snapshot)
  copy fallback   the same area snapshotted by the copy backend: reflink copy on btrfs,
                  content-addressed store on tmpfs (the workload stays frozen that long)

Needs root (loop device, mounts); prints a note and exits 0 otherwise.

    python bench/fs_bench.py [--rounds 5] [--snapshots 100] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storage import pool
from storage.btrfs import BtrfsFilesystem
from storage.copy import CopyFilesystem

FILES = 10_000
TOTAL = 100 << 20
TARGET_MS = 5.0


def _ms(fn: Callable[..., object], *args: object) -> float:
    t = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - t) * 1000


def write_tree(area: Path, tag: int) -> None:
    """10,000 files in 100 directories, 100 MiB in all, new contents for every `tag`."""
    block = os.urandom(TOTAL // FILES)
    for i in range(FILES):
        d = area / f"d{i % 100:02d}"
        d.mkdir(exist_ok=True)
        with open(d / f"f{i:05d}", "wb") as f:
            f.write(tag.to_bytes(8, "little") + block[8:])


def frozen_window(fs: BtrfsFilesystem, area: Path, snaps: Path, rounds: int) -> list[Row]:
    synced, sync_cost, dirty = [], [], []
    for r in range(rounds):
        write_tree(area, 2 * r)
        sync_cost.append(_ms(fs.sync, area))
        synced.append(_ms(fs.snapshot, area, snaps / f"synced-{r}"))
        write_tree(area, 2 * r + 1)
        dirty.append(_ms(fs.snapshot, area, snaps / f"dirty-{r}"))
    # Deleted at the end: the cleaner thread reclaiming a deleted subvolume would compete.
    for r in range(rounds):
        for name in (f"synced-{r}", f"dirty-{r}"):
            fs.delete_snapshot(snaps / name)
    # Wait for the cleaner, whose commits would otherwise land in the next measures.
    subprocess.run(["btrfs", "subvolume", "sync", snaps], check=True, capture_output=True)
    return [
        Row("sync() before the freeze (not frozen)", sync_cost),
        Row("snapshot after sync (frozen window)", synced, TARGET_MS),
        Row("snapshot of dirty data, no sync", dirty),
    ]


def restore_check(fs: BtrfsFilesystem, area: Path, snaps: Path) -> list[Row]:
    fs.sync(area)
    snap = fs.snapshot(area, snaps / "check").path
    same = [_ms(fs.changed_since, area, snap) for _ in range(5)]
    (area / "d00" / "f00000").write_bytes(b"changed")
    changed = [_ms(fs.changed_since, area, snap) for _ in range(5)]
    assert fs.changed_since(area, snap) == ["d00/f00000"]
    fs.delete_snapshot(snap)
    return [
        Row("changed_since, unchanged (ctransid)", same),
        Row("changed_since, 1 file changed (send)", changed),
    ]


def hundred(fs: BtrfsFilesystem, area: Path, snaps: Path, count: int) -> list[Row]:
    paths = [snaps / f"s{i:03d}" for i in range(count)]
    create = []
    for i, path in enumerate(paths):
        (area / "counter").write_text(str(i))
        fs.sync(area)
        create.append(_ms(fs.snapshot, area, path))
    t = time.perf_counter()
    infos = [fs.info(p) for p in paths]
    listing = (time.perf_counter() - t) * 1000
    assert len({i.uuid for i in infos}) == count
    rollback = [_ms(fs.rollback, area, p) for p in paths]
    assert (area / "counter").read_text() == str(count - 1)
    return [
        Row(f"create, each of {count}", create),
        Row(f"list: info of {count} snapshots (total)", [listing]),
        Row(f"rollback, each of {count}", rollback),
    ]


def copy_fallback(area: Path, btrfs_dir: Path, tmpfs_dir: Path) -> list[Row]:
    fs = CopyFilesystem()
    plain = btrfs_dir / "plain"
    shutil.copytree(area, plain)
    reflink = _ms(fs.snapshot, plain, btrfs_dir / "reflink-snap")
    on_tmpfs = tmpfs_dir / "area"
    shutil.copytree(area, on_tmpfs)
    store = _ms(fs.snapshot, on_tmpfs, tmpfs_dir / "store-snap")
    return [
        Row("copy backend, reflink (btrfs)", [reflink]),
        Row("copy backend, store (tmpfs)", [store]),
    ]


class Row:
    def __init__(self, name: str, samples: list[float], target: float | None = None) -> None:
        self.name, self.samples, self.target = name, samples, target

    def line(self) -> str:
        s = self.samples
        med = statistics.median(s)
        verdict = ""
        if self.target is not None:
            verdict = f"{'PASS' if med < self.target else 'MISS'} (< {self.target:g} ms)"
        return (f"{self.name:<42} {med:>10.2f} {min(s):>10.2f} {max(s):>10.2f} {len(s):>5}  "
                f"{verdict}")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--snapshots", type=int, default=100)
    ap.add_argument("--dir", default="/var/tmp", help="where the state directory goes")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("fs_bench: needs root (loop device, mounts); skipped")
        return 0
    state = Path(tempfile.mkdtemp(prefix="cpt-fs-bench-", dir=args.dir))
    tmpfs = state / "tmpfs"
    rows: list[Row] = []
    try:
        pool_dir = pool.init(state, size=4 << 30)
        fs = BtrfsFilesystem()
        area, snaps = pool_dir / "private" / "bench", pool_dir / "snapshots"
        fs.create_area(area)
        rows += frozen_window(fs, area, snaps, args.rounds)
        rows += restore_check(fs, area, snaps)
        rows += hundred(fs, area, snaps, args.snapshots)
        tmpfs.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", tmpfs], check=True)
        rows += copy_fallback(area, pool_dir, tmpfs)
    finally:
        if os.path.ismount(tmpfs):
            subprocess.run(["umount", tmpfs], check=True)
        pool.teardown(state)
        shutil.rmtree(state)
    print(f"btrfs loop-file pool, {FILES} files / {TOTAL >> 20} MiB area, times in ms")
    print(f"{'measure':<42} {'median':>10} {'min':>10} {'max':>10} {'n':>5}")
    for row in rows:
        print(row.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
