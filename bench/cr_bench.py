"""Checkpoint/restore benchmark: the engine against the machine's physical limits, one run.

Workload: fixtures/workloads/counter.c with N MiB of touched anonymous memory, for N in
--sizes (default 16, 256, 1024), plus N = 0 for the fixed cost of a small process.  Per
size and round (best of --rounds is kept for every figure):

  leave-running   TreeStages.chkpnt(CHKPNT, DumpOptions(leave_running=True)): wall time and
                  DumpStats.frozen_s (freeze to resume; the final fsync is outside it)
  dump + kill     TreeStages.chkpnt(CHKPNT, DumpOptions()): wall time (fsync and kill included),
                  image size against VmRSS read just before the dump
  verify          open_for_restore() (checksums, structure, host check)
  restore         cpt.stages.restore.restore() alone; in the first round the restored workload checks
                  its memory pattern and exits (PASS), in the others it is SIGKILLed

and, in the same run, the physical limits the targets compare with:

  readv           process_vm_readv of the same pages (the engine's PAGEMAP_SCAN selection)
                  into one reused 16 MiB buffer; readv + write also write()s every chunk
                  to a file in the image directory
  memset          first touch of the same size (fresh MAP_PRIVATE|MAP_ANONYMOUS memory,
                  memset, timed inside a small C helper compiled here)

and a server workload (--server on|off|only): a TCP echo server (poll loop, 64 MiB of
heap) with 100 established connections whose clients run in a thread of this process,
outside the dumped tree, each sending a 16-byte request every 20 ms: checkpoint with
--tcp-established (dump + kill) and restore times, and the longest time a client waited
for an echo (the pause it saw) across checkpoint, kill and restore; every echo must come
back intact, without a reset.

Targets (PASS/MISS): image <= RSS + 1%; frozen <= 1.2 x (readv + write); restore of
1024 MiB <= 1.2 x memset; dump and restore of a small process <= 30 ms each.

Memory state matters on this VM: free page reporting gives freed memory back to the host
about 2 s after it is freed, and a first touch of such host-cold memory runs ~6x slower
(0.4 vs 2.5 GB/s), whether it becomes page cache (an image) or anonymous memory (restored
pages).  So every timed step that allocates first waits for pending reporting to pass
(sizes >= 128 MiB), then touches and frees as much memory of the same kind (--cold: no
warm-up); the KiB the host took back during each step are recorded (reported_kib of
/sys/module/page_reporting), a repeatable step that saw some is repeated (twice at most),
and the best clean sample is kept (a figure with none is marked '*').  The first-touch
baseline's worst round is shown too: it usually ran on host-cold memory.

Everything runs in this process (no interpreter start-up is timed); the first engine
call of the process (one-time costs that every `cpt` command pays) is shown apart for
0 MiB, with its frozen time (of a dump + kill: the fsync before the kill is inside it).
Each workload is started through a small parent process that reaps it, so that
the killed root is reaped while the checkpoint waits for its PIDs to disappear; a
restored root is our child and is reaped by PID.  This process never calls waitpid(-1).
Needs root; prints a note and exits 0 otherwise.  Exit status 1 on a missed target only
with --strict.

    python bench/cr_bench.py [--sizes 16,256,1024] [--rounds 3] [--json FILE|-]
    python bench/cr_bench.py --profile [--sizes 1024]   # cProfile of dump and restore
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import mmap
import os
import platform
import pstats
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from workloads import build, proc_info  # noqa: E402  (tests/workloads.py)

from cpt.dump.dumper import DumpOptions, DumpStats  # noqa: E402
from cpt.procfs import open_pagemap  # noqa: E402
from cpt.restore.restorer import RestoreStats  # noqa: E402
from cpt.stages.restore import open_for_restore, restore  # noqa: E402
from cpt.stages.stage import Stage  # noqa: E402
from cpt.stages.tree import Tree  # noqa: E402
from cpt.stages.trees import TreeStages  # noqa: E402
from cpt.sys.mem import (  # noqa: E402
    PAGE_IS_FILE,
    PAGE_IS_PFNZERO,
    PAGE_IS_PRESENT,
    PAGE_IS_SWAPPED,
    pagemap_scan,
    process_vm_readv,
)

MiB = 1 << 20
BUF_SIZE = 16 * MiB  # the engine's page buffer
MADV_POPULATE_WRITE = 23
WARM_EXTRA = 64 * MiB
SETTLE_S = 2.3  # page reporting runs 2 s after a free (measured 2.07-2.2 s)
SETTLE_MIB = 128  # sizes from which timed steps wait for reporting to pass first
SPECIAL = ("[vvar]", "[vvar_vclock]", "[vdso]", "[vsyscall]")
READY_TIMEOUT = 60.0
SMALL_TARGET_S = 0.030
# CRIU 4.2 on this machine kind (ENGINE-NOTES "Reference speeds"): dump leave-running,
# frozen, restore, in seconds
CRIU = {16: (0.055, 0.011, 0.054), 256: (0.148, 0.105, 0.211), 1024: (0.470, 0.427, 0.624)}

# The workload's parent: a subreaper that forks the workload as a session leader and
# reaps it and whatever of its tree comes to it (a killed root's children), then exits.
PARENT = """\
import ctypes, os, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)
pid = os.fork()
if pid == 0:
    try:
        os.setsid()
        os.execv(sys.argv[1], sys.argv[1:])
    finally:
        os._exit(127)
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
"""

MEMSET_C = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* usage: memset MiB ROUNDS; prints "memset SECONDS" and "touch SECONDS" per round */
int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    size_t len = strtoull(argv[1], NULL, 10) << 20;
    int rounds = atoi(argv[2]);
    long page = sysconf(_SC_PAGESIZE);

    if (!len)
        return 2;
    for (int r = 0; r < rounds; r++) {
        for (int mode = 0; mode < 2; mode++) {
            char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) {
                perror("mmap");
                return 1;
            }
            double t0 = now();
            if (mode == 0)
                memset(p, 0x5a, len);
            else
                for (size_t i = 0; i < len; i += page)
                    p[i] = 1;
            double t1 = now();
            volatile char sink = p[len - 1];
            (void)sink;
            printf("%s %.9f\n", mode ? "touch" : "memset", t1 - t0);
            munmap(p, len);
        }
    }
    return 0;
}
"""


