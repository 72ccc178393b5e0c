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
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


@dataclasses.dataclass
class TreeState:
    """A frozen tree between two stage commands."""

    root: int
    state: str  # "suspended" (by chkpnt --suspend) or "undumped" (by restore --undump)
    origins: dict[int, str]  # pid -> original cgroup v2 path (resume moves it back)

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
