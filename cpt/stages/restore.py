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
from collections.abc import Callable

from cptimage.container import ImageReader
from cptimage.errors import ImageError
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
    problems = verify(dumpfile)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ImageError(f"{problems[0]}{more}; refusing to restore", path=dumpfile)
    reader = ImageReader(dumpfile)
    opts = opts or RestoreOptions()
    host = check_host(reader, pids=not opts.pidns, ipcns=opts.ipcns)
    if host:
        reader.close()
        msgs = "; ".join(p.message for p in host[:3])
        more = f" (and {len(host) - 3} more)" if len(host) > 3 else ""
        raise RestoreError(f"{dumpfile}: {msgs}{more}; refusing to restore")
    return reader


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
