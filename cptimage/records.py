"""Every record type of image format 1.6 (1.0; NsCreds and UserNs since 1.1, a VE's user
namespace; Owner since 1.2; the CHAIN section with its Parent record and the PREDUMP
header flag since 1.3: incremental images; socket records 1.4; ThreadSched and TaskExtra
1.5; PidFd, FileOwner, GuardRegion, SeccompStrict, VmaKind.AIO_RING and LockKind.LEASE 1.6).  Declarations only: no logic lives here.

A record's tag is u16; its high byte is the section type that holds it (0x00 = the
container itself).  Retired tags stay in RETIRED_TAGS forever so a number is never
reused.  SPEC.md lists the same table; tests/test_spec.py keeps the two in step.
"""

from __future__ import annotations

import enum

from .fields import (
    Record,
    blob,
    blobs,
    fbytes,
    i32,
    i64,
    item,
    items,
    record,
    strs,
    text,
    u8,
    u16,
    u32,
    u32s,
    u64,
    u64s,
)


class SectionType(enum.IntEnum):
    PROCESS = 0x01  # process tree, threads and per-process state
    MM = 0x02  # address spaces: mm fields, VMAs, shared-memory objects
    PAGEMAP = 0x03  # which pages are where
    PAGES = 0x04  # raw page data (not records)
    FILES = 0x05  # paths and open-file descriptions
    FDS = 0x06  # per-process fd tables
    IPC = 0x07  # SysV and POSIX IPC objects
    NAMESPACES = 0x08  # namespaces, network, mounts
    FSSNAP = 0x09  # the filesystem snapshot taken with the dump
    CHAIN = 0x0A  # 1.3: the parent image an incremental image builds on
    INDEX = 0xFF  # the trailer's section index


class Compression(enum.IntEnum):
    NONE = 0
    ZSTD = 1


class ChecksumAlgo(enum.IntEnum):
    XXH3_64 = 1


class HeaderFlags(enum.IntFlag):
    INCREMENTAL = 1 << 0  # pages may be PARENT: they live in the parent image
    LEAVE_RUNNING = 1 << 1  # the workload kept running after the dump
    VE = 1 << 2  # the source is a VE (container), not a bare process tree
    PIDNS = 1 << 3  # the tree's root is the init of its own PID namespace
    # 1.1: a VE in a user namespace of its own (UserNs); a reader that does not know the
    # flag reports it, so an older cpt refuses to restore such a VE without its namespace
    USERNS = 1 << 4
    # 1.3: memory only,
    # a pre-dump: the processes, their VMAs and their pages, taken while the tree ran;
    # restorable only as the parent of a later image
    PREDUMP = 1 << 5


class SourceKind(enum.IntEnum):
    NONE = 0
    PID = 1
    VE = 2


# --------------------------------------------------------------------------- container


@record(0x0001)
class Header(Record):
    created_ns: int = u64()  # CLOCK_REALTIME at the dump, nanoseconds
    page_size: int = u32(4096)
    flags: int = u32(flags=HeaderFlags)
    xcr0: int = u64()  # XSAVE feature mask (XCR0) of the dumping CPU
    xstate_size: int = u32()  # bytes of NT_X86_XSTATE per thread
    source_kind: int = u8(enum=SourceKind)
    root_pid: int = u32()
    uuid: bytes = fbytes(16)
    parent_uuid: bytes = fbytes(16)  # zero unless INCREMENTAL
    vdso_digest: int = u64()  # xxh3-64 of the vDSO text the workload ran with
    arch: str = text()  # uname -m
    kernel_release: str = text()  # uname -r
    kernel_version: str = text()  # uname -v (build identity)
    cpu_flags: list[str] = strs()  # cpuid flags the saved state depends on
    hostname: str = text()
    tool_version: str = text()
    source_id: str = text()  # VE id, or the root pid as text


@record(0x0002)
class IndexEntry(Record):
    type: int = u16(enum=SectionType)
    version: int = u16()
    compression: int = u8(enum=Compression)
    count: int = u32()
    hdr_len: int = u32()
    offset: int = u64()
    payload_len: int = u64()
    raw_len: int = u64()
    checksum: int = u64()
    base: int = u64()


# --------------------------------------------------------------------------- PROCESS


class ProcessState(enum.IntEnum):
    ALIVE = 1
    ZOMBIE = 2
    HELPER = 3  # dead session/group leader recreated only to hold a sid or pgid


