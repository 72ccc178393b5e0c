"""Write tracking against ground truth (cpt/dump/track.py).

The workload fixtures/workloads/dirtylog.c writes pages on command and answers with every
page it wrote (or discarded, or mapped anew).  After each round the tracker's dirty set
must contain every page written since the last round, in every process, and hold few
pages that were not: multithreaded writers, writes by the kernel (read() into memory),
THP, shared memory written by another process, mmap/mremap/munmap/grow between rounds,
MADV_DONTNEED, fork and exec in the tree, and a writer that never pauses.
"""

from __future__ import annotations

import bisect
import os
import random
from pathlib import Path

import pytest
from workloads import Workload, workloads_fixture  # noqa: F401

from cpt.dump.pstree import collect_tree
from cpt.dump.ranges import Range, intersect, normalize, subtract, total
from cpt.dump.track import ProcessRound, Tracker

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="tracking another process needs root"),
]
PAGE = 4096


class Dirtylog:
    """Drives a dirtylog workload: commands on DIR/cmd, answers from DIR/out."""

    def __init__(self, wl: Workload) -> None:
        self.wl = wl
        self.cmd = open(wl.dir / "cmd", "w", buffering=1)  # noqa: SIM115
        self.out = open(wl.dir / "out")  # noqa: SIM115
        first = self.out.readline().split()
        assert first[0] == "k", first
        self.child = int(first[1])

    def close(self) -> None:
        self.cmd.close()
        self.out.close()

    def do(self, line: str) -> tuple[dict[int, list[Range]], dict[int, list[Range]], list[str]]:
        """Run a command: (written pages by pid, discarded ranges by pid, other lines)."""
        self.cmd.write(line + "\n")
        written: dict[int, list[Range]] = {}
        gone: dict[int, list[Range]] = {}
        other: list[str] = []
        while True:
            text = self.out.readline()
            assert text, f"dirtylog closed its answers ({line})"
            parts = text.split()
            if parts[0] == ".":
                assert parts[1] == "ok", f"{line}: {text}"
                break
            if parts[0] == "+":
                pid, s, e = int(parts[1]), int(parts[2], 16), int(parts[3], 16)
                written.setdefault(pid, []).append((s, e))
            elif parts[0] == "-":
                pid, s, e = int(parts[1]), int(parts[2], 16), int(parts[3], 16)
                gone.setdefault(pid, []).append((s, e))
            elif parts[0] in ("k", "x"):
                other.append(text.strip())
                if parts[0] == "k":
                    self.child = int(parts[1])
            else:
                pid, a = int(parts[0]), int(parts[1], 16)
                written.setdefault(pid, []).append((a, a + PAGE))
        return (
            {p: normalize(r) for p, r in written.items()},
            {p: normalize(r) for p, r in gone.items()},
            other,
        )


@pytest.fixture
def dirtylog(workloads) -> Dirtylog:  # type: ignore[no-untyped-def]
    wl = workloads.start("dirtylog", "4")
    d = Dirtylog(wl)
    yield d
    d.close()


def _round(tr: Tracker) -> dict[int, ProcessRound]:
    return tr.round(collect_tree(tr.root, tr.proc))


def _check(
    rounds: dict[int, ProcessRound],
    written: dict[int, list[Range]],
    private: bool = True,
    extra_limit: int = 64,
) -> None:
    """Every written page is dirty (shared ones: in a shared mapping), few others are."""
    for pid, pages in written.items():
        r = rounds[pid]
        where = r.dirty if private else r.shared
        missed = subtract(pages, where)
        assert not missed, f"process {pid}: {len(missed)} written ranges missed: {missed[:5]}"
    for pid, r in rounds.items():
        if r.whole:
            continue
        extra = subtract(r.dirty, written.get(pid, []))
        assert total(extra) // PAGE <= extra_limit, (
            f"process {pid}: {total(extra) // PAGE} pages reported dirty that were not written"
        )


def test_threads_and_kernel_writes(dirtylog: Dirtylog) -> None:
    root = dirtylog.wl.pid
    with Tracker(root) as tr:
        first = _round(tr)
        assert first[root].whole == "new process"
        assert total(first[root].present) >= 8192 * PAGE  # half of the 64 MiB
        assert _round(tr)[root].dirty == [] or total(_round(tr)[root].dirty) < 64 * PAGE
        for seed in range(5):
            w, _, _ = dirtylog.do(f"w 3000 {seed}")
            _check(_round(tr), w)
        w, _, _ = dirtylog.do("K 500 9")
        _check(_round(tr), w)
        # nothing written: (almost) nothing dirty
        r = _round(tr)[root]
        assert total(r.dirty) // PAGE < 64, r.dirty[:5]


