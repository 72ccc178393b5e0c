"""The stages of a process tree (`cpt chkpnt --pid PID`, `cpt restore --dumpfile F`):
stage.py's Stages for a tree, each stage with the tree's lock held.

A tree is known by its root's PID; for a restore, by its dump file, whose header names
the root.  Without a dump file a chkpnt writes /var/tmp/Dump.pid-PID; --dump needs one
named.  A full restore into a new PID namespace may run beside the original tree: its
freezer and lock (used only while restoring) are then its own.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import InvalidValue, UsageError
from .stage import Stage, check_chkpnt_options, check_dumpfile, check_stage

if TYPE_CHECKING:
    from ..dump.dumper import DumpStats
    from ..dump.options import DumpOptions
    from ..procfs import Proc
    from ..restore.options import RestoreOptions
    from ..restore.restorer import RestoreStats
    from .store import TreeState
    from .tree import Tree

# Each command imports only its side of the engine (a chkpnt no restorer, a restore no
# dumper): the modules are imported in the methods that use them (issue 13, start-up).

PID_MAX_LIMIT = 1 << 22  # the kernel's ceiling on pid_max (64-bit): no PID is above it


def default_dumpfile(pid: int) -> str:
    return f"/var/tmp/Dump.pid-{pid}"


class TreeStages:
    """The stages of the process tree rooted at `pid`; None: the tree a dump file holds
    (known once `restore` has read it)."""

    def __init__(self, pid: int | None = None, proc: Proc | None = None) -> None:
        if pid is not None and not 0 < pid <= PID_MAX_LIMIT:
            raise InvalidValue(
                f"PID {str(pid)[:24]}: not a process ID (they run from 1 to {PID_MAX_LIMIT})"
            )
        self.pid = pid
        self.proc = proc

    @property
    def label(self) -> str:
        return f"tree {self.pid}"

    def dumpfile(self, given: str | None = None) -> str:
        if given is not None:
            return given
        if self.pid is None:
            raise UsageError("the dump file of a tree known by its dump file must be given")
        return default_dumpfile(self.pid)

    def tree(self, name: str | None = None) -> Tree:
        from .tree import Tree

        if self.pid is None:
            raise UsageError("which tree? give its PID, or the dump file that holds it")
        return Tree(self.pid, self.proc, name=name)

    def state(self) -> TreeState | None:
        return self.tree().suspended()

    def chkpnt(
        self, stage: Stage, dumpfile: str | None = None, opts: DumpOptions | None = None
    ) -> DumpStats | None:
        from ..dump.options import DumpOptions
        from .dump import checkpoint, dump
        from .incremental import closing_stage, predump
        from .kill import kill
        from .resume import resume
        from .suspend import suspend

        check_stage(stage, "chkpnt")
        check_dumpfile(dumpfile)
        opts = opts or DumpOptions()
        check_chkpnt_options(stage, opts)
        if stage is Stage.DUMP and dumpfile is None:
            raise UsageError("chkpnt --dump needs --dumpfile F")
        tree = self.tree()
        with tree.locked():
            if stage is Stage.SUSPEND:
                suspend(tree, opts)
            elif stage is Stage.DUMP:
                assert dumpfile is not None
                return dump(tree, dumpfile, opts)
            elif stage in (Stage.KILL, Stage.RESUME):
                (kill if stage is Stage.KILL else resume)(tree)
                closing_stage(tree, killed=stage is Stage.KILL)
            elif opts.pre_dump:
                return predump(
                    tree,
                    self.dumpfile(dumpfile),
                    opts,
                    opts.parent or None,
                    opts.parent_dir or None,
                )
            else:
                return checkpoint(tree, self.dumpfile(dumpfile), opts)
        return None

    def restore(
        self, stage: Stage, dumpfile: str | None = None, opts: RestoreOptions | None = None
    ) -> RestoreStats | None:
        from ..restore.options import RestoreOptions
        from .restore import open_for_restore, restore
        from .tree import tree_name

        check_stage(stage, "restore")
        check_dumpfile(dumpfile)
        opts = opts or RestoreOptions()
        if opts.rollback_fs:
            raise UsageError("--rollback-fs is for a VE: cpt restore VEID --rollback-fs")
        if dumpfile is None:
            raise UsageError("restore needs a VEID or --dumpfile F")
        if stage in (Stage.RESUME, Stage.KILL):
            if opts.pidns or opts.ipcns or opts.shell_job:
                raise UsageError(
                    "--pidns, --ipcns and --shell-job belong to a full restore or --undump"
                )
            # (the kill stage imports the dump side's socket code: not for a restore)
            from .kill import kill
            from .resume import resume

            self.pid = _root_of(dumpfile, trust=opts.trust)
            tree = self.tree()
            with tree.locked():
                (resume if stage is Stage.RESUME else kill)(tree)
            return None
        with open_for_restore(dumpfile, opts) as reader:
            self.pid = reader.header.root_pid
            # a full restore into a new PID namespace may run beside the original tree:
            # its freezer (used only while restoring) must not be the original's
            private = opts.pidns and stage is Stage.RESTORE
            name = f"{tree_name(self.pid)}-ns{os.getpid()}" if private else None
            tree = self.tree(name=name)
            with tree.locked():
                return restore(tree, reader, opts, undump=stage is Stage.UNDUMP)

    def wait_shell_job(self, stats: RestoreStats) -> None:
        """After a full restore with shell_job: wait until the tree's root exits (its PID
        namespace's init, our child, under pidns)."""
        from ..restore.tty import wait_shell_job

        wait_shell_job(stats.pidns_init or stats.host_pid)


def _root_of(dumpfile: str, *, trust: bool = False) -> int:
    """The root PID of the tree a dump file holds (from its header; the file trusted as
    for a restore: exit 17 for one another user could have written); ImageError (exit
    40) when the file is no image."""
    from cptimage.container import ImageReader

    from ..restore.trust import open_dumpfile

    f = open_dumpfile(dumpfile, trust=trust)
    try:
        r = ImageReader(f, own=True)
    except BaseException:
        f.close()
        raise
    with r:
        return r.header.root_pid