@record(0x0101)
class Process(Record):
    pid: int = u32()  # as seen by the dumper
    ppid: int = u32()  # 0 for the root of the dumped tree
    pgid: int = u32()
    sid: int = u32()
    state: int = u8(enum=ProcessState)
    exit_status: int = i32()  # zombies: the wait(2) status the parent will read
    exit_signal: int = u32(17)  # signal sent to the parent at exit (SIGCHLD)
    flags: int = u32()
    nspid: list[int] = u32s()  # NSpid chain, dumper's namespace first
    nspgid: list[int] = u32s()
    nssid: list[int] = u32s()
    comm: str = text()


@record(0x0102)
class Thread(Record):
    pid: int = u32()
    tid: int = u32()
    sigmask: int = u64()
    rseq_ptr: int = u64()
    rseq_len: int = u32()
    rseq_sig: int = u32()
    rseq_flags: int = u32()
    robust_head: int = u64()
    robust_len: int = u64()
    clear_child_tid: int = u64()
    sas_sp: int = u64()
    sas_size: int = u64()
    sas_flags: int = u32()
    nstid: list[int] = u32s()
    regs: bytes = blob()  # NT_PRSTATUS, struct user_regs_struct (216 bytes on x86_64)
    fpregs: bytes = blob()  # NT_PRFPREG (512 bytes, fxsave layout)
    xstate: bytes = blob()  # NT_X86_XSTATE (xsave area; size in Header.xstate_size)
    comm: str = text()


@record(0x0103)
class Creds(Record):
    pid: int = u32()
    uid: int = u32()
    euid: int = u32()
    suid: int = u32()
    fsuid: int = u32()
    gid: int = u32()
    egid: int = u32()
    sgid: int = u32()
    fsgid: int = u32()
    cap_inh: int = u64()
    cap_prm: int = u64()
    cap_eff: int = u64()
    cap_bnd: int = u64()
    cap_amb: int = u64()
    securebits: int = u32()
    no_new_privs: int = u8()
    groups: list[int] = u32s()


@item
class Rlimit:
    resource: int = u32()
    cur: int = u64()
    max: int = u64()


@record(0x0104)
class Rlimits(Record):
    pid: int = u32()
    limits: list[Rlimit] = items(Rlimit)


@item
class Sigaction:
    signo: int = u32()
    handler: int = u64()  # SIG_DFL 0, SIG_IGN 1, or an address
    flags: int = u64()
    restorer: int = u64()
    mask: int = u64()


@record(0x0105)
class Sigactions(Record):
    pid: int = u32()
    actions: list[Sigaction] = items(Sigaction)  # every signal but SIGKILL and SIGSTOP


@record(0x0106)
class TaskState(Record):
    pid: int = u32()
    umask: int = u32()
    personality: int = u32()
    cwd_id: int = u32()  # a PathObj
    root_id: int = u32()  # a PathObj
    oom_score_adj: int = i32()
    timerslack_ns: int = u64()
    pdeath_sig: int = u32()
    dumpable: int = u8()
    child_subreaper: int = u8()


@record(0x0107)
class Itimers(Record):
    pid: int = u32()
    real_interval_us: int = u64()
    real_value_us: int = u64()
    virt_interval_us: int = u64()
    virt_value_us: int = u64()
    prof_interval_us: int = u64()
    prof_value_us: int = u64()


@record(0x0108)
class PosixTimer(Record):
    pid: int = u32()
    timer_id: int = i32()
    clockid: int = i32()
    sigev_notify: int = i32()
    signo: int = i32()
    notify_tid: int = u32()  # SIGEV_THREAD_ID: the thread, in the process's pid namespace
    overrun: int = i32()  # timer_getoverrun() at the dump (informative: cannot be set)
    sigev_value: int = u64()
    interval_ns: int = u64()
    value_ns: int = u64()  # time left at the dump; 0 = disarmed


@record(0x0109)
class SeccompFilter(Record):
    pid: int = u32()
    tid: int = u32()
    index: int = u32()  # 0 = the oldest filter (installed first)
    flags: int = u32()
    program: bytes = blob()  # struct sock_filter[]


@record(0x010A)
class PendingSignal(Record):
    pid: int = u32()
    tid: int = u32()  # 0: pending for the whole process (shared queue)
    signo: int = u32()
    siginfo: bytes = blob()  # 128-byte siginfo_t


@record(0x010B)
class NsCreds(Record):
    """A process's ids as its own user namespace sees them (a VE with a user namespace:
    Creds holds them as the dumping host sees them)."""

    pid: int = u32()
    uid: int = u32()
    euid: int = u32()
    suid: int = u32()
    fsuid: int = u32()
    gid: int = u32()
    egid: int = u32()
    sgid: int = u32()
    fsgid: int = u32()
    groups: list[int] = u32s()