def test_thp(dirtylog: Dirtylog) -> None:
    root = dirtylog.wl.pid
    with Tracker(root) as tr:
        _round(tr)
        _round(tr)
        for seed in range(3):
            w, _, _ = dirtylog.do(f"h 200 {seed}")
            _check(_round(tr), w)


def test_shared_memory_of_two_processes(dirtylog: Dirtylog) -> None:
    root, child = dirtylog.wl.pid, dirtylog.child
    with Tracker(root) as tr:
        r = _round(tr)
        assert child in r and r[child].whole == "new process"
        _round(tr)
        w, _, _ = dirtylog.do("s 50 1")
        rounds = _round(tr)
        _check(rounds, w, private=False)
        # the root maps the same object: its shared mapping is always dirty too
        assert rounds[root].shared
        w, _, _ = dirtylog.do("c 300 2")  # the child's own (COW'd) copy of MAIN
        _check(_round(tr), w)


def test_mappings_between_rounds(dirtylog: Dirtylog) -> None:
    with Tracker(dirtylog.wl.pid) as tr:
        _round(tr)
        _round(tr)
        w, _, _ = dirtylog.do("m 100")
        _check(_round(tr), w)
        w, _, _ = dirtylog.do("g 50")
        _check(_round(tr), w)
        w, _, _ = dirtylog.do("r")  # moved: all of it counts as written
        _check(_round(tr), w)
        w2, _, _ = dirtylog.do("w 100 3")
        _check(_round(tr), w2)
        dirtylog.do("u")
        r = _round(tr)[dirtylog.wl.pid]
        assert not intersect(r.present, w[dirtylog.wl.pid])  # unmapped: gone
        # munmap + mmap between two rounds, at the same place or not
        dirtylog.do("m 64")
        _round(tr)
        dirtylog.do("u")
        w, _, _ = dirtylog.do("m 64")
        _check(_round(tr), w)


def test_dontneed(dirtylog: Dirtylog) -> None:
    root = dirtylog.wl.pid
    with Tracker(root) as tr:
        _round(tr)
        _round(tr)
        _, gone, _ = dirtylog.do("d 100 200")
        r = _round(tr)[root]
        assert not intersect(r.present, gone[root]), "discarded pages are still present"
        w, _, _ = dirtylog.do("w 2000 4")  # some land on the discarded pages
        _check(_round(tr), w)


def test_fork_and_exec(dirtylog: Dirtylog) -> None:
    root = dirtylog.wl.pid
    with Tracker(root) as tr:
        _round(tr)
        _round(tr)
        old = dirtylog.child
        _, _, other = dirtylog.do("k")
        new = dirtylog.child
        assert new != old
        r = _round(tr)
        assert old not in r and r[new].whole == "new process"
        assert total(r[new].dirty) == total(r[new].present) > 0
        w, _, _ = dirtylog.do("c 100 5")
        _check(_round(tr), w)
        w, _, other = dirtylog.do("x")
        assert other == [f"x {new}"]
        r = _round(tr)
        assert r[new].whole == "exec"
        _check(r, w)
        w, _, _ = dirtylog.do("c 100 6")
        _check(_round(tr), w)
        w, _, _ = dirtylog.do("s 20 7")
        _check(_round(tr), w, private=False)


def test_writer_that_never_pauses(dirtylog: Dirtylog) -> None:
    """Rounds while a thread writes without pause: a write is in the round whose scan
    could see it, or, at the latest, in the first round started after it ended."""
    root = dirtylog.wl.pid
    log = Path(dirtylog.wl.dir / "bg.log")
    with Tracker(root) as tr:
        _round(tr)
        dirtylog.do("b on")
        marks: list[tuple[int, int, list[Range]]] = []  # (log size before, after, dirty)
        for _ in range(30):
            before = _size(log)
            r = _round(tr)[root]
            marks.append((before, _size(log), r.dirty))
        dirtylog.do("b off")
        text = log.read_text()
    begins: dict[str, tuple[int, int]] = {}
    norm = [normalize(d) for _, _, d in marks]
    starts = [[r[0] for r in n] for n in norm]
    pos = 0
    checked = 0
    for line in text.splitlines(keepends=True):
        kind, seq, addr = line.split()
        if kind == "b":
            begins[seq] = (pos, int(addr, 16))
        else:
            b, a = begins.pop(seq)
            e = pos
            # rounds whose scan ended after the write began, up to the first one that
            # started after it ended; the page must be dirty in one of them (ranges are
            # whole pages: a page in their union is in one of them)
            seen = False
            for k, (s_k, e_k, _d) in enumerate(marks):
                if e_k >= b and (s_k <= e or k == 0 or marks[k - 1][0] <= e):
                    seen = seen or _holds(starts[k], norm[k], a)
                if s_k > e:
                    break
            else:
                continue  # ended after the last round: not checked
            assert seen, f"write {seq} to {a:#x} was missed"
            checked += 1
        pos += len(line)
    assert checked > 100


