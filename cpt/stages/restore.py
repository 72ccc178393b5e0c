"""Stage undump, and the full restore (restore --undump, restore).

The image is verified first, its checksums and structure then this host
(open_for_restore), before any process is created.  A full restore needs no cgroup: the
tree is traced until the moment it is released.  Undump restores it into a freezer
cgroup, left frozen, and records the stage state for resume or kill; a VE always gets
its cgroup, and its link comes up when it runs.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable

from cptimage.chain import Chain, flatten, verify_chain
from cptimage.container import ImageReader
from cptimage.errors import ImageError
from cptimage.records import Header, HeaderFlags
from cptimage.verify import verify

from .. import fault, interrupts
from ..errors import CptError, RestoreError
from ..host.verify import check_host
from ..restore.options import RestoreOptions
from ..restore.restorer import Restorer, RestoreStats
from .store import RESTORING, TreeState
from .tree import Tree, fails_as


def open_for_restore(dumpfile: str, opts: RestoreOptions | None = None) -> ImageReader:
    """The image, after verify-before-restore: its checksums and structure, then this host.

    Refuses with the first problems, precisely, before any process is created: a damaged
    image (or no image) as ImageError (exit 40), a host it cannot run on as RestoreError.
    """
    opts = opts or RestoreOptions()
    problems = verify(dumpfile)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ImageError(f"{problems[0]}{more}; refusing to restore", path=dumpfile)
    reader = ImageReader(dumpfile)
    if reader.header.flags & (HeaderFlags.INCREMENTAL | HeaderFlags.PREDUMP):
        reader.close()
        reader = _flat_chain(dumpfile, opts.parent_dir or None)
    host = check_host(reader, pids=not opts.pidns, ipcns=opts.ipcns)
    if host:
        reader.close()
        msgs = "; ".join(p.message for p in host[:3])
        more = f" (and {len(host) - 3} more)" if len(host) > 3 else ""
        raise RestoreError(f"{dumpfile}: {msgs}{more}; refusing to restore")
    return reader


def refuse_predump(dumpfile: str, header: Header | None = None) -> None:
    """Refuse a pre-dump (exit 40): it holds memory only.  Without `header`, the file's
    is read (an image that cannot be read is left to the checks that follow)."""
    if header is None:
        try:
            with ImageReader(dumpfile) as r:
                header = r.header
        except (ImageError, OSError):
            return
    if header.flags & HeaderFlags.PREDUMP:
        raise ImageError(
            f"a pre-dump holds memory only; restore the final dump written on "
            f"it (chkpnt --parent {dumpfile}); refusing to restore",
            path=dumpfile,
        )


def _flat_chain(dumpfile: str, parent_dir: str | None) -> ImageReader:
    """An incremental image with its chain, as one image: every link checked and every
    image verified first (a broken chain is refused before anything is touched), then
    flattened into an unlinked temporary file: each page from the newest image holding it."""
    report = verify_chain(dumpfile, parent_dir)
    if report.header is not None:
        refuse_predump(dumpfile, report.header)
    if report.problems:
        n = len(report.problems)
        more = f" (and {n - 1} more)" if n > 1 else ""
        raise ImageError(f"{report.problems[0]}{more}; refusing to restore", path=dumpfile)
    where = os.path.dirname(os.path.abspath(dumpfile))
    try:
        tmp = tempfile.TemporaryFile(dir=where if os.access(where, os.W_OK) else None)  # noqa: SIM115
    except OSError:
        tmp = tempfile.TemporaryFile()  # noqa: SIM115 - the reader closes it
    try:
        with Chain(dumpfile, parent_dir) as chain:
            flatten(chain, tmp)
        tmp.flush()
        tmp.seek(0)
        reader = ImageReader(tmp)
        reader._own = True  # closing the reader closes (and so frees) the temporary file
        return reader
    except ImageError as e:
        tmp.close()
        raise ImageError(f"{e}; refusing to restore") from None
    except BaseException:
        tmp.close()
        raise


@fails_as(RestoreError, "restore")
def restore(
    tree: Tree, reader: ImageReader, opts: RestoreOptions | None = None, *, undump: bool = False
) -> RestoreStats:
    """Restore the tree the image holds; with `undump` leave it frozen (in a freezer
    cgroup, for the stages after), with `pidns` in a new PID namespace.  A full
    restore needs no cgroup: the tree is traced until the moment it is released.
    A VE always gets its cgroup, and its link comes up when it runs."""
    if tree.suspended():
        raise RestoreError(
            f"{tree.label} is already restored or suspended: resume or kill it first",
            pid=tree.root,
        )
    opts = opts or RestoreOptions()
    if not undump and not tree.ve_id:
        return Restorer(reader, opts, tree.proc).run()
    here = tree.proc.cgroup2(os.getpid())
    tree.clear_stale()
    tree.note(RESTORING)  # a command killed from here on: the next kills what it made
    try:
        fault.point("restore:freezer")
        tree.freezer.create()
        stats = Restorer(reader, opts, tree.proc).run(
            on_spawn=_freeze_later(tree), freeze=tree.freezer.freeze_request if undump else None
        )
    except BaseException:
        with contextlib.suppress(CptError):
            tree.freezer.remove()
        tree.store.drop()
        raise
    if not undump:  # a VE, running
        interrupts.no_return()
        if tree.link is not None:
            tree.link.up()
        tree.store.drop()
        return stats
    tree.freezer.wait_frozen()
    origins = {} if tree.ve_id else dict.fromkeys(tree.freezer.procs(), here)
    tree.store.save(TreeState(tree.root, "undumped", origins))
    return stats


def _freeze_later(tree: Tree) -> Callable[[int], None]:
    """Put a restored tree's root stub in the freezer; its children follow it there."""

    def spawned(pid: int) -> None:
        tree.freezer.add([pid])

    return spawned