@record(0x010C)  # 1.2
class Owner(Record):
    """The credentials of a --pid tree's owner: its root process's, at the dump.

    A restore refuses processes whose credentials are above them unless --trust.  Written
    for a tree dumped by --pid (source_kind PID), one per image; a VE has none."""

    pid: int = u32()  # the root process the credentials were read from
    uid: int = u32()
    euid: int = u32()
    suid: int = u32()
    fsuid: int = u32()
    gid: int = u32()
    egid: int = u32()
    sgid: int = u32()
    fsgid: int = u32()
    cap_inh: int = u64()
    cap_prm: int = u64()
    cap_eff: int = u64()
    cap_bnd: int = u64()
    cap_amb: int = u64()
    securebits: int = u32()
    no_new_privs: int = u8()
    groups: list[int] = u32s()


@record(0x01C0)
class ThreadSched(Record):
    """A thread's scheduling (format 1.5): sched_getattr(2)'s policy, RESET_ON_FORK flag,
    nice, real-time priority, and a SCHED_DEADLINE thread's runtime/deadline/period (ns)."""

    pid: int = u32()
    tid: int = u32()
    policy: int = u32()
    flags: int = u32()
    nice: int = i32()
    priority: int = u32()
    runtime_ns: int = u64()
    deadline_ns: int = u64()
    period_ns: int = u64()


@record(0x01C1)
class TaskExtra(Record):
    """Per-process state of format 1.5: the audit login uid (/proc/PID/loginuid;
    4294967295 unset), the signal of a job-control stop in effect (0: not stopped), and
    the membarrier(2) registrations (MEMBARRIER_CMD_REGISTER_* bits)."""

    pid: int = u32()
    loginuid: int = u32(0xFFFFFFFF)
    stop_signal: int = u32()
    membarrier: int = u32()


@record(0x01C2)
class SeccompStrict(Record):
    """A thread in strict seccomp mode (SECCOMP_MODE_STRICT; format 1.6): only read, write,
    _exit and sigreturn.  Restore enters the mode again in that thread; the injected calls
    after it run with seccomp suspended for the tracer."""

    pid: int = u32()
    tid: int = u32()


class ShareFlags(enum.IntFlag):
    FILES = 1 << 0  # CLONE_FILES: the parent's fd table
    FS = 1 << 1  # CLONE_FS: the parent's cwd, root and umask


@record(0x01C3)
class TaskShares(Record):
    """What a process shares with its parent (format 1.7): its fd table (CLONE_FILES),
    its fs struct (CLONE_FS).  Restore clones it from its parent with those flags."""

    pid: int = u32()
    flags: int = u32(flags=ShareFlags)


# --------------------------------------------------------------------------- MM


class MmFlags(enum.IntFlag):
    THP_DISABLE = 1 << 0
    LOCK_FUTURE = 1 << 1  # (1.7) mlockall(MCL_FUTURE): mappings made later are locked
    LOCK_ONFAULT = 1 << 2  # (1.7) with MCL_ONFAULT: locked as they fault in


@record(0x0201)
class Mm(Record):
    pid: int = u32()
    exe_id: int = u32()  # a PathObj
    flags: int = u32(flags=MmFlags)
    start_code: int = u64()
    end_code: int = u64()
    start_data: int = u64()
    end_data: int = u64()
    start_brk: int = u64()
    brk: int = u64()
    start_stack: int = u64()
    arg_start: int = u64()
    arg_end: int = u64()
    env_start: int = u64()
    env_end: int = u64()
    auxv: list[int] = u64s()  # (type, value) pairs, flattened, AT_NULL included


class VmaKind(enum.IntEnum):
    ANON = 1  # private anonymous (heap, stack, malloc arenas)
    FILE_PRIVATE = 2  # private file mapping; COW'd pages are in the page store
    FILE_SHARED = 3  # MAP_SHARED of a file: contents stay in the file
    SHMEM = 4  # MAP_SHARED anonymous or memfd: a ShmemObject
    SYSV_SHM = 5  # shmat(): a SysvShm
    VDSO = 6
    VVAR = 7
    VVAR_VCLOCK = 8
    VSYSCALL = 9
    PACKET_RING = 10  # (1.4) the rings of the packet socket description `file_id`
    AIO_RING = 11  # (1.6) an AIO context's ring (io_setup); its id is `start`