def _holds(starts: list[int], ranges: list[Range], addr: int) -> bool:
    """Whether sorted, disjoint `ranges` (their starts: `starts`) hold the page at `addr`
    (a bisection: a writer that never pauses logs many writes, each looked up in 30
    rounds' lists)."""
    i = bisect.bisect_right(starts, addr) - 1
    return i >= 0 and ranges[i][1] >= addr + PAGE


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def test_random_mix(dirtylog: Dirtylog) -> None:
    """Many rounds of a random mix of everything above: never a miss."""
    rng = random.Random(15)
    root = dirtylog.wl.pid
    cmds = ["w 500 {}", "K 50 {}", "h 30 {}", "c 40 {}", "s 10 {}", "m 20", "g 8", "r", "u"]
    with Tracker(root) as tr:
        _round(tr)
        for i in range(40):
            written: dict[int, list[Range]] = {}
            for _ in range(rng.randint(1, 4)):
                cmd = rng.choice(cmds).format(rng.randint(0, 1 << 30))
                if cmd == "u":
                    cmd = "m 4"  # keep the regions from running out
                w, _, _ = dirtylog.do(cmd)
                for pid, rs in w.items():
                    if cmd.startswith("s"):
                        continue  # shared: checked through the shared mappings below
                    written[pid] = normalize(written.get(pid, []) + rs)
            rounds = _round(tr)
            for pid, rs in written.items():
                missed = subtract(rs, rounds[pid].dirty)
                # pages of a region unmapped since (u) are not present any more
                missed = intersect(missed, rounds[pid].present)
                assert not missed, f"round {i}: process {pid} missed {missed[:5]}"


@pytest.mark.parametrize("name", ["memory", "counter.py"])
def test_present_pages_are_the_dump_selection(workloads, name: str) -> None:  # type: ignore[no-untyped-def]
    """A round's present pages are exactly the pages a full dump selects (present or
    swapped, not page cache, not the zero page) in the mappings it tracks, though the scan
    of anonymous mappings does not ask the kernel about page cache (cpt/dump/track.py,
    Span): private file mappings with COW'd pages (memory), a Python's libraries."""
    import signal

    from cpt.dump.track import tracked_vma
    from cpt.procfs import Proc, open_pagemap
    from cpt.sys.mem import (
        PAGE_IS_FILE,
        PAGE_IS_PFNZERO,
        PAGE_IS_PRESENT,
        PAGE_IS_SWAPPED,
        pagemap_scan,
    )

    wl = workloads.start(name)
    wl.wait_counter()
    os.kill(wl.pid, signal.SIGSTOP)  # still, so that both looks see the same pages
    try:
        with Tracker(wl.pid) as tr:
            _round(tr)
            present = _round(tr)[wl.pid].present
        skip, want = PAGE_IS_FILE | PAGE_IS_PFNZERO, PAGE_IS_PRESENT | PAGE_IS_SWAPPED
        fd = open_pagemap(wl.pid)
        try:
            expect = normalize(
                [
                    (s, e)
                    for v in Proc().maps(wl.pid)
                    if tracked_vma(v)
                    for s, e, _ in pagemap_scan(
                        fd,
                        v.start,
                        v.end,
                        category_mask=skip,
                        category_inverted=skip,
                        category_anyof_mask=want,
                        return_mask=want,
                    )
                ]
            )
        finally:
            os.close(fd)
    finally:
        os.kill(wl.pid, signal.SIGCONT)
    assert total(expect) > 0
    assert present == expect, (
        f"round: {total(present) // PAGE} pages, dump selection: {total(expect) // PAGE}; "
        f"only in the round: {subtract(present, expect)[:5]}, "
        f"only in the selection: {subtract(expect, present)[:5]}"
    )
    assert wl.finish() == "PASS"
