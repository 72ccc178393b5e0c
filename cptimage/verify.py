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
import stat
import struct
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, NamedTuple

from . import records as R
from .container import (
    FORMAT_MINOR,
    SECTION_VERSIONS,
    SectionInfo,
    StreamedSection,
    StreamedTrailer,
    decompress,
    open_regular,
    parse_header_record,
    walk,
)
from .errors import ImageError, ImageVersionError, quote
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


def _to_outside(entries: list[Any], inside: int) -> int | None:
    """The host id of a namespace's id through a map (IdMap items); None: unmapped."""
    for e in entries:
        if e.inside <= inside < e.inside + e.count:
            return int(e.outside + inside - e.inside)
    return None


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
        import zstandard  # (and platform: for compressed pages only)

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
    "PidFd",
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
            "SeccompStrict",
            "PendingSignal",
            "Mm",
            "Vma",
            "Fd",
            "FileLock",
            "NsCreds",
            "ThreadSched",
            "TaskExtra",
            "Owner",
            "FileOwner",
            "GuardRegion",
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
    ("FileOwner", "file_id", "file", False),
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
PER_PROCESS = (
    "Creds", "Rlimits", "Sigactions", "TaskState", "Itimers", "Mm", "NsCreds", "TaskExtra",
    "TaskShares",
)  # fmt: skip
_SCHED_POLICIES = (0, 1, 2, 3, 5, 6)  # NORMAL, FIFO, RR, BATCH, IDLE, DEADLINE
_STOP_SIGNALS = (0, 19, 20, 21, 22)  # none, SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU
_MEMBARRIER_BITS = (1 << 2) | (1 << 4) | (1 << 6) | (1 << 8)  # the REGISTER_* commands
_ID_FIELDS = ("uid", "euid", "suid", "fsuid", "gid", "egid", "sgid", "fsgid")
_MAX_ID_MAP_LINES = 340  # the kernel's limit per map (user_namespaces(7))
_FILE_KINDS = (R.VmaKind.FILE_PRIVATE, R.VmaKind.FILE_SHARED)


def _ring(name: str, field: str, rec: Any) -> bool:
    """A Vma mapping a packet socket's rings: its file_id names a description, not a path."""
    return name == "Vma" and field == "file_id" and rec.kind == R.VmaKind.PACKET_RING


_SHMEM_KINDS = (R.VmaKind.SHMEM, R.VmaKind.SYSV_SHM)
_RUN_KINDS = (R.PageFlags.PRESENT, R.PageFlags.PARENT, R.PageFlags.ZERO)
# what a pre-dump (HeaderFlags.PREDUMP) may hold: its processes, their VMAs and pages
PREDUMP_RECORDS = frozenset({"Process", "Vma", "ShmemObject", "PagemapRun", "Parent"})
# what a live process always has (SPEC.md section 11); Itimers may be absent
REQUIRED = ("Creds", "Rlimits", "Sigactions", "TaskState", "Mm")
# (record, field, the kinds of PathObj it may name)
_REG, _DIR, _DEVS = R.PathKind.REG, R.PathKind.DIR, (R.PathKind.CHR, R.PathKind.BLK)
PATH_KINDS: list[tuple[str, str, tuple[R.PathKind, ...]]] = [
    ("TaskState", "cwd_id", (_DIR,)),
    ("TaskState", "root_id", (_DIR,)),
    ("Mm", "exe_id", (_REG,)),
    ("Vma", "file_id", (_REG, *_DEVS)),
    ("RegFile", "path_id", (_REG, _DIR, *_DEVS, R.PathKind.LNK)),
    ("Fifo", "path_id", (R.PathKind.FIFO,)),
    ("Tty", "path_id", (R.PathKind.CHR,)),
]
# (record, field, the kinds of ShmemObject it may name); a Vma's depends on its kind
SHMEM_KINDS: list[tuple[str, str, tuple[R.ShmemKind, ...]]] = [
    ("MemfdFile", "shmem_id", (R.ShmemKind.MEMFD,)),
    ("SysvShm", "shmem_id", (R.ShmemKind.SYSV,)),
    ("Vma", "shmem_id", ()),
]
_SHMEM_VMA_KINDS = {
    R.VmaKind.SHMEM: (R.ShmemKind.SHARED_ANON, R.ShmemKind.MEMFD),
    R.VmaKind.SYSV_SHM: (R.ShmemKind.SYSV,),
}
_MODE_KINDS = {
    stat.S_IFREG: R.PathKind.REG,
    stat.S_IFDIR: R.PathKind.DIR,
    stat.S_IFCHR: R.PathKind.CHR,
    stat.S_IFBLK: R.PathKind.BLK,
    stat.S_IFIFO: R.PathKind.FIFO,
    stat.S_IFSOCK: R.PathKind.SOCK,
    stat.S_IFLNK: R.PathKind.LNK,
}
# Linux values the kernel holds restored values to
COMM_MAX = 15  # TASK_COMM_LEN - 1
ROBUST_LIST_HEAD_SIZE = 24  # sizeof(struct robust_list_head), 64-bit
RSEQ_MIN = 32  # ORIG_RSEQ_SIZE, and the alignment of struct rseq
SS_FLAGS = 1 | 2 | 1 << 31  # SS_ONSTACK, SS_DISABLE, SS_AUTODISARM
PROT_RWX = 7
SECUREBITS = 0xFFF  # SECBIT_* and their locks (Linux 6.14: up to EXEC_DENY_INTERACTIVE)
# every flag open(2) keeps (VALID_OPEN_FLAGS), as fdinfo shows a description's flags
OPEN_FLAGS = (
    os.O_ACCMODE
    | os.O_CREAT
    | os.O_EXCL
    | os.O_NOCTTY
    | os.O_TRUNC
    | os.O_APPEND
    | os.O_NONBLOCK
    | os.O_DSYNC
    | 0o20000
    | os.O_DIRECT
    | 0o100000
    | os.O_DIRECTORY
    | os.O_NOFOLLOW
    | os.O_NOATIME
    | os.O_CLOEXEC
    | os.O_SYNC
    | os.O_PATH
    | os.O_TMPFILE
)  # fmt: skip  (0o20000 FASYNC, 0o100000 O_LARGEFILE: 0 in Python's os on x86_64)
TASK_SIZE_MAX = 1 << 56  # the user address space, 5-level paging (4-level: 1 << 47)
MM_PAIRS = (
    ("start_code", "end_code"),
    ("start_data", "end_data"),
    ("start_brk", "brk"),
    ("arg_start", "arg_end"),
    ("env_start", "env_end"),
)
NO_ID = 0xFFFF_FFFF  # (uid_t)-1
NGROUPS_MAX = 65536
RLIM_NLIMITS = 16
RLIM_INFINITY = (1 << 64) - 1
NSIG = 64
UNCATCHABLE = (9, 19)  # SIGKILL, SIGSTOP
SIGINFO_SIZE = 128
BPF_INSN_SIZE, BPF_MAXINSNS = 8, 4096
FD_MAX = 1 << 30  # above the largest fs.nr_open
FD_CLOEXEC = 1
PIPE_MAX = 1 << 30  # the largest power of two F_SETPIPE_SZ's int argument holds
SOCK_TYPES_UNIX = (1, 2, 5)  # SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET
INET_FAMILIES = (2, 10)
ADDR_SIZES = {2: 4, 10: 16}
TIMERFD_CLOCKS = (0, 1, 7, 8, 9)  # REALTIME, MONOTONIC, BOOTTIME, *_ALARM
HOST_NAME_MAX = 64
IFNAMSIZ = 16
NAME_MAX = 255
SEMMSL = 32000
# a mount point, a snapshot path, a file's path: absolute, one name per component
_MAX_PATH = 4096


