"""Structural diff of two images: what differs, named by a path.

    diff(a, b) -> [Difference(path, a, b), ...]

Records are matched by identity, not position: processes by pid, threads by tid, VMAs
by (pid, start), fds by (pid, fd), open-file descriptions and paths by id (see KEYS).
A record present on one side only is one difference with None on the other side; a
matched record contributes one difference per differing field.  Page contents are
compared by digest per VMA (pagestore.vma_digests) and per shared-memory object; when
either image is incremental, by the memory each one's chain gives (chain.memory_digests:
an image and its flattened copy have no page difference).
Values are in their JSON form (jsonio.record_to_json), so a result is JSON-able.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from .container import ImageReader
from .fields import REGISTRY, UnknownRecord
from .jsonio import record_to_json
from .pagestore import owner_digest, vma_digests
from .records import HeaderFlags, OwnerKind, SectionType, ShmemObject


@dataclasses.dataclass(frozen=True)
class Difference:
    path: str
    a: Any
    b: Any

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _pid(r: Any) -> str:
    return str(r.pid)


# How records of a type are matched across the two images; types not listed are
# matched by position among records of their type.
KEYS: dict[str, Callable[[Any], str]] = {
    "Process": _pid,
    "Thread": lambda r: str(r.tid),
    "Creds": _pid,
    "Rlimits": _pid,
    "Sigactions": _pid,
    "TaskState": _pid,
    "Itimers": _pid,
    "Mm": _pid,
    "PosixTimer": lambda r: f"{r.pid}:{r.timer_id}",
    "SeccompFilter": lambda r: f"{r.pid}:{r.tid}:{r.index}",
    "Vma": lambda r: f"{r.pid}:{r.start:#x}",
    "PagemapRun": lambda r: f"{r.owner_kind}:{r.owner}:{r.vaddr:#x}",
    "Fd": lambda r: f"{r.pid}:{r.fd}",
    "FileLock": lambda r: f"{r.pid}:{r.fd}:{r.start}",
    "PipeData": lambda r: str(r.ino),
    "SysvShm": lambda r: str(r.shmid),
    "SysvSem": lambda r: str(r.semid),
    "SysvMsq": lambda r: str(r.msqid),
    "Namespace": lambda r: f"{r.kind}:{r.ino}",
    "Uts": lambda r: str(r.ns_ino),
    "NetLink": lambda r: f"{r.ns_ino}:{r.ifindex}",
    "Mount": lambda r: str(r.mnt_id),
    "MountData": lambda r: str(r.mnt_id),
}
# Compared through page digests instead of run by run.
_SKIP = {"Header", "IndexEntry", "PagemapRun", "Parent"}


def _key_of(name: str, rec: Any, pos: int) -> str:
    key = KEYS.get(name)
    if key is not None:
        return key(rec)
    return str(rec.id) if hasattr(rec, "id") else f"#{pos}"


def _keyed(reader: ImageReader) -> dict[str, dict[str, dict[str, Any]]]:
    """{record type: {key: record as JSON}} for every record of an image."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for stype, recs in reader.all_records().items():
        if stype == SectionType.PAGEMAP:
            continue
        for rec in recs:
            name = (
                f"unknown-0x{rec.tag:04x}" if isinstance(rec, UnknownRecord) else type(rec).__name__
            )
            group = out.setdefault(name, {})
            group[_key_of(name, rec, len(group))] = record_to_json(rec)
    return out


def _diff_fields(path: str, a: dict[str, Any], b: dict[str, Any]) -> list[Difference]:
    return [
        Difference(f"{path}.{k}", a.get(k), b.get(k))
        for k in dict.fromkeys([*a, *b])
        if k != "record" and a.get(k) != b.get(k)
    ]


def _diff_groups(name: str, a: dict[str, Any], b: dict[str, Any]) -> list[Difference]:
    out = []
    for key in dict.fromkeys([*a, *b]):
        path = f"{name}[{key}]"
        ra, rb = a.get(key), b.get(key)
        if isinstance(ra, dict) and isinstance(rb, dict):
            out += _diff_fields(path, ra, rb)
        elif ra != rb:
            out.append(Difference(path, ra, rb))
    return out


def _page_digests(reader: ImageReader) -> dict[str, str]:
    out = {f"{pid}:{start:#x}-{end:#x}": d for (pid, start, end), d in vma_digests(reader).items()}
    for obj in reader.records(SectionType.MM):
        if isinstance(obj, ShmemObject):
            out[f"shmem:{obj.id}"] = owner_digest(reader, OwnerKind.SHMEM, obj.id)
    return out


def _chain_digests(reader: ImageReader, parent_dir: str | None) -> dict[str, str]:
    from .chain import Chain, memory_digests

    with Chain(reader, parent_dir) as chain:
        digests = memory_digests(chain)
    out = {f"{pid}:{start:#x}-{end:#x}": d for (pid, start, end), d in digests.items()}
    for obj in reader.records(SectionType.MM):
        if isinstance(obj, ShmemObject):  # stored whole in every image
            out[f"shmem:{obj.id}"] = owner_digest(reader, OwnerKind.SHMEM, obj.id)
    return out


def diff_readers(a: ImageReader, b: ImageReader, parent_dir: str | None = None) -> list[Difference]:
    ha, hb = record_to_json(a.header), record_to_json(b.header)
    out = _diff_fields("header", ha, hb)
    if (a.major, a.minor) != (b.major, b.minor):
        out.insert(0, Difference("version", f"{a.major}.{a.minor}", f"{b.major}.{b.minor}"))
    ka, kb = _keyed(a), _keyed(b)
    for name in sorted(set(ka) | set(kb), key=_type_order):
        if name not in _SKIP:
            out += _diff_groups(name, ka.get(name, {}), kb.get(name, {}))
    if (a.header.flags | b.header.flags) & HeaderFlags.INCREMENTAL:
        pa, pb = _chain_digests(a, parent_dir), _chain_digests(b, parent_dir)
    else:
        pa, pb = _page_digests(a), _page_digests(b)
    out += _diff_groups("pages", pa, pb)
    return out


def _type_order(name: str) -> tuple[int, str]:
    for tag, codec in REGISTRY.items():
        if codec.name == name:
            return tag, name
    return 1 << 16, name


def diff(
    a: str | os.PathLike[str] | ImageReader,
    b: str | os.PathLike[str] | ImageReader,
    parent_dir: str | None = None,
) -> list[Difference]:
    """Every structural difference between two images (empty: the same).  Incremental
    images are compared with their chains (found next to them, or in `parent_dir`)."""
    ra = a if isinstance(a, ImageReader) else ImageReader(a)
    try:
        rb = b if isinstance(b, ImageReader) else ImageReader(b)
        try:
            return diff_readers(ra, rb, parent_dir)
        finally:
            if rb is not b:
                rb.close()
    finally:
        if ra is not a:
            ra.close()


__all__ = ["KEYS", "Difference", "diff", "diff_readers"]
