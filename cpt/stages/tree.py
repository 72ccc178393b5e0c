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
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

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
)
from ..procfs import Proc, root_path
from ..sys.cgroup import Freezer
from ..sys.ns import entered
from .store import StateStore, TreeState, locked

F = TypeVar("F", bound=Callable[..., Any])
_PASS_THROUGH = (DumpError, RestoreError, LockedError, NotRunning, AlreadyRunning, UsageError)


def tree_name(root: int) -> str:
    """The name of a process tree's freezer cgroup, lock and state file: pid-<PID>."""
    return f"pid-{root}"


class Link(Protocol):
    """What connects a VE to the host: cut while the VE is frozen, back when it runs."""

    def down(self) -> None: ...

    def up(self) -> None: ...


class InFreeze(Protocol):
    """Work done inside a dump's frozen window whose records go into the image: a VE's
    filesystem snapshot (ve/fssnap.py)."""

    def prepare(self) -> None:
        """Before the freeze (write back the filesystem: the snapshot is then cheap)."""

    def take(self) -> list[Any]:
        """With the tree frozen, before its state is read; returns records."""

    def discard(self) -> None:
        """The dump failed: undo what take() made."""


class Tree:
    """A process tree rooted at `root` (0: one still to be restored)."""

    def __init__(
        self,
        root: int,
        proc: Proc | None = None,
        *,
        name: str | None = None,
        ve_id: str = "",
        link: Link | None = None,
        in_freeze: InFreeze | None = None,
    ) -> None:
        if ve_id and not name:
            raise ValueError("a VE's tree is named by the VE layer (ve/runtime.py)")
        self.root = root
        self.proc = proc or Proc()
        self.ve_id = ve_id
        self.link = link
        self.in_freeze = in_freeze
        self.name = name or tree_name(root)
        self.label = f"VE {ve_id}" if ve_id else f"tree {root}"
        self.freezer = Freezer(self.name)
        self.store = StateStore(self.name)
        self.frozen_at = 0.0  # when this command froze the tree (full checkpoints)

    @contextlib.contextmanager
    def locked(self) -> Iterator[Tree]:
        """Hold the tree's lock (LockedError, exit 9, if another cpt command holds it)."""
        with locked(self.name, f"tree {self.root}"):
            yield self

    def suspended(self) -> TreeState | None:
        """Its stage state, while its freezer holds it (suspended or undumped)."""
        st = self.store.load()
        if st is None or not self.freezer.exists():
            return None
        return st

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
        """Thaw it and (a tree, not a VE) move its processes back to `origins`."""
        if self.freezer.exists():
            if self.freezer.freeze_requested():
                self.freezer.thaw()
            if not self.ve_id:  # a VE's cgroup is its own: it stays
                self.freezer.release(origins)

    def clear_stale(self) -> None:
        """Remove this tree's freezer left behind by a cpt that was killed: no state file
        names it and no process is in it."""
        if self.freezer.exists() and self.store.load() is None and not self.freezer.procs():
            with contextlib.suppress(CptError):
                self.freezer.remove(timeout=0.5)


def fails_as(cls: type[CptError], what: str) -> Callable[[F], F]:
    """Report any unexpected failure of a stage (a function of a Tree) as `cls` (exit 16
    or 17), naming the tree."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(tree: Tree, *a: Any, **kw: Any) -> Any:
            try:
                return fn(tree, *a, **kw)
            except _PASS_THROUGH:
                raise
            except Exception as e:
                if os.environ.get("CPT_DEBUG") and not isinstance(e, CptError):
                    raise
                msg = str(e) if isinstance(e, (CptError, OSError)) else f"{type(e).__name__}: {e}"
                raise cls(f"{what} of {tree.label} failed: {msg}", pid=tree.root) from e

        return wrapper  # type: ignore[return-value]

    return deco


def comm_of(pid: int) -> str:
    """A process's name for a message; "gone" if it is."""
    try:
        return Proc().stat(pid).comm
    except CptError:
        return "gone"
