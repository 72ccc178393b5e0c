"""Machine-wide id ranges of the VEs that contain their root (their user namespaces).

Such a VE maps its uids and gids 0..65535 to host ids BASE..BASE+65535 that no other VE
and no host user has.  Ranges are per machine, not per node root: two node roots on one
machine share one kernel, so 'another VE' is another VEID on this machine.  They are
kept in one directory (CPT_IDMAP_DIR; /etc by default):

    subuid, subgid    the system's subordinate-id files (NAME:FIRST:COUNT, shadow-utils'
                      format): a line `cpt-ve-VEID:BASE:65536` in each, so that useradd
                      never gives the range to a user, and cpt never takes a user's
    cpt-idmap.json    who holds each cpt range: VEID -> node root, BASE, COUNT, and while
                      `ve create` runs, its process (pid, start time)
    cpt-idmap.lock    flock'ed by every change (two concurrent creates get two ranges)

A range is taken by `ve create` (allocate, then commit once the config is saved) and
given back by `ve destroy` (release).  A range whose VE's config is gone (a test killed
before its cleanup, a node root removed by hand) and whose creating process is not
running is reclaimed by the next allocation.  A VE that moves to another node root of
this machine keeps its range: its registration is handed over (take_over on the
destination, hand_over back if the move fails), never released and taken again.  Restore and start check that the range of the VE is its own
here (check / ensure), and a migration's pre-flight asks the same of the destination.
Tests point CPT_IDMAP_DIR at a scratch directory: never at the machine's /etc.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from typing import Any

from cpt.errors import CptError, InvalidValue, LockedError, NoSuchProcess
from cpt.procfs import Proc
from cptimage.atomic import atomic_output

ID_COUNT = 65536  # ids of a VE: 0..65535 inside
FIRST_ID = 100000  # where ranges start (login.defs SUB_UID_MIN)
LAST_ID = 600100000  # and end (SUB_UID_MAX)
DEFAULT_DIR = "/etc"
LOCK_TIMEOUT = 10.0
PREFIX = "cpt-ve-"  # the NAME of a VE's lines in subuid and subgid


class IdRangeError(InvalidValue):
    """A range cannot be this VE's here (exit 21 where no restore is involved)."""


@dataclasses.dataclass
class Holder:
    veid: str
    root: str  # the node root whose VE it is
    base: int
    count: int = ID_COUNT
    pending: list[int] | None = None  # [pid, starttime] of the `ve create` making it

    @property
    def end(self) -> int:
        return self.base + self.count

    def text(self) -> str:
        return f"{self.base}-{self.end - 1}"


@dataclasses.dataclass(frozen=True)
class SubId:
    """A line of subuid or subgid."""

    name: str
    first: int
    count: int

    @property
    def end(self) -> int:
        return self.first + self.count


def idmap_dir() -> str:
    return os.environ.get("CPT_IDMAP_DIR") or DEFAULT_DIR


def range_text(base: int, count: int = ID_COUNT) -> str:
    return f"{base}-{base + count - 1}"


