"""Stage undump, and the full restore (restore --undump, restore).

The dump file is opened once, by restore/trust.py's open_dumpfile (a regular file of
root's that no one else may write, never through a symlink; --trust waives the owner
check), and everything after reads that open file: its checksums and structure
(open_image), then the credentials its processes would get and this host
(check_restorable), before any process is created.  A full restore needs no cgroup: the
tree is traced until the moment it is released.  Undump restores it into a freezer
cgroup, left frozen, and records the stage state for resume or kill; a VE always gets
its cgroup, and its link comes up when it runs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import BinaryIO

from cptimage.chain import Chain, verify_chain
from cptimage.container import ImageReader
from cptimage.errors import ImageError
from cptimage.records import Header, HeaderFlags
from cptimage.verify import verify

from .. import fault, interrupts
from ..errors import CptError, RestoreError
from ..host.verify import check_host
from ..restore.model import ImageModel
from ..restore.options import RestoreOptions
from ..restore.restorer import Restorer, RestoreStats
from ..restore.trust import check_credentials, open_dumpfile
from .store import RESTORING, TreeState
from .tree import Tree, fails_as


def open_image(
    dumpfile: str,
    *,
    trust: bool = False,
    parent_dir: str = "",
    verified: dict[str, BinaryIO] | None = None,
) -> ImageReader:
    """The image of `dumpfile`, trusted (restore/trust.py) and verified (every checksum,
    the structure): refuses with the first problems, precisely, before any process is
    created: a file another user could have written as RestoreError (exit 17), a damaged
    image (or no image) as ImageError (exit 40).  An incremental image comes with its
    chain, open in place (each parent trusted and verified the same way; `parent_dir`:
    where the parents are, if not next to it); a pre-dump is refused (exit 40).
    `verified`: parents already verified and open, by normalized path (a migration's
    pre-dumps, checked as they arrived while the VE still ran): used as they are, only
    their links checked."""
    f = open_dumpfile(dumpfile, trust=trust)
    try:
        problems = verify(f)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ImageError(f"{problems[0]}{more}; refusing to restore", path=dumpfile)
        try:
            reader = ImageReader(f, own=True)
        except ImageError as e:
            e.msg += "; refusing to restore"
            raise
    except BaseException:
        f.close()
        raise
    if not reader.header.flags & (HeaderFlags.INCREMENTAL | HeaderFlags.PREDUMP):
        return reader
    return _open_chain(reader, dumpfile, parent_dir or None, trust, verified or {})


def check_restorable(reader: ImageReader, opts: RestoreOptions | None = None) -> None:
    """Refuse, before any process is created, an image whose processes would get
    credentials above its tree's owner's (unless opts.trust), or that this host cannot
    restore (RestoreError)."""
    opts = opts or RestoreOptions()
    check_credentials(ImageModel(reader), trust=opts.trust)
    host = check_host(reader, pids=not opts.pidns, ipcns=opts.ipcns)
    if host:
        msgs = "; ".join(p.message for p in host[:3])
        more = f" (and {len(host) - 3} more)" if len(host) > 3 else ""
        raise RestoreError(f"{reader.path}: {msgs}{more}; refusing to restore")


def open_for_restore(dumpfile: str, opts: RestoreOptions | None = None) -> ImageReader:
    """The image, after verify-before-restore: the file's trust, its checksums and
    structure, its credentials, then this host."""
    opts = opts or RestoreOptions()
    reader = open_image(dumpfile, trust=opts.trust, parent_dir=opts.parent_dir)
    try:
        check_restorable(reader, opts)
    except BaseException:
        reader.close()
        raise
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


def _open_chain(
    top: ImageReader,
    dumpfile: str,
    parent_dir: str | None,
    trust: bool,
    verified: dict[str, BinaryIO],
) -> ImageReader:
    """An incremental image (`top`, open) with its chain, restored in place: every link
    checked and every image trusted and verified first (a broken chain is refused before
    anything is touched), each file opened once (what is checked is what is read); the
    parents stay open in the reader's `below` (restore/pages.py takes each page from the
    newest image holding it: nothing is copied)."""
    refuse_predump(dumpfile, top.header)
    opened: dict[str, BinaryIO] = {}

    def again(f: BinaryIO, path: str) -> BinaryIO:
        """A second handle on the open file `f`, named `path` (a chain finds a parent's
        parent next to it)."""
        g = os.fdopen(os.dup(f.fileno()), "rb")
        g.raw.name = path  # type: ignore[attr-defined]
        return g

    def held(path: str) -> BinaryIO:
        f = opened.get(path)
        if f is None:
            if os.path.normpath(path) in verified:
                f = opened[path] = again(verified[os.path.normpath(path)], path)
            else:
                f = opened[path] = open_dumpfile(path, trust=trust)
        return f

    def open_file(path: str) -> BinaryIO:
        # verify_chain closes what it is given: it gets a second handle on the same open
        # file, which stays for the restore
        return again(held(path), path)

    def opener(path: str) -> ImageReader:
        held(path)
        return ImageReader(opened.pop(path), own=True)

    try:
        report = verify_chain(
            top.f, parent_dir, open_file=open_file, name=dumpfile, verified=set(verified)
        )
        if report.problems:
            n = len(report.problems)
            more = f" (and {n - 1} more)" if n > 1 else ""
            raise ImageError(f"{report.problems[0]}{more}; refusing to restore", path=dumpfile)
        try:
            chain = Chain(top, parent_dir, opener=opener)
        except ImageError as e:
            raise ImageError(f"{e}; refusing to restore") from None
    except BaseException:
        top.close()
        raise
    finally:
        for f in opened.values():
            f.close()
    top.below = chain.readers[1:]
    return top


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
