"""Metadata files written atomically (cptimage.atomic: temp file, fsync, rename, fsync of
the directory): a reader sees the old file or the new one, never a torn one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cptimage.atomic import atomic_output


def write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` atomically and durably."""
    with atomic_output(path, mode=mode) as f:
        f.write(data)


def write_json(path: Path, doc: Any) -> bytes:
    """Write `doc` as indented JSON atomically; returns the bytes written."""
    data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
    write_bytes(path, data)
    return data
