"""The snapshot catalog of one VE: what snapshots it has, in one JSON file.

    <pool>/snapshots/<VEID>/catalog.json    {"veid", "next_id", "current", "snapshots": [...]}
    <pool>/snapshots/<VEID>/<ID>/fs         the filesystem snapshot (a read-only subvolume)
    <pool>/snapshots/<VEID>/<ID>/fs.nested  btrfs: those of the subvolumes nested in the area
    <pool>/snapshots/<VEID>/<ID>/Dump       the memory image, for a snapshot with memory

A snapshot has an id (never reused), an optional name (unique within the VE), a kind
("snapshot": `cpt snapshot create`; "checkpoint": the filesystem snapshot of a `cpt
chkpnt`, whose image is the dump file; "pre-rollback": the live area a rollback
replaced), its parent (the snapshot the VE's state descended from when it was taken) and
sizes.  `current` is the snapshot the live VE descends from.

The file is replaced atomically (temporary file, fsync, rename), and only under the VE's
lock (cpt/lock.py): the callers hold it.  A snapshot is in the catalog only once all of it
exists, and leaves it before any of it is removed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from cpt.errors import InvalidValue
from cptimage.atomic import atomic_output

KINDS = ("snapshot", "checkpoint", "pre-rollback")


@dataclasses.dataclass
class Snap:
    id: int
    kind: str
    created_ns: int
    fs: str  # the filesystem snapshot's path
    backend: str
    uuid: str
    generation: int
    name: str = ""
    description: str = ""
    image: str | None = None  # the memory image (None: filesystem only)
    parent: int | None = None
    fs_size: int = 0  # bytes the filesystem snapshot holds of its own (best effort)
    image_size: int = 0

    @property
    def memory(self) -> bool:
        return self.image is not None

    @property
    def label(self) -> str:
        return f"{self.id} ({self.name})" if self.name else str(self.id)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["memory"] = self.memory
        d["size"] = self.fs_size + self.image_size
        d["time"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.created_ns / 1e9))
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Snap:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class Catalog:
    def __init__(self, veid: str, directory: str | os.PathLike[str]) -> None:
        self.veid = veid
        self.dir = Path(directory)
        self.path = self.dir / "catalog.json"
        self.next_id = 1
        self.current: int | None = None
        self.snaps: list[Snap] = []
        self._load()

    def _load(self) -> None:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except ValueError as e:
            raise InvalidValue(f"{self.path}: the snapshot catalog is damaged ({e})") from None
        self.next_id = int(doc.get("next_id", 1))
        self.current = doc.get("current")
        self.snaps = [Snap.from_json(d) for d in doc.get("snapshots", [])]

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        doc = {
            "veid": self.veid,
            "next_id": self.next_id,
            "current": self.current,
            "snapshots": [dataclasses.asdict(s) for s in self.snaps],
        }
        with atomic_output(str(self.path), mode=0o644) as f:
            f.write(json.dumps(doc, indent=1).encode() + b"\n")

    def new_id(self) -> int:
        """An id for a snapshot being made (kept even if it fails: never reused)."""
        ident = self.next_id
        self.next_id += 1
        return ident

    def slot(self, ident: int) -> Path:
        """The directory of snapshot `ident`."""
        return self.dir / str(ident)

    def add(self, snap: Snap) -> None:
        if snap.name and any(s.name == snap.name for s in self.snaps):
            raise InvalidValue(f"VE {self.veid} has a snapshot named {snap.name!r} already")
        self.snaps.append(snap)
        self.save()

    def remove(self, snap: Snap) -> None:
        self.snaps = [s for s in self.snaps if s.id != snap.id]
        for s in self.snaps:  # its children now descend from its parent
            if s.parent == snap.id:
                s.parent = snap.parent
        if self.current == snap.id:
            self.current = snap.parent
        self.save()

    def find(self, ref: str) -> Snap:
        """A snapshot by id or name; InvalidValue naming what exists otherwise."""
        for s in self.snaps:
            if ref == str(s.id) or (s.name and ref == s.name):
                return s
        have = ", ".join(s.label for s in self.snaps) or "none"
        raise InvalidValue(f"VE {self.veid} has no snapshot {ref!r} (it has: {have})")

    def by_image(self, image: str) -> Snap | None:
        """The checkpoint snapshot that goes with the dump file `image`."""
        real = os.path.realpath(image)
        for s in self.snaps:
            if s.kind == "checkpoint" and s.image and os.path.realpath(s.image) == real:
                return s
        return None
