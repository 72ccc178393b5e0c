"""Where a restore takes page bytes from: the image, or an incremental image's chain.

An incremental image opened with its chain (stages/restore.py: every link trusted and
verified first) keeps its parents open in `reader.below`, newest first.  Its PagemapRuns
say PARENT for the pages an older image holds; each such page is read from the newest
image of the chain that has it (cptimage.chain.Chain.pieces), in place: no flattened copy
of the chain is made.  Images whose pages are stored uncompressed are each mapped once
(MAP_POPULATE) and pages go out straight from the maps as (address, length, image, file
offset) pieces; a compressed one is read in bounded chunks.
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Iterator
from typing import Any, NamedTuple

from cptimage.chain import Chain
from cptimage.container import ImageReader
from cptimage.pagestore import DEFAULT_CHUNK
from cptimage.records import Compression, OwnerKind, PageFlags

from ..errors import RestoreError


class FilePiece(NamedTuple):
    """`length` bytes at `addr` of an owner, at `offset` in the file of image `level`."""

    addr: int
    length: int
    level: int
    offset: int


class PageSource:
    """The page data of an image (and of its chain's images below it, if any)."""

    def __init__(self, reader: ImageReader, raw_pids: dict[int, int] | None = None) -> None:
        """`raw_pids`: the image's own pid of each process the model renamed (a VE's
        processes go by their pid in its namespace; the chain's runs by the image's)."""
        self.readers = [reader, *reader.below]
        self.raw_pids = raw_pids or {}
        self.chain = Chain.of(self.readers) if len(self.readers) > 1 else None
        self.maps: list[mmap.mmap | None] = [None] * len(self.readers)
        self.mapped = all(
            all(s.compression == Compression.NONE for s in r.page_blocks()) for r in self.readers
        )

    def map(self) -> None:
        """Map every image's file (populated), when all of them store pages uncompressed."""
        if not self.mapped:
            return
        for i, r in enumerate(self.readers):
            if r.page_blocks():
                self.maps[i] = mmap.mmap(
                    r.f.fileno(), 0, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ
                )

    def close(self) -> None:
        for i, m in enumerate(self.maps):
            if m is not None:
                # a failed page write leaves a view of the map in its traceback: closing
                # then raises BufferError, which would hide the error; it goes with them
                with contextlib.suppress(BufferError):
                    m.close()
            self.maps[i] = None

    def views(self) -> list[memoryview | None]:
        """A view of each image's map (to be released by the caller)."""
        return [memoryview(m) if m is not None else None for m in self.maps]

    def pieces(self, owner_kind: int, owner: int, runs: list[Any]) -> list[FilePiece] | None:
        """The owner's pages with data, in address order, as file pieces of the mapped
        images; None when they are not mapped (compressed pages: use `chunks`).  `runs`:
        the owner's PagemapRuns in the newest image."""
        if not any(m is not None for m in self.maps):
            return None
        out: list[FilePiece] = []
        for level, addr, data_offset, length in self._spans(owner_kind, owner, runs):
            ranges = self.readers[level].page_file_ranges(data_offset, length)
            if ranges is None:
                return None
            for file_off, n in ranges:
                out.append(FilePiece(addr, n, level, file_off))
                addr += n
        return out

    def chunks(self, owner_kind: int, owner: int, runs: list[Any]) -> Iterator[tuple[int, bytes]]:
        """(address, bytes) of the owner's pages with data, at most DEFAULT_CHUNK at a time."""
        for level, addr, data_offset, length in self._spans(owner_kind, owner, runs):
            r = self.readers[level]
            for off in range(0, length, DEFAULT_CHUNK):
                n = min(DEFAULT_CHUNK, length - off)
                yield addr + off, r.read_pages(data_offset + off, n)

    def _spans(
        self, owner_kind: int, owner: int, runs: list[Any]
    ) -> Iterator[tuple[int, int, int, int]]:
        """(image level, address, offset in its page data, length) of each span with data."""
        if self.chain is None or not any(r.flags & PageFlags.PARENT for r in runs):
            page = self.readers[0].header.page_size
            for r in runs:
                if r.flags & PageFlags.PRESENT:
                    yield 0, r.vaddr, r.data_offset, r.nr_pages * page
            return
        if owner_kind == OwnerKind.PROCESS:
            owner = self.raw_pids.get(owner, owner)
        if (owner_kind, owner) not in self.chain.runs(0):
            raise RestoreError(f"the pages of {owner} are not in the image {self.chain.paths[0]}")
        for p in self.chain.pieces(owner_kind, owner):
            if p.level >= 0:
                page = self.readers[p.level].header.page_size
                yield p.level, p.vaddr, p.data_offset, p.nr_pages * page


def has_data(run: Any) -> bool:
    """Whether a run's pages hold data (here or in a parent): written on restore."""
    return bool(run.flags & (PageFlags.PRESENT | PageFlags.PARENT))


__all__ = ["FilePiece", "PageSource", "has_data"]