# --------------------------------------------------------------------------- workloads


class Workload:
    """counter DIR MiB, child of a PARENT process (not of us) until it is restored."""

    def __init__(
        self, binary: Path, directory: Path, mib: int, argv: list[str] | None = None
    ) -> None:
        self.dir = directory
        directory.mkdir(parents=True)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
        argv = argv or [str(binary), str(directory), str(mib)]
        with open(directory / "log", "wb") as log:
            self.parent = subprocess.Popen(
                [sys.executable, "-I", "-c", PARENT, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=directory,
                env=env,
                close_fds=True,
            )
        self.pid = 0
        self.restored = False  # then the root is OUR child
        deadline = time.monotonic() + READY_TIMEOUT
        while not (text := _read(directory / "ready")):
            if self.parent.poll() is not None:
                raise RuntimeError(f"workload exited before it was ready:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"workload not ready in {READY_TIMEOUT:.0f} s:\n{self.log()}")
            time.sleep(0.005)
        self.pid = int(text)
        info = proc_info(self.pid)
        if info is None or info.ppid != self.parent.pid:
            raise RuntimeError(f"pid {self.pid} in {directory}/ready is not the workload")

    def log(self) -> str:
        return _read(self.dir / "log")

    def counter(self) -> int:
        for _ in range(100):
            with contextlib.suppress(ValueError):
                return int(_read(self.dir / "counter") or "x")
            time.sleep(0.001)
        raise RuntimeError(f"unreadable counter in {self.dir}")

    def wait_tick(self, timeout: float = 10.0) -> None:
        """Wait until the counter moves: the workload runs."""
        start = self.counter()
        deadline = time.monotonic() + timeout
        while self.counter() == start:
            if time.monotonic() > deadline:
                raise RuntimeError(f"counter of {self.pid} stuck at {start}:\n{self.log()}")
            time.sleep(0.005)

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for {self.pid}")

    def killed(self) -> None:
        """After checkpoint + kill: the parent has reaped the workload, and now exits."""
        self.parent.wait(timeout=10)

    def finish(self) -> str:
        """The restored workload checks itself: SIGTERM, wait for DIR/result, reap."""
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while not (verdict := _read(self.dir / "result")):
            if time.monotonic() > deadline:
                raise RuntimeError(f"restored {self.pid}: no verdict:\n{self.log()}")
            time.sleep(0.005)
        _, status = os.waitpid(self.pid, 0)
        self.pid = 0
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"restored workload exited with {status:#x}: {verdict}")
        return verdict.strip()

    def kill_restored(self) -> None:
        """SIGKILL the restored root (our child) and reap it: its PID is free again."""
        if self.restored and self.pid:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.restored = False

    def close(self) -> None:
        """Kill whatever is left, by PID, and reap what is ours."""
        pid, self.pid = self.pid, 0
        info = proc_info(pid) if pid else None
        if info is not None and info.ppid in (os.getpid(), self.parent.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if info.ppid == os.getpid():
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
        if self.parent.poll() is None:
            try:
                self.parent.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.parent.kill()
                self.parent.wait()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


# --------------------------------------------------------------------------- physical limits


def dumped_ranges(pid: int) -> list[tuple[int, int]]:
    """The pages the engine saves: private mappings' pages that are present or swapped,
    neither file pages nor the zero page (one PAGEMAP_SCAN per mapping)."""
    skip = PAGE_IS_FILE | PAGE_IS_PFNZERO
    out: list[tuple[int, int]] = []
    fd = open_pagemap(pid)
    try:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            parts = line.split(maxsplit=5)
            perms, path = parts[1], parts[5] if len(parts) > 5 else ""
            if "p" not in perms or "r" not in perms or path in SPECIAL:
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            for s, e, _ in pagemap_scan(
                fd,
                lo,
                hi,
                category_mask=skip,
                category_inverted=skip,
                category_anyof_mask=PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                return_mask=PAGE_IS_PRESENT,
                pid=pid,
            ):
                out.append((s, e - s))
    finally:
        os.close(fd)
    return out


def batches(ranges: list[tuple[int, int]], size: int) -> Iterator[list[tuple[int, int]]]:
    batch: list[tuple[int, int]] = []
    fill = 0
    for addr, n in ranges:
        while n:
            take = min(n, size - fill)
            batch.append((addr, take))
            fill += take
            addr += take
            n -= take
            if fill == size:
                yield batch
                batch, fill = [], 0
    if batch:
        yield batch


def readv_write(pid: int, ranges: list[tuple[int, int]], path: str | None) -> tuple[float, int]:
    """process_vm_readv the ranges through one pre-faulted 16 MiB buffer, write() each
    chunk to `path` (None: read only).  Returns (seconds, bytes)."""
    buf = mmap.mmap(-1, BUF_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
    view = memoryview(buf)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600) if path else -1
    total = 0
    try:
        t0 = time.perf_counter()
        for batch in batches(ranges, BUF_SIZE):
            n = process_vm_readv(pid, batch, buf)
            total += n
            off = 0
            while fd >= 0 and off < n:
                off += os.write(fd, view[off:n])
        elapsed = time.perf_counter() - t0
    finally:
        if fd >= 0:
            os.close(fd)
            os.unlink(path)  # type: ignore[arg-type]
        view.release()
        buf.close()
    return elapsed, total


def warm(nbytes: int, directory: str | None = None) -> None:
    """Touch and free `nbytes` of memory, so that the next allocations of that size get
    memory the host backs already.

    This VM has free page reporting (/sys/module/page_reporting): a pass ~2 s after memory
    is freed hands free memory back to the host, and the kernel then prefers unreported
    pages.  A first touch
    of host-cold memory runs at ~0.4 GB/s instead of ~2.5 GB/s and would decide every
    figure that allocates memory.  Anonymous memory warms anonymous allocations (restored
    pages); page cache must be warmed with page cache (a file written in `directory` and
    unlinked): freed anonymous pages serve page-cache allocations only partly (measured:
    256 MiB write() 190 ms after an anonymous warm-up, 85 ms after a file warm-up).
    """
    if nbytes <= 0:
        return
    if directory is None:
        m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            m.madvise(MADV_POPULATE_WRITE)
        finally:
            m.close()
            freed()
        return
    path = os.path.join(directory, "warm.tmp")
    buf = mmap.mmap(-1, BUF_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with memoryview(buf) as view:
            left = nbytes
            while left > 0:
                left -= os.write(fd, view[: min(left, BUF_SIZE)])
    finally:
        os.close(fd)
        os.unlink(path)
        buf.close()
        freed()


REPORTING = "/sys/module/page_reporting/parameters"
REPORTED = Path(REPORTING, "reported_kib")


_last_free = 0.0


def freed() -> None:
    """Note that memory was just freed: a page-reporting pass follows in ~2 s."""
    global _last_free
    _last_free = time.monotonic()


def settle() -> None:
    """Wait until the reporting pass that the last free scheduled has run (2 s after the
    free, measured) and reporting is idle, so a timed step gets a ~2 s quiet window."""
    time.sleep(max(0.0, _last_free + SETTLE_S - time.monotonic()))
    deadline = time.monotonic() + 3.0
    last = reported_kib()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = reported_kib()
        if now == last:
            return
        last = now


def reported_kib() -> int:
    """KiB of free memory this VM has reported to the host so far (-1: not available)."""
    try:
        return int(REPORTED.read_text())
    except (OSError, ValueError):
        return -1


def first_touch(tmp: str, sizes: list[int], rounds: int) -> dict[int, dict[str, float]]:
    """Best and worst memset and per-page touch times of fresh anonymous memory, by size
    (C helper).  The first round runs on whatever memory the kernel hands out (host-cold
    if it was reported); the next ones reuse the pages the previous round freed."""
    src, exe = os.path.join(tmp, "memset.c"), os.path.join(tmp, "memset")
    Path(src).write_text(MEMSET_C)
    subprocess.run(["gcc", "-O2", "-Wall", "-o", exe, src], check=True, capture_output=True)
    out: dict[int, dict[str, float]] = {}
    for mib in sizes:
        text = subprocess.run(
            [exe, str(mib), str(rounds)], check=True, capture_output=True, text=True
        ).stdout
        times: dict[str, list[float]] = {}
        for line in text.splitlines():
            what, secs = line.split()
            times.setdefault(what, []).append(float(secs))
        out[mib] = {k: min(v) for k, v in times.items()}
        out[mib] |= {f"{k}_worst": max(v) for k, v in times.items()}
    return out


# --------------------------------------------------------------------------- one round


@dataclass
class Round:
    pid: int = 0
    rss: int = 0
    pages: int = 0  # bytes the engine's selection covers
    readv_s: float = 0.0
    readv_write_s: float = 0.0
    lr_dump_s: float = 0.0  # leave-running checkpoint, wall
    frozen_s: float = 0.0
    lr_state_s: float = 0.0
    lr_pages_s: float = 0.0
    dump_s: float = 0.0  # checkpoint + kill, wall
    dump: DumpStats | None = None
    image: int = 0
    verify_s: float = 0.0
    restore_s: float = 0.0
    restore: RestoreStats | None = None
    verdict: str = ""
    reported_mib: dict[str, float] = field(default_factory=dict)  # taken back by the host
    attempts: dict[str, int] = field(default_factory=dict)


@dataclass
class Profiles:
    """cProfile of the in-process calls (--profile)."""

    enabled: bool = False
    prefix: str = ""
    stats: dict[str, cProfile.Profile] = field(default_factory=dict)

    def run(self, name: str, fn: Callable[[], Any]) -> tuple[float, Any]:
        prof = cProfile.Profile() if self.enabled else None
        t0 = time.perf_counter()
        if prof is not None:
            prof.enable()
        try:
            result = fn()
        finally:
            if prof is not None:
                prof.disable()
        elapsed = time.perf_counter() - t0
        if prof is not None:
            self.stats[self.prefix + name] = prof
        return elapsed, result


def checkpoint(pid: int, path: str, opts: DumpOptions) -> DumpStats:
    stats = TreeStages(pid).chkpnt(Stage.CHKPNT, path, opts)
    assert stats is not None
    return stats


def one_round(
    binary: Path,
    tmp: str,
    mib: int,
    tag: str,
    *,
    physical: bool,
    leave_running: bool,
    check: bool,
    prof: Profiles,
    warm_up: bool,
) -> Round:
    r = Round()
    need = (mib * MiB + WARM_EXTRA) if warm_up else 0
    quiet = warm_up and mib >= SETTLE_MIB
    img = os.path.join(tmp, f"{tag}.img")

    def step(
        name: str,
        fn: Callable[[], Any],
        file_warm: bool,
        undo: Callable[[Any], None] | None = None,
    ) -> tuple[float, Any]:
        """Let pending page reporting pass, warm up, time fn().  When the host took memory
        back while fn() ran, undo() its effect and try again (twice at most)."""
        for attempt in range(3):
            if quiet:
                settle()
            warm(need, tmp if file_warm else None)
            before = reported_kib()
            elapsed, result = prof.run(f"{name} {mib} MiB", fn)
            taken = (reported_kib() - before) / 1024 if before >= 0 else -1.0
            freed()
            r.reported_mib[name] = taken
            r.attempts[name] = attempt + 1
            if taken <= 0 or undo is None or attempt == 2:
                return elapsed, result
            undo(result)
        raise AssertionError("unreachable")

    def unlink_img(_: object) -> None:
        os.unlink(img)

    wl = Workload(binary, Path(tmp) / tag, mib)
    r.pid = wl.pid
    try:
        wl.wait_tick()
        if physical:
            ranges = dumped_ranges(wl.pid)
            r.readv_s, r.pages = readv_write(wl.pid, ranges, None)
            raw = os.path.join(tmp, f"{tag}.raw")
            r.readv_write_s = step(
                "readv+write", lambda: readv_write(wl.pid, ranges, raw), True, lambda _: None
            )[1][0]
        if leave_running:
            r.lr_dump_s, st = step(
                "leave-running",
                lambda: checkpoint(wl.pid, img, DumpOptions(leave_running=True)),
                True,
                unlink_img,
            )
            r.frozen_s, r.lr_state_s, r.lr_pages_s = st.frozen_s, st.state_s, st.pages_s
            os.unlink(img)
            wl.wait_tick()
        r.rss = wl.rss()
        r.dump_s, r.dump = step("dump+kill", lambda: checkpoint(wl.pid, img, DumpOptions()), True)
        r.image = os.path.getsize(img)
        wl.killed()
        freed()

        r.verify_s, reader = prof.run(f"verify {mib} MiB", lambda: open_for_restore(img))
        with reader:
            tree = Tree(reader.header.root_pid)

            def restore_tree() -> RestoreStats:
                with tree.locked():
                    stats = restore(tree, reader)
                wl.restored = True
                return stats

            def unrestore(_: object) -> None:
                wl.kill_restored()

            r.restore_s, r.restore = step("restore", restore_tree, False, unrestore)
        if r.restore.root_pid != wl.pid:
            raise RuntimeError(f"restored root {r.restore.root_pid}, expected {wl.pid}")
        if check:
            wl.wait_tick()
            r.verdict = wl.finish()
            if r.verdict != "PASS":
                raise RuntimeError(f"restored workload ({mib} MiB): {r.verdict}\n{wl.log()}")
    finally:
        wl.close()
        freed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(img)
        shutil.rmtree(Path(tmp) / tag, ignore_errors=True)
    return r


# --------------------------------------------------------------------------- server

# The server workload: an echo server on 127.0.0.1 with MiB of touched heap, one poll()
# loop (no epoll fd), writing DIR/port then DIR/ready.
ECHO_SERVER = """\
import os, select, socket, sys
d, mib = sys.argv[1], int(sys.argv[2])
heap = bytearray(os.urandom(1 << 20)) * mib
lsn = socket.socket()
lsn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lsn.bind(("127.0.0.1", 0))
lsn.listen(256)
conns = {}
p = select.poll()
p.register(lsn, select.POLLIN)
with open(os.path.join(d, "port"), "w") as f:
    f.write(str(lsn.getsockname()[1]))
with open(os.path.join(d, ".ready"), "w") as f:
    f.write(str(os.getpid()))
os.rename(os.path.join(d, ".ready"), os.path.join(d, "ready"))
while True:
    for fd, ev in p.poll():
        if fd == lsn.fileno():
            c, _ = lsn.accept()
            conns[c.fileno()] = c
            p.register(c, select.POLLIN)
            continue
        c = conns[fd]
        data = c.recv(65536)
        if data:
            c.sendall(data)
        else:
            p.unregister(fd)
            conns.pop(fd).close()
"""
REQ = 16  # bytes per echo request: client number, sequence number


@dataclass
class Clients:
    """N echo clients in a thread of this process (outside the dumped tree): each sends
    one request every `period` s and measures the time until its echo comes back."""

    port: int
    n: int
    period: float = 0.02
    max_latency: float = 0.0
    requests: int = 0
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        import threading

        self.socks = [socket.create_connection(("127.0.0.1", self.port)) for _ in range(self.n)]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.pending: dict[int, tuple[float, bytes]] = {}  # client -> (sent at, request)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        import select

        poll = select.poll()
        by_fd = {s.fileno(): i for i, s in enumerate(self.socks)}
        for s in self.socks:
            poll.register(s, select.POLLIN)
        seq = [0] * self.n
        due = [time.monotonic() + i * self.period / self.n for i in range(self.n)]
        while not self.stop.is_set() or self.pending:
            now = time.monotonic()
            for i in range(self.n):
                if i not in self.pending and due[i] <= now and not self.stop.is_set():
                    req = struct.pack("<QQ", i, seq[i])
                    seq[i] += 1
                    try:
                        self.socks[i].sendall(req)
                    except OSError as e:
                        self.errors.append(f"client {i}: {e}")
                        return
                    self.pending[i] = (now, req)
                    due[i] = now + self.period
            for fd, _ in poll.poll(5):
                i = by_fd[fd]
                try:
                    data = self.socks[i].recv(REQ)
                except OSError as e:
                    self.errors.append(f"client {i}: {e}")
                    return
                if len(data) < REQ:
                    data += self.socks[i].recv(REQ - len(data), socket.MSG_WAITALL)
                sent, req = self.pending.pop(i, (0.0, b""))
                if data != req:
                    self.errors.append(f"client {i}: echo {data!r} for {req!r}")
                    return
                self.requests += 1
                self.max_latency = max(self.max_latency, time.monotonic() - sent)
            if self.stop.is_set() and time.monotonic() > self._deadline:
                self.errors.append(f"{len(self.pending)} requests never answered")
                return

    def finish(self, timeout: float = 30.0) -> None:
        self._deadline = time.monotonic() + timeout
        self.stop.set()
        self.thread.join(timeout + 5)
        for s in self.socks:
            s.close()


def server_round(tmp: str, conns: int, mib: int) -> dict[str, Any]:
    """Checkpoint (--tcp-established) and restore an echo server while its clients run."""
    d = Path(tmp) / "server"
    wl = Workload(
        Path(sys.executable), d, mib, [sys.executable, "-I", "-c", ECHO_SERVER, str(d), str(mib)]
    )
    clients = None
    try:
        port = int(_read(d / "port"))
        clients = Clients(port, conns)
        clients.start()
        time.sleep(1.0)
        warm_max = clients.max_latency
        img = os.path.join(tmp, "server.img")
        t0 = time.perf_counter()
        st = checkpoint(wl.pid, img, DumpOptions(tcp_established=True))
        dump_s = time.perf_counter() - t0
        wl.killed()
        t1 = time.perf_counter()
        with open_for_restore(img) as reader:
            tree = Tree(reader.header.root_pid)
            with tree.locked():
                rst = restore(tree, reader)
        restore_s = time.perf_counter() - t1
        wl.restored = True
        os.unlink(img)
        time.sleep(3.0)  # the clients run on against the restored server
        clients.finish()
        if clients.errors:
            raise RuntimeError("server bench: " + "; ".join(clients.errors[:3]))
        return {
            "connections": conns,
            "heap_mib": mib,
            "image_mib": st.image_bytes / MiB,
            "checkpoint_s": dump_s,
            "frozen_s": st.frozen_s,
            "restore_s": restore_s,
            "restore_engine_s": rst.total_s,
            "max_pause_s": clients.max_latency,
            "max_latency_before_s": warm_max,
            "requests": clients.requests,
        }
    finally:
        if clients is not None and clients.thread.is_alive():
            clients.finish(timeout=1)
        wl.kill_restored()
        wl.close()
        shutil.rmtree(d, ignore_errors=True)


def server_lines(r: dict[str, Any]) -> list[str]:
    return [
        f"server: TCP echo server, {r['connections']} established connections "
        f"(clients outside the tree), {r['heap_mib']} MiB heap, image {r['image_mib']:.1f} MiB",
        f"  checkpoint --tcp-established (dump + kill)  {ms(r['checkpoint_s'])}"
        f"   (frozen {ms(r['frozen_s'])})",
        f"  restore (verify + restore)                  {ms(r['restore_s'])}"
        f"   (engine {ms(r['restore_engine_s'])})",
        f"  longest pause a client saw                  {ms(r['max_pause_s'])}"
        f"   (before the checkpoint: {ms(r['max_latency_before_s'])}; "
        f"{r['requests']} echoes, none lost, no reset)",
    ]


# --------------------------------------------------------------------------- report


def ms(s: float) -> str:
    return f"{s * 1000:.1f} ms" if s < 10 else f"{s:.2f} s"


def gbs(nbytes: int, s: float) -> str:
    return f"{nbytes / s / 1e9:.2f} GB/s" if s > 0 else "-"


def pick(rounds: list[Round], attr: str, step: str | None, tainted: set[str], key: str) -> Round:
    """The round with the lowest `attr` among those during which the host took no memory
    back (page reporting); if there is none, among all, and `key` goes into `tainted`."""
    rounds = [r for r in rounds if step is None or step in r.reported_mib]  # step ran
    clean = [r for r in rounds if step is None or r.reported_mib[step] <= 0]
    if not clean:
        tainted.add(key)
        clean = rounds
    return min(clean, key=lambda r: float(getattr(r, attr)))


def summarize(
    results: dict[int, list[Round]], touch: dict[int, dict[str, float]]
) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for mib, rounds in results.items():
        tainted: set[str] = set()
        dump = pick(rounds, "dump_s", "dump+kill", tainted, "dump_kill_s")
        rest = pick(rounds, "restore_s", "restore", tainted, "restore_s")
        assert dump.dump is not None and rest.restore is not None
        d: dict[str, Any] = {
            "mib": mib,
            "rounds": len(rounds),
            "rss_bytes": max(r.rss for r in rounds),
            "image_bytes": max(r.image for r in rounds),
            "pages_bytes": dump.dump.pages_bytes,
            "dump_kill_s": dump.dump_s,
            "dump_state_s": dump.dump.state_s,
            "dump_pages_s": dump.dump.pages_s,
            "verify_s": min(r.verify_s for r in rounds),
            "restore_s": rest.restore_s,
            "restore_tasks_s": rest.restore.tasks_s,
            "restore_memory_s": rest.restore.memory_s,
            "verdict": next((r.verdict for r in rounds if r.verdict), ""),
        }
        if any("leave-running" in r.reported_mib for r in rounds):
            d["leave_running_s"] = pick(
                rounds, "lr_dump_s", "leave-running", tainted, "leave_running_s"
            ).lr_dump_s
            fr = pick(rounds, "frozen_s", "leave-running", tainted, "frozen_s")
            d["frozen_s"], d["frozen_state_s"], d["frozen_pages_s"] = (
                fr.frozen_s,
                fr.lr_state_s,
                fr.lr_pages_s,
            )
        if any("readv+write" in r.reported_mib for r in rounds):
            d["readv_s"] = min(r.readv_s for r in rounds if r.readv_s)
            d["readv_write_s"] = pick(
                rounds, "readv_write_s", "readv+write", tainted, "readv_write_s"
            ).readv_write_s
            d["readv_bytes"] = max(r.pages for r in rounds)
        d["tainted"] = sorted(tainted)
        first = rounds[0]
        d["first_call"] = {
            "dump_kill_s": first.dump_s,
            "dump_kill_frozen_s": first.dump.frozen_s if first.dump else 0.0,
            "verify_s": first.verify_s,
            "restore_s": first.restore_s,
        }
        d["all"] = [
            {k: v for k, v in vars(r).items() if k not in ("dump", "restore")} for r in rounds
        ]
        if mib in touch:
            d["memset_s"] = touch[mib]["memset"]
            d["memset_worst_s"] = touch[mib]["memset_worst"]
            d["touch_s"] = touch[mib]["touch"]
        if mib in CRIU:
            d["criu_4_2"] = dict(
                zip(("leave_running_s", "frozen_s", "restore_s"), CRIU[mib], strict=True)
            )
        out[mib] = d
    return out


def mark(d: dict[str, Any], key: str) -> str:
    """'*': every sample of this figure saw the host take memory back (page reporting)"""
    return "*" if key in d["tainted"] else ""


def table(summary: dict[int, dict[str, Any]]) -> list[str]:
    sizes = sorted(summary)
    cols = [f"{m} MiB" for m in sizes]
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, fn: Callable[[dict[str, Any]], str]) -> None:
        vals = []
        for m in sizes:
            try:
                vals.append(fn(summary[m]))
            except KeyError:
                vals.append("-")
        rows.append((label, vals))

    row("VmRSS before dump", lambda d: f"{d['rss_bytes'] / MiB:.1f} MiB")
    row("image size", lambda d: f"{d['image_bytes'] / MiB:.1f} MiB")
    row("  image / RSS", lambda d: f"{d['image_bytes'] / d['rss_bytes']:.3f}")
    row("dump + kill (wall)", lambda d: ms(d["dump_kill_s"]) + mark(d, "dump_kill_s"))
    row(
        "  first call in process",
        lambda d: ms(d["first_call"]["dump_kill_s"]) if not d["mib"] else "-",
    )
    row(
        "    of which frozen",
        lambda d: ms(d["first_call"]["dump_kill_frozen_s"]) if not d["mib"] else "-",
    )
    row("  of which state", lambda d: ms(d["dump_state_s"]))
    row("  of which pages", lambda d: ms(d["dump_pages_s"]))
    row("dump --leave-running", lambda d: ms(d["leave_running_s"]) + mark(d, "leave_running_s"))
    row("  frozen", lambda d: ms(d["frozen_s"]) + mark(d, "frozen_s"))
    row("    of which state", lambda d: ms(d["frozen_state_s"]))
    row("    of which pages", lambda d: ms(d["frozen_pages_s"]))
    row("  CRIU 4.2 frozen", lambda d: ms(d["criu_4_2"]["frozen_s"]))
    row("verify (open_for_restore)", lambda d: ms(d["verify_s"]))
    row("restore", lambda d: ms(d["restore_s"]) + mark(d, "restore_s"))
    row(
        "  first call in process",
        lambda d: ms(d["first_call"]["restore_s"]) if not d["mib"] else "-",
    )
    row("  of which tasks", lambda d: ms(d["restore_tasks_s"]))
    row("  of which memory", lambda d: ms(d["restore_memory_s"]))
    row(
        "  restore speed",
        lambda d: gbs(d["pages_bytes"], d["restore_s"]) if d["pages_bytes"] > MiB else "-",
    )
    row("  CRIU 4.2 restore", lambda d: ms(d["criu_4_2"]["restore_s"]))
    row("restored workload check", lambda d: d["verdict"] or "-")
    row("process_vm_readv", lambda d: f"{ms(d['readv_s'])} {gbs(d['readv_bytes'], d['readv_s'])}")
    row(
        "readv + write",
        lambda d: (
            f"{ms(d['readv_write_s'])}{mark(d, 'readv_write_s')} "
            f"{gbs(d['readv_bytes'], d['readv_write_s'])}"
        ),
    )
    row("  frozen / (readv+write)", lambda d: f"{d['frozen_s'] / d['readv_write_s']:.2f}")
    row("first-touch memset", lambda d: f"{ms(d['memset_s'])} {gbs(d['mib'] * MiB, d['memset_s'])}")
    row(
        "  worst round (cold host)",
        lambda d: f"{ms(d['memset_worst_s'])} {gbs(d['mib'] * MiB, d['memset_worst_s'])}",
    )
    row("first-touch, 1 B/page", lambda d: ms(d["touch_s"]))
    row("  restore / memset", lambda d: f"{d['restore_s'] / d['memset_s']:.2f}")
    w0 = max(len(label) for label, _ in rows)
    ws = [max(len(c), *(len(v[i]) for _, v in rows)) for i, c in enumerate(cols)]
    lines = [
        "  " + "".ljust(w0) + "  " + "  ".join(c.rjust(w) for c, w in zip(cols, ws, strict=True))
    ]
    for label, vals in rows:
        lines.append(
            "  "
            + label.ljust(w0)
            + "  "
            + "  ".join(v.rjust(w) for v, w in zip(vals, ws, strict=True))
        )
    return lines


def targets(summary: dict[int, dict[str, Any]], small: int | None) -> list[dict[str, Any]]:
    out = []

    def target(name: str, value: float, limit: float, unit: str = "") -> None:
        out.append(
            {
                "target": name,
                "value": value,
                "limit": limit,
                "ratio": value / limit if limit else float("inf"),
                "pass": value <= limit,
                "unit": unit,
            }
        )

    for mib, d in sorted(summary.items()):
        if mib == small:
            continue
        target(f"image <= RSS + 1%, {mib} MiB", d["image_bytes"] / d["rss_bytes"], 1.01, "x RSS")
        if "frozen_s" in d and "readv_write_s" in d:
            target(
                f"frozen <= 1.2 x (readv+write), {mib} MiB",
                d["frozen_s"] / d["readv_write_s"],
                1.2,
                "x",
            )
    if 1024 in summary and "memset_s" in summary[1024]:
        d = summary[1024]
        target("restore 1024 MiB <= 1.2 x memset", d["restore_s"] / d["memset_s"], 1.2, "x")
    if small is not None and small in summary:
        d = summary[small]
        target("small process: dump + kill <= 30 ms", d["dump_kill_s"], SMALL_TARGET_S, "s")
        target("small process: restore <= 30 ms", d["restore_s"], SMALL_TARGET_S, "s")
        target(
            "small process: verify + restore <= 30 ms",
            d["verify_s"] + d["restore_s"],
            SMALL_TARGET_S,
            "s",
        )
    return out


def target_line(t: dict[str, Any]) -> str:
    verdict = "PASS" if t["pass"] else "MISS"
    if t["unit"] == "s":
        what = (
            f"{t['value'] * 1000:.1f} ms (limit {t['limit'] * 1000:.0f} ms, {t['ratio']:.2f} of it)"
        )
    else:
        what = (
            f"{t['value']:.3f}{t['unit']} (limit {t['limit']}{t['unit']}, {t['ratio']:.2f} of it)"
        )
    return f"  {verdict}  {t['target']}: {what}"


def print_profiles(prof: Profiles, top: int) -> None:
    for name, p in prof.stats.items():
        for key in ("cumulative", "tottime"):
            s = io.StringIO()
            pstats.Stats(p, stream=s).strip_dirs().sort_stats(key).print_stats(top)
            text = s.getvalue()
            start = text.find("   ncalls")
            print(f"--- profile: {name}, by {key}")
            print(text[start:].rstrip() if start >= 0 else text.rstrip())


# --------------------------------------------------------------------------- main


def machine() -> dict[str, Any]:
    thp = _read(Path("/sys/kernel/mm/transparent_hugepage/enabled")).strip()
    return {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "thp": thp,
        "loadavg": " ".join(_read(Path("/proc/loadavg")).split()[:3]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="16,256,1024", help="MiB of touched memory")
    ap.add_argument("--rounds", type=int, default=3, help="best of N for the sized runs")
    ap.add_argument("--small-rounds", type=int, default=5, help="best of N for 0 MiB")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON ('-': stdout)")
    ap.add_argument("--profile", action="store_true", help="cProfile one round per size instead")
    ap.add_argument("--top", type=int, default=25, help="functions per profile")
    ap.add_argument(
        "--cold", action="store_true", help="no warm-up of memory before the timed steps"
    )
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument(
        "--server",
        choices=("on", "off", "only"),
        default="on",
        help="the TCP echo server workload (only: skip the sized runs)",
    )
    ap.add_argument("--server-conns", type=int, default=100, help="server: client connections")
    ap.add_argument("--server-mib", type=int, default=64, help="server: MiB of heap")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if os.geteuid() != 0:
        print("cr_bench: needs root (ptrace, clone3 set_tid, cgroups); skipped")
        return 0
    binary = build("counter")
    tmp = tempfile.mkdtemp(prefix="cpt-cr-bench-", dir=tempfile.gettempdir())
    os.environ["CPT_RUN_DIR"] = os.path.join(tmp, "run")
    prof = Profiles(enabled=args.profile)
    results: dict[int, list[Round]] = {}
    server: dict[str, Any] | None = None
    try:
        if args.server != "off" and not args.profile:
            server = server_round(tmp, args.server_conns, args.server_mib)
        if args.server == "only":
            print("\n".join(server_lines(server or {})))
            if args.json:
                text = json.dumps({"machine": machine(), "server": server}, indent=2)
                if args.json == "-":
                    print(text)
                else:
                    Path(args.json).write_text(text + "\n")
            return 0
        if args.profile:
            # the first engine call of a process pays one-time costs (lazy struct
            # compilation, buffers) that every `cpt` command pays too: profiled apart
            for i, mib in enumerate([0, 0, *sizes]):
                prof.prefix = "first call in process: " if i == 0 else ""
                one_round(
                    binary,
                    tmp,
                    mib,
                    f"p{mib}",
                    physical=False,
                    leave_running=True,
                    check=False,
                    prof=prof,
                    warm_up=not args.cold,
                )
            print_profiles(prof, args.top)
            return 0
        touch = first_touch(tmp, sizes, args.rounds)
        for mib in [0, *sizes]:
            n = args.small_rounds if mib == 0 else args.rounds
            rounds = results[mib] = []
            # up to 2 more rounds while page reporting spoiled every dump + kill
            while len(rounds) < n or (
                len(rounds) < n + 2 and all(r.reported_mib.get("dump+kill", 0) > 0 for r in rounds)
            ):
                rounds.append(
                    one_round(
                        binary,
                        tmp,
                        mib,
                        f"w{mib}-{len(rounds)}",
                        physical=mib > 0,
                        # the process's first engine call is the 0 MiB dump + kill
                        leave_running=bool(mib or rounds),
                        check=not rounds,
                        prof=prof,
                        warm_up=not args.cold,
                    )
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = summarize(results, touch)
    checks = targets(summary, 0)
    print(f"cr bench ({', '.join(f'{k} {v}' for k, v in machine().items())})")
    print("\n".join(table(summary)))
    if any(d["tainted"] for d in summary.values()):
        print("  * the host took memory back (page reporting) during every sample of it")
    print(
        "  memory warmed up before each timed step"
        if not args.cold
        else "  --cold: no warm-up (first touches may hit host-cold memory)"
    )
    if server is not None:
        print("\n".join(server_lines(server)))
    print("targets")
    for t in checks:
        print(target_line(t))
    if args.json:
        doc = {"machine": machine(), "sizes": summary, "targets": checks, "server": server}
        text = json.dumps(doc, indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 1 if args.strict and not all(t["pass"] for t in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
