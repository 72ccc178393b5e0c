"""Where a checkpoint writes its image: the dump file, and its page data ready in advance.

The file is written atomically (cptimage.atomic.AtomicFile: an unnamed temporary file,
linked over the dump file once fsync'd).  What decides how long the tree stays frozen is the page
data: on this kind of VM, freed memory goes back to the host, and allocating it again
(the page cache an image is written into) costs about ten times more than copying pages
into it (ENGINE-NOTES, "Writing the image").  So before the freeze `reserve` sizes the
image's page area from a PAGEMAP_SCAN of the live tree, maps that part of the file and
faults it in, several threads at once; in the frozen window the pages are then read
straight into it (pages.PageDumper), and the PAGES headers, checksums and the file's
digest are computed when the image is finished, after the tree runs again
(container.PageArea).  Compressed pages, or a filesystem that refuses the mapping, get
the streaming writer instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, BinaryIO

from cptimage.atomic import AtomicFile
from cptimage.container import PageArea

from .. import interrupts
from ..procfs import Proc
from ..sys.arch import PAGE_SIZE
from ..sys.mem import populate_write
from .options import DumpOptions
from .pages import estimate, page_buffer

if TYPE_CHECKING:
    from .dumper import DumpStats

SLACK_MIN = 256 << 10  # above the estimate: pages a running tree touches before the freeze


class ImageOutput:
    """A dump file being written: `file` to write to, `area` its page area if reserved."""

    def __init__(self, path: str) -> None:
        self.atomic = AtomicFile(path)
        self.area: PageArea | None = None
        self.reserve_s = 0.0  # sizing and faulting in the page area, before the freeze
        self.stats: DumpStats | None = None  # the dump's, told how long the fsync took
        self.published = False  # at the dump file's name: the dump is done

    @property
    def file(self) -> BinaryIO:
        return self.atomic.file

    def reserve(self, pids: Iterable[int], opts: DumpOptions, proc: Proc | None = None) -> None:
        """Size the page area for the pages `pids` hold now and fault it in (before the
        freeze); when that cannot be done, the page buffer is made ready instead."""
        t0 = time.perf_counter()
        try:
            if not opts.compress:
                need = estimate(pids, proc)
                area = PageArea(
                    self.file.fileno(), need + need // 128 + SLACK_MIN, page_size=PAGE_SIZE
                )
                try:
                    populate_write(area.map)
                except OSError:
                    area.discard()  # no MADV_POPULATE_WRITE, or no room: the writer reports it
                else:
                    self.area = area
        except (OSError, ValueError):
            pass  # the file cannot be mapped: streamed
        if self.area is None:
            page_buffer()
        self.reserve_s = time.perf_counter() - t0

    def stream(self) -> None:
        """No page area: the pages are streamed through the page buffer (a dump that
        copies only the pages a tracking found written)."""
        t0 = time.perf_counter()
        page_buffer()
        self.reserve_s = time.perf_counter() - t0

    def commit(self) -> None:
        """fsync the image, give it the dump file's name, fsync the directory."""
        self.sync()
        self.publish()

    def sync(self) -> None:
        """Make the image durable (unnamed still: a killed command leaves nothing)."""
        self._unmap()
        t0 = time.perf_counter()
        self.atomic.sync()
        if self.stats is not None:
            self.stats.sync_s = time.perf_counter() - t0

    def publish(self) -> None:
        """Give the durable image the dump file's name (the point of no return of a kill)."""
        t0 = time.perf_counter()
        with interrupts.deferred():  # at its name and known to be: a signal comes after
            self.atomic.publish()
            self.published = True
        if self.stats is not None:
            self.stats.sync_s += time.perf_counter() - t0

    def abort(self) -> None:
        """Drop the temporary file; the dump file is left untouched."""
        self._unmap()
        self.atomic.abort()

    def _unmap(self) -> None:
        if self.area is not None:
            self.area.close()