class VmFlags(enum.IntFlag):
    """madvise and mlock state (from smaps VmFlags); not the kernel's VM_* values."""

    DONTFORK = 1 << 0  # dc
    DONTDUMP = 1 << 1  # dd
    HUGEPAGE = 1 << 2  # hg
    NOHUGEPAGE = 1 << 3  # nh
    WIPEONFORK = 1 << 4  # wf
    MERGEABLE = 1 << 5  # mg
    SEQ_READ = 1 << 6  # sr
    RAND_READ = 1 << 7  # rr
    LOCKED = 1 << 8  # lo
    GROWSDOWN = 1 << 9  # gd
    NORESERVE = 1 << 10  # nr
    IO = 1 << 11  # io: never dumped


@record(0x0202)
class Vma(Record):
    pid: int = u32()
    kind: int = u8(enum=VmaKind)
    prot: int = u8()  # PROT_READ 1 | PROT_WRITE 2 | PROT_EXEC 4
    flags: int = u32()  # MAP_* flags for mmap (MAP_PRIVATE/SHARED/GROWSDOWN/...)
    start: int = u64()
    end: int = u64()
    pgoff: int = u64()  # file offset in bytes
    vmflags: int = u64(flags=VmFlags)
    file_id: int = u32()  # a PathObj, 0 for anonymous memory
    shmem_id: int = u32()  # a ShmemObject or SysvShm id holder, 0 if none
    name: str = text()  # the name /proc/PID/maps shows: [heap], [stack], [anon:x], ...


class ShmemKind(enum.IntEnum):
    SHARED_ANON = 1
    MEMFD = 2
    SYSV = 3


@record(0x0204)
class GuardRegion(Record):
    """Pages of a process's mapping made guard pages (MADV_GUARD_INSTALL; format 1.6): no
    data, every access faults.  Restore installs them again once the pages are written."""

    pid: int = u32()
    start: int = u64()
    end: int = u64()


@record(0x0203)
class ShmemObject(Record):
    id: int = u32()
    kind: int = u8(enum=ShmemKind)
    seals: int = u32()
    flags: int = u32()  # memfd_create flags
    size: int = u64()
    ino: int = u64()
    name: str = text()


# --------------------------------------------------------------------------- PAGEMAP


class OwnerKind(enum.IntEnum):
    PROCESS = 1  # owner = pid, vaddr = virtual address
    SHMEM = 2  # owner = ShmemObject id, vaddr = offset in the object


class PageFlags(enum.IntFlag):
    PRESENT = 1 << 0  # the data is in this image's page store at data_offset
    PARENT = 1 << 1  # the data is in the parent image (incremental dumps)
    ZERO = 1 << 2  # the pages are zero: nothing stored


@record(0x0301)
class PagemapRun(Record):
    owner_kind: int = u8(enum=OwnerKind)
    flags: int = u8()  # PageFlags
    owner: int = u32()
    vaddr: int = u64()
    nr_pages: int = u64()
    data_offset: int = u64()  # byte offset in the page data stream (PRESENT only)


# --------------------------------------------------------------------------- CHAIN


@record(0x0A01)
class Parent(Record):
    """The image an INCREMENTAL image builds on: its PARENT runs' pages are there (or
    further down its own chain).  One per incremental image (1.3)."""

    uuid: bytes = fbytes(16)  # the parent's Header.uuid (= this image's parent_uuid)
    digest: int = u64()  # the parent's file digest (its trailer's): a changed parent shows
    size: int = u64()  # the parent's file size
    created_ns: int = u64()  # the parent's Header.created_ns
    flags: int = u32(flags=HeaderFlags)  # the parent's Header.flags
    name: str = text()  # where it is: a path relative to this image's directory


# --------------------------------------------------------------------------- FILES


class PathKind(enum.IntEnum):
    REG = 1
    DIR = 2
    CHR = 3
    BLK = 4
    FIFO = 5
    SOCK = 6
    LNK = 7


class PathFlags(enum.IntFlag):
    DELETED = 1 << 0  # unlinked while open
    GHOST = 1 << 1  # contents carried in the image (deleted files up to --ghost-limit)
    EXTERNAL = 1 << 2  # provided by the host (bind mount); verified, never copied


