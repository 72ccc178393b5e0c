"""cptimage start-up and record codec speed (issue 13, the image-format part).

(a) Import: `python -X importtime -c "import cptimage.container, cptimage.records"`, the
    cumulative microseconds of the cptimage modules (and of construct if it is imported),
    and the wall time of the same command against `python -c pass`: median of N runs,
    (1) with the package's bytecode compiled and (2) with none for cptimage and
    PYTHONDONTWRITEBYTECODE=1 (a copy of cptimage without __pycache__: every start compiles).
(b) First use, in a fresh process after the import: the time of the first encode and the
    first decode of every record type (the sum, and the slowest type).
(c) Throughput: records decoded per second on an image of 10,000 VMAs + 10,000 fds, by the
    fast path (the generated code, which verify uses too) and by construct's plain parser.

    python bench/codec_bench.py [--rounds N]
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

IMPORT = "import cptimage.container, cptimage.records"
_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")

FIRST_USE = """
import time, sys
t0 = time.perf_counter()
import cptimage.container, cptimage.records
t1 = time.perf_counter()
from cptimage.fields import REGISTRY, decode_records
enc = dec = 0.0
worst = ("", 0.0)
for tag, codec in sorted(REGISTRY.items()):
    a = time.perf_counter()
    raw = codec.cls().encode()
    b = time.perf_counter()
    decode_records(raw)
    c = time.perf_counter()
    enc += b - a
    dec += c - b
    if c - a > worst[1]:
        worst = (codec.name, c - a)
a = time.perf_counter()
for tag, codec in sorted(REGISTRY.items()):
    decode_records(codec.cls().encode(), plain=True)
plain = time.perf_counter() - a
print(t1 - t0, enc, dec, worst[0], worst[1], plain, "construct" in sys.modules)
"""


def _env(**kw: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(kw)
    return env


def _wall(argv: list[str], cwd: str, env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True)
    return time.perf_counter() - t


def _importtime(cwd: str, env: dict[str, str]) -> tuple[int, int, bool]:
    """(µs of the top-level cptimage imports, µs of construct's, construct imported)."""
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", IMPORT],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stderr
    own = cons = 0
    seen = False
    for m in _LINE.finditer(err):
        cum, depth, name = int(m.group(2)), len(m.group(3)), m.group(4)
        if depth == 1 and name.startswith("cptimage"):
            own += cum
        if name == "construct":
            cons, seen = cum, True
    return own, cons, seen


def bench_import(rounds: int) -> list[tuple[str, str, str]]:
    rows = []
    tmp = tempfile.mkdtemp(prefix="cpt-codec-bench-")
    try:
        cold = os.path.join(tmp, "cold")
        os.mkdir(cold)
        shutil.copytree(
            os.path.join(ROOT, "cptimage"),
            os.path.join(cold, "cptimage"),
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", os.path.join(ROOT, "cptimage")], check=True
        )
        modes = [
            ("bytecode compiled", ROOT, _env()),
            ("no bytecode, PYTHONDONTWRITEBYTECODE=1", cold, _env(PYTHONDONTWRITEBYTECODE="1")),
        ]
        for label, cwd, env in modes:
            it, cons, walls, bases = [], [], [], []
            seen = False
            for _ in range(rounds):
                own, c, s = _importtime(cwd, env)
                it.append(own)
                cons.append(c)
                seen = seen or s
                bases.append(_wall([sys.executable, "-c", "pass"], cwd, env))
                walls.append(_wall([sys.executable, "-c", IMPORT], cwd, env))
            assert not os.path.exists(os.path.join(cold, "cptimage", "__pycache__"))
            med = statistics.median
            rows.append(
                (
                    f"import, {label}",
                    f"importtime {med(it) / 1000:.1f} ms (construct {med(cons) / 1000:.1f} ms)"
                    if seen
                    else f"importtime {med(it) / 1000:.1f} ms (no construct)",
                    f"wall {med(walls) * 1000:.1f} ms vs `python -c pass` "
                    f"{med(bases) * 1000:.1f} ms: +{(med(walls) - med(bases)) * 1000:.1f} ms",
                )
            )
    finally:
        shutil.rmtree(tmp)
    return rows


def bench_first_use(rounds: int) -> list[tuple[str, str, str]]:
    res = []
    for _ in range(rounds):
        out = subprocess.run(
            [sys.executable, "-c", FIRST_USE],
            cwd=ROOT,
            env=_env(),
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        res.append(out)
    med = statistics.median
    imp = med(float(r[0]) for r in res) * 1000
    enc = med(float(r[1]) for r in res) * 1000
    dec = med(float(r[2]) for r in res) * 1000
    plain = med(float(r[5]) for r in res) * 1000
    worst = max(res, key=lambda r: float(r[4]))
    return [
        ("first use, every record type", f"encode {enc:.2f} ms, decode {dec:.2f} ms", ""),
        ("  slowest type", f"{worst[3]}: {float(worst[4]) * 1000:.2f} ms", ""),
        (
            "  then plain (construct) decode of each",
            f"{plain:.1f} ms",
            f"(in-process import: {imp:.1f} ms)",
        ),
    ]


def bench_throughput(n: int, rounds: int) -> list[tuple[str, str, str]]:
    import samples

    from cptimage.container import ImageReader
    from cptimage.fields import decode_records
    from cptimage.records import SectionType

    buf = io.BytesIO()
    samples.many_image(buf, n, n)
    buf.seek(0)
    with ImageReader(buf) as r:
        payloads = [
            r.payload(s) for s in r.sections if s.type not in (SectionType.PAGES, SectionType.INDEX)
        ]
    count = sum(len(decode_records(p)) for p in payloads)
    rows = []
    for label, plain in (("fast path", False), ("plain parser (construct)", True)):
        best = min(
            _timed(lambda plain=plain: [decode_records(p, plain=plain) for p in payloads])
            for _ in range(rounds)
        )
        rows.append(
            (
                f"decode {count} records, {label}",
                f"{best * 1000:.1f} ms",
                f"{count / best:,.0f} records/s",
            )
        )
    return rows


def _timed(fn: object) -> float:
    t = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--count", type=int, default=10_000, help="VMAs and fds of image (c)")
    args = ap.parse_args()
    rows = bench_import(args.rounds)
    rows += bench_first_use(args.rounds)
    rows += bench_throughput(args.count, args.rounds)
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    print(f"codec bench (median of {args.rounds}; python {sys.version.split()[0]})")
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
