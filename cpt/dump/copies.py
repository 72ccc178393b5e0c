"""Pages copied into an image in rounds, and the runs that say where each one is.

An incremental dump, a pre-dump and a leave-running dump with pre-copy rounds all write
pages the same way: each round copies the pages the tracker found written (the first
round: all of them) into the image's page data, appended; a page copied again later
makes its earlier copy dead data.  `SlotMap` keeps, per process, where the newest copy of
each page is.  At the end `PageCopies.runs` describes every page the process has: PRESENT
at its newest copy, else PARENT when the parent image holds it (a page present and never
written since the parent).  A page in neither is copied then (it cannot be: a page the
tracker never saw written is in the parent; this is the safety net).

Copies of a running process may fail for a page unmapped meanwhile: the range is left
out, and a later round (or the final one, the tree stopped) copies what is still there.
"""

from __future__ import annotations

import bisect
import os

from cptimage.container import ImageWriter
from cptimage.records import OwnerKind, PageFlags, PagemapRun, Vma

from ..procfs import open_mem
from ..sys.arch import PAGE_SIZE
from ..sys.mem import MemoryFault, process_vm_readv
from .pages import BUF_SIZE, dumpable, page_buffer
from .ranges import Range, intersect, normalize, subtract


class SlotMap:
    """Where the newest copy of each page of one process is: sorted, disjoint
    (start, end, data_offset) pieces, the data of a piece contiguous in the page data."""

    def __init__(self) -> None:
        self.pieces: list[tuple[int, int, int]] = []

    def put(self, new: list[tuple[int, int, int]]) -> None:
        """Newer copies of some pages (pieces sorted by address, disjoint).  One pass
        over the old pieces and the new ones: a round costs what the map holds, not that
        times what the round copied."""
        if not new:
            return
        cover = normalize([(s, e) for s, e, _ in new])
        kept: list[tuple[int, int, int]] = []
        j, n = 0, len(cover)
        for s, e, off in self.pieces:
            cur = s
            while j < n and cover[j][1] <= cur:
                j += 1
            k = j
            while k < n and cover[k][0] < e:
                if cover[k][0] > cur:
                    kept.append((cur, cover[k][0], off + (cur - s)))
                cur = max(cur, cover[k][1])
                if cur >= e:
                    break
                k += 1
            if cur < e:
                kept.append((cur, e, off + (cur - s)))
        merged: list[tuple[int, int, int]] = []
        for s, e, off in sorted(kept + new):
            if merged and merged[-1][1] == s and merged[-1][2] + (s - merged[-1][0]) == off:
                merged[-1] = (merged[-1][0], e, merged[-1][2])  # contiguous data: one piece
            else:
                merged.append((s, e, off))
        self.pieces = merged

    def covered(self) -> list[Range]:
        return normalize([(s, e) for s, e, _ in self.pieces])

    def lookup(self, ranges: list[Range]) -> list[tuple[int, int, int]]:
        """The pieces of `ranges` that have a copy, cut to them, sorted."""
        out: list[tuple[int, int, int]] = []
        starts = [p[0] for p in self.pieces]
        for a, b in ranges:
            i = max(0, bisect.bisect_right(starts, a) - 1)
            while i < len(self.pieces) and self.pieces[i][0] < b:
                s, e, off = self.pieces[i]
                lo, hi = max(a, s), min(b, e)
                if lo < hi:
                    out.append((lo, hi, off + (lo - s)))
                i += 1
        return out

    def bytes(self) -> int:
        return sum(e - s for s, e, _ in self.pieces)


