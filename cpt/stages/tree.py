"""A process tree as the stages see it: its root, its freezer cgroup, its stage state and
its lock, and whether it is a VE's.

A VE (`ve_id`) is a tree whose root is the init of its own namespaces and whose cgroup is
the VE's: suspend freezes that cgroup in place (no process moves) and cuts the VE's link
to the host (`link.down()`: packets are dropped, never answered), resume thaws it and
brings the link back; the image records the VE's namespaces, and restore recreates them
(restore/ve.py).  The VE layer names it (ve/runtime.py) and gives its link and the work
done in its freeze (`in_freeze`: the filesystem snapshot).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

from .. import interrupts
from ..dump.options import DumpOptions
from ..dump.pstree import TaskInfo, collect_tree
from ..errors import (
    AlreadyRunning,
    CptError,
    DumpError,
    LockedError,
    NoSuchProcess,
    NotRunning,
    RestoreError,
    UsageError,
    os_error_text,
)
from ..procfs import Proc, pid_exists, root_path
from ..sys.cgroup import Freezer, cpt_freezers, frozen_cgroup
from ..sys.ns import entered
from .store import (
    CHECKPOINTING,
    DUMPING,
    KILLING,
    RESTORING,
    RESUMING,
    SUSPENDED,
    SUSPENDING,
    SWEEP_MAX,
    StateStore,
    TreeState,
    locked,
    try_lock,
)

F = TypeVar("F", bound=Callable[..., Any])
_PASS_THROUGH = (DumpError, RestoreError, LockedError, NotRunning, AlreadyRunning, UsageError)


def tree_name(root: int) -> str:
    """The name of a process tree's freezer cgroup, lock and state file: pid-<PID>."""
    return f"pid-{root}"


class Link(Protocol):
    """What connects a VE to the host: cut while the VE is frozen, back when it runs."""

    def down(self) -> None: ...

    def up(self) -> None: ...

    def is_up(self) -> bool: ...


class InFreeze(Protocol):
    """Work done inside a dump's frozen window whose records go into the image: a VE's
    filesystem snapshot (ve/fssnap.py)."""

    def prepare(self) -> None:
        """Before the freeze (write back the filesystem: the snapshot is then cheap)."""

    def take(self) -> list[Any]:
        """With the tree frozen, before its state is read; returns records."""

    def discard(self) -> None:
        """The dump failed: undo what take() made."""


# the journal states whose repair lets the tree run again (resume has nothing left to do)
RUNS_AGAIN = frozenset({SUSPENDING, CHECKPOINTING, RESUMING})