class IdRegistry:
    """The ranges of this machine (of the directory `directory`, CPT_IDMAP_DIR)."""

    def __init__(self, directory: str | None = None) -> None:
        self.dir = os.path.abspath(directory or idmap_dir())

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    # -- the files

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        os.makedirs(self.dir, exist_ok=True)
        path = self._path("cpt-idmap.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise
                    if time.monotonic() > deadline:
                        raise LockedError(
                            f"the VE id ranges ({path}) stay locked by another cpt command; "
                            f"retry when it ends"
                        ) from None
                    time.sleep(0.01)
            yield
        finally:
            os.close(fd)

    def _holders(self) -> dict[str, Holder]:
        path = self._path("cpt-idmap.json")
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (ValueError, OSError) as e:
            raise CptError(f"{path}: unreadable ({e}); repair or remove it") from None
        try:
            return {veid: Holder(veid=veid, **h) for veid, h in data["ranges"].items()}
        except (KeyError, TypeError) as e:
            raise CptError(f"{path}: not a cpt id range file ({e}); repair it") from None

    def _subids(self, name: str) -> list[SubId]:
        try:
            with open(self._path(name)) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            parts = line.strip().split(":")
            if len(parts) != 3 or line.lstrip().startswith("#"):
                continue
            try:
                out.append(SubId(parts[0], int(parts[1]), int(parts[2])))
            except ValueError:
                continue
        return out

    def _save(self, holders: dict[str, Holder]) -> None:
        data: dict[str, Any] = {
            "ranges": {
                v: {k: x for k, x in dataclasses.asdict(h).items() if k != "veid"}
                for v, h in sorted(holders.items())
            }
        }
        with atomic_output(self._path("cpt-idmap.json"), mode=0o644) as f:
            f.write((json.dumps(data, indent=1) + "\n").encode())
        ours = {PREFIX + v: h for v, h in holders.items()}
        for name in ("subuid", "subgid"):
            path = self._path(name)
            try:
                with open(path) as f:
                    lines = f.read().splitlines()
            except FileNotFoundError:
                lines = []
            kept = [ln for ln in lines if not ln.split(":", 1)[0].startswith(PREFIX)]
            kept += [f"{n}:{h.base}:{h.count}" for n, h in sorted(ours.items())]
            text = "".join(ln + "\n" for ln in kept)
            if text != "".join(ln + "\n" for ln in lines):
                with atomic_output(path, mode=0o644) as f:
                    f.write(text.encode())

    # -- decisions

    def _users(self) -> list[SubId]:
        """The subuid and subgid lines of host users (cpt's own lines mirror the holders)."""
        return [
            s
            for name in ("subuid", "subgid")
            for s in self._subids(name)
            if not s.name.startswith(PREFIX)
        ]

    def _stale(self, h: Holder) -> bool:
        """Is `h` a range nobody holds any more: its VE's config is gone and no `ve
        create` of it is running?"""
        if h.pending:
            pid, start = h.pending
            try:
                if Proc().stat(pid).starttime == start:
                    return False
            except (NoSuchProcess, CptError):
                pass
        return not os.path.exists(os.path.join(h.root, "ve", f"{h.veid}.toml"))

    def _reclaim(self, holders: dict[str, Holder]) -> list[str]:
        gone = [v for v, h in holders.items() if self._stale(h)]
        for v in gone:
            del holders[v]
        return gone

    def _conflict(self, holders: dict[str, Holder], veid: str, base: int, count: int) -> str | None:
        end = base + count
        for h in holders.values():
            if h.veid != veid and h.base < end and base < h.end:
                return f"ids {h.text()} are held by VE {h.veid} (node root {h.root})"
        for s in self._users():
            if s.first < end and base < s.end:
                return f"ids {s.first}-{s.end - 1} are {s.name}'s in {self.dir}/subuid or subgid"
        return None

    # -- operations

    def holders(self) -> dict[str, Holder]:
        return self._holders()

    def allocate(self, veid: str, root: str) -> int:
        """A free range for the new VE `veid` of node root `root` (its base), held for this
        process until commit(); ranges of VEs that are gone are reclaimed first."""
        root = os.path.abspath(root)
        with self._locked():
            holders = self._holders()
            self._reclaim(holders)
            mine = holders.get(veid)
            if mine is not None:
                raise IdRangeError(
                    f"VE {veid} already holds ids {mine.text()} on this machine (node root "
                    f"{mine.root}): VEIDs are machine-wide; choose another, or destroy it there"
                )
            taken = sorted(
                [(h.base, h.end) for h in holders.values()]
                + [(s.first, s.end) for s in self._users()]
            )
            base = FIRST_ID
            for first, end in taken:
                if first < base + ID_COUNT and base < end:
                    base = max(base, end)
            if base + ID_COUNT > LAST_ID:
                raise IdRangeError(
                    f"no free range of {ID_COUNT} ids below {LAST_ID} is left for VE {veid}"
                )
            me = os.getpid()
            holders[veid] = Holder(
                veid=veid, root=root, base=base, pending=[me, Proc().stat(me).starttime]
            )
            self._save(holders)
            return base

    def commit(self, veid: str, root: str) -> None:
        """The VE's config is saved: its range no longer depends on this process."""
        with self._locked():
            holders = self._holders()
            h = holders.get(veid)
            if h is None or h.root != os.path.abspath(root):
                raise CptError(f"VE {veid}: its id range vanished from {self.dir} while created")
            h.pending = None
            self._save(holders)

    def release(self, veid: str, root: str) -> None:
        """Give back the range of VE `veid` of node root `root` (ve destroy); a range held
        for another node root is left alone."""
        with self._locked():
            holders = self._holders()
            h = holders.get(veid)
            if h is not None and h.root == os.path.abspath(root):
                del holders[veid]
                self._save(holders)

    def check(self, veid: str, root: str, base: int, count: int = ID_COUNT) -> str | None:
        """Why ids base..base+count-1 cannot be VE `veid`'s on node root `root` here (held
        by another VE or a user, or this VEID held by another live node root); None if
        they are its own or free."""
        root = os.path.abspath(root)
        holders = self._holders()
        self._reclaim(holders)
        why = self._conflict(holders, veid, base, count)
        if why:
            return why
        h = holders.get(veid)
        if h is not None and h.root != root:
            return f"VE {veid} is registered on this machine for node root {h.root}"
        if h is not None and (h.base, h.count) != (base, count):
            return f"VE {veid} holds ids {h.text()} here, not {range_text(base, count)}"
        return None

    def ensure(self, veid: str, root: str, base: int, count: int = ID_COUNT) -> None:
        """Make ids base.. VE `veid`'s (registered for node root `root`) if they are free or
        its own already; IdRangeError naming the range and its holder otherwise.  Start,
        restore and a migration's destination call it."""
        root = os.path.abspath(root)
        with self._locked():
            holders = self._holders()
            self._reclaim(holders)
            why = self.check(veid, root, base, count)
            if why:
                raise IdRangeError(f"VE {veid}: ids {range_text(base, count)}: {why}")
            if veid not in holders:
                holders[veid] = Holder(veid=veid, root=root, base=base, count=count)
                self._save(holders)

    def take_over(self, veid: str, root: str, base: int, count: int = ID_COUNT) -> str | None:
        """The destination's side of a move on this machine: VE `veid` arrives on node root
        `root` with ids base.. (its config's).  Registered for another node root with that
        very range, it is the same VE (VEIDs are machine-wide): its registration is
        handed over to `root`, never released and taken again.  Free, it is registered
        (ensure).  Returns the node root it came from (None: it was not registered here),
        which a failed move gives back with hand_over(veid, root, that).  IdRangeError
        naming the holder when the range or the VEID is another VE's."""
        root = os.path.abspath(root)
        with self._locked():
            holders = self._holders()
            self._reclaim(holders)
            h = holders.get(veid)
            if h is not None and h.root != root and (h.base, h.count) == (base, count):
                why = self._conflict(holders, veid, base, count)
                if why:
                    raise IdRangeError(f"VE {veid}: ids {range_text(base, count)}: {why}")
                came_from = h.root
                h.root, h.pending = root, None
                self._save(holders)
                return came_from
        self.ensure(veid, root, base, count)
        return None

    def hand_over(self, veid: str, from_root: str, to_root: str) -> None:
        """VE `veid` moves from node root `from_root` to `to_root` on this machine: its range
        goes with it, with no moment where another VE could take it."""
        with self._locked():
            holders = self._holders()
            h = holders.get(veid)
            if h is None or h.root != os.path.abspath(from_root):
                raise IdRangeError(
                    f"VE {veid} holds no id range for node root {os.path.abspath(from_root)}"
                )
            h.root = os.path.abspath(to_root)
            self._save(holders)