def _wait_status(status: int) -> bool:
    """Whether wait(2) could give ``status`` for a process that ended: exited with a code,
    or killed by a signal 1-64 (with or without a core dump)."""
    if status & ~0xFFFF or status < 0:
        return False
    sig = status & 0x7F
    return (sig == 0 and not status & 0x80) or (1 <= sig <= NSIG and not status >> 8)


def _path_problem(path: str) -> str:
    """Why ``path`` is not an absolute, canonical path (what the kernel shows), or ""."""
    if not path.startswith("/"):
        return "is not absolute"
    if "\0" in path:
        return "holds a NUL byte"
    if len(path.encode("utf-8", "surrogateescape")) >= _MAX_PATH:
        return f"is longer than {_MAX_PATH} bytes"
    if path != "/" and any(c in ("", ".", "..") for c in path[1:].split("/")):
        return "has an empty, '.' or '..' component"
    return ""


def _name(e: type[enum.IntEnum], v: int) -> str:
    return e(v).name if v in e._value2member_map_ else str(v)


def _ids(chain: list[int]) -> str:
    return "[" + ", ".join(map(str, chain[:8])) + (", ...]" if len(chain) > 8 else "]")


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
        self._header_flags()
        self._owner()
        if self.readable("Process"):
            self._tree()
            self._shares()
        if self.readable("Process", "Thread"):
            self._threads()
            self._thread_ids()
        if self.readable("Process", "Thread", *PER_PROCESS):
            self._complete()
        vmas = self._vmas(spaces["shmem"])
        if self.readable("Process", "Vma", "ShmemObject", "PagemapRun"):
            self._pagemap(vmas)
        self._task_values()
        self._kinds(spaces)
        self._files(spaces)
        self._namespaces()
        self._ipc()
        if self.readable("UserNs", "NsCreds", "Creds", "Process"):
            self._userns()
        self._kind()

    def _kind(self) -> None:
        """What each kind of image must and must not hold (SPEC.md 5, "Chains")."""
        h = self.header
        incremental = bool(h.flags & R.HeaderFlags.INCREMENTAL)
        orphan = h.parent_uuid == bytes(16)
        parents = self.recs.get("Parent", [])
        if incremental and orphan:
            self.v.add("header", "INCREMENTAL, but the parent UUID is zero", "Header")
        if not incremental and not orphan:
            self.v.add("header", "a parent UUID in an image that is not INCREMENTAL", "Header")
        if self.readable("Parent"):
            if incremental and len(parents) != 1:
                self.v.add(
                    "CHAIN",
                    f"an incremental image holds one Parent record, this one {len(parents)}",
                )
            elif not incremental and parents:
                self.bad(parents[0], "a Parent record in an image that is not INCREMENTAL")
        for r in parents:
            if r.rec.uuid != h.parent_uuid:
                self.bad(
                    r,
                    f"names the parent {r.rec.uuid.hex()}, the header {h.parent_uuid.hex()}",
                )
            if not r.rec.name:
                self.bad(r, "the parent's file name is empty")
        if h.flags & R.HeaderFlags.PREDUMP:
            for name, recs in self.recs.items():
                if name not in PREDUMP_RECORDS and recs:
                    self.bad(recs[0], f"a pre-dump holds memory only: no {name} records")

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
                if (v == 0 and zero_ok) or _ring(name, field, r.rec):
                    continue
                if v not in ids:
                    self.bad(
                        r, f"{field} {v} refers to no {_NOUNS.get(space, SPACES[space][0][0])}"
                    )

    def _guards(self) -> None:
        """A GuardRegion: page-aligned, not empty, inside one private Vma of its process."""
        if not self.readable("GuardRegion", "Vma"):
            return
        vmas: dict[int, list[Any]] = defaultdict(list)
        for r in self.recs.get("Vma", []):
            vmas[r.rec.pid].append(r.rec)
        for r in self.recs.get("GuardRegion", []):
            g = r.rec
            if g.start % self.ps or g.end % self.ps or g.start >= g.end:
                self.bad(r, f"guard region {g.start:#x}-{g.end:#x} is not whole pages")
            elif not any(v.start <= g.start and g.end <= v.end for v in vmas[g.pid]):
                self.bad(r, f"guard region {g.start:#x}-{g.end:#x} is in no mapping of its process")

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
            self.v.add("PROCESS", "the image holds no process")
            return
        for r in procs.values():
            p = r.rec
            if p.state == R.ProcessState.ZOMBIE and p.ppid == 0:
                self.bad(r, "the root of the tree is a zombie")
            if p.state == R.ProcessState.ZOMBIE and not _wait_status(p.exit_status):
                self.bad(r, f"exit_status {p.exit_status:#x} is no status of a dead process")
            if p.exit_signal > NSIG:
                self.bad(r, f"exit_signal {p.exit_signal} is no signal")
            parent = procs.get(p.ppid)
            if parent is not None and parent.rec.state == R.ProcessState.ZOMBIE:
                self.bad(r, f"its parent {p.ppid} is a zombie, which has no children")
        roots = [r for r in procs.values() if r.rec.ppid == 0]
        if len(roots) != 1:
            self.v.add("PROCESS", f"{len(roots)} root processes (ppid 0); a tree has exactly one")
        elif roots[0].rec.pid != self.header.root_pid:
            self.bad(
                roots[0], f"the root is {roots[0].rec.pid}, the header says {self.header.root_pid}"
            )
        else:
            self._sessions(procs, roots[0].rec)
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

    def _owner(self) -> None:
        """The tree's owner (format 1.2): one, the root's, and only for a tree dumped by
        --pid (a VE has none)."""
        owners = self.recs.get("Owner", [])
        for r in owners[1:]:
            self.bad(r, "a second Owner: an image records one owner")
        for r in owners[:1]:
            if self.header.source_kind == R.SourceKind.VE:
                self.bad(r, "an Owner in the image of a VE (only a tree dumped by --pid has one)")
            elif self.header.root_pid and r.rec.pid != self.header.root_pid:
                self.bad(r, f"the owner's pid is {r.rec.pid}, the root is {self.header.root_pid}")

    # -- the header

    def _header_flags(self) -> None:
        h = self.header
        ve_flag = bool(h.flags & R.HeaderFlags.VE)
        if ve_flag != (h.source_kind == R.SourceKind.VE):
            self.v.add(
                "header",
                f"flags {'have' if ve_flag else 'lack'} VE but the source kind is "
                f"{_name(R.SourceKind, h.source_kind)}",
                "Header",
            )
        if ve_flag and not h.flags & R.HeaderFlags.PIDNS:
            self.v.add("header", "a VE's image without PIDNS: its init is the VE's pid 1", "Header")
        incremental = bool(h.flags & R.HeaderFlags.INCREMENTAL)
        if incremental != any(h.parent_uuid):
            self.v.add(
                "header",
                "an INCREMENTAL image needs its parent's uuid"
                if incremental
                else "a parent uuid in an image that is not INCREMENTAL",
                "Header",
            )

    # -- processes

    def _shares(self) -> None:
        """TaskShares (1.7): a live process sharing what it shares with a live parent."""
        procs = {r.rec.pid: r.rec for r in self.recs.get("Process", [])}
        for r in self.recs.get("TaskShares", []):
            s = r.rec
            if self.v.minor < 7:
                self.bad(r, "TaskShares is of format 1.7")
            if not s.flags:
                self.bad(r, "flags 0: it shares nothing")
            p = procs.get(s.pid)
            if p is None or p.state != R.ProcessState.ALIVE:
                self.bad(r, f"process {s.pid} is not a live process of the image")
                continue
            parent = procs.get(p.ppid)
            if parent is None or parent.state != R.ProcessState.ALIVE:
                self.bad(r, f"process {s.pid} shares with its parent {p.ppid}, no live process")

    def _sessions(self, procs: dict[int, _Rec], root: Any) -> None:
        """Restore makes sessions by setsid() in their leader and groups by setpgid(): a
        session or group led from outside the tree is the root's own or (format 1.7) one
        whose leader had exited, rebuilt with a temporary leader: a group's members are of
        one session, a session's members whose parent is in another session share that
        parent (the temporary leader forks them with CLONE_PARENT)."""
        dead_sessions: dict[int, set[int]] = defaultdict(set)
        dead_groups: dict[int, set[int]] = defaultdict(set)
        tids = {r.rec.tid for r in self.recs.get("Thread", [])}
        for r in procs.values():
            p = r.rec
            for what, ident, outside in (
                ("session", p.sid, root.sid),
                ("process group", p.pgid, root.pgid),
            ):
                if ident in procs or ident == outside:
                    continue
                if self.v.minor < 7:
                    self.bad(
                        r,
                        f"{what} {ident} has its leader neither in the tree nor is it the "
                        f"root's own ({outside})",
                    )
                elif ident in tids:
                    self.bad(r, f"{what} {ident} has no leader but thread {ident} has its id")
                elif what == "process group":
                    dead_groups[ident].add(p.sid)
                elif p.ppid in procs and procs[p.ppid].rec.sid != p.sid:
                    dead_sessions[ident].add(p.ppid)
            leader = procs.get(p.pgid)
            if leader is not None and leader.rec.sid != p.sid:
                self.bad(
                    r,
                    f"process group {p.pgid} is led by a process of session {leader.rec.sid}, "
                    f"not of its session {p.sid}",
                )
        for pgid, sids in sorted(dead_groups.items()):
            if len(sids) > 1:
                self.v.add("PROCESS", f"process group {pgid} spans sessions {sorted(sids)}")
        for sid, parents in sorted(dead_sessions.items()):
            if len(parents) > 1:
                self.v.add(
                    "PROCESS",
                    f"session {sid}, whose leader had exited, has members of parents "
                    f"{sorted(parents)} outside it: restore can rebuild only one",
                )

    def _complete(self) -> None:
        """A live process has its threads (its leader among them) and one of each
        per-process record: a missing Creds would leave it the restorer's root.  (A
        pre-dump holds memory only: none of them.)"""
        if self.header.flags & R.HeaderFlags.PREDUMP:
            return
        has: dict[str, set[int]] = {
            name: {r.rec.pid for r in self.recs.get(name, [])} for name in REQUIRED
        }
        threads: dict[int, set[int]] = defaultdict(set)
        for r in self.recs.get("Thread", []):
            threads[r.rec.pid].add(r.rec.tid)
        for r in self.recs.get("Process", []):
            p = r.rec
            if p.state != R.ProcessState.ALIVE:
                continue
            if not threads.get(p.pid):
                self.bad(r, f"process {p.pid} has no Thread")
            elif p.pid not in threads[p.pid]:
                self.bad(r, f"process {p.pid} has no leader thread (tid {p.pid})")
            missing = [name for name in REQUIRED if p.pid not in has[name]]
            if missing:
                self.bad(r, f"process {p.pid} has no {', '.join(missing)}")

    def _thread_ids(self) -> None:
        """pid/tid as the dumper saw them come first in the namespace id chains; a VE's
        processes get back the ids they had inside, which must be unique there."""
        procs = {r.rec.pid: r for r in self.recs.get("Process", [])}
        for r in procs.values():
            p = r.rec
            if p.nspid and p.nspid[0] != p.pid:
                self.bad(r, f"nspid {_ids(p.nspid)} does not start with its pid {p.pid}")
            self._comm(r, p.comm)
        for r in self.recs.get("Thread", []):
            t = r.rec
            self._comm(r, t.comm)
            proc = procs.get(t.pid)
            if proc is None or not t.nstid:
                continue
            nspid = proc.rec.nspid
            if t.nstid[0] != t.tid:
                self.bad(r, f"nstid {_ids(t.nstid)} does not start with its tid {t.tid}")
            elif nspid and len(t.nstid) != len(nspid):
                self.bad(r, f"nstid {_ids(t.nstid)} and its process's nspid differ in depth")
            elif t.tid == t.pid and nspid and t.nstid != nspid:
                self.bad(r, f"the leader's nstid {_ids(t.nstid)} is not its nspid")
        root = procs.get(self.header.root_pid)
        if not self.header.flags & R.HeaderFlags.PIDNS or root is None or not root.rec.nspid:
            return
        depth = len(root.rec.nspid) - 1
        if root.rec.nspid[-1] != 1:
            self.bad(root, f"the root of a PIDNS image is pid {root.rec.nspid[-1]} inside, not 1")
        for name, field, ids in (
            ("Process", "nspid", "pid"),
            ("Thread", "nstid", "tid"),
        ):
            seen: dict[int, _Rec] = {}
            for r in self.recs.get(name, []):
                chain = getattr(r.rec, field)
                if len(chain) <= depth:
                    if chain:
                        self.bad(r, f"{field} {_ids(chain)} does not reach the tree's namespace")
                    continue
                inner = chain[depth]
                if inner in seen:
                    self.bad(r, f"{ids} {inner} inside is used twice (also {seen[inner].label})")
                seen[inner] = r

    def _mm(self, r: _Rec) -> None:
        """What prctl(PR_SET_MM_MAP) takes back: ordered pairs in the user address space,
        and an auxiliary vector of (type, value) pairs ending with AT_NULL."""
        m = r.rec
        for lo, hi in MM_PAIRS:
            a, b = getattr(m, lo), getattr(m, hi)
            if a > b:
                self.bad(r, f"{lo} {a:#x} is above {hi} {b:#x}")
        for f in (*(p for pair in MM_PAIRS for p in pair), "start_stack"):
            if getattr(m, f) >= TASK_SIZE_MAX:
                self.bad(r, f"{f} {getattr(m, f):#x} is beyond the user address space")
        lock = m.flags & (R.MmFlags.LOCK_FUTURE | R.MmFlags.LOCK_ONFAULT)
        if lock and self.v.minor < 7:
            self.bad(r, f"flags {m.flags:#x}: LOCK_FUTURE and LOCK_ONFAULT are of format 1.7")
        if lock == R.MmFlags.LOCK_ONFAULT:
            self.bad(r, f"flags {m.flags:#x}: LOCK_ONFAULT without LOCK_FUTURE")
        aux = m.auxv
        if aux and (len(aux) % 2 or aux[-2:] != [0, 0]):
            self.bad(r, f"auxv holds {len(aux)} words, not (type, value) pairs ending in AT_NULL")

    def _comm(self, r: _Rec, comm: str) -> None:
        n = len(comm.encode("utf-8", "surrogateescape"))
        if n > COMM_MAX:
            self.bad(r, f"comm {quote(comm)} holds {n} bytes; the kernel keeps {COMM_MAX}")

    def _task_values(self) -> None:
        """Values restore hands to the kernel: each must be one it takes back."""
        for r in self.recs.get("Creds", []):
            c = r.rec
            for f in ("uid", "euid", "suid", "fsuid", "gid", "egid", "sgid", "fsgid"):
                if getattr(c, f) == NO_ID:
                    self.bad(r, f"{f} {NO_ID} is (uid_t)-1, which set*id() reads as 'unchanged'")
            if c.securebits & ~SECUREBITS:
                self.bad(r, f"securebits {c.securebits:#x} hold unknown bits")
            if c.cap_eff & ~c.cap_prm:
                self.bad(r, f"effective capabilities {c.cap_eff:#x} beyond the permitted ones")
            if c.cap_amb & ~(c.cap_prm & c.cap_inh):
                self.bad(
                    r, f"ambient capabilities {c.cap_amb:#x} beyond the permitted and inheritable"
                )
            if NO_ID in c.groups:
                self.bad(r, f"groups hold {NO_ID}, which is no group")
            if len(c.groups) > NGROUPS_MAX:
                self.bad(r, f"{len(c.groups)} groups; the kernel takes {NGROUPS_MAX}")
        for r in self.recs.get("Rlimits", []):
            seen: set[int] = set()
            for i, lim in enumerate(r.rec.limits):
                at = f"limits[{i}]"
                if lim.resource >= RLIM_NLIMITS:
                    self.bad(r, f"{at}: resource {lim.resource} is not one of the {RLIM_NLIMITS}")
                elif lim.resource in seen:
                    self.bad(r, f"{at}: resource {lim.resource} is listed twice")
                seen.add(lim.resource)
                for f in ("cur", "max"):
                    v = getattr(lim, f)
                    if (1 << 63) <= v < RLIM_INFINITY:
                        self.bad(r, f"{at}.{f} {v} is neither a limit (< 2^63) nor unlimited")
                if lim.cur > lim.max:
                    self.bad(r, f"{at}: soft limit {lim.cur} is above the hard limit {lim.max}")
        for r in self.recs.get("Sigactions", []):
            seen = set()
            for i, a in enumerate(r.rec.actions):
                if not 1 <= a.signo <= NSIG or a.signo in UNCATCHABLE:
                    self.bad(r, f"actions[{i}]: signal {a.signo} has no action to restore")
                elif a.signo in seen:
                    self.bad(r, f"actions[{i}]: signal {a.signo} is listed twice")
                seen.add(a.signo)
        for r in self.recs.get("Mm", []):
            self._mm(r)
        for r in self.recs.get("TaskState", []):
            t = r.rec
            if t.umask > 0o777:
                self.bad(r, f"umask {t.umask:#o} has bits beyond 0777")
            if t.pdeath_sig > NSIG:
                self.bad(r, f"pdeath_sig {t.pdeath_sig} is no signal")
            if t.dumpable > 2:
                self.bad(r, f"dumpable {t.dumpable} is not 0, 1 or 2")
            if not -1000 <= t.oom_score_adj <= 1000:
                self.bad(r, f"oom_score_adj {t.oom_score_adj} is outside -1000..1000")
        for r in self.recs.get("ThreadSched", []):
            t = r.rec
            if t.policy not in _SCHED_POLICIES:
                self.bad(r, f"scheduling policy {t.policy} is unknown")
            if t.flags & ~1:
                self.bad(r, f"scheduling flags {t.flags:#x} beyond SCHED_FLAG_RESET_ON_FORK")
            if not -20 <= t.nice <= 19:
                self.bad(r, f"nice {t.nice} is outside -20..19")
            if t.policy in (1, 2) and not 1 <= t.priority <= 99:
                self.bad(r, f"real-time priority {t.priority} is outside 1..99")
            elif t.policy not in (1, 2) and t.priority:
                self.bad(r, f"priority {t.priority} for a policy that has none")
        for r in self.recs.get("TaskExtra", []):
            t = r.rec
            if t.stop_signal not in _STOP_SIGNALS:
                self.bad(r, f"stop_signal {t.stop_signal} is no stop signal")
            if t.membarrier & ~_MEMBARRIER_BITS:
                self.bad(r, f"membarrier registrations {t.membarrier:#x} has unknown bits")
        tids: dict[int, set[int]] = defaultdict(set)
        for r in self.recs.get("Thread", []):
            tids[r.rec.pid].add(r.rec.tid)
        for name, field in (
            ("ThreadSched", "tid"),
            ("PendingSignal", "tid"),
            ("SeccompFilter", "tid"),
            ("SeccompStrict", "tid"),
            ("PosixTimer", "notify_tid"),
        ):
            for r in self.recs.get(name, []):
                tid = getattr(r.rec, field)
                if tid and r.rec.pid in tids and tid not in tids[r.rec.pid]:
                    self.bad(r, f"{field} {tid} is not a thread of process {r.rec.pid}")
        filtered = {(r.rec.pid, r.rec.tid) for r in self.recs.get("SeccompFilter", [])}
        for r in self.recs.get("SeccompStrict", []):
            if (r.rec.pid, r.rec.tid) in filtered:
                self.bad(r, f"thread {r.rec.tid} has seccomp filters and strict mode")
        for r in self.recs.get("PendingSignal", []):
            if not 1 <= r.rec.signo <= NSIG:
                self.bad(r, f"signo {r.rec.signo} is no signal")
            if len(r.rec.siginfo) != SIGINFO_SIZE:
                self.bad(r, f"siginfo holds {len(r.rec.siginfo)} bytes, expected {SIGINFO_SIZE}")
        for r in self.recs.get("PosixTimer", []):
            if not 0 <= r.rec.signo <= NSIG:
                self.bad(r, f"signo {r.rec.signo} is no signal")
        self._unique_per(
            "SeccompFilter",
            lambda f: (f.pid, f.tid, f.index),
            "filter {2} of thread {1} of process {0} is listed twice",
        )
        for r in self.recs.get("SeccompFilter", []):
            n = len(r.rec.program)
            if not n or n % BPF_INSN_SIZE or n // BPF_INSN_SIZE > BPF_MAXINSNS:
                self.bad(
                    r,
                    f"a program of {n} bytes is not 1..{BPF_MAXINSNS} instructions of "
                    f"{BPF_INSN_SIZE} bytes",
                )

    # -- what refers to what kind of thing

    def _kinds(self, spaces: dict[str, dict[int, _Rec]]) -> None:
        """A reference resolves to a record of the right kind (the id checks say that it
        resolves at all)."""
        paths, shmem = spaces["path"], spaces["shmem"]
        for name, field, kinds in PATH_KINDS:
            if not self.readable(name, "PathObj"):
                continue
            for r in self.recs.get(name, []):
                if _ring(name, field, r.rec):
                    continue
                target = paths.get(getattr(r.rec, field))
                if target is not None and target.rec.kind not in kinds:
                    self.bad(
                        r,
                        f"{field} {target.rec.id} is a {_name(R.PathKind, target.rec.kind)}, "
                        f"not a {' or '.join(k.name for k in kinds)}",
                    )
        if self.readable("Vma", *DESCRIPTIONS):
            for r in self.recs.get("Vma", []):
                if r.rec.kind == R.VmaKind.PACKET_RING:
                    target = spaces["file"].get(r.rec.file_id)
                    if target is None or not isinstance(target.rec, R.PacketSocket):
                        self.bad(r, f"file_id {r.rec.file_id} (rings mapped) is no packet socket")
        for name, field, skinds in SHMEM_KINDS:
            if not self.readable(name, "ShmemObject"):
                continue
            for r in self.recs.get(name, []):
                if name == "Vma" and r.rec.kind not in _SHMEM_VMA_KINDS:
                    continue
                want = _SHMEM_VMA_KINDS.get(r.rec.kind, skinds) if name == "Vma" else skinds
                target = shmem.get(getattr(r.rec, field))
                if target is not None and target.rec.kind not in want:
                    self.bad(
                        r,
                        f"{field} {target.rec.id} is a {_name(R.ShmemKind, target.rec.kind)} "
                        f"object, not a {' or '.join(k.name for k in want)}",
                    )
        if self.readable("Process", "Vma", "Fd", "PagemapRun"):
            alive = {
                r.rec.pid
                for r in self.recs.get("Process", [])
                if r.rec.state == R.ProcessState.ALIVE
            }
            known = {r.rec.pid for r in self.recs.get("Process", [])}
            for name in ("Vma", "Fd", "Mm"):
                for r in self.recs.get(name, []):
                    if r.rec.pid in known and r.rec.pid not in alive:
                        self.bad(r, f"process {r.rec.pid} is not alive: it has no {name}")

    # -- files

    def _files(self, spaces: dict[str, dict[int, _Rec]]) -> None:
        for r in self.recs.get("PathObj", []):
            p = r.rec
            why = _path_problem(p.path)
            if why:
                self.bad(r, f"path {quote(p.path)} {why}")
            fmt = stat.S_IFMT(p.mode)
            if fmt and _MODE_KINDS.get(fmt) != p.kind:
                self.bad(r, f"mode {p.mode:#o} is not that of a {_name(R.PathKind, p.kind)} path")
            ghost = bool(p.flags & R.PathFlags.GHOST)
            if ghost and not p.flags & R.PathFlags.DELETED:
                self.bad(r, "a GHOST path that is not DELETED")
            if ghost and len(p.contents) != p.size:
                self.bad(r, f"a ghost of {p.size} bytes holds {len(p.contents)}")
            if p.contents and not ghost:
                self.bad(r, "contents in a path that is not a GHOST")
            if ghost and p.kind != R.PathKind.REG:
                if p.kind not in (R.PathKind.DIR, R.PathKind.FIFO) or self.v.minor < 7:
                    self.bad(r, f"a GHOST of kind {_name(R.PathKind, p.kind)}")
                elif p.size:
                    self.bad(r, f"a removed {_name(R.PathKind, p.kind)} of {p.size} bytes")
            if p.mtime_ns >= 1 << 63:
                self.bad(r, f"mtime_ns {p.mtime_ns} is beyond any time (a signed 64-bit count)")
        for name in DESCRIPTIONS:
            for r in self.recs.get(name, []):
                if r.rec.flags & ~OPEN_FLAGS:
                    self.bad(r, f"flags {r.rec.flags:#o} hold bits that are no open(2) flag")
        for name in ("RegFile", "MemfdFile"):
            for r in self.recs.get(name, []):
                if r.rec.pos >= 1 << 63:
                    self.bad(r, f"pos {r.rec.pos} is beyond any file offset (off_t)")
        for r in self.recs.get("Fd", []):
            if r.rec.fd >= FD_MAX:
                self.bad(r, f"fd {r.rec.fd} is beyond any fd table ({FD_MAX})")
            if r.rec.flags & ~FD_CLOEXEC:
                self.bad(r, f"fd flags {r.rec.flags:#x}: FD_CLOEXEC is the only one")
        if self.readable(*DESCRIPTIONS, "Fd"):
            used = {r.rec.file_id for r in self.recs.get("Fd", [])}
            # files in flight: carried in a unix socket's queue, held by no fd
            used |= {f for r in self.recs.get("UnixScm", []) for f in r.rec.fds}
            for name in DESCRIPTIONS:
                for r in self.recs.get(name, []):
                    if r.rec.id not in used:
                        self.bad(r, f"open-file description {r.rec.id} is in no fd table")
        if self.readable("Fd", "FileLock", "FileOwner"):
            fds = {(r.rec.pid, r.rec.fd): r.rec.file_id for r in self.recs.get("Fd", [])}
            for r in self.recs.get("FileLock", []) + self.recs.get("FileOwner", []):
                lk = r.rec
                got = fds.get((lk.pid, lk.fd))
                if got is None:
                    self.bad(r, f"fd {lk.fd} of process {lk.pid} is not in the image")
                elif got != lk.file_id:
                    self.bad(r, f"fd {lk.fd} of process {lk.pid} is description {got}")
        self._guards()
        self._unique_per("FileOwner", lambda o: o.file_id, "description {} has two owners")
        for r in self.recs.get("FileOwner", []):
            if r.rec.signum > NSIG:
                self.bad(r, f"signum {r.rec.signum} is no signal")
        if self.readable("PidFd", "Process", "Thread"):
            tids = {r.rec.tid for r in self.recs.get("Thread", [])}
            tids |= {r.rec.pid for r in self.recs.get("Process", [])}  # zombies have no Thread
            for r in self.recs.get("PidFd", []):
                if r.rec.pid != -1 and r.rec.pid not in tids:
                    self.bad(r, f"pid {r.rec.pid} is no process or thread of the image")
        self._pipes()
        for r in self.recs.get("UnixSocket", []):
            if r.rec.type not in SOCK_TYPES_UNIX:
                self.bad(r, f"type {r.rec.type} is not a unix socket type")
            fmt = stat.S_IFMT(r.rec.fmode)
            if r.rec.fmode & ~0o177777 or fmt not in (0, stat.S_IFSOCK):
                self.bad(r, f"fmode {r.rec.fmode:#o} is not the mode of a socket file")
        for r in self.recs.get("ShmemObject", []):
            if r.rec.size >= 1 << 63:
                self.bad(r, f"size {r.rec.size} is beyond any file size (off_t)")
        self._unique_per("UnixSocket", lambda u: u.ino, "socket inode {} is listed twice")
        for r in self.recs.get("InetSocket", []):
            if r.rec.family not in INET_FAMILIES:
                self.bad(r, f"family {r.rec.family} is not AF_INET or AF_INET6")
        for r in self.recs.get("TimerFd", []):
            if r.rec.clockid not in TIMERFD_CLOCKS:
                self.bad(r, f"clockid {r.rec.clockid} is not a clock a timerfd takes")
        for r in self.recs.get("Tty", []):
            if r.rec.kind in (R.TtyKind.PTY_MASTER, R.TtyKind.PTY_SLAVE) and not r.rec.tty_id:
                self.bad(r, "a pseudo-terminal end without its TtyInfo")
        self._unique_per(
            "EpollTarget", lambda t: (t.epoll_id, t.tfd), "fd {1} is in epoll {0} twice"
        )
        for r in self.recs.get("EpollTarget", []):
            if r.rec.target_id == r.rec.epoll_id:
                self.bad(r, f"epoll {r.rec.epoll_id} watches itself")
        self._unique_per(
            "InotifyWatch", lambda w: (w.inotify_id, w.wd), "watch {1} is in inotify {0} twice"
        )

    def _pipes(self) -> None:
        """Every pipe has its buffer (PipeData, empty or not); every buffer a pipe or
        FIFO of the image, and no more bytes than its capacity."""
        if not self.readable("Pipe", "Fifo", "PipeData"):
            return
        data = {}
        for r in self.recs.get("PipeData", []):
            d = r.rec
            if d.ino in data:
                self.bad(r, f"pipe inode {d.ino} has a second PipeData")
            data[d.ino] = r
            cap = d.capacity
            if cap and (cap < self.ps or cap & (cap - 1) or cap > PIPE_MAX):
                self.bad(r, f"capacity {cap} is not a power of two from one page to {PIPE_MAX}")
            if cap and len(d.data) > cap:
                self.bad(r, f"{len(d.data)} bytes pending in a pipe of {cap}")
        inos = {r.rec.ino for name in ("Pipe", "Fifo") for r in self.recs.get(name, [])}
        for r in self.recs.get("Pipe", []):
            if r.rec.ino not in data:
                self.bad(r, f"pipe inode {r.rec.ino} has no PipeData")
        for ino, r in data.items():
            if ino not in inos:
                self.bad(r, f"pipe inode {ino} is no Pipe's or Fifo's")

    # -- namespaces

    def _namespaces(self) -> None:
        procs = {r.rec.pid for r in self.recs.get("Process", [])}
        self._unique_per("Namespace", lambda n: n.kind, "a second namespace of kind {}")
        for r in self.recs.get("Namespace", []):
            if r.rec.pid not in procs and self.readable("Process"):
                self.bad(r, f"pid {r.rec.pid} refers to no process")
        utss = self.recs.get("Uts", [])
        for r in utss[1:]:
            self.bad(r, "a second Uts record")
        for r in utss:
            for f in ("hostname", "domainname"):
                v = getattr(r.rec, f)
                n = len(v.encode("utf-8", "surrogateescape"))
                if n > HOST_NAME_MAX:
                    self.bad(r, f"{f} {quote(v)} holds {n} bytes; the kernel takes {HOST_NAME_MAX}")
        links: dict[int, _Rec] = {}
        for r in self.recs.get("NetLink", []):
            if r.rec.ifindex in links:
                self.bad(r, f"ifindex {r.rec.ifindex} is used twice")
            links[r.rec.ifindex] = r
            n = len(r.rec.name.encode("utf-8", "surrogateescape"))
            if not 0 < n < IFNAMSIZ or "/" in r.rec.name or r.rec.name.strip() != r.rec.name:
                self.bad(r, f"name {quote(r.rec.name)} is no interface name")
        for r in self.recs.get("NetAddr", []):
            a = r.rec
            if a.ifindex not in links:
                self.bad(r, f"ifindex {a.ifindex} refers to no NetLink")
            self._address(r, a.family, a.address, a.prefixlen, "address")
        for r in self.recs.get("NetRoute", []):
            rt = r.rec
            if rt.oif and rt.oif not in links:
                self.bad(r, f"oif {rt.oif} refers to no NetLink")
            self._address(r, rt.family, rt.dst, rt.dst_len, "dst", empty=True)
            for f in ("gateway", "prefsrc"):
                self._address(r, rt.family, getattr(rt, f), 0, f, empty=True)
        self._mounts()
        for r in self.recs.get("FsSnapshot", []):
            for f in ("subvolume", "snapshot_path"):
                v = getattr(r.rec, f)
                why = _path_problem(v)
                if why:
                    self.bad(r, f"{f} {quote(v)} {why}")
            if self.header.source_kind == R.SourceKind.VE and r.rec.ve_id != self.header.source_id:
                self.bad(
                    r,
                    f"ve_id {quote(r.rec.ve_id)} is not the image's VE "
                    f"{quote(self.header.source_id)}",
                )

    def _address(
        self, r: _Rec, family: int, addr: bytes, prefix: int, field: str, empty: bool = False
    ) -> None:
        size = ADDR_SIZES.get(family)
        if size is None:
            self.bad(r, f"family {family} is not AF_INET or AF_INET6")
        elif not (empty and not addr) and len(addr) != size:
            self.bad(r, f"{field} holds {len(addr)} bytes, an address of its family {size}")
        elif prefix > 8 * size:
            self.bad(r, f"prefix length {prefix} is longer than the address")

    def _mounts(self) -> None:
        """The mount table: the root ("/") first, then each mount after its parent."""
        mounts = self.recs.get("Mount", [])
        if not mounts:
            # a VE's pre-dump holds memory only: no namespaces
            predump = self.header.flags & R.HeaderFlags.PREDUMP
            if self.header.flags & R.HeaderFlags.VE and not predump and self.readable("Mount"):
                self.v.add("NAMESPACES", "a VE's image without its mount table")
            return
        if mounts[0].rec.mountpoint != "/":
            self.bad(mounts[0], f"the first mount is {quote(mounts[0].rec.mountpoint)}, not /")
        seen: set[int] = set()
        for i, r in enumerate(mounts):
            m = r.rec
            if i and m.parent_id not in seen:
                self.bad(r, f"parent_id {m.parent_id} is no mount before it")
            seen.add(m.mnt_id)
            for f in ("mountpoint", "root"):
                why = _path_problem(getattr(m, f))
                if why:
                    self.bad(r, f"{f} {quote(getattr(m, f))} {why}")
        fstypes = {r.rec.mnt_id: r.rec.fstype for r in mounts}
        self._unique_per("MountData", lambda d: d.mnt_id, "a second MountData for mount {}")
        for r in self.recs.get("MountData", []):
            fs = fstypes.get(r.rec.mnt_id)
            if fs is not None and fs != "tmpfs":
                self.bad(r, f"mount {r.rec.mnt_id} is {quote(fs)}, not a tmpfs")

    # -- IPC

    def _ipc(self) -> None:
        for r in self.recs.get("PosixMq", []):
            name = r.rec.name
            n = len(name.encode("utf-8", "surrogateescape"))
            if not name or "/" in name or "\0" in name or n > NAME_MAX or name in (".", ".."):
                self.bad(r, f"name {quote(name)} is no message queue name")
        self._unique_per("SysvShm", lambda x: x.shmid, "shmid {} is used twice")
        self._unique_per("SysvSem", lambda x: x.semid, "semid {} is used twice")
        for r in self.recs.get("SysvSem", []):
            if len(r.rec.values) > SEMMSL:
                self.bad(r, f"{len(r.rec.values)} semaphores in one set; the kernel takes {SEMMSL}")

    def _userns(self) -> None:
        """A VE's user namespace: sane maps; then every process has its ids as the VE
        sees them (NsCreds) and they are its host ids (Creds) through the maps."""
        userns = self.recs.get("UserNs", [])
        nscreds = self.recs.get("NsCreds", [])
        flagged = bool(self.header.flags & R.HeaderFlags.USERNS)
        if not userns:
            if flagged:
                self.v.add("NAMESPACES", "the header says USERNS, but there is no UserNs record")
            for r in nscreds:
                self.bad(r, "ids inside a user namespace, but the image has no UserNs")
            return
        if len(userns) > 1:
            self.bad(userns[1], "a second UserNs: a VE has one user namespace")
        u = userns[0]
        if not self.header.flags & R.HeaderFlags.VE:
            self.bad(u, "a user namespace in an image that is not a VE's")
        elif not flagged:
            self.bad(u, "a user namespace, but the header lacks the USERNS flag")
        maps = {}
        for name in ("uid_map", "gid_map"):
            entries = getattr(u.rec, name)
            maps[name] = entries
            if not entries:
                self.bad(u, f"{name} is empty")
            if len(entries) > _MAX_ID_MAP_LINES:
                self.bad(u, f"{name} has {len(entries)} lines, the kernel takes 340")
            for side in ("inside", "outside"):
                spans = sorted((getattr(e, side), e.count) for e in entries)
                for (a, n), (b, _) in itertools.pairwise(spans):
                    if a + n > b:
                        self.bad(u, f"{name}: {side} ranges overlap at {b}")
            for e in entries:
                if e.count == 0 or e.inside + e.count > 1 << 32 or e.outside + e.count > 1 << 32:
                    self.bad(u, f"{name}: {e.inside} {e.outside} {e.count} is not a range of ids")
        creds = {r.rec.pid: r.rec for r in self.recs.get("Creds", [])}
        have = {r.rec.pid for r in nscreds}
        for r in self.recs.get("Process", []):
            if (
                r.rec.state != R.ProcessState.ZOMBIE
                and r.rec.pid in creds
                and r.rec.pid not in have
            ):
                self.bad(r, "no NsCreds: its ids inside the VE's user namespace are missing")
        for r in nscreds:
            c = creds.get(r.rec.pid)
            if c is None:
                continue
            for f in _ID_FIELDS:
                m = maps["uid_map" if "uid" in f else "gid_map"]
                host = _to_outside(m, getattr(r.rec, f))
                if host != getattr(c, f):
                    self.bad(r, f"{f} {getattr(r.rec, f)} is host id {host}, Creds says "
                             f"{getattr(c, f)}")  # fmt: skip
                    break
            else:
                hosts = [_to_outside(maps["gid_map"], g) for g in r.rec.groups]
                if hosts != list(c.groups):
                    self.bad(r, "groups do not map to the Creds groups")

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
            if t.robust_len != ROBUST_LIST_HEAD_SIZE and (t.robust_head or t.robust_len):
                self.bad(
                    r,
                    f"robust_len {t.robust_len}: set_robust_list takes "
                    f"{ROBUST_LIST_HEAD_SIZE} (struct robust_list_head)",
                )
            if t.rseq_ptr and (t.rseq_ptr % RSEQ_MIN or t.rseq_len < RSEQ_MIN):
                self.bad(
                    r,
                    f"rseq area {t.rseq_ptr:#x}+{t.rseq_len}: rseq takes {RSEQ_MIN} bytes or "
                    f"more, aligned to {RSEQ_MIN}",
                )
            if t.sas_flags & ~SS_FLAGS:
                self.bad(r, f"sas_flags {t.sas_flags:#x}: unknown sigaltstack flags")

    def _vmas(self, shmem: dict[int, _Rec]) -> dict[int, list[Any]]:
        """Check VMAs; returns each process's VMAs sorted by start."""
        per_pid: dict[int, list[_Rec]] = defaultdict(list)
        ps = self.ps
        for r in self.recs.get("Vma", []):
            v = r.rec
            per_pid[v.pid].append(r)
            if v.start >= v.end:
                self.bad(r, f"empty or inverted range {v.start:#x}-{v.end:#x}")
            if v.prot & ~PROT_RWX:
                self.bad(r, f"prot {v.prot:#x} is more than read, write and execute")
            if v.start % ps or v.end % ps or v.pgoff % ps:
                self.bad(r, f"{v.start:#x}-{v.end:#x} (offset {v.pgoff:#x}) is not page-aligned")
            if v.end > TASK_SIZE_MAX and v.kind != R.VmaKind.VSYSCALL:
                self.bad(r, f"{v.start:#x}-{v.end:#x} is beyond the user address space")
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
        if flags == R.PageFlags.PARENT:
            if not self.header.flags & R.HeaderFlags.INCREMENTAL:
                self.bad(r, "a PARENT run in an image that is not INCREMENTAL")
            if r.rec.owner_kind != R.OwnerKind.PROCESS:
                # shared memory objects are numbered per image, and stored whole in each
                self.bad(r, "a PARENT run of a shared memory object")
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
    parent: R.Parent | None = None  # an incremental image's Parent record
    parent_runs: list[R.PagemapRun] = dataclasses.field(default_factory=list)  # its PARENT runs


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
        f = open_regular(path, buffering=0)
        with f:
            return _verify(f, path, chunk_size)
    name = getattr(source, "name", None)
    return _verify(source, name if isinstance(name, str) else None, chunk_size)


def _verify(f: BinaryIO, path: str | None, chunk_size: int) -> Report:
    v = _Verifier(path)
    v.run(f, chunk_size)
    if v.complete and v.header is not None:
        _Structure(v).run()
    parents = [r.rec for r in v.recs.get("Parent", [])]
    runs = [r.rec for r in v.recs.get("PagemapRun", []) if r.rec.flags == R.PageFlags.PARENT]
    return Report(v.problems, v.warnings, v.header, parents[0] if parents else None, runs)


__all__ = ["Problem", "Report", "enum_problems", "verify", "verify_report"]