class Tree:
    """A process tree rooted at `root` (0: one still to be restored)."""

    def __init__(
        self,
        root: int,
        proc: Proc | None = None,
        *,
        name: str | None = None,
        ve_id: str = "",
        cgroup: str | None = None,
        link: Link | None = None,
        in_freeze: InFreeze | None = None,
    ) -> None:
        """`name` names its lock and state files (in the run directory), `cgroup` its
        freezer cgroup (machine-wide: a VE's carries its node's tag), `name` by default."""
        if ve_id and not name:
            raise ValueError("a VE's tree is named by the VE layer (ve/runtime.py)")
        self.root = root
        self.proc = proc or Proc()
        self.ve_id = ve_id
        self.link = link
        self.in_freeze = in_freeze
        self.name = name or tree_name(root)
        self.label = f"VE {ve_id}" if ve_id else f"tree {root}"
        self.freezer = Freezer(cgroup or self.name)
        self.store = StateStore(self.name)
        self.frozen_at = 0.0  # when this command froze the tree (full checkpoints)
        self.repaired: str | None = None  # the journal state repair() found, if any

    @contextlib.contextmanager
    def locked(self) -> Iterator[Tree]:
        """Hold the tree's lock (LockedError, exit 9, if another cpt command holds it),
        and repair what a killed command left on it first."""
        with locked(self.name, f"tree {self.root}"):
            with interrupts.deferred():  # a repair is never left half-done
                self.repair()
                sweep_freezers()
            yield self

    def suspended(self) -> TreeState | None:
        """Its stage state, while its freezer holds it (suspended or undumped)."""
        st = self.journal()
        if st is None or not st.stable or not self.freezer.exists():
            return None
        return st

    def journal(self) -> TreeState | None:
        """Its stage state as written, stable or the journal of a stage at work; a damaged
        file (never written half: it is replaced atomically) reads as none."""
        try:
            return self.store.load()
        except (ValueError, KeyError, TypeError):
            return None

    def note(self, state: str, origins: dict[int, str] | None = None) -> TreeState:
        """Write the stage state `state` (store.py): before the change it journals."""
        st = TreeState(self.root, state, dict(origins or {}))
        self.store.save(st)
        return st

    def repair(self) -> str | None:
        """Finish or undo what a command killed half-way left on this tree, as its journal
        says (called with the lock held, so that command is gone); returns the state it
        found ("suspending", ...), None when there was nothing to repair.  What a VE's
        repair needs beyond its tree (its network, its runtime facts) is the VE layer's."""
        st = self.journal()
        if st is not None and not st.stable:
            self.repaired = st.state
        if st is None:
            if not self.ve_id:
                self.clear_stale()  # an empty freezer a killed command left
            return None
        if st.stable:
            if not self.freezer.exists():
                self.store.drop()  # its freezer went (a reboot): nothing is held
            return None
        if st.state in RUNS_AGAIN:  # it runs again
            self.release(st.origins)
            if self.link is not None:
                self.link.up()
        elif st.state == DUMPING:  # thawed under ptrace for --dump: suspended again
            if self.freezer.exists():
                self.freezer.freeze()
                self.note(SUSPENDED, st.origins)
                return st.state
        elif st.state in (KILLING, RESTORING) and self.freezer.exists():
            # past its commit (or a kill stage), or half-restored: killed
            self.freezer.kill_all()
            self.freezer.remove(timeout=10.0)
        self.store.drop()
        return st.state

    def frozen_by(self, pids: Iterable[int]) -> tuple[int, str] | None:
        """(pid, cgroup) of a process among `pids` that a cgroup freezer holds, if any: it
        enters ptrace stops, but never runs an injected syscall."""
        for pid in pids:
            try:
                rel = self.proc.cgroup2(pid)
            except CptError:
                continue
            where = frozen_cgroup(rel, self.freezer.mount)
            if where is not None:
                return pid, where
        return None

    def describe(self) -> str:
        """What is true of the tree now, in a few words for a message: "it runs on",
        "it stays suspended", "it is gone", ..."""
        if not self.root:  # a restore's: its rollback killed what it had made
            return "nothing of it was left alive"
        st = self.suspended()
        if st is not None:
            return "it stays suspended" if st.state == SUSPENDED else "it stays undumped, frozen"
        if self.root and not pid_exists(self.root):
            return "it is gone"
        if self.freezer.exists() and self.freezer.freeze_requested():
            flag = self.ve_id or f"--pid {self.root}"
            return f"it is frozen without a stage state: `cpt chkpnt {flag} --resume` thaws it"
        if self.ve_id and self.link is not None and not self.link.is_up():
            return f"it runs, but its link is down: `cpt chkpnt {self.ve_id} --resume` repairs it"
        return "it runs on"

    def dump_opts(self, opts: DumpOptions | None, **changes: Any) -> DumpOptions:
        """The dump options of this tree: a VE's image holds its namespaces, and its
        network is cut off while it is frozen."""
        opts = opts or DumpOptions()
        if self.ve_id:
            changes.update(ve_id=self.ve_id, net_isolated=True, root=root_path(self.root))
        return dataclasses.replace(opts, **changes)

    def inside(self) -> contextlib.AbstractContextManager[None]:
        """A VE's sockets are read with this thread in its network namespace (sock_diag
        answers for its own namespace only); the host side (links, nft) stays outside."""
        return entered(self.root, ("net",)) if self.ve_id else contextlib.nullcontext()

    def live_tree(self) -> dict[int, TaskInfo]:
        """Its processes now (NotRunning if its root is gone)."""
        try:
            return collect_tree(self.root, self.proc)
        except NoSuchProcess:
            raise NotRunning(f"process {self.root} does not exist", pid=self.root) from None

    def release(self, origins: dict[int, str]) -> None:
        """Thaw it and (a tree, not a VE) move its processes back to `origins` (a process
        not named there: to the root cgroup)."""
        if self.freezer.exists():
            if self.freezer.freeze_requested():
                self.freezer.thaw()
            if not self.ve_id:  # a VE's cgroup is its own: it stays
                self.freezer.release(origins)

    def clear_stale(self) -> None:
        """Remove this tree's freezer left behind by a cpt that was killed: no state file
        names it and no process is in it."""
        if self.freezer.exists() and self.journal() is None and not self.freezer.procs():
            with contextlib.suppress(CptError):
                self.freezer.remove(timeout=0.5)


def sweep_freezers() -> int:
    """Remove the empty freezer cgroups of trees (cpt/pid-*) that no stage state names
    and no command holds (a killed cpt leaves its own); returns how many went."""
    gone = 0
    for name in cpt_freezers()[:SWEEP_MAX]:
        if not name.startswith("pid-"):
            continue  # a VE's freezer is its own cgroup: the VE layer's
        with try_lock(name) as mine:
            fz = Freezer(name)
            if not mine or os.path.exists(StateStore(name).path):
                continue
            with contextlib.suppress(CptError):
                if fz.exists() and not fz.procs():
                    fz.remove(timeout=0.5)
                    gone += 1
    return gone


_stage_depth = 0  # stages running (a VE's full chkpnt runs suspend inside checkpoint)


def fails_as(cls: type[CptError], what: str) -> Callable[[F], F]:
    """Report any unexpected failure of a stage (a function of a Tree) as `cls` (exit 16
    or 17), naming the tree."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(tree: Tree, *a: Any, **kw: Any) -> Any:
            global _stage_depth
            try:
                _stage_depth += 1
                try:
                    done = fn(tree, *a, **kw)
                finally:
                    _stage_depth -= 1
                if not _stage_depth:  # the command's stage is done: the command completes
                    interrupts.no_return()
                return done
            except _PASS_THROUGH:
                raise
            except interrupts.Interrupted as e:  # unwound: say what is true now
                raise cls(
                    f"{what} of {tree.label} interrupted by {e.signame}: {tree.describe()}",
                    pid=tree.root,
                ) from None
            except Exception as e:
                if os.environ.get("CPT_DEBUG") and not isinstance(e, CptError):
                    raise
                if isinstance(e, OSError):
                    msg = os_error_text(e)
                else:
                    msg = str(e) if isinstance(e, CptError) else f"{type(e).__name__}: {e}"
                raise cls(f"{what} of {tree.label} failed: {msg}", pid=tree.root) from e

        return wrapper  # type: ignore[return-value]

    return deco


def comm_of(pid: int) -> str:
    """A process's name for a message; "gone" if it is."""
    try:
        return Proc().stat(pid).comm
    except CptError:
        return "gone"
