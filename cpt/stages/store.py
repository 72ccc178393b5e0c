"""What outlives a cpt command: the run directory, the per-object lock, and the stage
state of a frozen tree.

    <run>/<name>.lock   the object's lock: one cpt command on it at a time (locked)
    <run>/<name>.json   the stage state of its frozen tree (StateStore, TreeState):
                        suspended by chkpnt --suspend, or undumped by restore --undump

`<run>` is run_dir(), every path in it is run_path()'s, and `<name>` is the object's own:
pid-<PID> for a process tree (tree.py), ve-<VEID> for a VE (ve/runtime.py, which keeps
its runtime facts here too).

A second command on a locked object fails at once with LockedError (exit 9), naming it.
The lock file is removed on release; an opener that raced with the removal finds its
inode no longer at the path and tries again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
from collections.abc import Iterator

from cptimage.atomic import atomic_output

from ..errors import LockedError

DEFAULT_ROOT = "/var/lib/cpt"  # the node root when neither --root nor CPT_ROOT is given


def node_tag(root: str | None = None) -> str:
    """What makes the machine-global names of a node root's objects its own (their
    cgroups, host interfaces): '' for the default root, else 8 hex digits of the root's
    path.  Two node roots on one machine share one kernel, so one cgroup tree and, when
    they share a network namespace, one set of interface names; `root` None: CPT_ROOT's
    (as run_dir)."""
    root = os.path.abspath(root or os.environ.get("CPT_ROOT") or DEFAULT_ROOT)
    if root == DEFAULT_ROOT:
        return ""
    import hashlib  # (OpenSSL's: ~3 ms, for another node root only)

    return hashlib.sha256(root.encode()).hexdigest()[:8]


def run_dir() -> str:
    """Where cpt keeps state between commands: CPT_RUN_DIR, else <CPT_ROOT>/run when a
    node root is given, else /run/cpt."""
    d = os.environ.get("CPT_RUN_DIR")
    if not d:
        root = os.environ.get("CPT_ROOT")
        d = os.path.join(root, "run") if root else "/run/cpt"
    os.makedirs(d, mode=0o700, exist_ok=True)
    return d


def run_path(name: str, suffix: str) -> str:
    """The file of object `name` in the run directory: <run>/<name><suffix>."""
    return os.path.join(run_dir(), name + suffix)


@contextlib.contextmanager
def locked(name: str, what: str) -> Iterator[None]:
    """Hold the lock of object `name`; `what` names it in the error ("tree 42", "VE 101")."""
    path = run_path(name, ".lock")
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise LockedError(
                    f"{what} is locked by another cpt command; retry when it ends"
                ) from None
            raise
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        sweep_locks(keep=path)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


@contextlib.contextmanager
def try_lock(name: str) -> Iterator[bool]:
    """Take the lock of object `name` if nobody holds it (yields False if somebody does);
    the lock file goes with the release, as locked()'s."""
    path = run_path(name, ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            mine = os.stat(path).st_ino == os.fstat(fd).st_ino
        except OSError:
            mine = False
        try:
            yield mine
        finally:
            if mine:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
    finally:
        os.close(fd)


SWEEP_MAX = 64  # lock files looked at per command


def sweep_locks(keep: str = "") -> int:
    """Remove lock files nobody holds (a cpt command killed by SIGKILL leaves its own):
    each is taken with a non-blocking flock first, so a held one stays.  Returns how
    many went."""
    d = run_dir()
    gone = 0
    try:
        names = [n for n in os.listdir(d) if n.endswith(".lock")][:SWEEP_MAX]
    except FileNotFoundError:
        return 0
    for n in names:
        path = os.path.join(d, n)
        if path == keep:
            continue
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)
                gone += 1
        except OSError:
            pass  # held by a live command, or gone meanwhile
        finally:
            os.close(fd)
    return gone


# The stage state is also the journal of a stage at work: written BEFORE the stage
# changes anything (freezes, moves a process, cuts a link, thaws for a dump, kills), so
# that whatever kills the command, the next one on the tree or VE (which holds the lock,
# so the command that wrote a transient state is gone) finds what was under way and
# repairs it (Tree.repair).
SUSPENDED = "suspended"  # by chkpnt --suspend: frozen until --dump, --kill or --resume
UNDUMPED = "undumped"  # by restore --undump: frozen until --resume or --kill
STABLE = frozenset({SUSPENDED, UNDUMPED})
SUSPENDING = "suspending"  # freezing, moving into the freezer, cutting the link: undone
DUMPING = "dumping"  # a suspended tree thawed under ptrace for --dump: frozen again
CHECKPOINTING = "checkpointing"  # a VE's full chkpnt before its commit: resumed
KILLING = "killing"  # past the commit of a full chkpnt, or a kill stage: killed
RESUMING = "resuming"  # thawing, moving back, link up: finished
RESTORING = "restoring"  # undump or a VE's restore into the freezer: killed, removed
TRANSIENT = frozenset({SUSPENDING, DUMPING, CHECKPOINTING, KILLING, RESUMING, RESTORING})


@dataclasses.dataclass
class TreeState:
    """A frozen tree between two stage commands, or the journal of a stage at work."""

    root: int
    state: str  # one of STABLE or TRANSIENT
    origins: dict[int, str]  # pid -> original cgroup v2 path (resume moves it back)

    @property
    def stable(self) -> bool:
        return self.state in STABLE

    def to_json(self) -> str:
        return json.dumps({"root": self.root, "state": self.state, "origins": self.origins})

    @classmethod
    def from_json(cls, text: str) -> TreeState:
        d = json.loads(text)
        return cls(
            root=d["root"], state=d["state"], origins={int(k): v for k, v in d["origins"].items()}
        )


class StateStore:
    """The stage state file of object `name`: its one reader and writer."""

    def __init__(self, name: str) -> None:
        self.path = run_path(name, ".json")

    def load(self) -> TreeState | None:
        """The state; None when there is none.  A damaged file raises ValueError or
        KeyError."""
        try:
            with open(self.path) as f:
                return TreeState.from_json(f.read())
        except FileNotFoundError:
            return None

    def save(self, st: TreeState) -> None:
        with atomic_output(self.path) as f:
            f.write(st.to_json().encode())

    def drop(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
