"""The stages of vzctl's chkpnt and restore, named once, and the one interface that runs
them: `Stages`, implemented for a process tree (trees.py) and for a VE (ve/stages.py).

    chkpnt    CHKPNT (the whole checkpoint: suspend, dump, then kill, or resume when the
              dump options say leave_running), or one stage: SUSPEND, DUMP, KILL, RESUME
    restore   RESTORE (the whole restore: undump, resume), or one stage: UNDUMP, RESUME,
              KILL

Each stage may run in a command of its own: what is frozen between two stages is held by
the freezer cgroup and described by the stage state (store.py), which `state()` reads.
Migration drives the same stages on two nodes: chkpnt(SUSPEND), chkpnt(DUMP) on one,
restore(UNDUMP) on the other, then chkpnt(KILL) there and restore(RESUME) here.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Protocol

from ..errors import InvalidValue, UsageError

if TYPE_CHECKING:
    from ..dump.dumper import DumpStats
    from ..dump.options import DumpOptions
    from ..restore.options import RestoreOptions
    from ..restore.restorer import RestoreStats
    from .store import TreeState


class Stage(enum.Enum):
    CHKPNT = "chkpnt"
    SUSPEND = "suspend"
    DUMP = "dump"
    KILL = "kill"
    RESUME = "resume"
    RESTORE = "restore"
    UNDUMP = "undump"

    @property
    def done(self) -> str:
        """What the stage did to its tree or VE, in the words cpt prints ("suspended")."""
        return _DONE[self]


_DONE = {
    Stage.CHKPNT: "checkpointed",
    Stage.SUSPEND: "suspended",
    Stage.DUMP: "dumped",
    Stage.KILL: "killed",
    Stage.RESUME: "resumed",
    Stage.RESTORE: "restored",
    Stage.UNDUMP: "undumped",
}
CHKPNT_STAGES = frozenset({Stage.CHKPNT, Stage.SUSPEND, Stage.DUMP, Stage.KILL, Stage.RESUME})
RESTORE_STAGES = frozenset({Stage.RESTORE, Stage.UNDUMP, Stage.RESUME, Stage.KILL})


def check_stage(stage: Stage, command: str) -> None:
    """Refuse a stage that `command` ("chkpnt" or "restore") does not have."""
    allowed = CHKPNT_STAGES if command == "chkpnt" else RESTORE_STAGES
    if stage not in allowed:
        raise UsageError(f"{command} has no stage {stage.value}")


def check_dumpfile(given: str | None) -> None:
    """Refuse an empty dump file name: it would silently mean the default (or a file
    named after nothing); None is what asks for the default."""
    if given is not None and not given:
        raise InvalidValue(
            "--dumpfile is empty: name the dump file, or leave the option out for the default"
        )


class Stages(Protocol):
    """The chkpnt and restore stages of one process tree or VE."""

    @property
    def label(self) -> str:
        """What the stages act on, as messages name it: "tree 42", "VE 101"."""
        ...

    def dumpfile(self, given: str | None = None) -> str:
        """The dump file: `given`, else the default one."""
        ...

    def chkpnt(
        self, stage: Stage, dumpfile: str | None = None, opts: DumpOptions | None = None
    ) -> DumpStats | None:
        """Run `stage` of chkpnt (CHKPNT_STAGES); the dump's statistics when it dumped."""
        ...

    def restore(
        self, stage: Stage, dumpfile: str | None = None, opts: RestoreOptions | None = None
    ) -> RestoreStats | None:
        """Run `stage` of restore (RESTORE_STAGES); the statistics when it restored."""
        ...

    def state(self) -> TreeState | None:
        """The frozen state between two stages (suspended or undumped); None when nothing
        is held frozen."""
        ...
