"""The fallback for filesystems without snapshots (ext4, xfs, tmpfs, ...): copies.

A snapshot is a directory holding `manifest.json`: every path of the area with its type,
mode, owner, size, mtime_ns, symlink target, device number, hard-link group and xattrs.
Where the filesystem has reflinks (xfs, btrfs; probed once per pair of source and
destination filesystems) the snapshot also holds `tree/`, a copy of the area whose files
share their extents with the originals (FICLONE): cheap in time and space. Elsewhere (ext4,
tmpfs) the content goes to a content-addressed store (objstore.py, by default `.store`
beside the snapshot) and each regular file's sha256 is in the manifest. A hard-link copy of
the live tree would be no snapshot: a write in place changes both names.

Copies take time: the workload stays frozen for the whole copy.

changed_since trade-off, decided for exactness: a path whose metadata or mtime differs is
changed without reading it; a regular file whose metadata and mtime agree is still read and
hashed (and, in reflink mode, so is its copy in the snapshot). A write that keeps size and
mtime (`touch -r`, a write in the same timestamp tick as the snapshot, mmap stores) is thus
caught. The price is reading every unchanged file once, no more than the snapshot itself
cost; a restore check must not let a changed file through.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cpt.sys.reflink import ficlone
from cptimage.records import FsBackend
from storage import atomic
from storage.base import Changes, Filesystem, SnapshotInfo
from storage.errors import UnsupportedFs
from storage.objstore import ObjectStore
from storage.tree import (
    Entry,
    PlaceFile,
    compare,
    file_digest,
    materialize,
    regular_files,
    scan,
)

MANIFEST = "manifest.json"
TREE = "tree"
STORE_DIR = ".store"
FORMAT = 1
REFLINK, STORE = "reflink", "store"
# FICLONE's answers where reflinks cannot be made (no support, other filesystem, ...).
_NO_REFLINK = {errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY}
_CHUNK = 1 << 20


@dataclass
class Manifest:
    uuid: str
    created_ns: int
    area: str
    method: str  # REFLINK or STORE
    store: str  # STORE: the object store's directory
    entries: dict[str, Entry]
    digest: bytes = b""  # sha256 of the manifest file

    @classmethod
    def load(cls, snapshot: Path) -> Manifest:
        try:
            data = (snapshot / MANIFEST).read_bytes()
        except FileNotFoundError:
            raise UnsupportedFs(
                f"{snapshot} is not a copy snapshot (no {MANIFEST})", path=snapshot
            ) from None
        doc = json.loads(data)
        if doc.get("format") != FORMAT:
            raise UnsupportedFs(
                f"{snapshot}: manifest format {doc.get('format')} is not {FORMAT}", path=snapshot
            )
        entries = {d["path"]: Entry.from_json(d) for d in doc["entries"]}
        return cls(
            doc["uuid"],
            doc["created_ns"],
            doc["area"],
            doc["method"],
            doc["store"],
            entries,
            _sha256(data),
        )

    def write(self, snapshot: Path) -> None:
        doc = {
            "format": FORMAT,
            "uuid": self.uuid,
            "created_ns": self.created_ns,
            "area": self.area,
            "method": self.method,
            "store": self.store,
            "entries": [e.to_json() for e in self.entries.values()],
        }
        self.digest = _sha256(atomic.write_json(snapshot / MANIFEST, doc))

    def info(self, snapshot: Path) -> SnapshotInfo:
        return SnapshotInfo(
            backend=FsBackend.REFLINK if self.method == REFLINK else FsBackend.STORE,
            path=snapshot,
            subvolume=Path(self.area),
            uuid=uuid.UUID(self.uuid),
            parent_uuid=None,
            generation=0,
            created_ns=self.created_ns,
            read_only=True,
            manifest_digest=self.digest,
        )

    def digest_of(self, snapshot: Path, path: str) -> str:
        """The sha256 of a regular file's content in this snapshot."""
        e = self.entries[path]
        if e.link:
            e = self.entries[e.link]
        return e.sha256 or file_digest(snapshot / TREE / e.path)


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def clone_or_copy(src: Path, dst: Path) -> None:
    """Create `dst` with the content of `src`: a reflink where possible, else a copy."""
    with open(src, "rb") as s, open(dst, "xb") as d:
        try:
            ficlone(s.fileno(), d.fileno())
            return
        except OSError as e:
            if e.errno not in _NO_REFLINK:
                raise
        shutil.copyfileobj(s, d, _CHUNK)


