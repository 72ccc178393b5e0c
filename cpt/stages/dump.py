"""Stage dump, and the full checkpoint.

    dump        (chkpnt --dump) seize every thread of the suspended tree (frozen tasks
                enter their ptrace stops at once), thaw the cgroup (the ptrace stops hold
                the tasks), write the image, refreeze and detach: it stays suspended
    checkpoint  (chkpnt) suspend, dump, then kill, or resume with leave_running; one
                command needs no freezer cgroup: ptrace stops hold the tree

If the dump fails (or a signal interrupts it) no dump file is left, and the tree is
resumed (a full checkpoint) or stays suspended (dump).  The file is written atomically,
and made durable before a kill and after the tree is released otherwise, so the final
fsync stays out of the frozen window.  What the tree's `in_freeze` makes in the frozen
window goes into the image, or is undone.  Whatever changes a command killed half-way
would leave (a VE frozen or cut off, a tree thawed for --dump) is journalled first in
the stage state, and repaired by the next command on the tree (Tree.repair).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from cptimage.atomic import check_target

from .. import fault, interrupts
from ..dump.check import precheck
from ..dump.dumper import Dumper, DumpStats, prepare_dump
from ..dump.options import DumpOptions
from ..dump.output import ImageOutput
from ..dump.pstree import TaskInfo, collect_tree
from ..errors import CptError, DumpError, NoSuchProcess
from ..trace.seize import detach_all, freeze_process
from ..trace.tracee import DEFAULT_OPTIONS, Tracee
from .incremental import Incremental
from .kill import forget_ve, kill_traced, wait_exited
from .resume import run_again
from .store import CHECKPOINTING, DUMPING, KILLING, RESUMING, SUSPENDED
from .suspend import _refuse_frozen, suspend
from .tree import Tree, fails_as


@fails_as(DumpError, "dump")
def dump(tree: Tree, dumpfile: str, opts: DumpOptions) -> DumpStats:
    """Dump the suspended tree; it stays suspended (`--dump`), also when this fails.
    With opts.parent: only the pages written since that image (incremental.py)."""
    st = tree.suspended()
    if st is None or st.state != SUSPENDED:
        flag = f"{tree.ve_id}" if tree.ve_id else f"--pid {tree.root}"
        raise DumpError(
            f"{tree.label} is not suspended: run `cpt chkpnt {flag} --suspend` first",
            pid=tree.root,
        )
    check_target(dumpfile)
    opts = tree.dump_opts(opts, staged=True)
    procs = collect_tree(tree.root, tree.proc)
    if not opts.parent:
        out = _output(tree, dumpfile, procs, opts)
        return _dump_frozen(tree, out, opts, after="freeze", origins=st.origins)
    with _incremental(tree, opts, dumpfile, procs, frozen=True) as (inc, out):
        return _dump_frozen(tree, out, opts, after="freeze", origins=st.origins, inc=inc)


@contextlib.contextmanager
def _incremental(
    tree: Tree, opts: DumpOptions, dumpfile: str, procs: dict[int, TaskInfo], *, frozen: bool
) -> Iterator[tuple[Incremental, ImageOutput]]:
    """The incremental side of a dump (a parent, or live rounds first): the tracking
    taken or started and, with live rounds, the image opened and the memory copied before
    the freeze; the tracking handed on, or ended, once the dump is done.  A dump that
    copies only what a tracking found written reserves no page area for the whole tree."""
    inc = Incremental(
        tree, opts, opts.parent or None, opts.parent_dir or None, precopy=opts.leave_running
    )
    try:
        inc.take(frozen=frozen)
        out = _output(tree, dumpfile, procs, opts, reserve=inc.tracker is None or inc.precopy)
        try:
            inc.open(out, dumpfile, frozen=frozen)
            yield inc, out
        except BaseException:
            out.abort()
            inc.failed()
            raise
        inc.done(dumpfile, after="freeze" if frozen else "resume" if opts.leave_running else "kill")
    finally:
        inc.close()


@fails_as(DumpError, "checkpoint")
def checkpoint(tree: Tree, dumpfile: str, opts: DumpOptions) -> DumpStats:
    """Full chkpnt: suspend, dump, then kill (or resume with leave_running).

    One command needs no freezer cgroup: ptrace stops hold the tree (seized until no
    new process appears), which spares the cgroup moves (10-40 ms each here); if the
    command dies, the kernel detaches the tree, which runs on.  If the dump fails the
    tree is resumed and no dump file is left behind.  A VE is frozen in its cgroup and
    cut off first, as by `--suspend`, journalled as "checkpointing" until its commit.
    With opts.parent, only the pages written since that image; with leave_running the
    memory is copied in live rounds first and the freeze is only for the last dirty pages
    (incremental.py).
    """
    if tree.suspended():
        raise DumpError(
            f"{tree.label} is suspended: dump it with --dump, or --resume it",
            pid=tree.root,
        )
    check_target(dumpfile)  # before anything is frozen
    prepare_dump()  # one-time costs of a process's first dump, before the freeze
    after = "resume" if opts.leave_running else "kill"
    if tree.ve_id:
        procs = tree.live_tree()
        if opts.parent or opts.leave_running:
            with _incremental(tree, opts, dumpfile, procs, frozen=False) as (inc, out):
                return _checkpoint_ve(tree, out, opts, after, inc)
        return _checkpoint_ve(tree, _output(tree, dumpfile, procs, opts), opts, after, None)
    procs = tree.live_tree()
    _refuse_frozen(tree, procs)
    precheck(procs, tree.root, tree.proc, opts)
    if opts.parent or opts.leave_running:
        with _incremental(tree, opts, dumpfile, procs, frozen=False) as (inc, out):
            tree.frozen_at = time.perf_counter()
            procs = _seize_tree(tree)
            return _dump_seized(tree, procs, out, opts, after=after, inc=inc)
    out = _output(tree, dumpfile, procs, opts)
    try:
        tree.frozen_at = time.perf_counter()
        procs = _seize_tree(tree)
    except BaseException:
        out.abort()
        raise
    return _dump_seized(tree, procs, out, opts, after=after)


def _checkpoint_ve(
    tree: Tree, out: ImageOutput, opts: DumpOptions, after: str, inc: Incremental | None
) -> DumpStats:
    """A VE is frozen in its cgroup and cut off first, as by `--suspend` (journalled as
    "checkpointing" until its commit), then dumped; if the dump fails it runs on."""
    try:
        suspend(tree, opts, then=CHECKPOINTING)
    except BaseException:
        out.abort()
        raise
    try:
        return _dump_frozen(tree, out, tree.dump_opts(opts), after=after, inc=inc)
    except BaseException:
        if tree.journal() is not None:  # the dump failed: the VE runs on
            with contextlib.suppress(CptError):
                run_again(tree, {})
        raise


def _output(
    tree: Tree,
    dumpfile: str,
    procs: dict[int, TaskInfo],
    opts: DumpOptions,
    *,
    reserve: bool = True,
) -> ImageOutput:
    """The dump file, its page area sized for the tree's pages and faulted in: the
    frozen window then only copies (dump/output.py).  Without `reserve`, the pages are
    streamed (an incremental dump: only the pages a tracking found written)."""
    out = ImageOutput(dumpfile)
    try:
        if reserve:
            out.reserve([p for p, i in procs.items() if not i.zombie], opts, tree.proc)
        else:
            out.stream()
    except BaseException:
        out.abort()
        raise
    return out


def _dump_frozen(
    tree: Tree,
    out: ImageOutput,
    opts: DumpOptions,
    *,
    after: str,
    origins: dict[int, str] | None = None,
    inc: Incremental | None = None,
) -> DumpStats:
    """Seize the frozen tree (frozen tasks enter their ptrace stops at once; the stops
    hold them then, and the cgroup is thawed for injected syscalls to run), dump it.
    What `in_freeze` makes in the frozen window goes into the image, or is undone.
    A `--dump` (after "freeze") journals "dumping" before the thaw: a command killed
    meanwhile leaves the tree thawed, and the next one freezes it again."""
    try:
        if tree.in_freeze is not None:
            fault.point("ve:fs-snapshot")
        extra = tree.in_freeze.take() if tree.in_freeze is not None else []
    except BaseException:
        # a signal held while the snapshot was made is raised as take() returns: it goes
        if tree.in_freeze is not None:
            tree.in_freeze.discard()
        out.abort()
        raise
    try:
        procs = collect_tree(tree.root, tree.proc)
        tracees: list[Tracee] = []
        try:
            fault.point("dump:seize")
            for info in procs.values():
                if not info.zombie:
                    info.tracees = freeze_process(info.pid, DEFAULT_OPTIONS)
                    tracees += info.tracees
        except BaseException:
            detach_all(tracees)
            out.abort()
            raise
        if after == "freeze":
            tree.note(DUMPING, origins)
        tree.freezer.thaw()
        return _dump_seized(
            tree, procs, out, opts, after=after, extra=extra, origins=origins, inc=inc
        )
    except BaseException:
        # what the freeze made goes with a failed dump; a dump published before the
        # signal that stops the command keeps it (the caller's to record)
        if tree.in_freeze is not None and not out.published:
            tree.in_freeze.discard()
        raise


def _seize_tree(tree: Tree) -> dict[int, TaskInfo]:
    """Stop every thread of the tree with ptrace, re-reading the tree until no process
    appears that is not stopped yet (a stopped process cannot fork)."""
    seized: dict[int, TaskInfo] = {}
    try:
        fault.point("dump:seize")
        for _ in range(1000):
            procs = tree.live_tree()
            new = [i for p, i in procs.items() if not i.zombie and p not in seized]
            if not new:
                for p, info in procs.items():
                    if p in seized:
                        info.tracees = seized[p].tracees
                return procs
            for info in new:
                try:
                    info.tracees = freeze_process(info.pid, DEFAULT_OPTIONS)
                except NoSuchProcess:
                    continue  # exited meanwhile: the next reading decides
                seized[info.pid] = info
        raise DumpError(f"tree {tree.root} keeps forking; cannot freeze it", pid=tree.root)
    except BaseException:
        detach_all([t for i in seized.values() for t in i.tracees])
        raise


def _dump_seized(
    tree: Tree,
    procs: dict[int, TaskInfo],
    out: ImageOutput,
    opts: DumpOptions,
    *,
    after: str,
    extra: list[Any] | None = None,
    origins: dict[int, str] | None = None,
    inc: Incremental | None = None,
) -> DumpStats:
    """Write the image of a tree whose threads are all in ptrace stops, then `after`:
    "kill", "resume" (detach) or "freeze" (refreeze the cgroup and detach).

    On failure (or an interrupt) the tree is resumed ("kill", "resume") or stays
    suspended ("freeze"), and no dump file is left.  The file is finished (records,
    checksums) and made durable before a kill, and after the tree is released otherwise,
    so that work and the final fsync stay out of the frozen window.  For "kill" the point of no return is the file's rename: from there
    on the command completes whatever signal comes (interrupts.no_return), and a VE's
    journal says "killing" (the next command finishes the kill if this one dies).
    """
    live = [i for i in procs.values() if not i.zombie]
    tracees = [t for i in live for t in i.tracees]
    dumper: Dumper | None = None
    try:
        with tree.inside():
            dumper = Dumper(procs, tree.root, opts, tree.proc, extra)
            if inc is not None and inc.tracker is not None:
                stats = dumper.run(out, **inc.dumper_args(procs, dumper))
                stats.pages_bytes = inc.pages_bytes
            else:
                stats = dumper.run(out)
        if after == "kill":
            dumper.finish()
            fault.point("dump:fsync")
            out.sync()  # durable before the workload dies
            fault.point("dump:rename")
            interrupts.no_return()
            out.publish()
            if tree.ve_id:
                tree.note(KILLING)
    except BaseException:
        with interrupts.deferred():  # the undoing runs to its end
            try:
                out.abort()
                if dumper is not None:
                    dumper.release(killed=False)  # before the tree runs
            finally:
                _let_go(tree, tracees, after, origins)
        raise
    if after == "kill":
        try:
            kill_traced(live)
        finally:
            dumper.release(killed=True)  # TCP sockets died in repair mode
        if tree.frozen_at:
            stats.frozen_s = time.perf_counter() - tree.frozen_at
        if tree.ve_id:  # a VE's PIDs were its own namespace's: its cgroup empties
            forget_ve(tree)
        else:
            wait_exited(tree, procs)
    else:
        with interrupts.deferred():  # the tree runs again whatever signal comes meanwhile
            try:
                dumper.release(killed=False)  # before the tree runs
            finally:
                _let_go(tree, tracees, after, origins)
            if after == "resume" and tree.ve_id:
                tree.note(RESUMING)
                run_again(tree, {})  # its network back before the fsync
        if tree.frozen_at:
            stats.frozen_s = time.perf_counter() - tree.frozen_at
        try:
            dumper.finish()
            fault.point("dump:fsync")
            out.sync()
            fault.point("dump:rename")
            out.publish()
            fault.point("dump:published")
        except BaseException:
            out.abort()
            raise
    return stats


def _let_go(tree: Tree, tracees: list[Tracee], after: str, origins: dict[int, str] | None) -> None:
    """Detach the tree: it runs on (a full checkpoint's tree; a VE's is thawed already
    and its cgroup released by the caller), or it is frozen again ("freeze": --dump)."""
    if after != "freeze":
        detach_all(tracees)
        return
    tree.freezer.freeze_request()
    try:
        detach_all(tracees)
    finally:
        tree.freezer.wait_frozen()
        tree.note(SUSPENDED, origins)