@record(0x0501)
class PathObj(Record):
    id: int = u32()
    kind: int = u8(enum=PathKind)
    flags: int = u32(flags=PathFlags)
    mode: int = u32()
    uid: int = u32()
    gid: int = u32()
    nlink: int = u32()
    mnt_id: int = u32()
    size: int = u64()
    mtime_ns: int = u64()
    ino: int = u64()
    dev: int = u64()
    rdev: int = u64()
    path: str = text()
    contents: bytes = blob()  # GHOST only


@record(0x0502)
class RegFile(Record):
    """An open-file description of a path: regular file, directory or device."""

    id: int = u32()
    path_id: int = u32()
    flags: int = u32()  # open(2) flags as fdinfo shows them
    fown_pid: int = i32()
    fown_signum: int = u32()
    pos: int = u64()


@record(0x0503)
class Pipe(Record):
    """One end of a pipe: an open-file description."""

    id: int = u32()
    flags: int = u32()
    ino: int = u64()


@record(0x0504)
class PipeData(Record):
    """The buffer of a pipe or FIFO inode: capacity and pending bytes."""

    capacity: int = u32()
    ino: int = u64()
    data: bytes = blob()


@record(0x0505)
class Fifo(Record):
    id: int = u32()
    path_id: int = u32()
    flags: int = u32()
    ino: int = u64()


class SockState(enum.IntEnum):
    ESTABLISHED = 1
    SYN_SENT = 2
    SYN_RECV = 3
    FIN_WAIT1 = 4
    FIN_WAIT2 = 5
    TIME_WAIT = 6
    CLOSE = 7
    CLOSE_WAIT = 8
    LAST_ACK = 9
    LISTEN = 10
    CLOSING = 11


@record(0x0506)
class UnixSocket(Record):
    id: int = u32()
    flags: int = u32()  # file flags (O_NONBLOCK, ...)
    type: int = u8()  # SOCK_STREAM 1, SOCK_DGRAM 2, SOCK_SEQPACKET 5
    state: int = u8(enum=SockState)
    shutdown: int = u8()
    backlog: int = u32()
    sndbuf: int = u32()
    rcvbuf: int = u32()
    opts: int = u32()  # SO_PASSCRED 1, SO_PASSSEC 2
    ino: int = u64()
    peer_ino: int = u64()
    name: bytes = blob()  # sun_path; abstract names begin with NUL
    queue: list[bytes] = blobs()  # messages waiting in this socket's receive queue
    fmode: int = u32()  # a path name's socket file: mode, owner, group
    fuid: int = u32()
    fgid: int = u32()
    senders: list[bytes] = blobs()  # dgram/seqpacket: each queued message's source name
    icons: list[int] = u64s()  # listeners: the clients waiting in the accept queue, in order
    peer_name: bytes = blob()  # a peer outside the tree (--ext-unix-sk): its bound name


class InetFlags(enum.IntFlag):
    REUSEADDR = 1 << 0
    REUSEPORT = 1 << 1
    NODELAY = 1 << 2
    KEEPALIVE = 1 << 3
    REPAIR = 1 << 4  # the repair fields below are valid
    V6ONLY = 1 << 5  # IPV6_V6ONLY


@record(0x0507)
class InetSocket(Record):
    id: int = u32()
    flags: int = u32()
    family: int = u16()  # AF_INET 2, AF_INET6 10
    type: int = u16()
    proto: int = u16()
    state: int = u8(enum=SockState)
    shutdown: int = u8()
    backlog: int = u32()
    src_port: int = u16()
    dst_port: int = u16()
    src_addr: bytes = fbytes(16)
    dst_addr: bytes = fbytes(16)
    opts: int = u32(flags=InetFlags)
    sndbuf: int = u32()
    rcvbuf: int = u32()
    snd_seq: int = u32()
    rcv_seq: int = u32()
    mss: int = u32()
    snd_wscale: int = u8()
    rcv_wscale: int = u8()
    tcp_opts: int = u32()
    timestamp: int = u32()
    snd_wl1: int = u32()
    snd_wnd: int = u32()
    max_window: int = u32()
    rcv_wnd: int = u32()
    rcv_wup: int = u32()
    unsent_len: int = u32()
    ino: int = u64()
    send_queue: bytes = blob()
    recv_queue: bytes = blob()


@record(0x0508)
class EventFd(Record):
    id: int = u32()
    flags: int = u32()
    semaphore: int = u8()
    count: int = u64()


@record(0x0509)
class SignalFd(Record):
    id: int = u32()
    flags: int = u32()
    sigmask: int = u64()


