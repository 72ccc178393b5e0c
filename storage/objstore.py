"""A content-addressed object store: file contents by sha256, shared by the snapshots that
reference them.

    STORE/objects/ab/abcdef...   one file per distinct content, read-only
    STORE/refs/UUID              one per snapshot: the path of its manifest
    STORE/tmp/                   objects being written
    STORE/lock                   flock: writers and the collector exclude each other

An object is written under a temporary name and renamed into place once its digest is
known, so a name always matches its content. Deleting a snapshot drops its ref; collect()
then removes the objects no remaining manifest references.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from storage.atomic import write_bytes

_CHUNK = 1 << 20


class ObjectStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.refs = root / "refs"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's lock (exclusive) for the `with` block."""
        for d in (self.objects, self.refs, self.root / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
        with open(self.root / "lock", "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def path(self, digest: str) -> Path:
        return self.objects / digest[:2] / digest

    def put(self, src: Path) -> tuple[str, int]:
        """Store the content of `src` (under the lock); returns (sha256, size). Reads `src`
        once when the content is already stored, twice otherwise."""
        with open(src, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
            if self.path(digest).exists():
                return digest, f.tell()
            f.seek(0)
            return self._copy_in(f)

    def _copy_in(self, f: io.BufferedReader) -> tuple[str, int]:
        h = hashlib.sha256()
        buf = bytearray(_CHUNK)
        size = 0
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                while n := f.readinto(buf):
                    h.update(buf[:n])
                    out.write(buf[:n])
                    size += n
                os.fchmod(out.fileno(), 0o444)
            # The digest of what was copied: the source may have changed since the first read.
            digest = h.hexdigest()
            self.path(digest).parent.mkdir(exist_ok=True)
            os.rename(tmp, self.path(digest))
        except BaseException:
            os.unlink(tmp)
            raise
        return digest, size

    def add_ref(self, snapshot_uuid: str, manifest: Path) -> None:
        write_bytes(self.refs / snapshot_uuid, os.fsencode(manifest))

    def drop_ref(self, snapshot_uuid: str) -> None:
        (self.refs / snapshot_uuid).unlink(missing_ok=True)

    def referenced(self, exclude: str = "") -> set[str]:
        """The digests the manifests of every ref (but `exclude`) point to. A ref whose
        manifest is gone (its snapshot deleted by hand) is dropped."""
        digests: set[str] = set()
        for ref in self.refs.iterdir():
            if ref.name == exclude:
                continue
            manifest = Path(os.fsdecode(ref.read_bytes()))
            try:
                doc = json.loads(manifest.read_bytes())
            except FileNotFoundError:
                ref.unlink()
                continue
            digests.update(e["sha256"] for e in doc["entries"] if e.get("sha256"))
        return digests

    def collect(self) -> int:
        """Remove the objects no ref references (under the lock); returns how many."""
        keep = self.referenced()
        removed = 0
        for sub in self.objects.iterdir():
            for obj in sub.iterdir():
                if obj.name not in keep:
                    obj.unlink()
                    removed += 1
        return removed
