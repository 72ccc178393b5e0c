"""Image tool benchmarks (issue 2's performance bar).

(a) verify of an image holding 1 GiB of pages against the raw sequential read speed of
    the same file, measured in the same run: the file is read once to warm the page
    cache, then raw reads and verifies alternate and the best of each is kept.  Both
    read with readinto into one reused buffer of the same size.  Bar: verify >= 50%.
(b) show and verify of an image with 10,000 VMAs and 10,000 fds, in-process (no
    interpreter start-up).  Bar: < 1 s each.

    python bench/image_bench.py [--size-mib N] [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# samples: the image builders of the test data
sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
)

import samples

from cptimage import show
from cptimage.container import ImageReader
from cptimage.verify import verify

CHUNK = 1 << 20  # verify's default buffer; the raw read uses the same


def raw_read(path: str, chunk: int = CHUNK) -> int:
    buf = bytearray(chunk)
    n = 0
    with open(path, "rb", buffering=0) as f:
        while k := f.readinto(buf):
            n += k
    return n


def best(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_pages(tmp: str, size: int, rounds: int) -> list[tuple[str, str, str]]:
    path = os.path.join(tmp, "pages.img")
    with open(path, "wb") as f:
        samples.pages_image(f, size)
    fsize = os.path.getsize(path)
    raw_read(path)  # warm the page cache
    raw_t, verify_t = [], []
    for _ in range(rounds):  # alternate, so both see the same machine state
        raw_t.append(best(lambda: raw_read(path), 1))
        t = time.perf_counter()
        problems = verify(path)
        verify_t.append(time.perf_counter() - t)
        assert problems == [], problems
    gib = fsize / (1 << 30)
    raw_speed, verify_speed = gib / min(raw_t), gib / min(verify_t)
    ratio = verify_speed / raw_speed
    return [
        (f"raw read, {fsize >> 20} MiB", f"{min(raw_t):.3f} s", f"{raw_speed:.2f} GiB/s"),
        (f"verify, {fsize >> 20} MiB", f"{min(verify_t):.3f} s", f"{verify_speed:.2f} GiB/s"),
        ("verify / raw read", f"{ratio:.0%}", "PASS (>= 50%)" if ratio >= 0.5 else "FAIL (< 50%)"),
    ]


def bench_many(tmp: str, n: int, rounds: int) -> list[tuple[str, str, str]]:
    path = os.path.join(tmp, "many.img")
    with open(path, "wb") as f:
        samples.many_image(f, n, n)

    def summary() -> None:
        with ImageReader(path) as r:
            show.summary(r)

    def maps() -> None:
        with ImageReader(path) as r:
            assert len(show.maps(r, 100)) == n

    def fds() -> None:
        with ImageReader(path) as r:
            assert len(show.fds(r, 100)) == n

    def check() -> None:
        assert verify(path) == []

    rows = []
    for name, fn in (
        ("show", summary),
        ("show --maps", maps),
        ("show --fds", fds),
        ("verify", check),
    ):
        t = best(fn, rounds)
        verdict = "PASS (< 1 s)" if t < 1 else "FAIL (>= 1 s)"
        rows.append((f"{name}, {n} VMAs + {n} fds", f"{t * 1000:.1f} ms", verdict))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="page data of image (a)")
    ap.add_argument("--count", type=int, default=10_000, help="VMAs and fds of image (b)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="cpt-image-bench-")
    try:
        rows = bench_pages(tmp, args.size_mib << 20, args.rounds)
        rows += bench_many(tmp, args.count, args.rounds)
    finally:
        shutil.rmtree(tmp)
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    print("image bench")
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    return 0 if all("FAIL" not in r[2] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