@record(0x050A)
class TimerFd(Record):
    id: int = u32()
    flags: int = u32()
    clockid: int = i32()
    settime_flags: int = u32()  # TFD_TIMER_ABSTIME 1, TFD_TIMER_CANCEL_ON_SET 2
    ticks: int = u64()  # expirations not read yet
    value_ns: int = u64()  # time left at the dump (also for ABSTIME); 0 = disarmed
    interval_ns: int = u64()


@record(0x050B)
class Epoll(Record):
    id: int = u32()
    flags: int = u32()


@record(0x050C)
class EpollTarget(Record):
    epoll_id: int = u32()
    tfd: int = u32()  # fd number the target was registered with
    target_id: int = u32()  # the target's open-file description
    events: int = u32()
    data: int = u64()


@record(0x050D)
class Inotify(Record):
    id: int = u32()
    flags: int = u32()


@record(0x050E)
class InotifyWatch(Record):
    inotify_id: int = u32()
    wd: int = i32()
    mask: int = u32()
    ignored_mask: int = u32()
    ino: int = u64()  # the watched inode, as stat() shows it
    dev: int = u64()
    path: str = text()  # its path at the dump (the watch is on that inode)


class TtyKind(enum.IntEnum):
    PTY_MASTER = 1
    PTY_SLAVE = 2
    CONSOLE = 3
    VT = 4
    CTTY = 5  # /dev/tty


@record(0x050F)
class Tty(Record):
    """An open-file description of a terminal."""

    id: int = u32()
    flags: int = u32()
    kind: int = u8(enum=TtyKind)
    tty_id: int = u32()  # a TtyInfo
    path_id: int = u32()


class LockKind(enum.IntEnum):
    FLOCK = 1
    POSIX = 2
    OFD = 3
    LEASE = 4  # 1.6: F_SETLEASE (write: a write lease), owned by the description


@record(0x0510)
class FileLock(Record):
    pid: int = u32()
    fd: int = u32()
    file_id: int = u32()
    kind: int = u8(enum=LockKind)
    write: int = u8()
    start: int = u64()
    length: int = u64()  # 0: to the end of the file


class TtyFlags(enum.IntFlag):
    EXTERNAL = 1 << 0  # the terminal of a session outside the tree (a shell job's)


@record(0x0511)
class TtyInfo(Record):
    """A terminal device: shared by every description of it."""

    id: int = u32()
    index: int = u32()  # N of /dev/pts/N
    sid: int = u32()  # session it controls, 0 if none
    pgrp: int = u32()  # foreground process group
    locked: int = u8()
    packet_mode: int = u8()
    exclusive: int = u8()
    ws_row: int = u16()
    ws_col: int = u16()
    ws_xpixel: int = u16()
    ws_ypixel: int = u16()
    termios: bytes = blob()  # struct termios2 (TCGETS2)
    flags: int = u32(flags=TtyFlags)
    data: bytes = blob()  # written by the slave, not yet read from the master


@record(0x0512)
class MemfdFile(Record):
    """An open-file description of a memfd: its object is a ShmemObject of kind MEMFD."""

    id: int = u32()
    shmem_id: int = u32()
    flags: int = u32()
    pos: int = u64()


# --------------------------------------------------------------------------- FILES: 1.6


@record(0x0513)
class PidFd(Record):
    """An open-file description of a pidfd (format 1.6)."""

    id: int = u32()
    flags: int = u32()  # file flags: O_NONBLOCK (PIDFD_NONBLOCK), O_EXCL (PIDFD_THREAD)
    pid: int = i32()  # the process (a thread with PIDFD_THREAD) it refers to; -1: reaped


class OwnerType(enum.IntEnum):
    TID = 0  # F_OWNER_TID
    PID = 1  # F_OWNER_PID
    PGRP = 2  # F_OWNER_PGRP


@record(0x0514)
class FileOwner(Record):
    """Who gets a description's signals (format 1.6): F_SETOWN_EX and F_SETSIG, set again
    by the process `pid` through its fd `fd` (which also makes that fd the si_fd of SIGIO
    when the description has O_ASYNC)."""

    file_id: int = u32()
    pid: int = u32()
    fd: int = u32()
    owner_type: int = u8(enum=OwnerType)
    owner: int = u32()  # the thread, process or group; 0: no owner
    signum: int = u32()  # F_SETSIG; 0: SIGIO


@record(0x0515)
class PtyState(Record):
    """A pty's slave side (format 1.7): the owner and mode of /dev/pts/N, and the input the
    master wrote that the slave has not read yet (whole lines and a partial one)."""

    tty_id: int = u32()
    uid: int = u32()
    gid: int = u32()
    mode: int = u32()
    input: bytes = blob()


