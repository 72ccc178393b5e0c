"""Private memory contents: which pages, and their bytes into the page store.

Selection: one PAGEMAP_SCAN over the address space picks pages that are present or
swapped and neither file pages (page cache of unmodified file mappings) nor the shared
zero page: private anonymous memory and the COW'd pages of private file mappings.
Contents: process_vm_readv, up to 1024 ranges per call, straight into the image file
when the writer has a page area (the file's page cache, sized from `estimate` and faulted
in before the freeze: then the copy is all the frozen window pays for), else into one
reused, pre-faulted 16 MiB buffer that is then written out.  Pages the target cannot read
(PROT_NONE, or VMAs without PROT_READ) come through /proc/PID/mem, which reads with
FOLL_FORCE.  Guard regions (MADV_GUARD_INSTALL: no data, every access faults; PAGEMAP_SCAN
reports them as swapped) are left out of the pages and recorded as GuardRegion records.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable

from cptimage.container import ImageWriter
from cptimage.records import GuardRegion, OwnerKind, PageFlags, PagemapRun, Vma, VmaKind, VmFlags

from ..errors import CptError
from ..procfs import Proc, mem_path, open_mem, open_pagemap
from ..sys.arch import PAGE_SIZE
from ..sys.mem import (
    MAP_SHARED,
    PAGE_IS_FILE,
    PAGE_IS_GUARD,
    PAGE_IS_PFNZERO,
    PAGE_IS_PRESENT,
    PAGE_IS_SWAPPED,
    MemoryFault,
    guard_category,
    guard_vmflag,
    pagemap_scan,
    process_vm_readv,
)
from .ranges import normalize

BUF_SIZE = 16 << 20
_NO_DATA = PAGE_IS_FILE | PAGE_IS_PFNZERO


def _skip() -> int:
    """Pages that hold nothing to save: file pages, the zero page, guard pages."""
    return _NO_DATA | guard_category()


_WANT = PAGE_IS_PRESENT | PAGE_IS_SWAPPED
_buf: mmap.mmap | None = None


def page_buffer() -> mmap.mmap:
    """The reused, pre-faulted buffer pages are read into (BUF_SIZE bytes)."""
    global _buf
    if _buf is None:
        _buf = mmap.mmap(
            -1, BUF_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE
        )
    return _buf


def estimate(pids: Iterable[int], proc: Proc | None = None) -> int:
    """Bytes of page data a dump of these processes would hold now: one PAGEMAP_SCAN of
    each with the dump's selection (shared memory objects not included).  Read before
    the freeze, so only an estimate: a running process changes it."""
    proc = proc or Proc()
    total = 0
    for pid in pids:
        try:
            maps = [m for m in proc.maps(pid) if m.path != "[vsyscall]"]
            if not maps:
                continue
            fd = open_pagemap(pid)
        except (OSError, CptError):
            continue  # gone, or a kernel thread: the dump decides
        try:
            for start, end, _ in pagemap_scan(
                fd,
                maps[0].start,
                maps[-1].end,
                category_mask=_skip(),
                category_inverted=_skip(),
                category_anyof_mask=_WANT,
                return_mask=_WANT,
                pid=pid,
            ):
                total += end - start
        except (OSError, CptError):
            pass
        finally:
            os.close(fd)
    return total


def guard_regions(
    pid: int, vmas: list[Vma], codes: list[frozenset[str]] | None = None
) -> list[GuardRegion]:
    """The guard regions of `pid` (format 1.6): a PAGEMAP_SCAN for PAGE_IS_GUARD over
    its address space, or, given each mapping's VmFlags codes (smaps) on a kernel that
    marks the mappings that may hold guard regions ("gu": guard_vmflag), over those
    alone (none: no scan; the page tables of the others are not walked).  A kernel
    without the category (before 6.15) has none to report."""
    span = [v for v in vmas if v.kind != VmaKind.VSYSCALL]
    if not span or not guard_category():
        return []
    ranges = [(span[0].start, span[-1].end)]
    if codes is not None and guard_vmflag():
        flagged = [(v.start, v.end) for v, c in zip(vmas, codes, strict=True) if "gu" in c]
        ranges = normalize(flagged)
        if not ranges:
            return []
    fd = open_pagemap(pid)
    try:
        found = [
            hit
            for lo, hi in ranges
            for hit in pagemap_scan(
                fd,
                lo,
                hi,
                category_anyof_mask=PAGE_IS_GUARD,
                return_mask=PAGE_IS_GUARD,
                pid=pid,
            )
        ]
    finally:
        os.close(fd)
    out = []
    for s, e, _ in found:  # adjacent regions come merged: one record per mapping
        for v in span:
            lo, hi = max(s, v.start), min(e, v.end)
            if lo < hi:
                out.append(GuardRegion(pid=pid, start=lo, end=hi))
    return out


def dumpable(v: Vma) -> bool:
    """VMAs whose pages live only in this process's memory: anonymous memory and the COW'd
    pages of private mappings (of files or of shared memory objects)."""
    if v.vmflags & VmFlags.IO:
        return False
    if v.kind == VmaKind.SHMEM:
        return not v.flags & MAP_SHARED  # MAP_PRIVATE of a memfd: its COW'd pages
    return v.kind in (VmaKind.ANON, VmaKind.FILE_PRIVATE)


def page_ranges(pid: int, vmas: list[Vma]) -> list[tuple[int, int, int]]:
    """(start, end, vma index) of the pages to save, sorted, each inside one VMA."""
    keep = [(i, v) for i, v in enumerate(vmas) if dumpable(v)]
    if not keep:
        return []
    fd = open_pagemap(pid)
    try:
        regions = pagemap_scan(
            fd,
            keep[0][1].start,
            keep[-1][1].end,
            category_mask=_skip(),
            category_inverted=_skip(),
            category_anyof_mask=_WANT,
            return_mask=_WANT,
            pid=pid,
        )
    finally:
        os.close(fd)
    out = []
    k = 0
    for start, end, _cat in regions:
        while k < len(keep) and keep[k][1].end <= start:
            k += 1
        j = k
        while j < len(keep) and keep[j][1].start < end:
            i, v = keep[j]
            lo, hi = max(start, v.start), min(end, v.end)
            if lo < hi:
                out.append((lo, hi, i))
            j += 1
    return out


class PageDumper:
    """Reads pages of one process into the image; returns the PagemapRun records."""

    def __init__(self, pid: int, writer: ImageWriter) -> None:
        self.pid = pid
        self.writer = writer
        self.runs: list[PagemapRun] = []
        self.bytes = 0
        self._mem: int | None = None
        self._buf: mmap.mmap | None = None
        self._view: memoryview | None = None

    def dump(self, vmas: list[Vma]) -> list[PagemapRun]:
        ranges = page_ranges(self.pid, vmas)
        readable = [(s, e, i) for s, e, i in ranges if vmas[i].prot & 1]
        hidden = [(s, e, i) for s, e, i in ranges if not vmas[i].prot & 1]
        try:
            self._copy(readable, force=False)
            self._copy(hidden, force=True)
        finally:
            if self._mem is not None:
                os.close(self._mem)
            if self._view is not None:
                self._view.release()
        return self.runs

    def _limit(self) -> int:
        """How much the next batch may hold: the room left in the writer's current block
        of the page area, or the buffer."""
        return self.writer.page_room() or BUF_SIZE

    def _copy(self, ranges: list[tuple[int, int, int]], force: bool) -> None:
        batch: list[tuple[int, int, int]] = []
        fill = 0
        limit = 0  # asked only when there is something to place
        for start, end, vi in ranges:
            while start < end:
                limit = limit or self._limit()
                take = min(end - start, limit - fill)
                batch.append((start, take, vi))
                fill += take
                start += take
                if fill == limit:
                    self._flush(batch, fill, force)
                    batch, fill, limit = [], 0, 0
        if batch:
            self._flush(batch, fill, force)

    def _flush(self, batch: list[tuple[int, int, int]], fill: int, force: bool) -> None:
        if self.writer.page_room():
            base, view = self.writer.claim_pages(fill)  # straight into the image file
        else:
            if self._view is None:
                self._buf = page_buffer()
                self._view = memoryview(self._buf)
            base, view = -1, self._view[:fill]
        try:
            if force:
                self._read_forced(batch, view)
            else:
                try:
                    process_vm_readv(self.pid, [(a, n) for a, n, _ in batch], view)
                except MemoryFault:
                    # a page turned unreadable (guard, mprotect race): FOLL_FORCE reads it
                    self._read_forced(batch, view)
            if base < 0:
                base = self.writer.write_pages(view)
        finally:
            view.release()
        self.bytes += fill
        off = base
        runs = self.runs
        for addr, n, vi in batch:
            last = runs[-1] if runs else None
            if (
                last is not None
                and last.owner == self.pid
                and getattr(last, "_vma", -1) == vi
                and last.vaddr + last.nr_pages * PAGE_SIZE == addr
                and last.data_offset + last.nr_pages * PAGE_SIZE == off
            ):
                last.nr_pages += n // PAGE_SIZE
            else:
                run = PagemapRun(
                    owner_kind=OwnerKind.PROCESS,
                    flags=PageFlags.PRESENT,
                    owner=self.pid,
                    vaddr=addr,
                    nr_pages=n // PAGE_SIZE,
                    data_offset=off,
                )
                run._vma = vi  # type: ignore[attr-defined]  # merge key, never encoded
                runs.append(run)
            off += n

    def _read_forced(self, batch: list[tuple[int, int, int]], view: memoryview) -> None:
        if self._mem is None:
            self._mem = open_mem(self.pid)
        pos = 0
        for addr, n, _ in batch:
            got = os.preadv(self._mem, [view[pos : pos + n]], addr)
            if got != n:
                raise OSError(f"{mem_path(self.pid)}: short read at {addr:#x}")
            pos += n
