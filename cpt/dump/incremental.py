"""Memory copied in rounds with write tracking: pre-dumps, incremental dumps and the
pre-copy of a leave-running dump (SPEC.md section 5, "Chains" and "How the dump tracks
writes").

    Rounds(tracker, writer, parent)   the pages of a tree copied into one image
      .live()                         a round while the tree runs: the pages written since
                                      the last round are copied (all of them the first time)
      .precopy()                      live rounds while they shrink (the stop rule below)
      .frozen(procs)                  the last round, every thread in a ptrace stop
      .runs(pid, vmas)                the PagemapRuns of a process: PRESENT at its newest
                                      copy, PARENT where the parent image has the page
      .settle(pid, vmas)              the same in two steps: the copies now (frozen), the
                                      runs later (after the release)
    write_predump(...)                a whole pre-dump image (memory only) of a live tree

A page is copied only after the scan that found it written returned (a write after the
scan is the next round's).  Shared memory objects are not tracked: the final dump stores
them whole (Dumper), a pre-dump not at all.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from cptimage.chain import parent_for
from cptimage.container import ImageReader, ImageWriter
from cptimage.records import (
    HeaderFlags,
    OwnerKind,
    PagemapRun,
    SectionType,
    Vma,
    VmaKind,
)

from .. import procfs as P
from ..errors import NoSuchProcess
from ..sys.arch import PAGE_SIZE
from .copies import PageCopies
from .dumper import DumpStats, build_header
from .options import DumpOptions
from .pstree import TaskInfo, collect_tree, process_record
from .ranges import Range, normalize
from .track import ProcessRound, Tracker, tracked_vma

# the stop rule of the live rounds (SPEC.md): freeze after round k when it did not copy
# fewer pages than round k-1, when it copied at most SMALL_ROUND pages, or after MAX_ROUNDS
MAX_ROUNDS = 8
SMALL_ROUND = 64


def parent_ranges(reader: ImageReader) -> dict[int, list[Range]]:
    """The pages of each process an image holds in any way (PRESENT, ZERO or PARENT)."""
    page = reader.header.page_size
    out: dict[int, list[Range]] = {}
    for r in reader.records(SectionType.PAGEMAP):
        if isinstance(r, PagemapRun) and r.owner_kind == OwnerKind.PROCESS:
            out.setdefault(r.owner, []).append((r.vaddr, r.vaddr + r.nr_pages * page))
    return {pid: normalize(rs) for pid, rs in out.items()}


@dataclasses.dataclass
class RoundStat:
    """What one round copied (`frozen`: the tree was stopped)."""

    pages: int
    seconds: float
    frozen: bool = False


class Rounds:
    """The pages of one tree copied into one image in rounds (see the module text).

    `parent`: the pages of each process the parent image holds (parent_ranges): a page
    present, never copied here and held by the parent is a PARENT run.  None: the image
    is self-contained (every page present is copied).
    """

    def __init__(
        self,
        tracker: Tracker,
        writer: ImageWriter,
        parent: dict[int, list[Range]] | None = None,
    ) -> None:
        self.tracker = tracker
        self.copies = PageCopies(writer)
        self.parent = parent or {}
        self.last: dict[int, ProcessRound] = {}
        self.stats: list[RoundStat] = []

    def live(self) -> int:
        """One round with the tree running; returns the pages it copied."""
        t0 = time.perf_counter()
        got = self.tracker.round()
        n = 0
        for pid, pr in list(got.items()):
            if pr.whole:
                self._forget(pid)  # its earlier copies are of another mm
            try:
                n += self.copies.copy(pid, pr.dirty) // PAGE_SIZE
            except NoSuchProcess:  # exited while copied (a shell's short-lived child)
                del got[pid]
                self._forget(pid)
                self.tracker.untrack(pid)
        self.last = got
        self.stats.append(RoundStat(n, time.perf_counter() - t0))
        return n

    def precopy(self, max_rounds: int = MAX_ROUNDS) -> None:
        """Live rounds until the stop rule says freeze (the first copies everything)."""
        prev = self.live()
        for _ in range(max_rounds - 1):
            if prev <= SMALL_ROUND:
                return
            n = self.live()
            if n >= prev:
                return
            prev = n

    def frozen(self, procs: dict[int, TaskInfo]) -> int:
        """The last round, every thread of `procs` in a ptrace stop: exact.  A process
        not tracked (new since the last live round) is copied whole."""
        t0 = time.perf_counter()
        got = self.tracker.round(procs, track_new=False, frozen=True)
        n = 0
        for pid, pr in got.items():
            if pr.whole:
                self._forget(pid)
            n += self.copies.copy(pid, pr.dirty, strict=True) // PAGE_SIZE
        self.last = got
        self.stats.append(RoundStat(n, time.perf_counter() - t0, frozen=True))
        return n

    def _forget(self, pid: int) -> None:
        self.copies.maps.pop(pid, None)
        self.parent.pop(pid, None)

    def runs(self, pid: int, vmas: list[Vma], *, strict: bool = True) -> list[PagemapRun]:
        """The runs of process `pid` after the last round (strict: the tree is stopped,
        a page nowhere else is copied now; else it is left out)."""
        pr = self.last.get(pid)
        present = pr.present if pr is not None else []
        return self.copies.runs(pid, present, self.parent.get(pid, []), vmas, strict=strict)

    def settle(self, pid: int, vmas: list[Vma]) -> Callable[[], list[PagemapRun]]:
        """`runs` in two steps, the tree stopped: what must be copied now is, and what is
        returned makes the runs later (after the tree runs again: they read nothing
        from it), so that their bookkeeping stays out of the frozen window."""
        pr = self.last.get(pid)
        present = pr.present if pr is not None else []
        parent = self.parent.get(pid, [])
        self.copies.settle(pid, present, parent)
        return lambda: self.copies.built_runs(pid, present, parent, vmas)

    @property
    def bytes(self) -> int:
        return self.copies.copied


def predump_vmas(pid: int, proc: P.Proc) -> list[Vma]:
    """A pre-dump's VMAs: the private mappings the tracker follows, each as ANON (a
    pre-dump names no files: its VMAs only say where its runs may lie)."""
    out = []
    for v in proc.maps(pid):
        if not tracked_vma(v):
            continue
        out.append(
            Vma(
                pid=pid,
                kind=VmaKind.ANON,
                prot=(v.read and 1) | (v.write and 2) | (v.exec and 4),
                flags=0x22,  # MAP_PRIVATE | MAP_ANONYMOUS
                start=v.start,
                end=v.end,
            )
        )
    return out


def write_predump(
    tracker: Tracker,
    out: BinaryIO,
    opts: DumpOptions,
    *,
    parent: ImageReader | None = None,
    parent_path: str | None = None,
    child_path: str | None = None,
) -> tuple[bytes, DumpStats]:
    """A pre-dump of the live tree `tracker` follows into `out`: one round, its pages
    (with `parent`, only those written since the parent was taken), the processes and
    their private VMAs.  Returns the image's UUID and the statistics."""
    t0 = time.perf_counter()
    flags = HeaderFlags.PREDUMP
    extra: list[Any] = []
    if parent is not None:
        flags |= HeaderFlags.INCREMENTAL
        link = parent_for(child_path, parent)
        if parent_path is not None and child_path is not None:
            from cptimage.chain import parent_name

            link.name = parent_name(child_path, parent_path)
        extra.append(link)
    header = build_header(
        dataclasses.replace(opts, leave_running=True),
        tracker.root,
        b"",
        flags=flags,
        parent_uuid=parent.header.uuid if parent is not None else b"",
    )
    stats = DumpStats()
    with ImageWriter(out, header, compress_pages=opts.compress) as w:
        rounds = Rounds(tracker, w, parent_ranges(parent) if parent is not None else None)
        t1 = time.perf_counter()
        rounds.live()
        t2 = time.perf_counter()
        tree = collect_tree(tracker.root, tracker.proc)
        procs, vmas, runs = [], [], []
        for pid in sorted(rounds.last):
            info = tree.get(pid)
            if info is None:
                continue  # exited meanwhile
            try:
                mine = predump_vmas(pid, tracker.proc)
            except NoSuchProcess:
                continue
            procs.append(process_record(info))
            vmas += mine
            runs += rounds.runs(pid, mine, strict=False)
        w.add_section(SectionType.PROCESS, procs)
        w.add_section(SectionType.MM, vmas)
        w.add_section(SectionType.PAGEMAP, runs)
        w.add_section(SectionType.CHAIN, extra)
    stats.processes = len(procs)
    stats.pages_bytes = rounds.bytes
    stats.image_bytes = w.pos
    stats.pages_s = t2 - t1
    stats.state_s = (t1 - t0) + (time.perf_counter() - t2)
    return header.uuid, stats


__all__ = [
    "MAX_ROUNDS",
    "SMALL_ROUND",
    "Rounds",
    "parent_ranges",
    "predump_vmas",
    "write_predump",
]