# --------------------------------------------------------------------------- FILES: sockets (1.4)
# Format 1.4 adds these socket records in 0x05A0-0x05BF.


@record(0x05A0)
class SockOpts(Record):
    """Options of a socket description, as getsockopt() returned them: restore sets each
    back (SPEC.md lists which options a dump records, and when restore sets them)."""

    file_id: int = u32()  # the socket's description
    keys: list[int] = u64s()  # (level << 32) | optname, in the order restore sets them
    values: list[bytes] = blobs()  # each option's bytes, as getsockopt() gave them


class UnixBindFlags(enum.IntFlag):
    DELETED = 1 << 0  # the name no longer leads to this socket: its file was removed or replaced


@record(0x05A1)
class UnixBind(Record):
    """How a unix socket's path name is bound again: where a relative name resolves, and
    whether its file is to be removed once every connection and message that needs the
    name is restored."""

    file_id: int = u32()
    flags: int = u32(flags=UnixBindFlags)
    dir: str = text()  # a relative name: the directory it resolves in (the binder's cwd)


class ScmFlags(enum.IntFlag):
    CREDS = 1 << 0  # the message carries credentials (SCM_CREDENTIALS): pid, uid, gid


@record(0x05A2)
class UnixScm(Record):
    """What travels with one queued message of a unix socket besides its bytes."""

    file_id: int = u32()  # the receiving socket's description
    index: int = u32()  # the message (a stream: the chunk) in its queue, from 0
    flags: int = u32(flags=ScmFlags)
    pid: int = u32()  # credentials: the sender's pid as the receiver sees it (0: none)
    uid: int = u32()
    gid: int = u32()
    fds: list[int] = u32s()  # files in flight (SCM_RIGHTS): open-file descriptions, in order


@record(0x05A3)
class PacketSocket(Record):
    """An AF_PACKET socket (its options are in SockOpts)."""

    id: int = u32()
    flags: int = u32()
    type: int = u16()  # SOCK_RAW 3, SOCK_DGRAM 2
    proto: int = u16()  # the ethertype in network byte order, as socket() and bind() take it
    ifindex: int = i32()  # the interface it is bound to, 0 if none
    ino: int = u64()
    ifname: str = text()  # that interface's name
    # tpacket_req3 of each ring: block_size block_nr frame_size frame_nr retire_blk_tov
    # sizeof_priv feature_req_word; empty: no ring
    rx_ring: list[int] = u32s()
    tx_ring: list[int] = u32s()
    mclist: list[bytes] = blobs()  # struct packet_mreq of each membership, once per count


@record(0x05A4)
class NetlinkSocket(Record):
    """An AF_NETLINK socket (its options are in SockOpts)."""

    id: int = u32()
    flags: int = u32()
    type: int = u16()  # SOCK_RAW 3 or SOCK_DGRAM 2
    proto: int = u32()  # NETLINK_ROUTE 0, NETLINK_GENERIC 16, ...
    portid: int = u32()  # its bound address, 0 if unbound
    dst_portid: int = u32()  # connect()ed to, 0 if not
    dst_group: int = u32()
    ino: int = u64()
    groups: list[int] = u32s()  # the multicast groups it is a member of, as a bitmap


# --------------------------------------------------------------------------- FDS


@record(0x0601)
class Fd(Record):
    pid: int = u32()
    fd: int = u32()
    file_id: int = u32()
    flags: int = u32()  # FD_CLOEXEC


# --------------------------------------------------------------------------- IPC


@record(0x0701)
class SysvShm(Record):
    key: int = i32()
    shmid: int = i32()
    mode: int = u32()
    uid: int = u32()
    gid: int = u32()
    cuid: int = u32()
    cgid: int = u32()
    cpid: int = u32()
    lpid: int = u32()
    shmem_id: int = u32()  # its pages: a ShmemObject of kind SYSV
    size: int = u64()


@record(0x0702)
class SysvSem(Record):
    key: int = i32()
    semid: int = i32()
    mode: int = u32()
    uid: int = u32()
    gid: int = u32()
    cuid: int = u32()
    cgid: int = u32()
    values: list[int] = u32s()


@record(0x0703)
class SysvMsq(Record):
    key: int = i32()
    msqid: int = i32()
    mode: int = u32()
    uid: int = u32()
    gid: int = u32()
    cuid: int = u32()
    cgid: int = u32()
    qbytes: int = u64()


