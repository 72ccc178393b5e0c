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
lock (ve/runtime.py): the callers hold it.  A snapshot is in the catalog only once all of
it exists, and leaves it before any of it is removed (`forget`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpt.errors import InvalidValue
from cptimage.atomic import atomic_output
from cptimage.errors import quote, shorten
from storage import backend_for

if TYPE_CHECKING:
    from storage.base import Filesystem, SnapshotInfo

KINDS = ("snapshot", "checkpoint", "pre-rollback")
FS = "fs"  # a slot's filesystem snapshot


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

    @classmethod
    def of(
        cls,
        ident: int,
        kind: str,
        fs: Filesystem,
        info: SnapshotInfo,
        *,
        parent: int | None,
        created_ns: int | None = None,
        name: str = "",
        description: str = "",
        image: str | None = None,
    ) -> Snap:
        """The record of the filesystem snapshot `info` that backend `fs` took (created
        when it says, unless `created_ns` says otherwise), with the memory image `image`
        if any.  Its fs_size is the caller's to fill in (sizes may fail)."""
        return cls(
            id=ident, kind=kind, fs=str(info.path), backend=fs.name, uuid=str(info.uuid),
            generation=info.generation,
            created_ns=info.created_ns if created_ns is None else created_ns, name=name,
            description=description, image=image, parent=parent,
            image_size=os.path.getsize(image) if image is not None else 0,
        )  # fmt: skip

    @property
    def memory(self) -> bool:
        return self.image is not None

    @property
    def label(self) -> str:
        return f"{self.id} ({shorten(self.name, 40)})" if self.name else str(self.id)

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

    def reserve(self) -> Path:
        """Where the filesystem snapshot of a snapshot being made goes: `<ID>/fs` for a
        new id, saved at once (never reused, even if the snapshot fails)."""
        ident = self.new_id()
        self.save()
        return self.slot(ident) / FS

    def orphans(self) -> list[Path]:
        """The slots no snapshot of the catalog names: left by a command killed after its
        filesystem snapshot was taken and before the catalog took it in (a killed VE
        dump).  Only meaningful with the VE's lock held (a slot being filled is none)."""
        known = {s.id for s in self.snaps}
        try:
            slots = [p for p in self.dir.iterdir() if p.name.isdigit() and p.is_dir()]
        except FileNotFoundError:
            return []
        return sorted((p for p in slots if int(p.name) not in known), key=lambda p: int(p.name))

    def sweep(self, slot: Path) -> None:
        """Remove an orphan slot: its filesystem snapshot, then whatever else it holds."""
        fs = slot / FS
        if fs.is_dir():
            backend_for(fs).delete_snapshot(fs)
        shutil.rmtree(slot)

    def ident_of(self, fs: str | os.PathLike[str]) -> int:
        """The id `reserve` gave with the path `fs`."""
        p = Path(fs)
        if p.name != FS or p.parent.parent != self.dir or not p.parent.name.isdigit():
            raise ValueError(f"{p} is no snapshot slot of {self.dir}")
        return int(p.parent.name)

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

    def forget(self, snap: Snap, *, keep_image: bool = False) -> None:
        """Remove a snapshot: out of the catalog first, then its filesystem snapshot, its
        image (unless `keep_image`: a dump file is not the catalog's) and its slot."""
        self.remove(snap)
        backend_for(snap.fs).delete_snapshot(snap.fs)
        if snap.image and not keep_image:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(snap.image)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(snap.fs))

    def find(self, ref: str) -> Snap:
        """A snapshot by id or name; InvalidValue naming what exists otherwise."""
        for s in self.snaps:
            if ref == str(s.id) or (s.name and ref == s.name):
                return s
        have = ", ".join(s.label for s in self.snaps[:10]) or "none"
        if len(self.snaps) > 10:
            have += f" and {len(self.snaps) - 10} more: `cpt snapshot list {self.veid}`"
        raise InvalidValue(f"VE {self.veid} has no snapshot {quote(ref)} (it has: {have})")

    def by_image(self, image: str) -> Snap | None:
        """The checkpoint snapshot that goes with the dump file `image`."""
        real = os.path.realpath(image)
        for s in self.snaps:
            if s.kind == "checkpoint" and s.image and os.path.realpath(s.image) == real:
                return s
        return None
