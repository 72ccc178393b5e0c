"""The page store: where each page of an owner is, and its bytes, without loading them all.

An owner is a process's address space ``(OwnerKind.PROCESS, pid)`` or a shared-memory
object ``(OwnerKind.SHMEM, id)``.  Its ``PagemapRun`` records say which pages are PRESENT
(data in this image's page data stream), PARENT (in the parent image) or ZERO.  Page
bytes come from ``ImageReader.read_pages`` in bounded chunks; a restorer of an
uncompressed image gets file ranges to map or ``pread`` in place instead.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterator

import xxhash

from .container import ImageReader
from .records import OwnerKind, PageFlags, PagemapRun, SectionType, Vma

Owner = tuple[int, int]  # (OwnerKind, pid or shmem id)
DEFAULT_CHUNK = 4 << 20


def runs_by_owner(reader: ImageReader) -> dict[Owner, list[PagemapRun]]:
    """Every owner's runs, sorted by address."""
    out: dict[Owner, list[PagemapRun]] = defaultdict(list)
    for r in reader.records(SectionType.PAGEMAP):
        if isinstance(r, PagemapRun):
            out[(r.owner_kind, r.owner)].append(r)
    for runs in out.values():
        runs.sort(key=lambda r: r.vaddr)
    return dict(out)


def owner_runs(reader: ImageReader, owner_kind: int, owner: int) -> list[PagemapRun]:
    """The runs of one owner, sorted by address."""
    return runs_by_owner(reader).get((owner_kind, owner), [])


def run_length(reader: ImageReader, run: PagemapRun) -> int:
    return run.nr_pages * reader.header.page_size


def iter_run_data(
    reader: ImageReader, runs: list[PagemapRun], *, chunk: int = DEFAULT_CHUNK
) -> Iterator[tuple[PagemapRun, int, bytes]]:
    """(run, address, bytes) for the PRESENT runs, at most ``chunk`` bytes at a time.

    ``address`` is where the bytes belong in the owner (vaddr, or offset in the object).
    """
    for run in runs:
        if not run.flags & PageFlags.PRESENT:
            continue
        length = run_length(reader, run)
        for off in range(0, length, chunk):
            n = min(chunk, length - off)
            yield run, run.vaddr + off, reader.read_pages(run.data_offset + off, n)


def file_pieces(reader: ImageReader, runs: list[PagemapRun]) -> list[tuple[int, int, int]] | None:
    """(address, length, file offset) pieces of the PRESENT runs; None if pages are compressed.

    A restorer maps or preads each piece straight from the image file.
    """
    out: list[tuple[int, int, int]] = []
    for run in runs:
        if not run.flags & PageFlags.PRESENT:
            continue
        ranges = reader.page_file_ranges(run.data_offset, run_length(reader, run))
        if ranges is None:
            return None
        addr = run.vaddr
        for file_off, n in ranges:
            out.append((addr, n, file_off))
            addr += n
    return out


def _digest_runs(
    reader: ImageReader, runs: list[PagemapRun], start: int, hasher: xxhash.xxh3_64
) -> None:
    """Feed runs to a hasher: each run's place and kind, then its bytes if PRESENT."""
    for run in runs:
        hasher.update(b"%d:%d:%d;" % (run.vaddr - start, run.nr_pages, run.flags))
    for _run, _addr, data in iter_run_data(reader, runs):
        hasher.update(data)


def vma_digests(reader: ImageReader, pid: int | None = None) -> dict[tuple[int, int, int], str]:
    """xxh3-64 (hex) per VMA: its PRESENT page bytes and its ZERO/PARENT runs.

    Keyed by (pid, start, end), for every process or only ``pid``.  Two VMAs with equal
    digests hold the same page contents.
    """
    vmas: dict[int, list[Vma]] = defaultdict(list)
    for v in reader.records(SectionType.MM):
        if isinstance(v, Vma) and (pid is None or v.pid == pid):
            vmas[v.pid].append(v)
    runs = runs_by_owner(reader)
    out = {}
    for p, vs in vmas.items():
        vs.sort(key=lambda v: v.start)
        starts = [v.start for v in vs]
        per_vma: dict[int, list[PagemapRun]] = defaultdict(list)
        for run in runs.get((OwnerKind.PROCESS, p), []):
            i = bisect.bisect_right(starts, run.vaddr) - 1
            if i >= 0:
                per_vma[i].append(run)
        for i, v in enumerate(vs):
            h = xxhash.xxh3_64()
            _digest_runs(reader, per_vma.get(i, []), v.start, h)
            out[(p, v.start, v.end)] = h.hexdigest()
    return out


def owner_digest(reader: ImageReader, owner_kind: int, owner: int) -> str:
    """xxh3-64 (hex) of all pages of one owner (a shared-memory object, say)."""
    h = xxhash.xxh3_64()
    _digest_runs(reader, owner_runs(reader, owner_kind, owner), 0, h)
    return h.hexdigest()


__all__ = [
    "file_pieces",
    "iter_run_data",
    "owner_digest",
    "owner_runs",
    "run_length",
    "runs_by_owner",
    "vma_digests",
]
