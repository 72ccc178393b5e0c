"""/proc/PID/fdinfo/N.

Grammar: pos (dec), flags (octal), mnt_id, ino; then per kind: eventfd-count (HEX),
"tfd: .. events: HEX data: HEX pos: ino:HEX sdev:HEX" (epoll),
"inotify wd:HEX ino:HEX sdev:HEX mask:HEX ... f_handle:HEX",
"fanotify flags:HEX event-flags:HEX" then one "fanotify ..." line per mark,
"lock:\\tID: [-> ]KIND MODE ACCESS PID MAJ:MIN:INO START END|EOF", timerfd and signalfd
"key: value" lines, Pid:/NSpid: (pidfd), tty-index: (pty master), scm_fds: (unix socket).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ._common import dec, ints


def decode_kdev(dev: int) -> tuple[int, int]:
    """The kernel-internal dev_t (MAJOR<<20 | MINOR) that fdinfo prints as sdev: -> (major, minor)."""
    return dev >> 20, dev & 0xFFFFF


@dataclass(frozen=True, slots=True)
class EventfdInfo:
    count: int
    id: int | None
    semaphore: bool


@dataclass(frozen=True, slots=True)
class TimerfdInfo:
    clockid: int
    ticks: int
    settime_flags: int
    it_value: tuple[int, int]  # (seconds, nanoseconds) until the next expiry, 0 = disarmed
    it_interval: tuple[int, int]


@dataclass(frozen=True, slots=True)
class EpollTarget:
    tfd: int  # the fd number in the process that added it (may be closed since)
    events: int  # EPOLL* mask; the kernel always adds EPOLLERR|EPOLLHUP
    data: int  # epoll_data as u64
    pos: int
    ino: int
    sdev: int  # kernel-internal dev_t, see decode_kdev()


@dataclass(frozen=True, slots=True)
class InotifyWatch:
    wd: int
    ino: int
    sdev: int
    mask: int
    ignored_mask: int
    fhandle_type: int | None
    f_handle: bytes | None  # open_by_handle_at() handle; None when the fs cannot export


@dataclass(frozen=True, slots=True)
class FanotifyMark:
    kind: str  # "inode", "mount", "sb", "mntns"
    ino: int | None
    sdev: int | None
    mnt_id: int | None
    mflags: int
    mask: int
    ignored_mask: int
    fhandle_type: int | None
    f_handle: bytes | None


@dataclass(frozen=True, slots=True)
class FanotifyInfo:
    flags: int  # fanotify_init() flags
    event_flags: int  # fanotify_init() event_f_flags
    marks: tuple[FanotifyMark, ...]


@dataclass(frozen=True, slots=True)
class FileLock:
    id: int
    blocked: bool  # a waiter ("->") rather than a held lock
    kind: str  # FLOCK, POSIX, OFDLCK, LEASE, DELEG
    mode: str  # ADVISORY, MANDATORY; for leases BREAKING, ACTIVE, BREAKER
    access: str  # READ, WRITE, UNLCK, ...
    pid: int  # -1 for OFD locks
    major: int
    minor: int
    ino: int
    start: int
    end: int | None  # None = EOF


@dataclass(frozen=True, slots=True)
class SignalfdInfo:
    sigmask: int  # bit (n-1) = signal n


@dataclass(frozen=True, slots=True)
class EpollInfo:
    targets: tuple[EpollTarget, ...]


@dataclass(frozen=True, slots=True)
class InotifyInfo:
    watches: tuple[InotifyWatch, ...]


@dataclass(frozen=True, slots=True)
class PidfdInfo:
    pid: int  # -1 once the process is reaped (0 if it lives outside the reader's pid ns)
    nspid: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PtyMasterInfo:
    index: int  # N of /dev/pts/N


@dataclass(frozen=True, slots=True)
class UnixSocketFdInfo:
    scm_fds: int  # fds in flight in the receive queue (SCM_RIGHTS)


FdDetails = (
    EventfdInfo
    | TimerfdInfo
    | SignalfdInfo
    | EpollInfo
    | InotifyInfo
    | FanotifyInfo
    | PidfdInfo
    | PtyMasterInfo
    | UnixSocketFdInfo
)
_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class FdInfo:
    """/proc/PID/fdinfo/N: the four common lines, the kind-specific ``details``, the locks
    held through this open file, and any other "key: value" line in ``extra`` (bpf,
    userfaultfd, io_uring, ...).  The properties are typed shortcuts into ``details``."""

    pos: int
    flags: int  # open flags, including O_CLOEXEC (printed in octal)
    mnt_id: int
    ino: int
    details: FdDetails | None = None
    locks: tuple[FileLock, ...] = ()
    extra: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    @property
    def eventfd(self) -> EventfdInfo | None:
        d = self.details
        return d if isinstance(d, EventfdInfo) else None

    @property
    def timerfd(self) -> TimerfdInfo | None:
        d = self.details
        return d if isinstance(d, TimerfdInfo) else None

    @property
    def signalfd_mask(self) -> int | None:
        d = self.details
        return d.sigmask if isinstance(d, SignalfdInfo) else None

    @property
    def epoll(self) -> tuple[EpollTarget, ...]:
        d = self.details
        return d.targets if isinstance(d, EpollInfo) else ()

    @property
    def inotify(self) -> tuple[InotifyWatch, ...]:
        d = self.details
        return d.watches if isinstance(d, InotifyInfo) else ()

    @property
    def fanotify(self) -> FanotifyInfo | None:
        d = self.details
        return d if isinstance(d, FanotifyInfo) else None

    @property
    def pidfd(self) -> PidfdInfo | None:
        d = self.details
        return d if isinstance(d, PidfdInfo) else None


def _kv_tokens(b: bytes) -> dict[bytes, bytes]:
    """b"tfd:        7 events:       19 data: 2a  pos:0" -> {tfd: 7, events: 19, data: 2a, pos: 0}"""
    out: dict[bytes, bytes] = {}
    toks = b.split()
    i = 0
    while i < len(toks):
        k, _, v = toks[i].partition(b":")
        if not v and i + 1 < len(toks) and b":" not in toks[i + 1]:
            v = toks[i + 1]
            i += 1
        out[k] = v
        i += 1
    return out


def _fhandle(kv: dict[bytes, bytes]) -> tuple[int | None, bytes | None]:
    if b"f_handle" not in kv:
        return None, None
    return int(kv[b"fhandle-type"], 16), bytes.fromhex(kv[b"f_handle"].decode())


def _timespec(v: bytes) -> tuple[int, int]:
    s, _, ns = v.strip(b"()").partition(b",")
    return int(s), int(ns)


def _parse_lock(v: bytes) -> FileLock:
    t = v.split()
    blocked = t[1] == b"->"
    if blocked:
        del t[1]
    if t[5] == b"<none>:0":  # a lock on something without an inode: never seen via fdinfo
        major = minor = ino = 0
    else:
        mj, mn, ino_b = t[5].split(b":")
        major, minor, ino = int(mj, 16), int(mn, 16), int(ino_b)
    return FileLock(
        id=int(t[0].rstrip(b":")),
        blocked=blocked,
        kind=dec(t[1]),
        mode=dec(t[2]),
        access=dec(t[3]),
        pid=int(t[4]),
        major=major,
        minor=minor,
        ino=ino,
        start=int(t[6]),
        end=None if t[7] == b"EOF" else int(t[7]),
    )


def _epoll_target(line: bytes) -> EpollTarget:
    kv = _kv_tokens(line)
    return EpollTarget(
        int(kv[b"tfd"]),
        int(kv[b"events"], 16),
        int(kv[b"data"], 16),
        int(kv[b"pos"]),
        int(kv[b"ino"], 16),
        int(kv[b"sdev"], 16),
    )


def _inotify_watch(line: bytes) -> InotifyWatch:
    kv = _kv_tokens(line[8:])  # after "inotify "
    ht, fh = _fhandle(kv)
    return InotifyWatch(
        int(kv[b"wd"], 16),
        int(kv[b"ino"], 16),
        int(kv[b"sdev"], 16),
        int(kv[b"mask"], 16),
        int(kv[b"ignored_mask"], 16),
        ht,
        fh,
    )


def _fanotify_mark(kv: dict[bytes, bytes]) -> FanotifyMark:
    if b"ino" in kv:
        kind = "inode"
    elif b"mnt_id" in kv:
        kind = "mount"
    elif b"mnt_ns" in kv:
        kind = "mntns"
    else:
        kind = "sb"

    def h(k: bytes) -> int | None:
        return int(kv[k], 16) if k in kv else None

    ht, fh = _fhandle(kv)
    return FanotifyMark(
        kind,
        h(b"ino"),
        h(b"sdev"),
        h(b"mnt_id"),
        int(kv[b"mflags"], 16),
        int(kv[b"mask"], 16),
        int(kv.get(b"ignored_mask", b"0"), 16),
        ht,
        fh,
    )


def parse_fdinfo(data: bytes) -> FdInfo:
    lines = data.split(b"\n")
    # the kernel always starts with pos, flags, mnt_id, ino, in that order (seq_show())
    if not (
        len(lines) >= 4
        and lines[0].startswith(b"pos:\t")
        and lines[1].startswith(b"flags:\t")
        and lines[2].startswith(b"mnt_id:\t")
        and lines[3].startswith(b"ino:\t")
    ):
        raise ValueError(f"not an fdinfo file: {data[:60]!r}")
    pos, flags = int(lines[0][5:]), int(lines[1][7:], 8)
    mnt_id, ino = int(lines[2][8:]), int(lines[3][5:])
    if len(lines) == 5 and not lines[4]:  # the common case: a plain file, pipe or socket
        return FdInfo(pos, flags, mnt_id, ino)

    kv: dict[bytes, bytes] = {}
    epoll: list[EpollTarget] = []
    inotify: list[InotifyWatch] = []
    fan_head: dict[bytes, bytes] | None = None
    fan_marks: list[FanotifyMark] = []
    locks: list[FileLock] = []
    for line in lines[4:]:
        if not line:
            continue
        if line.startswith(b"tfd:"):
            epoll.append(_epoll_target(line))
        elif line.startswith(b"inotify "):
            inotify.append(_inotify_watch(line))
        elif line.startswith(b"fanotify "):
            tokens = _kv_tokens(line[9:])
            if b"event-flags" in tokens:
                fan_head = tokens
            else:
                fan_marks.append(_fanotify_mark(tokens))
        elif line.startswith(b"lock:"):
            locks.append(_parse_lock(line[5:]))
        else:
            k, sep, v = line.partition(b":")
            if sep:
                kv[k] = v.strip()

    details: FdDetails | None = None
    if b"eventfd-count" in kv:
        details = EventfdInfo(
            count=int(kv.pop(b"eventfd-count"), 16),  # "%16llx": hex, space padded
            id=int(kv.pop(b"eventfd-id")) if b"eventfd-id" in kv else None,
            semaphore=kv.pop(b"eventfd-semaphore", b"0") == b"1",
        )
    elif b"it_interval" in kv:
        details = TimerfdInfo(
            clockid=int(kv.pop(b"clockid")),
            ticks=int(kv.pop(b"ticks")),
            settime_flags=int(kv.pop(b"settime flags"), 8),
            it_value=_timespec(kv.pop(b"it_value")),
            it_interval=_timespec(kv.pop(b"it_interval")),
        )
    elif b"sigmask" in kv:
        details = SignalfdInfo(int(kv.pop(b"sigmask"), 16))
    elif epoll:
        details = EpollInfo(tuple(epoll))
    elif inotify:
        details = InotifyInfo(tuple(inotify))
    elif fan_head is not None:
        details = FanotifyInfo(
            int(fan_head[b"flags"], 16), int(fan_head[b"event-flags"], 16), tuple(fan_marks)
        )
    elif b"Pid" in kv:
        details = PidfdInfo(int(kv.pop(b"Pid")), ints(kv.pop(b"NSpid", b"")))
    elif b"tty-index" in kv:
        details = PtyMasterInfo(int(kv.pop(b"tty-index")))
    elif b"scm_fds" in kv:
        details = UnixSocketFdInfo(int(kv.pop(b"scm_fds")))
    extra = MappingProxyType({dec(k): dec(v) for k, v in kv.items()}) if kv else _EMPTY
    return FdInfo(pos, flags, mnt_id, ino, details, tuple(locks), extra)
