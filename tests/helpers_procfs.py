"""What the /proc layer's tests share: the captured trees of fixtures/proc (written by
fixtures/proc/capture.py) and the values their capture programs reported."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from cpt.procfs import Vma

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "proc"
SRC = FIX / "src"
ZOO = json.loads((FIX / "zoo" / "expected.json").read_text())
MANY = json.loads((FIX / "manyvmas" / "expected.json").read_text())
PID = ZOO["pid"]
WD = ZOO["workdir"]
FD = ZOO["fd"]
MAPS = ZOO["maps"]
PG = 4096
NOT_A_PID = 2**22 + 1  # above the largest possible pid_max: never a process


def sigbit(*sigs: int) -> int:
    return sum(1 << (s - 1) for s in sigs)


def vma_at(maps: list[Vma], addr: int) -> Vma:
    (v,) = [v for v in maps if v.start <= addr < v.end]
    return v


def best_ms(fn: Callable[[], object], n: int = 5) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3