class PageCopies:
    """The page data of one image being written, copied process by process in rounds."""

    def __init__(self, writer: ImageWriter) -> None:
        self.writer = writer
        self.maps: dict[int, SlotMap] = {}
        self.copied = 0  # bytes written, dead copies included
        self.buf = page_buffer()
        self.view = memoryview(self.buf)

    def slots(self, pid: int) -> SlotMap:
        return self.maps.setdefault(pid, SlotMap())

    def copy(self, pid: int, ranges: list[Range], *, strict: bool = False) -> int:
        """Copy `ranges` of process `pid` (normalized) into the image; returns the bytes.
        A range that cannot be read (unmapped while the process runs) is left out, unless
        `strict` (the process is stopped: then it is an error)."""
        done = 0
        batch: list[Range] = []
        fill = 0
        mem: list[int] = []
        try:
            for s, e in ranges:
                while s < e:
                    take = min(e - s, BUF_SIZE - fill)
                    batch.append((s, s + take))
                    fill += take
                    s += take
                    if fill == BUF_SIZE:
                        done += self._flush(pid, batch, fill, strict, mem)
                        batch, fill = [], 0
            if batch:
                done += self._flush(pid, batch, fill, strict, mem)
        finally:
            for fd in mem:
                os.close(fd)
        return done

    def _flush(self, pid: int, batch: list[Range], fill: int, strict: bool, mem: list[int]) -> int:
        try:
            process_vm_readv(pid, [(s, e - s) for s, e in batch], self.buf)
            ok = batch
        except MemoryFault:
            # a protected page (PROT_NONE, or made so meanwhile): /proc/PID/mem reads with
            # FOLL_FORCE; what cannot be read at all is unmapped (running) or an error
            if not mem:
                mem.append(open_mem(pid))
            ok = self._forced(pid, batch, strict, mem[0])
        if not ok:
            return 0
        # write the readable ranges (contiguous in the buffer when all were readable)
        pieces: list[tuple[int, int, int]] = []
        if ok is batch:
            base = self.writer.write_pages(self.view[:fill])
            off = base
            for s, e in batch:
                pieces.append((s, e, off))
                off += e - s
        else:
            pos = 0
            readable = set(ok)
            for s, e in batch:
                if (s, e) in readable:
                    pieces.append((s, e, self.writer.write_pages(self.view[pos : pos + e - s])))
                pos += e - s
        self.slots(pid).put(sorted(pieces))
        n = sum(e - s for s, e, _ in pieces)
        self.copied += n
        return n

    def _forced(self, pid: int, batch: list[Range], strict: bool, fd: int) -> list[Range]:
        ok: list[Range] = []
        pos = 0
        for s, e in batch:
            try:
                got = os.preadv(fd, [self.view[pos : pos + e - s]], s)
            except OSError:
                got = -1
            if got == e - s:
                ok.append((s, e))
            elif strict:
                raise OSError(f"process {pid}: cannot read its memory at {s:#x}-{e:#x}")
            pos += e - s
        return ok

    def runs(
        self,
        pid: int,
        present: list[Range],
        parent: list[Range],
        vmas: list[Vma],
        *,
        strict: bool = True,
    ) -> list[PagemapRun]:
        """The runs of process `pid`: every page of `present` PRESENT at its newest copy,
        or PARENT where `parent` (the parent image's pages) holds it; what is in neither
        is copied now (`strict`: the process is stopped; else a page that cannot be read
        any more is left out).  Runs are cut at VMA boundaries."""
        self.settle(pid, present, parent, strict=strict)
        return self.built_runs(pid, present, parent, vmas)

    def settle(
        self, pid: int, present: list[Range], parent: list[Range], *, strict: bool = True
    ) -> None:
        """Copy the pages of `present` that have no copy and are not in `parent` (the part
        of `runs` that needs the process stopped)."""
        missing = subtract(subtract(present, self.slots(pid).covered()), parent)
        if missing:
            self.copy(pid, missing, strict=strict)

    def built_runs(
        self, pid: int, present: list[Range], parent: list[Range], vmas: list[Vma]
    ) -> list[PagemapRun]:
        """The runs of a settled process (`settle`): nothing is read from it, so this may
        come after it runs again."""
        have = self.slots(pid).lookup(present)
        from_parent = intersect(subtract(present, normalize([(s, e) for s, e, _ in have])), parent)
        runs: list[PagemapRun] = []
        bounds = [(v.start, v.end) for v in vmas if dumpable(v)]
        for s, e, off in have:
            for a, b in intersect([(s, e)], bounds):
                runs.append(_run(pid, PageFlags.PRESENT, a, b, off + (a - s)))
        for s, e in from_parent:
            for a, b in intersect([(s, e)], bounds):
                runs.append(_run(pid, PageFlags.PARENT, a, b, 0))
        runs.sort(key=lambda r: r.vaddr)
        return runs


def _run(pid: int, flags: int, start: int, end: int, off: int) -> PagemapRun:
    return PagemapRun(
        owner_kind=OwnerKind.PROCESS,
        flags=flags,
        owner=pid,
        vaddr=start,
        nr_pages=(end - start) // PAGE_SIZE,
        data_offset=off,
    )


def parent_pages(runs: list[PagemapRun], pid: int) -> list[Range]:
    """The pages of process `pid` a (parent) image holds in any way: its runs."""
    return normalize(
        [
            (r.vaddr, r.vaddr + r.nr_pages * PAGE_SIZE)
            for r in runs
            if r.owner_kind == OwnerKind.PROCESS and r.owner == pid
        ]
    )


__all__ = ["PageCopies", "SlotMap", "parent_pages"]