class CopyFilesystem(Filesystem):
    name = "copy"

    def __init__(self, store: Path | None = None) -> None:
        self.store = store  # None: a .store directory beside each snapshot
        # (st_dev of an area, st_dev of a snapshot directory) -> FICLONE works between them.
        # Per instance: device numbers are reused once a filesystem is unmounted.
        self._reflinks: dict[tuple[int, int], bool] = {}

    @classmethod
    def probe(cls, path: Path) -> bool:
        return True

    def _create_area(self, path: Path) -> None:
        path.mkdir()

    def _delete_area(self, path: Path) -> None:
        shutil.rmtree(path)

    def _snapshot(self, area: Path, dest: Path, readonly: bool) -> SnapshotInfo:
        if not readonly:
            raise UnsupportedFs("copy snapshots are read-only", path=dest)
        entries = scan(area)
        reflink = self.reflinks(area, dest.parent, entries.values())
        m = Manifest(
            str(uuid.uuid4()),
            time.time_ns(),
            os.path.abspath(area),
            REFLINK if reflink else STORE,
            "",
            entries,
        )
        dest.mkdir()
        try:
            if reflink:
                materialize(
                    entries.values(), dest / TREE, lambda e, p: clone_or_copy(area / e.path, p)
                )
                m.write(dest)
            else:
                self._store_snapshot(area, dest, m)
        except BaseException:
            # A snapshot whose data or manifest failed is removed.
            shutil.rmtree(dest, ignore_errors=True)
            raise
        return m.info(dest)

    def _store_snapshot(self, area: Path, dest: Path, m: Manifest) -> None:
        store = ObjectStore(self.store or dest.parent / STORE_DIR)
        m.store = str(store.root.absolute())
        with store.locked():
            for e in regular_files(m.entries.values()):
                e.sha256, e.size = store.put(area / e.path)
            m.write(dest)
            store.add_ref(m.uuid, (dest / MANIFEST).absolute())

    def reflinks(self, area: Path, dest_dir: Path, entries: Iterable[Entry]) -> bool:
        """Can files of `area` be reflinked into `dest_dir`? Probed once per pair of
        filesystems by cloning the first regular file of the area; an area without one
        needs no reflinks."""
        key = (os.stat(area).st_dev, os.stat(dest_dir).st_dev)
        if key in self._reflinks:
            return self._reflinks[key]
        sample = next(regular_files(entries), None)
        if sample is None:
            return False
        fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".cpt-reflink-probe-")
        try:
            with open(area / sample.path, "rb") as src:
                ficlone(src.fileno(), fd)
            ok = True
        except OSError as e:
            if e.errno not in _NO_REFLINK:
                raise
            ok = False
        finally:
            os.close(fd)
            os.unlink(tmp)
        self._reflinks[key] = ok
        return ok

    def _info(self, path: Path) -> SnapshotInfo:
        return Manifest.load(path).info(path)

    def _delete_snapshot(self, path: Path) -> None:
        m = Manifest.load(path)
        if m.method == REFLINK:
            shutil.rmtree(path)
            return
        store = ObjectStore(Path(m.store))
        with store.locked():
            store.drop_ref(m.uuid)
            shutil.rmtree(path)
            store.collect()

    def _changes_since(self, area: Path, snapshot: Path) -> Changes:
        m = Manifest.load(snapshot)
        live = scan(area)
        return compare(m.entries, live, lambda p: file_digest(area / p) == m.digest_of(snapshot, p))

    def _diff(self, a: Path, b: Path) -> Changes:
        ma, mb = Manifest.load(a), Manifest.load(b)
        return compare(ma.entries, mb.entries, lambda p: ma.digest_of(a, p) == mb.digest_of(b, p))

    def _rollback(self, area: Path, snapshot: Path, keep: Path) -> None:
        m = Manifest.load(snapshot)
        self.snapshot(area, keep)
        tag = uuid.uuid4().hex[:12]
        new = area.with_name(f".{area.name}.rollback-{tag}")
        try:
            materialize(m.entries.values(), new, self._source(snapshot, m))
        except BaseException:
            shutil.rmtree(new, ignore_errors=True)
            raise
        # Two renames: a crash between them leaves the area missing, both trees beside it.
        old = area.with_name(f".{area.name}.old-{tag}")
        os.rename(area, old)
        os.rename(new, area)
        shutil.rmtree(old)

    def _source(self, snapshot: Path, m: Manifest) -> PlaceFile:
        if m.method == REFLINK:
            return lambda e, p: clone_or_copy(snapshot / TREE / e.path, p)
        store = ObjectStore(Path(m.store))
        return lambda e, p: clone_or_copy(store.path(e.sha256), p)

    def _size(self, path: Path) -> int:
        if not (path / MANIFEST).exists():
            return _allocated(path)
        m = Manifest.load(path)
        if m.method == REFLINK:
            # Extents shared with the area count in full: an upper bound.
            return _allocated(path)
        store = ObjectStore(Path(m.store))
        with store.locked():
            others = store.referenced(exclude=m.uuid)
        mine = {e.sha256 for e in regular_files(m.entries.values())} - others
        return sum(store.path(d).stat().st_size for d in mine)


def _allocated(root: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total
