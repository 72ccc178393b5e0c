"""The write tracking of a tree between commands: its holder and its state file.

    <run>/<name>.track.json   which holder keeps the tree's userfaultfds, which fd is whose,
                              and the image the tracking is relative to (its UUID): the
                              pages written since that image was taken

A pre-dump starts tracking (or goes on with it) and hands the fds to a holder
(cpt/sys/holder.py) when it ends; a later dump takes them back (`resume`): its image builds
on the last image only if the tracking is relative to that very image and the holder still
runs, else it is full and says why.  `hold` gives the fds to a new holder and ends the old
one; `end` ends the tracking.  The holder ends by itself with the tree's root.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable

from cptimage.atomic import atomic_output

from ..dump.track import Tracker
from ..errors import CptError, NoSuchProcess
from ..sys import holder
from .store import run_path
from .tree import Tree


@dataclasses.dataclass
class TrackState:
    root: int
    root_start: int  # the root's starttime: a reused PID is another tree
    holder: int
    holder_start: int
    uuid: str  # hex UUID of the image the tracking is relative to
    image: str  # its path, for messages
    final: bool  # that image closed the chain: --kill or --resume ends the tracking
    procs: list[tuple[int, int, int]]  # (pid, starttime, fd in the holder)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrackState:
        d = json.loads(text)
        d["procs"] = [tuple(p) for p in d["procs"]]
        return cls(**d)


class Tracking:
    """The tracking of one tree between commands (its lock held by the caller)."""

    def __init__(self, tree: Tree, notice: Callable[[str], None]) -> None:
        self.tree = tree
        self.notice = notice
        self.path = run_path(tree.name, ".track.json")

    def load(self) -> TrackState | None:
        try:
            with open(self.path) as f:
                return TrackState.from_json(f.read())
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            self.notice(f"{self.path} is damaged: the tracking of {self.tree.label} is dropped")
            self._drop()
            return None

    def live(self) -> TrackState | None:
        """The state, if its holder still runs for this very tree."""
        st = self.load()
        if st is None:
            return None
        if not holder.alive(st.holder, st.holder_start) or not self._same_root(st):
            self._drop()
            return None
        return st

    def _same_root(self, st: TrackState) -> bool:
        try:
            return st.root == self.tree.root and (
                self.tree.proc.stat(st.root).starttime == st.root_start
            )
        except NoSuchProcess:
            return False

    def tracker(self, parent_uuid: bytes | None, parent_path: str = "") -> Tracker | None:
        """A Tracker with the holder's fds: the tracking goes on.  With `parent_uuid`, only
        if the tracking is relative to that image (else None, said why: the dump is full).
        None when no tracking is held (nothing said when no parent was asked for)."""
        st = self.load()
        label = self.tree.label
        if st is None:
            if parent_uuid is not None:
                self.notice(
                    f"{label} is not tracked (no pre-dump started it, or it ended): "
                    f"this dump is full, not incremental on {parent_path}"
                )
            return None
        if not holder.alive(st.holder, st.holder_start) or not self._same_root(st):
            self._drop()
            self.notice(
                f"the tracking of {label} ended (its holder {st.holder} is gone): this dump "
                f"is full" + (f", not incremental on {parent_path}" if parent_path else "")
            )
            return None
        if parent_uuid is not None and st.uuid != parent_uuid.hex():
            self.notice(
                f"{parent_path} is not the last image of {label}'s tracking ({st.image}): "
                f"this dump is full"
            )
            parent_uuid = None
        try:
            fds = holder.take(st.holder, st.holder_start, [fd for _, _, fd in st.procs])
        except (CptError, OSError) as e:
            self._drop()
            self.notice(f"the tracking of {label} cannot be taken over ({e}): this dump is full")
            return None
        tr = Tracker(self.tree.root, self.tree.proc, self.notice)
        for (pid, start, _), fd in zip(st.procs, fds, strict=True):
            tr.adopt(pid, start, fd)
        tr.relative_to = st.uuid if parent_uuid is not None else ""
        return tr

    def hold(self, tracker: Tracker, uuid: bytes, image: str, *, final: bool = False) -> None:
        """Hand the tracker's fds to a new holder (the old one ends), relative to the image
        `uuid` just written."""
        old = self.load()
        procs = sorted(tracker.procs.values(), key=lambda p: p.pid)
        try:
            root_start = self.tree.proc.stat(self.tree.root).starttime
            pid, start = holder.spawn(self.tree.root, [p.fd for p in procs], self.tree.name)
        except NoSuchProcess:
            self.end()  # the tree is gone: nothing to track
            return
        st = TrackState(
            root=self.tree.root,
            root_start=root_start,
            holder=pid,
            holder_start=start,
            uuid=uuid.hex(),
            image=image,
            final=final,
            procs=[(p.pid, p.start, p.fd) for p in procs],
        )
        with atomic_output(self.path) as f:
            f.write(st.to_json().encode())
        if old is not None and (old.holder, old.holder_start) != (pid, start):
            holder.stop(old.holder, old.holder_start)

    def end(self) -> None:
        """End the tracking: the holder goes, and the state."""
        st = self.load()
        if st is not None:
            holder.stop(st.holder, st.holder_start)
        self._drop()

    def _drop(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


__all__ = ["TrackState", "Tracking"]
