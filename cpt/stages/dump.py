"""Stage dump, and the full checkpoint.

    dump        (chkpnt --dump) seize every thread of the suspended tree (frozen tasks
                enter their ptrace stops at once), thaw the cgroup (the ptrace stops hold
                the tasks), write the image, refreeze and detach: it stays suspended
    checkpoint  (chkpnt) suspend, dump, then kill, or resume with leave_running; one
                command needs no freezer cgroup: ptrace stops hold the tree

If the dump fails no dump file is left, and the tree is resumed (a full checkpoint) or
stays suspended (dump).  The file is written atomically, and made durable before a kill
and after the tree is released otherwise, so the final fsync stays out of the frozen
window.  What the tree's `in_freeze` makes in the frozen window goes into the image, or
is undone.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from cptimage.atomic import check_target

from ..dump.check import precheck
from ..dump.dumper import Dumper, DumpStats, prepare_dump
from ..dump.options import DumpOptions
from ..dump.output import ImageOutput
from ..dump.pstree import TaskInfo, collect_tree
from ..errors import CptError, DumpError, NoSuchProcess
from ..trace.seize import detach_all, freeze_process
from ..trace.tracee import DEFAULT_OPTIONS, Tracee
from .kill import forget_ve, kill_traced, wait_gone
from .resume import resume
from .suspend import suspend
from .tree import Tree, fails_as


@fails_as(DumpError, "dump")
def dump(tree: Tree, dumpfile: str, opts: DumpOptions) -> DumpStats:
    """Dump the suspended tree; it stays suspended (`--dump`), also when this fails."""
    if tree.suspended() is None:
        flag = f"{tree.ve_id}" if tree.ve_id else f"--pid {tree.root}"
        raise DumpError(
            f"{tree.label} is not suspended: run `cpt chkpnt {flag} --suspend` first",
            pid=tree.root,
        )
    check_target(dumpfile)
    opts = tree.dump_opts(opts, staged=True)
    out = _output(tree, dumpfile, collect_tree(tree.root, tree.proc), opts)
    return _dump_frozen(tree, out, opts, after="freeze")


@fails_as(DumpError, "checkpoint")
def checkpoint(tree: Tree, dumpfile: str, opts: DumpOptions) -> DumpStats:
    """Full chkpnt: suspend, dump, then kill (or resume with leave_running).

    One command needs no freezer cgroup: ptrace stops hold the tree (seized until no
    new process appears), which spares the cgroup moves (10-40 ms each here).  If the
    dump fails the tree is resumed and no dump file is left behind.  A VE is frozen
    in its cgroup and cut off first, as by `--suspend`.
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
        out = _output(tree, dumpfile, tree.live_tree(), opts)
        try:
            suspend(tree, opts)
        except BaseException:
            out.abort()
            raise
        try:
            stats = _dump_frozen(tree, out, tree.dump_opts(opts), after=after)
        except BaseException:
            with contextlib.suppress(CptError):
                resume(tree)  # the dump failed: the VE runs on
            raise
        if after == "kill":
            forget_ve(tree)
        else:
            resume(tree)
        return stats
    live = tree.live_tree()
    precheck(live, tree.root, tree.proc, opts)
    out = _output(tree, dumpfile, live, opts)
    try:
        tree.frozen_at = time.perf_counter()
        procs = _seize_tree(tree)
    except BaseException:
        out.abort()
        raise
    return _dump_seized(tree, procs, out, opts, after=after)


def _output(
    tree: Tree, dumpfile: str, procs: dict[int, TaskInfo], opts: DumpOptions
) -> ImageOutput:
    """The dump file, its page area sized for the tree's pages and faulted in: the
    frozen window then only copies (dump/output.py)."""
    out = ImageOutput(dumpfile)
    try:
        out.reserve([p for p, i in procs.items() if not i.zombie], opts, tree.proc)
    except BaseException:
        out.abort()
        raise
    return out


def _dump_frozen(tree: Tree, out: ImageOutput, opts: DumpOptions, *, after: str) -> DumpStats:
    """Seize the frozen tree (frozen tasks enter their ptrace stops at once; the stops
    hold them then, and the cgroup is thawed for injected syscalls to run), dump it.
    What `in_freeze` makes in the frozen window goes into the image, or is undone."""
    try:
        extra = tree.in_freeze.take() if tree.in_freeze is not None else []
    except BaseException:
        out.abort()
        raise
    try:
        procs = collect_tree(tree.root, tree.proc)
        tracees: list[Tracee] = []
        try:
            for info in procs.values():
                if not info.zombie:
                    info.tracees = freeze_process(info.pid, DEFAULT_OPTIONS)
                    tracees += info.tracees
        except BaseException:
            detach_all(tracees)
            out.abort()
            raise
        tree.freezer.thaw()
        return _dump_seized(tree, procs, out, opts, after=after, extra=extra)
    except BaseException:
        if tree.in_freeze is not None:
            tree.in_freeze.discard()
        raise


def _seize_tree(tree: Tree) -> dict[int, TaskInfo]:
    """Stop every thread of the tree with ptrace, re-reading the tree until no process
    appears that is not stopped yet (a stopped process cannot fork)."""
    seized: dict[int, TaskInfo] = {}
    try:
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
) -> DumpStats:
    """Write the image of a tree whose threads are all in ptrace stops, then `after`:
    "kill", "resume" (detach) or "freeze" (refreeze the cgroup and detach).

    On failure the tree is resumed ("kill", "resume") or stays suspended ("freeze"),
    and no dump file is left.  The file is finished (records, checksums) and made
    durable before a kill, and after the tree is released otherwise, so that work and
    the final fsync stay out of the frozen window.
    """
    live = [i for i in procs.values() if not i.zombie]
    tracees = [t for i in live for t in i.tracees]
    ok = False
    try:
        with tree.inside():
            dumper = Dumper(procs, tree.root, opts, tree.proc, extra)
    except BaseException:
        out.abort()
        detach_all(tracees)
        raise
    try:
        try:
            with tree.inside():
                stats = dumper.run(out)
            if after == "kill":
                dumper.finish()
                out.commit()  # durable before the workload dies
            ok = True
        finally:
            if ok and after == "kill":
                try:
                    kill_traced(live)
                finally:
                    dumper.release(killed=True)  # TCP sockets died in repair mode
            elif after == "freeze":
                tree.freezer.freeze_request()
                try:
                    dumper.release(killed=False)
                finally:
                    detach_all(tracees)
                tree.freezer.wait_frozen()
            else:  # resume, or a failed full checkpoint: the tree runs on
                try:
                    dumper.release(killed=False)  # before the tree runs
                finally:
                    detach_all(tracees)
        if tree.frozen_at:
            stats.frozen_s = time.perf_counter() - tree.frozen_at
        if after != "kill":
            dumper.finish()
            out.commit()
    except BaseException:
        out.abort()
        raise
    if after == "kill" and not tree.ve_id:  # a VE's PIDs were its own namespace's
        wait_gone(tree, procs)
    return stats
