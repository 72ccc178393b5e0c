"""`cpt image verify`: every check an image can get without a host, one Problem per issue.

    verify(path or binary stream) -> [Problem(section, record, offset, message), ...]

The file is walked front to back once (container.walk: a pipe works), page data in
chunks of one reused buffer, so verify runs near the speed of reading the file.  It
checks the preamble and header, every section header and checksum, the trailer, the file
digest, the index against what the walk found, every record, enumerated values, and then
the structure: the process tree, threads, VMAs, the page map, and every reference by id.
Only I/O errors raise.

Records are decoded by the generated codec (_codec.py), which accepts exactly the bytes
construct's plain parser of schema.py accepts: tests/test_codec.py checks the two on
arbitrary and mutated records, so untrusted input gets the same checks at the speed of
the fast path (35 times construct's), without importing construct.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import itertools
import os
import struct
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, NamedTuple

import zstandard

from . import records as R
from .container import (
    FORMAT_MINOR,
    SECTION_VERSIONS,
    SectionInfo,
    StreamedSection,
    StreamedTrailer,
    decompress,
    parse_header_record,
    walk,
)
from .errors import ImageError, ImageVersionError
from .fields import (
    BY_NAME,
    RECORD_HEADER_SIZE,
    REGISTRY,
    FixedSpec,
    ItemCodec,
    RecordCodec,
    VarSpec,
    align8,
)

REGS_SIZE = 216  # struct user_regs_struct, x86_64
FPREGS_SIZE = 512  # fxsave area
_RHDR = struct.Struct("<IHH")


@dataclasses.dataclass(frozen=True)
class Problem:
    section: str  # "file", "preamble", "header", "trailer", "index" or a section type
    record: str  # "Vma #12" (the 12th record of its type), or ""
    offset: int | None  # absolute file offset, when known
    message: str

    def __str__(self) -> str:
        where = self.section + (f" {self.record}" if self.record else "")
        if self.offset is not None:
            where += f" @{self.offset}"
        return f"{where}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Rec(NamedTuple):
    rec: Any
    section: str
    label: str
    offset: int | None


# --------------------------------------------------------------------------- enums


def _item_codec(spec: VarSpec) -> ItemCodec:
    codec: ItemCodec = getattr(spec.item, "__codec__")  # noqa: B009 - set by @item
    return codec


def _enum_checks(fields: list[tuple[str, FixedSpec]]) -> list[tuple[str, type[enum.Enum], int]]:
    """(field, enum, known-bits mask or -1 for an enumeration) for the validated fields."""
    out: list[tuple[str, type[enum.Enum], int]] = []
    for name, spec in fields:
        if spec.enum is not None:
            out.append((name, spec.enum, -1))
        elif spec.flags is not None:
            out.append((name, spec.flags, sum(m.value for m in spec.flags)))
    return out


_ENUMS = {tag: _enum_checks(c.fixed.fields) for tag, c in REGISTRY.items()}
_ITEM_FIELDS = {
    tag: [(n, _enum_checks(_item_codec(s).fields)) for n, s in c.var if s.item is not None]
    for tag, c in REGISTRY.items()
}


def _bad_values(rec: Any, checks: list[tuple[str, type[enum.Enum], int]]) -> Iterator[str]:
    for name, e, mask in checks:
        v = getattr(rec, name)
        if mask < 0 and v not in e._value2member_map_:
            yield f"{name}={v} is not a known {e.__name__}"
        elif mask >= 0 and v & ~mask:
            yield f"{name} has unknown {e.__name__} bits {v & ~mask:#x}"


def enum_problems(rec: Any) -> list[str]:
    """Unknown values of enumerated fields of one record and its items."""
    tag = type(rec).TAG
    out = list(_bad_values(rec, _ENUMS[tag]))
    for name, checks in _ITEM_FIELDS[tag]:
        for i, it in enumerate(getattr(rec, name)):
            out += (f"{name}[{i}].{m}" for m in _bad_values(it, checks))
    return out


# --------------------------------------------------------------------------- the walk


class _Verifier:
    def __init__(self, path: str | None) -> None:
        self.path = path
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        self.header: R.Header | None = None
        self.minor = FORMAT_MINOR
        self.sections: list[SectionInfo] = []
        self.index: StreamedSection | None = None
        self.page_data_len = 0
        self.recs: dict[str, list[_Rec]] = defaultdict(list)
        self.complete = False
        self.damaged: set[int] = set()  # section types whose records could not all be read
        self._zstd: tuple[int, Any] | None = None  # (section offset, decompressobj)
        self._zstd_out = 0
        self._zstd_error = ""

    def add(self, section: str, message: str, record: str = "", offset: int | None = None) -> None:
        self.problems.append(Problem(section, record, offset, message))

    def _damage(
        self, info: SectionInfo, message: str, record: str = "", offset: int | None = None
    ) -> None:
        """A problem that leaves records of the section unread: structure checks skip them."""
        self.add(info.name, message, record, offset)
        self.damaged.add(info.type)

    def run(self, f: BinaryIO, chunk_size: int) -> None:
        try:
            for kind, value in walk(
                f, path=self.path, page_sink=self._pages, chunk_size=chunk_size
            ):
                if kind == "preamble":
                    self._preamble(*value)
                elif kind == "section":
                    self._section(value)
                else:
                    self._trailer(value)
            self.complete = True
        except ImageVersionError:
            raise  # not a problem of the image: this cpt is too old to check it
        except ImageError as e:
            # the walk cannot go on: the message names what it was reading
            self.add(e.section or "file", e.msg, e.record or "", e.offset)

    # -- preamble

    def _preamble(self, major: int, minor: int, raw: bytes) -> None:
        self.minor = minor
        try:
            self.header = parse_header_record(raw, path=self.path)
        except ImageError as e:
            self.add("header", e.msg, "Header", e.offset)
            return
        size = _RHDR.unpack_from(raw)[0]
        if any(raw[align8(size) :]):
            self.add("header", "non-zero bytes after the Header record", "Header")
        for m in enum_problems(self.header):
            self.add("header", m, "Header")
        ps = self.header.page_size
        if ps < 512 or ps & (ps - 1):
            self.add("header", f"page size {ps} is not a power of two", "Header")
        self._check_ext(self.header, "header", "Header", None)

    # -- sections

    def _pages(self, info: SectionInfo, chunk: memoryview) -> None:
        if info.compression != R.Compression.ZSTD:
            return
        if self._zstd is None or self._zstd[0] != info.offset:
            self._zstd = (info.offset, zstandard.ZstdDecompressor().decompressobj())
            self._zstd_out, self._zstd_error = 0, ""
        if self._zstd_error:
            return
        try:
            self._zstd_out += len(self._zstd[1].decompress(chunk))
        except zstandard.ZstdError as e:
            self._zstd_error = str(e)

    def _section(self, sec: StreamedSection) -> None:
        info = sec.info
        ok = sec.computed_checksum == info.checksum
        if not ok:
            self.add(info.name, "checksum mismatch: contents not checked", offset=info.offset)
            self.damaged.add(info.type)
        known = info.type in R.SectionType._value2member_map_
        if not known:
            msg = f"unknown section type 0x{info.type:04x}"
            if self.minor > FORMAT_MINOR:
                self.warnings.append(f"{msg} of a newer minor version: skipped")
            else:
                self.add(info.name, msg, offset=info.offset)
        elif info.version != SECTION_VERSIONS[info.type]:
            self.add(info.name, f"section version {info.version} is unknown", offset=info.offset)
        if info.compression == R.Compression.NONE and info.level:
            self.add(
                info.name, f"zstd level {info.level} on an uncompressed section", offset=info.offset
            )
        if info.type == R.SectionType.INDEX:
            self.index = sec
            return
        self.sections.append(info)
        if info.type == R.SectionType.PAGES:
            self._page_block(info)
        elif known and ok:
            payload = self._payload(sec)
            if payload is not None:
                self._records(info, payload)

    def _payload(self, sec: StreamedSection) -> bytes | None:
        info = sec.info
        if info.compression != R.Compression.ZSTD:
            return sec.stored
        try:
            return decompress(sec.stored, info.raw_len, info.name)
        except ImageError as e:
            self.add(info.name, e.msg, offset=info.offset)
            self.damaged.add(info.type)
            return None

    def _page_block(self, info: SectionInfo) -> None:
        if info.count:
            self.add(
                info.name, f"count {info.count} in a PAGES section (must be 0)", offset=info.offset
            )
        if info.base != self.page_data_len:
            self.add(
                info.name,
                f"block base {info.base}, expected {self.page_data_len}: blocks are not contiguous",
                offset=info.offset,
            )
        self.page_data_len += info.raw_len
        ps = self.header.page_size if self.header else 4096
        if info.compression == R.Compression.NONE:
            if ps and info.payload_offset % ps:
                self.add(
                    info.name,
                    "uncompressed page data not page-aligned in the file",
                    offset=info.offset,
                )
            return
        if self._zstd_error:
            self.add(info.name, f"zstd: {self._zstd_error}", offset=info.offset)
        elif self._zstd_out != info.raw_len:
            self.add(
                info.name,
                f"decompressed to {self._zstd_out} bytes, header says {info.raw_len}",
                offset=info.offset,
            )
        self._zstd = None

    def _records(self, info: SectionInfo, payload: bytes) -> None:
        """Decode record by record, so one bad record does not hide the next ones."""
        base = info.payload_offset if info.compression == R.Compression.NONE else None
        off, n, end = 0, 0, len(payload)
        while off < end:
            at = None if base is None else base + off
            if end - off < RECORD_HEADER_SIZE:
                self._damage(info, f"record header truncated ({end - off} bytes left)", offset=at)
                break
            size, tag, fsize = _RHDR.unpack_from(payload, off)
            if size < RECORD_HEADER_SIZE + fsize or off + size > end:
                self._damage(
                    info, f"record length {size} (fixed part {fsize}) does not fit", offset=at
                )
                break
            self._record(
                info,
                tag,
                payload[off + 8 : off + 8 + fsize],
                payload[off + 8 + fsize : off + size],
                at,
            )
            n += 1
            nxt = off + align8(size)
            if nxt > end or any(payload[off + size : nxt]):
                self._damage(info, "record padding is missing or not zero", offset=at)
                break
            off = nxt
        if n != info.count:
            self._damage(
                info,
                f"header says {info.count} records, the payload holds {n}",
                offset=info.offset,
            )

    def _record(
        self, info: SectionInfo, tag: int, fixed: bytes, var: bytes, at: int | None
    ) -> None:
        codec: RecordCodec | None = REGISTRY.get(tag)
        if codec is None:
            msg = f"unknown record tag 0x{tag:04x}"
            if self.minor > FORMAT_MINOR:
                self.warnings.append(f"{info.name}: {msg} of a newer minor version: skipped")
            else:
                self._damage(info, msg, offset=at)
            return
        recs = self.recs[codec.name]
        label = f"{codec.name} #{len(recs)}"
        home = R.SectionType.INDEX if tag == R.IndexEntry.TAG else R.section_of_tag(tag)
        if home != info.type:
            self._damage(info, f"a {codec.name} record does not belong in this section", label, at)
            return
        try:
            rec = codec.decode(fixed, var)
        except ImageError as e:
            self._damage(info, e.msg, label, at)
            return
        recs.append(_Rec(rec, info.name, label, at))
        for m in enum_problems(rec):
            self.add(info.name, m, label, at)
        self._check_ext(rec, info.name, label, at)

    def _check_ext(self, rec: Any, section: str, label: str, at: int | None) -> None:
        ext = getattr(rec, "_ext", None)
        if ext and self.minor <= FORMAT_MINOR:
            n = len(ext[0]) + len(ext[1])
            self.add(section, f"{n} bytes beyond the fields of format 1.{FORMAT_MINOR}", label, at)

    # -- trailer and index

    def _trailer(self, t: StreamedTrailer) -> None:
        if t.extra:
            self.add("trailer", f"{t.extra} bytes appended after the trailer", offset=t.end)
        if t.file_size != t.end:
            self.add(
                "trailer",
                f"trailer says {t.file_size} bytes, the image has {t.end}",
                offset=t.end - 32,
            )
        if t.digest != t.computed_digest:
            self.add("trailer", "file digest mismatch: the file is corrupted", offset=t.end - 16)
        if self.index is not None and t.index_offset != self.index.info.offset:
            self.add(
                "trailer",
                f"index offset {t.index_offset}, the index is at {self.index.info.offset}",
                offset=t.end - 32,
            )
        self._check_index()

    def _check_index(self) -> None:
        sec = self.index
        if sec is None or sec.computed_checksum != sec.info.checksum:
            return
        payload = self._payload(sec)
        if payload is None:
            return
        mark = len(self.problems)
        self._records(sec.info, payload)
        entries = [r.rec for r in self.recs.pop("IndexEntry", [])]
        if len(self.problems) > mark:
            return
        if len(entries) != len(self.sections):
            self.add("index", f"{len(entries)} entries for {len(self.sections)} sections")
        for i, (e, s) in enumerate(zip(entries, self.sections, strict=False)):
            for f in (
                "type",
                "version",
                "compression",
                "count",
                "hdr_len",
                "offset",
                "payload_len",
                "raw_len",
                "checksum",
                "base",
            ):
                if getattr(e, f) != getattr(s, f):
                    self.add(
                        "index",
                        f"entry {f}={getattr(e, f)}, the section has {getattr(s, f)}",
                        f"IndexEntry #{i}",
                        s.offset,
                    )


# --------------------------------------------------------------------------- structure

# Open-file descriptions: one id space (SPEC.md section 4).
DESCRIPTIONS = (
    "RegFile",
    "Pipe",
    "Fifo",
    "UnixSocket",
    "InetSocket",
    "EventFd",
    "SignalFd",
    "TimerFd",
    "Epoll",
    "Inotify",
    "Tty",
    "MemfdFile",
    "PosixMq",
    "PacketSocket",
    "NetlinkSocket",
)
# (record, field, id space, 0 allowed)
REFERENCES: list[tuple[str, str, str, bool]] = [
    *(
        (name, "pid", "pid", False)
        for name in (
            "Thread",
            "Creds",
            "Rlimits",
            "Sigactions",
            "TaskState",
            "Itimers",
            "PosixTimer",
            "SeccompFilter",
            "PendingSignal",
            "Mm",
            "Vma",
            "Fd",
            "FileLock",
        )
    ),
    ("SeccompFilter", "tid", "tid", True),
    ("PendingSignal", "tid", "tid", True),
    ("PosixTimer", "notify_tid", "tid", True),
    ("TaskState", "cwd_id", "path", True),
    ("TaskState", "root_id", "path", True),
    ("Mm", "exe_id", "path", True),
    ("Vma", "file_id", "path", True),
    ("RegFile", "path_id", "path", False),
    ("Fifo", "path_id", "path", False),
    ("Tty", "path_id", "path", True),
    ("Tty", "tty_id", "tty", True),
    ("Fd", "file_id", "file", False),
    ("FileLock", "file_id", "file", False),
    ("SockOpts", "file_id", "file", False),
    ("UnixBind", "file_id", "file", False),
    ("UnixScm", "file_id", "file", False),
    ("EpollTarget", "epoll_id", "epoll", False),
    ("EpollTarget", "target_id", "file", False),
    ("InotifyWatch", "inotify_id", "inotify", False),
    ("SysvShm", "shmem_id", "shmem", True),
    ("MemfdFile", "shmem_id", "shmem", False),
    ("Vma", "shmem_id", "shmem", True),
    ("SysvMsg", "msqid", "msq", False),
    ("PosixMqMsg", "mq_id", "mq", False),
    ("MountData", "mnt_id", "mount", False),
]
# id spaces: (records, id field); ids must be unique within a space
SPACES: dict[str, tuple[tuple[str, ...], str]] = {
    "pid": (("Process",), "pid"),
    "tid": (("Thread",), "tid"),
    "path": (("PathObj",), "id"),
    "file": (DESCRIPTIONS, "id"),
    "tty": (("TtyInfo",), "id"),
    "shmem": (("ShmemObject",), "id"),
    "epoll": (("Epoll",), "id"),
    "inotify": (("Inotify",), "id"),
    "mq": (("PosixMq",), "id"),
    "msq": (("SysvMsq",), "msqid"),
    "mount": (("Mount",), "mnt_id"),
}
_NOUNS = {"pid": "process", "tid": "thread", "file": "open-file description"}
# at most one of these per process
PER_PROCESS = ("Creds", "Rlimits", "Sigactions", "TaskState", "Itimers", "Mm")
_FILE_KINDS = (R.VmaKind.FILE_PRIVATE, R.VmaKind.FILE_SHARED)
_SHMEM_KINDS = (R.VmaKind.SHMEM, R.VmaKind.SYSV_SHM)
_RUN_KINDS = (R.PageFlags.PRESENT, R.PageFlags.PARENT, R.PageFlags.ZERO)


class _Structure:
    def __init__(self, v: _Verifier) -> None:
        assert v.header is not None
        self.v = v
        self.recs = v.recs
        self.header = v.header
        self.ps = v.header.page_size or 4096

    def bad(self, r: _Rec, message: str) -> None:
        self.v.add(r.section, message, r.label, r.offset)

    def readable(self, *names: str) -> bool:
        """Whether every record of these types was read (else checks across them would lie)."""
        return not any(R.section_of_tag(BY_NAME[n].tag) in self.v.damaged for n in names)

    def run(self) -> None:
        spaces = {name: self._space(name, *spec) for name, spec in SPACES.items()}
        self._references(spaces)
        self._unique_per("Fd", lambda r: (r.pid, r.fd), "fd {1} of process {0} is listed twice")
        for name in PER_PROCESS:
            self._unique_per(name, lambda r: r.pid, "a second " + name + " for process {}")
        if self.readable("Process"):
            self._tree()
        if self.readable("Process", "Thread"):
            self._threads()
        vmas = self._vmas(spaces["shmem"])
        if self.readable("Process", "Vma", "ShmemObject", "PagemapRun"):
            self._pagemap(vmas)

    def _space(self, space: str, names: tuple[str, ...], field: str) -> dict[int, _Rec]:
        ids: dict[int, _Rec] = {}
        for name in names:
            for r in self.recs.get(name, []):
                key = getattr(r.rec, field)
                if key in ids:
                    self.bad(r, f"{field} {key} is used twice (also {ids[key].label})")
                else:
                    ids[key] = r
        return ids

    def _references(self, spaces: dict[str, dict[int, _Rec]]) -> None:
        for name, field, space, zero_ok in REFERENCES:
            if not self.readable(name, *SPACES[space][0]):
                continue
            ids = spaces[space]
            for r in self.recs.get(name, []):
                v = getattr(r.rec, field)
                if v == 0 and zero_ok:
                    continue
                if v not in ids:
                    self.bad(
                        r, f"{field} {v} refers to no {_NOUNS.get(space, SPACES[space][0][0])}"
                    )

    def _unique_per(self, name: str, key: Callable[[Any], Any], message: str) -> None:
        seen: set[Any] = set()
        for r in self.recs.get(name, []):
            k = key(r.rec)
            if k in seen:
                self.bad(r, message.format(*(k if isinstance(k, tuple) else (k,))))
            seen.add(k)

    def _tree(self) -> None:
        procs = {r.rec.pid: r for r in self.recs.get("Process", [])}
        if not procs:
            return
        roots = [r for r in procs.values() if r.rec.ppid == 0]
        if len(roots) != 1:
            self.v.add("PROCESS", f"{len(roots)} root processes (ppid 0); a tree has exactly one")
        elif self.header.root_pid and roots[0].rec.pid != self.header.root_pid:
            self.bad(
                roots[0], f"the root is {roots[0].rec.pid}, the header says {self.header.root_pid}"
            )
        state: dict[int, int] = {}  # 1: on the current path, 2: done
        for pid in procs:
            path: list[int] = []
            p = pid
            while p in procs and p not in state:
                state[p] = 1
                path.append(p)
                p = procs[p].rec.ppid
            if state.get(p) == 1:
                cycle = path[path.index(p) :]
                self.bad(procs[p], f"parent cycle: {' -> '.join(map(str, cycle))} -> {p}")
            elif p != 0 and p not in procs:
                self.bad(procs[path[-1]], f"parent {p} is not in the image")
            for q in path:
                state[q] = 2

    def _threads(self) -> None:
        procs = {r.rec.pid: r.rec for r in self.recs.get("Process", [])}
        xsize = self.header.xstate_size
        for r in self.recs.get("Thread", []):
            t = r.rec
            p = procs.get(t.pid)
            zombie = p is not None and p.state == R.ProcessState.ZOMBIE
            for field, size in (("regs", REGS_SIZE), ("fpregs", FPREGS_SIZE)):
                n = len(getattr(t, field))
                if n != size and not (zombie and n == 0):
                    self.bad(r, f"{field} holds {n} bytes, expected {size}")
            if t.xstate and xsize and len(t.xstate) != xsize:
                self.bad(r, f"xstate holds {len(t.xstate)} bytes, the header says {xsize}")

    def _vmas(self, shmem: dict[int, _Rec]) -> dict[int, list[Any]]:
        """Check VMAs; returns each process's VMAs sorted by start."""
        per_pid: dict[int, list[_Rec]] = defaultdict(list)
        ps = self.ps
        for r in self.recs.get("Vma", []):
            v = r.rec
            per_pid[v.pid].append(r)
            if v.start >= v.end:
                self.bad(r, f"empty or inverted range {v.start:#x}-{v.end:#x}")
            if v.start % ps or v.end % ps or v.pgoff % ps:
                self.bad(r, f"{v.start:#x}-{v.end:#x} (offset {v.pgoff:#x}) is not page-aligned")
            if v.kind in _FILE_KINDS and not v.file_id:
                self.bad(r, "a file mapping without a file")
            if v.kind in _SHMEM_KINDS and v.shmem_id not in shmem:
                self.bad(r, f"shmem_id {v.shmem_id} refers to no ShmemObject")
        out: dict[int, list[Any]] = {}
        for pid, rs in per_pid.items():
            if any(a.rec.start > b.rec.start for a, b in itertools.pairwise(rs)):
                self.bad(rs[0], f"the VMAs of process {pid} are not sorted by address")
                rs = sorted(rs, key=lambda r: r.rec.start)
            for a, b in itertools.pairwise(rs):
                if b.rec.start < a.rec.end:
                    self.bad(b, f"{b.rec.start:#x}-{b.rec.end:#x} overlaps {a.label}")
            out[pid] = [r.rec for r in rs]
        return out

    def _pagemap(self, vmas: dict[int, list[Any]]) -> None:
        shmem = {r.rec.id: r.rec for r in self.recs.get("ShmemObject", [])}
        procs = {r.rec.pid for r in self.recs.get("Process", [])}
        starts = {pid: [v.start for v in vs] for pid, vs in vmas.items()}
        per_owner: dict[tuple[int, int], list[_Rec]] = defaultdict(list)
        present: list[tuple[int, int, _Rec]] = []
        for r in self.recs.get("PagemapRun", []):
            run = r.rec
            length = run.nr_pages * self.ps
            if not self._run_flags(r):
                continue
            if run.nr_pages == 0 or run.vaddr % self.ps:
                self.bad(r, f"run {run.vaddr:#x}+{run.nr_pages} pages is empty or not page-aligned")
                continue
            per_owner[(run.owner_kind, run.owner)].append(r)
            if run.flags & R.PageFlags.PRESENT:
                if run.data_offset + length > self.v.page_data_len:
                    self.bad(
                        r,
                        f"data {run.data_offset}+{length} is outside the page data ({self.v.page_data_len} bytes)",
                    )
                present.append((run.data_offset, length, r))
            if run.owner_kind == R.OwnerKind.PROCESS:
                self._run_in_vma(r, length, procs, vmas, starts)
            elif run.owner_kind == R.OwnerKind.SHMEM:
                obj = shmem.get(run.owner)
                if obj is None:
                    self.bad(r, f"shared-memory object {run.owner} is not in the image")
                elif run.vaddr + length > -(-obj.size // self.ps) * self.ps:
                    self.bad(
                        r, f"run {run.vaddr:#x}+{length} is beyond the object's size {obj.size}"
                    )
        for rs in per_owner.values():
            rs.sort(key=lambda r: r.rec.vaddr)
            for a, b in itertools.pairwise(rs):
                if b.rec.vaddr < a.rec.vaddr + a.rec.nr_pages * self.ps:
                    self.bad(b, f"run at {b.rec.vaddr:#x} overlaps {a.label}")
        present.sort(key=lambda t: t[0])
        for (ao, al, ar), (bo, _bl, br) in itertools.pairwise(present):
            if bo < ao + al:
                self.bad(br, f"page data at {bo} overlaps the data of {ar.label}")

    def _run_flags(self, r: _Rec) -> bool:
        flags = r.rec.flags
        if flags not in _RUN_KINDS:
            self.bad(r, f"flags {flags:#x}: a run is exactly one of PRESENT, PARENT, ZERO")
            return False
        if flags == R.PageFlags.PARENT and not self.header.flags & R.HeaderFlags.INCREMENTAL:
            self.bad(r, "a PARENT run in an image that is not INCREMENTAL")
        return True

    def _run_in_vma(
        self,
        r: _Rec,
        length: int,
        procs: set[int],
        vmas: dict[int, list[Any]],
        starts: dict[int, list[int]],
    ) -> None:
        run = r.rec
        if run.owner not in procs:
            self.bad(r, f"process {run.owner} is not in the image")
            return
        i = bisect.bisect_right(starts.get(run.owner, []), run.vaddr) - 1
        vma = vmas[run.owner][i] if i >= 0 else None
        if vma is None or run.vaddr + length > vma.end:
            self.bad(
                r,
                f"run {run.vaddr:#x}-{run.vaddr + length:#x} is not inside one VMA of process {run.owner}",
            )


# --------------------------------------------------------------------------- entry


@dataclasses.dataclass
class Report:
    problems: list[Problem]
    warnings: list[str]  # what a newer minor version added and verify skipped
    header: R.Header | None  # None if unreadable


def verify(
    source: str | os.PathLike[str] | BinaryIO, *, chunk_size: int = 1 << 20
) -> list[Problem]:
    """Every problem of an image; empty when it is clean.

    Raises only for I/O errors (ImageError when the file cannot be opened) and
    ImageVersionError for a newer major version, which this cpt cannot check.
    """
    return verify_report(source, chunk_size=chunk_size).problems


def verify_report(
    source: str | os.PathLike[str] | BinaryIO, *, chunk_size: int = 1 << 20
) -> Report:
    """Problems, warnings and the header (for host checks) of one image."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            f: BinaryIO = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
        except OSError as e:
            raise ImageError(f"cannot open: {e.strerror}", path=path) from None
        with f:
            return _verify(f, path, chunk_size)
    name = getattr(source, "name", None)
    return _verify(source, name if isinstance(name, str) else None, chunk_size)


def _verify(f: BinaryIO, path: str | None, chunk_size: int) -> Report:
    v = _Verifier(path)
    v.run(f, chunk_size)
    if v.complete and v.header is not None:
        _Structure(v).run()
    return Report(v.problems, v.warnings, v.header)


__all__ = ["Problem", "Report", "enum_problems", "verify", "verify_report"]
