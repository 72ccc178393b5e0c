"""Pre-dumps and the incremental side of dumps (SPEC.md section 5, "Chains").

    predump         (chkpnt --pre-dump) the memory of the running tree into a pre-dump
                    image; the tree is stopped only for the injections of the tracking
                    (about 1 ms per process).  With --parent, only the pages written since
                    that image; the tracking goes on in a holder (tracking.py)
    Incremental     what a dump (dump.py) does with --parent (the pages written since the
                    parent, the others PARENT runs) or --leave-running (live rounds first,
                    the freeze only for the last dirty pages): it opens the image before
                    the freeze, runs the live rounds, gives Dumper the frozen round

A dump whose parent cannot be built on (no tracking of this tree relative to it: holder
gone, another image, a kernel without the feature) is full, and says why on stderr.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any

from cptimage.atomic import AtomicFile, check_target
from cptimage.chain import Chain, ChainError, parent_for, parent_name
from cptimage.container import ImageWriter
from cptimage.records import Header, HeaderFlags, Vma

from ..dump.dumper import Dumper, DumpStats, build_header, prepare_dump
from ..dump.incremental import Rounds, parent_ranges, write_predump
from ..dump.options import DumpOptions
from ..dump.output import ImageOutput
from ..dump.pstree import TaskInfo
from ..dump.track import Tracker
from ..dump.ve import dump_userns
from ..errors import CptError, DumpError
from .tracking import Tracking
from .tree import Tree, fails_as


def notice(text: str) -> None:
    """A one-line notice on stderr (stdout is for --json)."""
    print(f"cpt: notice: {text}", file=sys.stderr)


def open_parent(tree: Tree, parent: str, parent_dir: str | None) -> Chain:
    """The chain of the image a dump builds on: every link checked, and of this tree."""
    try:
        chain = Chain(parent, parent_dir)
    except ChainError as e:
        raise DumpError(f"{e}: cannot build on it", pid=tree.root) from None
    except CptError as e:
        raise DumpError(f"the parent image {parent}: {e}", pid=tree.root) from None
    h = chain.image.header
    if h.root_pid != tree.root or h.source_id != (tree.ve_id or str(tree.root)):
        chain.close()
        raise DumpError(
            f"the parent image {parent} is of {h.source_id or h.root_pid}, not of {tree.label}",
            pid=tree.root,
        )
    return chain


@fails_as(DumpError, "pre-dump")
def predump(
    tree: Tree,
    dumpfile: str,
    opts: DumpOptions,
    parent: str | None = None,
    parent_dir: str | None = None,
) -> DumpStats:
    """A pre-dump of the running tree (see the module text).  On failure no file is left,
    the tree runs on, and the tracking ends (the next dump is full)."""
    if tree.suspended():
        raise DumpError(
            f"{tree.label} is suspended: a pre-dump is of a running tree", pid=tree.root
        )
    check_target(dumpfile)
    prepare_dump()
    opts = tree.dump_opts(opts)  # a VE's: its id goes into the header
    tracking = Tracking(tree, notice)
    chain = open_parent(tree, parent, parent_dir) if parent else None
    try:
        tr: Tracker | None = None
        if chain is not None:
            tr = tracking.tracker(chain.image.header.uuid, parent or "")
        else:
            tracking.end()  # a new chain begins: an older tracking is of no use
        base = chain if tr is not None and tr.relative_to else None
        if tr is None:
            tr = Tracker(tree.root, tree.proc, notice)
        with tr:
            out = AtomicFile(dumpfile)
            try:
                uid, stats = write_predump(
                    tr,
                    out.file,
                    opts,
                    parent=base.image if base is not None else None,
                    parent_path=base.paths[0] if base is not None else None,
                    child_path=dumpfile,
                )
                out.commit()
            except BaseException:
                out.abort()
                # its round protected pages again: the holder's tracking lost them
                with contextlib.suppress(CptError, OSError):
                    tracking.end()
                raise
            if not tr.procs:
                notice(f"{tree.label} cannot be tracked: a dump on {dumpfile} will be full")
                tracking.end()
            else:
                tracking.hold(tr, uid, os.path.abspath(dumpfile))
        return stats
    finally:
        if chain is not None:
            chain.close()


class Incremental:
    """The incremental side of one dump of `tree` (see the module text): `take` and `open`
    before the freeze, then `dumper_args` for Dumper.run in the frozen window, `done`
    after the image is written."""

    def __init__(
        self,
        tree: Tree,
        opts: DumpOptions,
        parent: str | None,
        parent_dir: str | None,
        *,
        precopy: bool,
    ) -> None:
        self.tree = tree
        self.opts = tree.dump_opts(opts)  # a VE's: its id goes into the header
        self.tracking = Tracking(tree, notice)
        self.chain = open_parent(tree, parent, parent_dir) if parent else None
        self.parent = parent
        self.precopy = precopy
        self.tracker: Tracker | None = None
        self.rounds: Rounds | None = None
        self.writer: ImageWriter | None = None
        self.uuid = b""
        self.extra: list[Any] = []  # the Parent record, for Dumper's extra records
        self.base: Chain | None = None
        self.dumpfile = ""

    def take(self, *, frozen: bool) -> None:
        """Take the tracking (from the holder, relative to the parent) or, for live
        rounds, start it; `tracker` stays None for a full dump."""
        tr: Tracker | None = None
        if self.chain is not None:
            tr = self.tracking.tracker(self.chain.image.header.uuid, self.parent or "")
            if tr is not None and not tr.relative_to:
                tr.close()  # tracked, but relative to another image: useless here
                tr = None
        self.base = self.chain if tr is not None else None
        if tr is None and self.precopy and not frozen:
            # a mapping takes one userfaultfd: a tracking held for another chain ends
            self.tracking.end()
            tr = Tracker(self.tree.root, self.tree.proc, notice)
            tr.start()  # each process stopped ~1 ms; its mappings count whole at round 1
            if not tr.procs:
                tr.close()
                tr = None
                notice(f"{self.tree.label} cannot be tracked: its memory is copied frozen")
        self.tracker = tr  # None: a full dump, copied in the frozen window as always

    def open(self, out: ImageOutput, dumpfile: str, *, frozen: bool) -> None:
        """With live rounds (`precopy`, the tree running), open the image and copy the
        memory in rounds until the stop rule says freeze."""
        tr = self.tracker
        if tr is None:
            return
        self.dumpfile = dumpfile
        if self.precopy and not frozen and tr.xstate:
            userns = self.tree.ve_id and dump_userns(self.tree.root, self.tree.proc)
            flags = HeaderFlags.USERNS if userns else 0  # as Dumper's header says
            # the header wants a thread's xstate size: an injection read one
            self.writer = ImageWriter(
                out.file,
                self._header(build_header(self.opts, self.tree.root, tr.xstate, flags=flags)),
                compress_pages=self.opts.compress,
                area=out.area,
            )
            self.rounds = self._rounds(self.writer)
            self.rounds.precopy()

    def _rounds(self, writer: ImageWriter) -> Rounds:
        assert self.tracker is not None
        base = self.base
        return Rounds(self.tracker, writer, parent_ranges(base.image) if base else None)

    def _header(self, header: Header) -> Header:
        """The header of this dump's image: incremental on the parent, if any."""
        self.uuid = header.uuid
        if self.base is None:
            return header
        link = parent_for(self.dumpfile, self.base.image)
        link.name = parent_name(self.dumpfile, self.base.paths[0])
        self.extra = [link]
        header.flags |= HeaderFlags.INCREMENTAL
        header.parent_uuid = self.base.image.header.uuid
        return header

    def dumper_args(self, procs: dict[int, TaskInfo], dumper: Dumper) -> dict[str, Any]:
        """Dumper.run's keyword arguments in the frozen window (empty: a full dump).  The
        frozen round runs when the first process's pages are asked for, and each
        process's runs are made in Dumper.finish; the Parent record goes into `dumper`'s
        extra records."""
        if self.tracker is None:
            return {}
        frozen: list[bool] = []

        def pages(pid: int, vmas: list[Vma], writer: ImageWriter) -> Callable[[], list[Any]]:
            if self.rounds is None:
                self.rounds = self._rounds(writer)
            if not frozen:
                frozen.append(True)
                self.rounds.frozen(procs)
            return self.rounds.settle(pid, vmas)

        def header(h: Header) -> Header:
            h = self._header(h)
            dumper.extra += self.extra
            return h

        if self.writer is not None:
            dumper.extra += self.extra
            return {"writer": self.writer, "pages": pages}
        return {"header": header, "pages": pages}

    @property
    def pages_bytes(self) -> int:
        return self.rounds.bytes if self.rounds is not None else 0

    def done(self, dumpfile: str, *, after: str) -> None:
        """The image is written and the tree released (`after`: "kill", "resume" or
        "freeze"): the tracking ends with a kill, else goes on in a holder."""
        tr = self.tracker
        if tr is None:
            if after == "kill":
                self.tracking.end()
            return
        with tr:
            if after == "kill" or (
                self.precopy and self.chain is None and not self.opts.keep_tracking
            ):
                # killed, or a leave-running dump that builds on nothing: one command
                self.tracking.end()
            else:
                self.tracking.hold(
                    tr, self.uuid, os.path.abspath(dumpfile), final=after == "freeze"
                )

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()
        if self.chain is not None:
            self.chain.close()

    def failed(self) -> None:
        """The dump failed: rounds protected pages again, the holder lost them."""
        if self.tracker is not None:
            with contextlib.suppress(CptError, OSError):
                self.tracking.end()


def closing_stage(tree: Tree, *, killed: bool) -> None:
    """After --kill or --resume of a suspended tree: a kill ends its tracking; a resume
    ends it when the last dump closed the chain (a staged --dump)."""
    tracking = Tracking(tree, notice)
    st = tracking.load()
    if st is not None and (killed or st.final):
        tracking.end()


__all__ = ["Incremental", "closing_stage", "notice", "open_parent", "predump"]