@record(0x0704)
class SysvMsg(Record):
    msqid: int = i32()
    mtype: int = i64()
    data: bytes = blob()


@record(0x0705)
class PosixMq(Record):
    """An open-file description of a POSIX message queue; descriptions of one queue share
    its ino, and the first of them carries the queue's messages (PosixMqMsg.mq_id)."""

    id: int = u32()
    mode: int = u32()
    uid: int = u32()
    gid: int = u32()
    flags: int = u32()
    maxmsg: int = u64()
    msgsize: int = u64()
    name: str = text()  # without the leading '/'
    ino: int = u64()
    deleted: int = u8()  # mq_unlink'ed while open


@record(0x0706)
class PosixMqMsg(Record):
    mq_id: int = u32()
    prio: int = u32()
    data: bytes = blob()


# --------------------------------------------------------------------------- NAMESPACES


class NsKind(enum.IntEnum):
    MNT = 1
    UTS = 2
    IPC = 3
    PID = 4
    NET = 5
    USER = 6
    CGROUP = 7
    TIME = 8


@record(0x0801)
class Namespace(Record):
    kind: int = u8(enum=NsKind)
    pid: int = u32()  # a process of the tree that lives in it
    flags: int = u32()
    ino: int = u64()  # the inode at dump time: identity only


@record(0x0802)
class Uts(Record):
    ns_ino: int = u64()
    hostname: str = text()
    domainname: str = text()


@record(0x0803)
class NetLink(Record):
    ns_ino: int = u64()
    ifindex: int = u32()
    mtu: int = u32()
    flags: int = u32()  # IFF_*
    peer_ifindex: int = u32()
    kind: str = text()  # loopback, veth, ...
    name: str = text()
    address: bytes = blob()


@record(0x0804)
class NetAddr(Record):
    ns_ino: int = u64()
    ifindex: int = u32()
    family: int = u8()
    prefixlen: int = u8()
    scope: int = u8()
    flags: int = u32()
    address: bytes = blob()
    label: str = text()


@record(0x0805)
class NetRoute(Record):
    ns_ino: int = u64()
    family: int = u8()
    dst_len: int = u8()
    protocol: int = u8()
    scope: int = u8()
    type: int = u8()
    table: int = u32()
    oif: int = u32()
    priority: int = u32()
    dst: bytes = blob()
    gateway: bytes = blob()
    prefsrc: bytes = blob()


@record(0x0806)
class Mount(Record):
    mnt_id: int = u32()
    parent_id: int = u32()
    flags: int = u32()  # MS_* per-mount flags
    shared_group: int = u32()
    master_group: int = u32()
    external: int = u8()  # a bind mount from the host: verified, never copied
    dev: int = u64()
    root: str = text()
    mountpoint: str = text()
    fstype: str = text()
    source: str = text()
    options: str = text()
    super_options: str = text()


@record(0x0807)
class MountData(Record):
    mnt_id: int = u32()
    data: bytes = blob()  # a POSIX ustar stream of a tmpfs's contents


@item
class IdMap:
    inside: int = u32()  # first id in the namespace
    outside: int = u32()  # the host id it is (in the dumping host's user namespace)
    count: int = u32()


@record(0x0808)
class UserNs(Record):
    """The user namespace of a VE that contains its root: its maps, as /proc/PID/uid_map
    and gid_map show them to the dumping host, and whether setgroups(2) is allowed."""

    ns_ino: int = u64()
    setgroups: int = u8()  # 1 allow, 0 deny
    uid_map: list[IdMap] = items(IdMap)
    gid_map: list[IdMap] = items(IdMap)


# --------------------------------------------------------------------------- FSSNAP


class FsBackend(enum.IntEnum):
    BTRFS = 1
    LVM = 2
    REFLINK = 3
    STORE = 4  # content-addressed copy with a manifest


@record(0x0901)
class FsSnapshot(Record):
    backend: int = u8(enum=FsBackend)
    generation: int = u64()
    created_ns: int = u64()
    uuid: bytes = fbytes(16)
    parent_uuid: bytes = fbytes(16)
    subvolume: str = text()
    snapshot_path: str = text()
    ve_id: str = text()
    manifest_digest: bytes = blob()


# Tags once used and withdrawn: never reuse them.  (None yet in format 1.1.)
RETIRED_TAGS: dict[int, str] = {}

# Section types once used and withdrawn.
RETIRED_SECTIONS: dict[int, str] = {}


def section_of_tag(tag: int) -> int:
    """The section type that holds records of this tag (its high byte); 0: the container."""
    return tag >> 8
