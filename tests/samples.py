"""Deterministic sample images: the golden images, test inputs and benchmark inputs.

Everything here is fixed (UUIDs, times, page contents from a seeded generator), so the
same call always writes the same bytes.  ``python tests/samples.py DIR`` (re)writes the
golden images of the current format version, ``NAME.img`` with ``NAME.json`` beside it;
tests/test_image_golden.py checks that the writer still produces them byte for byte.
Test data, not library: the tests import it as ``samples``, bench/ from tests/.
"""

from __future__ import annotations

import io
import os
import random
import sys
from collections.abc import Callable
from typing import Any, BinaryIO

from cptimage import records as R
from cptimage.container import FORMAT_MINOR, ImageWriter
from cptimage.fields import REGISTRY
from cptimage.jsonio import decode_to

PAGE = 4096
CREATED_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
UUID = bytes.fromhex("0123456789abcdef0123456789abcdef")
XSTATE_SIZE = 576  # legacy area + xsave header: the smallest xsave layout


def header(**kw: Any) -> R.Header:
    """A fixed, plausible header; keyword arguments override fields."""
    base: dict[str, Any] = dict(
        created_ns=CREATED_NS,
        page_size=PAGE,
        flags=R.HeaderFlags.PIDNS,
        xcr0=0x7,
        xstate_size=XSTATE_SIZE,
        source_kind=R.SourceKind.PID,
        root_pid=100,
        uuid=UUID,
        vdso_digest=0x5EED_0DD5_0000_0001,
        arch="x86_64",
        kernel_release="6.18.0-cpt",
        kernel_version="#1 SMP PREEMPT_DYNAMIC",
        cpu_flags=["sse2", "avx", "avx2", "xsave"],
        hostname="node1",
        tool_version="cpt 0.1.0",
        source_id="100",
    )
    base.update(kw)
    return R.Header(**base)


def pattern(seed: int, n: int) -> bytes:
    """n pseudo-random bytes, the same for the same seed."""
    return random.Random(seed).randbytes(n)


def _regs(rip: int, rsp: int) -> bytes:
    # struct user_regs_struct: 27 u64; rip is #16, rsp #19
    words = [0] * 27
    words[16], words[19] = rip, rsp
    return b"".join(w.to_bytes(8, "little") for w in words)


# --------------------------------------------------------------------------- the tree


class _Tree:
    """A 3-process tree: sh (100) -> worker (101, threads 101 and 102), logger (103)."""

    def __init__(self, variant: int) -> None:
        self.v = variant
        self.procs = [
            (100, 0, "sh"),
            (101, 100, "worker"),
            (103, 100, "logger" if not variant else "logger2"),
        ]
        self.threads = {100: [100], 101: [101, 102], 103: [103]}

    def process(self) -> list[Any]:
        out: list[Any] = []
        for pid, ppid, comm in self.procs:
            out.append(
                R.Process(
                    pid=pid,
                    ppid=ppid,
                    pgid=100,
                    sid=100,
                    state=R.ProcessState.ALIVE,
                    nspid=[pid, pid - 99],
                    nspgid=[100, 1],
                    nssid=[100, 1],
                    comm=comm,
                )
            )
        for pid, tids in self.threads.items():
            for tid in tids:
                rip = 0x401000 + tid + (0x10 if self.v and tid == 102 else 0)
                out.append(
                    R.Thread(
                        pid=pid,
                        tid=tid,
                        sigmask=0,
                        rseq_ptr=0x7F0000001000 + tid * 32,
                        rseq_len=32,
                        rseq_sig=0x53053053,
                        robust_head=0x7F0000002000,
                        robust_len=24,
                        clear_child_tid=0x7F0000003000 if tid != pid else 0,
                        nstid=[tid, tid - 99],
                        regs=_regs(rip, 0x7FFD0000F000),
                        fpregs=pattern(tid, 512),
                        xstate=pattern(tid + 1, XSTATE_SIZE),
                        comm=dict((p, c) for p, _, c in self.procs)[pid],
                    )
                )
        for pid, _, _ in self.procs:
            out.append(
                R.Creds(
                    pid=pid,
                    uid=1000,
                    euid=1000,
                    suid=1000,
                    fsuid=1000,
                    gid=1000,
                    egid=1000,
                    sgid=1000,
                    fsgid=1000,
                    cap_bnd=(1 << 41) - 1,
                    groups=[1000, 27],
                )
            )
            out.append(
                R.Rlimits(
                    pid=pid, limits=[R.Rlimit(7, 1024, 4096), R.Rlimit(3, 8 << 20, 2**64 - 1)]
                )
            )
            out.append(
                R.Sigactions(pid=pid, actions=[R.Sigaction(15, 0x401500, 0x4000000, 0x401600, 0)])
            )
            out.append(
                R.TaskState(
                    pid=pid, umask=0o22, cwd_id=1, root_id=2, timerslack_ns=50_000, dumpable=1
                )
            )
        return out

    def mm(self, extra: tuple[R.Vma, ...] = ()) -> list[Any]:
        out: list[Any] = []
        for pid, _, _ in self.procs:
            out.append(
                R.Mm(
                    pid=pid,
                    exe_id=3,
                    start_code=0x400000,
                    end_code=0x402000,
                    start_data=0x403000,
                    end_data=0x404000,
                    start_brk=0x405000,
                    brk=0x427000,
                    start_stack=0x7FFD0000FF00,
                    arg_start=0x7FFD0000FF10,
                    arg_end=0x7FFD0000FF20,
                    env_start=0x7FFD0000FF20,
                    env_end=0x7FFD0000FFF0,
                    auxv=[6, 4096, 0, 0],
                )
            )
            vmas = [
                R.Vma(
                    pid=pid,
                    kind=R.VmaKind.FILE_PRIVATE,
                    prot=5,
                    flags=2,
                    start=0x400000,
                    end=0x402000,
                    file_id=3,
                ),
                R.Vma(
                    pid=pid,
                    kind=R.VmaKind.FILE_PRIVATE,
                    prot=3,
                    flags=2,
                    start=0x403000,
                    end=0x404000,
                    pgoff=0x3000,
                    file_id=3,
                ),
                R.Vma(
                    pid=pid,
                    kind=R.VmaKind.ANON,
                    prot=3,
                    flags=0x22,
                    start=0x405000,
                    end=0x427000,
                    name="[heap]",
                ),
                R.Vma(
                    pid=pid,
                    kind=R.VmaKind.SHMEM,
                    prot=3,
                    flags=1,
                    start=0x7F0000000000,
                    end=0x7F0000004000,
                    shmem_id=1,
                    name="/dev/zero (deleted)",
                ),
                R.Vma(
                    pid=pid,
                    kind=R.VmaKind.ANON,
                    prot=3,
                    flags=0x122,
                    start=0x7FFD0000E000,
                    end=0x7FFD00010000,
                    vmflags=R.VmFlags.GROWSDOWN,
                    name="[stack]",
                ),
                R.Vma(
                    pid=pid,
                    kind=R.VmaKind.VVAR,
                    prot=1,
                    flags=2,
                    start=0x7FFF00000000,
                    end=0x7FFF00004000,
                    name="[vvar]",
                ),
                R.Vma(
                    pid=pid,
                    kind=R.VmaKind.VDSO,
                    prot=5,
                    flags=2,
                    start=0x7FFF00004000,
                    end=0x7FFF00006000,
                    name="[vdso]",
                ),
            ]
            vmas += [v for v in extra if v.pid == pid]
            out += sorted(vmas, key=lambda v: v.start)
        out.append(
            R.ShmemObject(
                id=1,
                kind=R.ShmemKind.SHARED_ANON,
                size=4 * PAGE,
                ino=5001,
                name="/dev/zero (deleted)",
            )
        )
        return out

    def pages(self, w: ImageWriter) -> list[Any]:
        runs: list[Any] = []
        for pid, _, _ in self.procs:
            data = pattern(pid, 2 * PAGE)
            if self.v and pid == 101:
                data = data[:PAGE] + pattern(999, PAGE)
            off = w.write_pages(data)
            runs.append(
                R.PagemapRun(
                    owner_kind=R.OwnerKind.PROCESS,
                    flags=R.PageFlags.PRESENT,
                    owner=pid,
                    vaddr=0x405000,
                    nr_pages=2,
                    data_offset=off,
                )
            )
            runs.append(
                R.PagemapRun(
                    owner_kind=R.OwnerKind.PROCESS,
                    flags=R.PageFlags.ZERO,
                    owner=pid,
                    vaddr=0x407000,
                    nr_pages=4,
                )
            )
            off = w.write_pages(pattern(pid + 50, PAGE))
            runs.append(
                R.PagemapRun(
                    owner_kind=R.OwnerKind.PROCESS,
                    flags=R.PageFlags.PRESENT,
                    owner=pid,
                    vaddr=0x7FFD0000F000,
                    nr_pages=1,
                    data_offset=off,
                )
            )
        off = w.write_pages(pattern(7, PAGE))
        runs.append(
            R.PagemapRun(
                owner_kind=R.OwnerKind.SHMEM,
                flags=R.PageFlags.PRESENT,
                owner=1,
                vaddr=0,
                nr_pages=1,
                data_offset=off,
            )
        )
        return runs

    def files(self) -> list[Any]:
        out: list[Any] = [
            R.PathObj(
                id=1,
                kind=R.PathKind.DIR,
                mode=0o40755,
                nlink=3,
                mnt_id=21,
                ino=2,
                dev=0x801,
                path="/home/user",
            ),
            R.PathObj(
                id=2,
                kind=R.PathKind.DIR,
                mode=0o40755,
                nlink=20,
                mnt_id=21,
                ino=2,
                dev=0x801,
                path="/",
            ),
            R.PathObj(
                id=3,
                kind=R.PathKind.REG,
                mode=0o100755,
                nlink=1,
                mnt_id=21,
                size=16384,
                mtime_ns=CREATED_NS - 10**12,
                ino=131075,
                dev=0x801,
                path="/usr/bin/worker",
            ),
            R.PathObj(
                id=4,
                kind=R.PathKind.REG,
                mode=0o100644,
                uid=1000,
                gid=1000,
                nlink=1,
                mnt_id=21,
                size=4096,
                mtime_ns=CREATED_NS,
                ino=262147,
                dev=0x801,
                path="/home/user/log.txt",
            ),
            R.PathObj(
                id=5,
                kind=R.PathKind.CHR,
                mode=0o20620,
                uid=1000,
                gid=5,
                nlink=1,
                mnt_id=24,
                ino=3,
                dev=0x18,
                rdev=0x8800,
                path="/dev/pts/0",
            ),
            R.TtyInfo(
                id=1, index=0, sid=100, pgrp=100, ws_row=24, ws_col=80, termios=pattern(44, 44)
            ),
            R.Tty(id=1, flags=0o2, kind=R.TtyKind.PTY_SLAVE, tty_id=1, path_id=5),
            R.Pipe(id=2, flags=0o0, ino=9001),
            R.Pipe(id=3, flags=0o1, ino=9001),
            R.PipeData(capacity=65536, ino=9001, data=b"hello from sh\n"),
            R.RegFile(id=4, path_id=4, flags=0o2001, pos=1234 if not self.v else 2048),
            R.UnixSocket(
                id=5,
                flags=0o2,
                type=1,
                state=R.SockState.ESTABLISHED,
                sndbuf=212992,
                rcvbuf=212992,
                ino=9100,
                peer_ino=9101,
                queue=[b"ping"],
            ),
            R.UnixSocket(
                id=6,
                flags=0o2,
                type=1,
                state=R.SockState.ESTABLISHED,
                sndbuf=212992,
                rcvbuf=212992,
                ino=9101,
                peer_ino=9100,
            ),
            R.EventFd(id=7, flags=0o2004002, count=3),
        ]
        if self.v:
            out.append(R.EventFd(id=8, flags=0o2004002, count=1))
        return out

    def fds(self) -> list[Any]:
        out: list[Any] = []
        for pid, _, _ in self.procs:
            out += [R.Fd(pid=pid, fd=n, file_id=1) for n in range(3)]
        out += [
            R.Fd(pid=100, fd=4, file_id=3, flags=1),
            R.Fd(pid=101, fd=3, file_id=2),
            R.Fd(pid=101, fd=5, file_id=5),
            R.Fd(pid=101, fd=6, file_id=7, flags=1),
            R.Fd(pid=103, fd=3, file_id=4),
            R.Fd(pid=103, fd=4, file_id=6),
        ]
        if self.v:
            out.append(R.Fd(pid=103, fd=5, file_id=8, flags=1))
        return out

    def write(self, w: ImageWriter) -> None:
        w.add_section(R.SectionType.PROCESS, self.process())
        w.add_section(R.SectionType.MM, self.mm())
        w.add_section(R.SectionType.FILES, self.files())
        w.add_section(R.SectionType.FDS, self.fds())
        w.add_section(R.SectionType.PAGEMAP, self.pages(w))


def tree_image(
    out: BinaryIO, *, variant: int = 0, compress: bool = False, minor: int = FORMAT_MINOR
) -> None:
    """The small realistic image; ``variant=1`` differs in a few places (for diff)."""
    hdr = header(created_ns=CREATED_NS + variant * 10**9)
    with ImageWriter(
        out, hdr, compress_records=compress, compress_pages=compress, level=9, minor=minor
    ) as w:
        _Tree(variant).write(w)


# --------------------------------------------------------------------------- every record


def _extras() -> dict[R.SectionType, list[Any]]:
    """One of each record type the tree lacks."""
    return {
        R.SectionType.PROCESS: [
            R.Itimers(pid=101, real_interval_us=1000, real_value_us=500),
            R.PosixTimer(
                pid=101,
                timer_id=0,
                clockid=1,
                sigev_notify=0,
                signo=14,
                notify_tid=101,
                interval_ns=10**9,
                value_ns=5 * 10**8,
            ),
            R.SeccompFilter(pid=103, tid=103, index=0, program=pattern(8, 64)),
            R.PendingSignal(pid=101, tid=102, signo=10, siginfo=pattern(10, 128)),
        ],
        R.SectionType.FILES: [
            R.PathObj(
                id=6,
                kind=R.PathKind.FIFO,
                mode=0o10600,
                uid=1000,
                gid=1000,
                nlink=1,
                mnt_id=21,
                ino=262150,
                dev=0x801,
                path="/home/user/fifo",
            ),
            R.PathObj(
                id=7,
                kind=R.PathKind.REG,
                flags=R.PathFlags.DELETED | R.PathFlags.GHOST,
                mode=0o100600,
                nlink=0,
                mnt_id=21,
                size=5,
                ino=262151,
                dev=0x801,
                path="/tmp/scratch",
                contents=b"ghost",
            ),
            R.Fifo(id=20, path_id=6, flags=0o0, ino=262150),
            R.InetSocket(
                id=21,
                flags=0o2,
                family=2,
                type=1,
                proto=6,
                state=R.SockState.ESTABLISHED,
                src_port=40000,
                dst_port=80,
                src_addr=bytes([127, 0, 0, 1]) + bytes(12),
                dst_addr=bytes([127, 0, 0, 1]) + bytes(12),
                opts=R.InetFlags.REPAIR | R.InetFlags.NODELAY,
                snd_seq=1000,
                rcv_seq=2000,
                mss=65483,
                snd_wscale=7,
                rcv_wscale=7,
                snd_wnd=65536,
                rcv_wnd=65536,
                ino=9200,
                send_queue=b"GET / HTTP/1.0\r\n",
                recv_queue=b"HTTP/1.0 200",
            ),
            R.SignalFd(id=22, flags=0o2004000, sigmask=1 << 16),
            R.TimerFd(
                id=23, flags=0o2004000, clockid=1, ticks=2, value_ns=10**6, interval_ns=10**6
            ),
            R.Epoll(id=24, flags=0o2000000),
            R.EpollTarget(epoll_id=24, tfd=6, target_id=7, events=1, data=6),
            R.Inotify(id=25, flags=0o2004000),
            R.InotifyWatch(
                inotify_id=25, wd=1, mask=0x2, ino=262147, dev=0x801, path="/home/user/log.txt"
            ),
            R.FileLock(pid=103, fd=3, file_id=4, kind=R.LockKind.POSIX, write=1, start=0, length=0),
            R.MemfdFile(id=26, shmem_id=3, flags=0o100002, pos=100),
        ],
        R.SectionType.FDS: [
            R.Fd(pid=101, fd=7 + i, file_id=fid, flags=1)
            for i, fid in enumerate((20, 21, 22, 23, 24, 25, 26, 27))
        ],
        R.SectionType.IPC: [
            R.SysvShm(
                key=0x1234,
                shmid=32768,
                mode=0o600,
                uid=1000,
                gid=1000,
                cuid=1000,
                cgid=1000,
                cpid=101,
                lpid=101,
                shmem_id=2,
                size=PAGE,
            ),
            R.SysvSem(
                key=0x1235,
                semid=0,
                mode=0o600,
                uid=1000,
                gid=1000,
                cuid=1000,
                cgid=1000,
                values=[1, 0, 5],
            ),
            R.SysvMsq(
                key=0x1236,
                msqid=0,
                mode=0o600,
                uid=1000,
                gid=1000,
                cuid=1000,
                cgid=1000,
                qbytes=16384,
            ),
            R.SysvMsg(msqid=0, mtype=1, data=b"queued"),
            R.PosixMq(
                id=27,
                mode=0o600,
                uid=1000,
                gid=1000,
                flags=0o2,
                maxmsg=10,
                msgsize=8192,
                name="jobs",
                ino=4242,
            ),
            R.PosixMqMsg(mq_id=27, prio=3, data=b"job-1"),
        ],
        R.SectionType.NAMESPACES: [
            R.Namespace(kind=R.NsKind.PID, pid=100, ino=4026532201),
            R.Namespace(kind=R.NsKind.UTS, pid=100, ino=4026532202),
            R.Namespace(kind=R.NsKind.NET, pid=100, ino=4026532203),
            R.Uts(ns_ino=4026532202, hostname="ve100", domainname="(none)"),
            R.NetLink(
                ns_ino=4026532203,
                ifindex=1,
                mtu=65536,
                flags=0x49,
                kind="loopback",
                name="lo",
                address=bytes(6),
            ),
            R.NetAddr(
                ns_ino=4026532203,
                ifindex=1,
                family=2,
                prefixlen=8,
                scope=254,
                address=bytes([127, 0, 0, 1]),
                label="lo",
            ),
            R.NetRoute(
                ns_ino=4026532203,
                family=2,
                dst_len=8,
                protocol=2,
                scope=254,
                type=2,
                table=255,
                oif=1,
                dst=bytes([127, 0, 0, 0]),
                prefsrc=bytes([127, 0, 0, 1]),
            ),
            R.Mount(
                mnt_id=21,
                parent_id=1,
                dev=0x801,
                root="/",
                mountpoint="/",
                fstype="ext4",
                source="/dev/sda1",
                options="rw,relatime",
                super_options="rw",
            ),
            R.Mount(
                mnt_id=25,
                parent_id=21,
                dev=0x2A,
                root="/",
                mountpoint="/tmp",
                fstype="tmpfs",
                source="tmpfs",
                options="rw,nosuid",
                super_options="rw",
            ),
            R.MountData(mnt_id=25, data=pattern(25, 1024)),
        ],
        R.SectionType.FSSNAP: [
            R.FsSnapshot(
                backend=R.FsBackend.BTRFS,
                generation=42,
                created_ns=CREATED_NS,
                uuid=bytes(range(16)),
                subvolume="/var/lib/cpt/ve/100",
                snapshot_path="/var/lib/cpt/snap/100@1",
                ve_id="100",
                manifest_digest=bytes(8),
            ),
        ],
    }


def every_record_image(out: BinaryIO, *, minor: int = FORMAT_MINOR) -> None:
    """The tree plus one record of every type of format 1.0 the tree lacks (and a SysV shm
    object)."""
    tree = _Tree(0)
    extras = _extras()
    with ImageWriter(
        out,
        header(
            flags=R.HeaderFlags.PIDNS | R.HeaderFlags.VE,
            source_kind=R.SourceKind.VE,
            source_id="100",
        ),
        minor=minor,
    ) as w:
        w.add_section(R.SectionType.PROCESS, tree.process() + extras[R.SectionType.PROCESS])
        shm = R.Vma(
            pid=101,
            kind=R.VmaKind.SYSV_SHM,
            prot=3,
            flags=1,
            start=0x7F1000000000,
            end=0x7F1000001000,
            shmem_id=2,
            name="/SYSV00001234 (deleted)",
        )
        sysv = R.ShmemObject(id=2, kind=R.ShmemKind.SYSV, size=PAGE, ino=32768, name="SYSV00001234")
        memfd = R.ShmemObject(
            id=3, kind=R.ShmemKind.MEMFD, seals=2, size=10000, ino=32769, name="buf"
        )
        w.add_section(R.SectionType.MM, [*tree.mm((shm,)), sysv, memfd])
        w.add_section(R.SectionType.FILES, tree.files() + extras[R.SectionType.FILES])
        w.add_section(R.SectionType.FDS, tree.fds() + extras[R.SectionType.FDS])
        for st in (R.SectionType.IPC, R.SectionType.NAMESPACES, R.SectionType.FSSNAP):
            w.add_section(st, extras[st])
        w.add_section(R.SectionType.PAGEMAP, tree.pages(w))


# --------------------------------------------------------------------------- format 1.1

USERNS_BASE = 300000  # the host uid and gid of the VE's root


def ve_userns_image(out: BinaryIO, *, minor: int = FORMAT_MINOR) -> None:
    """The tree as a VE that contains its root (format 1.1): its user namespace (UserNs,
    Namespace USER and CGROUP) and every process's ids as the VE sees them (NsCreds);
    Creds hold the host's view, through the maps."""
    tree = _Tree(0)
    recs = tree.process()
    for i, rec in enumerate(recs):
        if isinstance(rec, R.Creds):
            inside = 0 if rec.pid == 100 else 1000
            host = USERNS_BASE + inside
            recs[i] = R.Creds(
                pid=rec.pid, uid=host, euid=host, suid=host, fsuid=host, gid=host, egid=host,
                sgid=host, fsgid=host, cap_inh=0, cap_prm=rec.cap_bnd if not inside else 0,
                cap_eff=rec.cap_bnd if not inside else 0, cap_bnd=rec.cap_bnd,
                groups=[host],
            )  # fmt: skip
            recs.append(
                R.NsCreds(
                    pid=rec.pid, uid=inside, euid=inside, suid=inside, fsuid=inside,
                    gid=inside, egid=inside, sgid=inside, fsgid=inside, groups=[inside],
                )
            )  # fmt: skip
    ns = [
        R.Namespace(kind=k, pid=100, flags=1, ino=4026532000 + k)
        for k in (R.NsKind.MNT, R.NsKind.UTS, R.NsKind.PID, R.NsKind.NET, R.NsKind.USER,
                  R.NsKind.CGROUP)
    ]  # fmt: skip
    ns.append(
        R.Mount(
            mnt_id=21,
            parent_id=1,
            dev=0x801,
            root="/",
            mountpoint="/",
            fstype="btrfs",
            source="/dev/loop0",
            options="rw,relatime",
            super_options="rw",
        )
    )
    ns.append(
        R.UserNs(
            ns_ino=4026532000 + R.NsKind.USER,
            setgroups=1,
            uid_map=[R.IdMap(0, USERNS_BASE, 65536)],
            gid_map=[R.IdMap(0, USERNS_BASE, 65536)],
        )
    )
    hdr = header(
        flags=R.HeaderFlags.PIDNS | R.HeaderFlags.VE | R.HeaderFlags.USERNS,
        source_kind=R.SourceKind.VE,
        source_id="100",
    )
    with ImageWriter(out, hdr, minor=minor) as w:
        w.add_section(R.SectionType.PROCESS, recs)
        w.add_section(R.SectionType.MM, tree.mm())
        w.add_section(R.SectionType.FILES, tree.files())
        w.add_section(R.SectionType.FDS, tree.fds())
        w.add_section(R.SectionType.NAMESPACES, ns)
        w.add_section(R.SectionType.PAGEMAP, tree.pages(w))


# --------------------------------------------------------------------------- format 1.2


def owner_record(pid: int = 100, uid: int = 1000) -> R.Owner:
    """The tree's owner as a --pid dump records it: its root process's credentials."""
    return R.Owner(
        pid=pid, uid=uid, euid=uid, suid=uid, fsuid=uid, gid=uid, egid=uid, sgid=uid,
        fsgid=uid, cap_bnd=(1 << 41) - 1, groups=[uid, 27],
    )  # fmt: skip


def tree_owner_image(out: BinaryIO, *, minor: int = FORMAT_MINOR) -> None:
    """The tree as a --pid dump of format 1.2 writes it: with its owner's credentials
    (Owner), which are its root process's."""
    tree = _Tree(0)
    with ImageWriter(out, header(), minor=minor) as w:
        w.add_section(R.SectionType.PROCESS, [*tree.process(), owner_record()])
        w.add_section(R.SectionType.MM, tree.mm())
        w.add_section(R.SectionType.FILES, tree.files())
        w.add_section(R.SectionType.FDS, tree.fds())
        w.add_section(R.SectionType.PAGEMAP, tree.pages(w))


# --------------------------------------------------------------------------- format 1.3: chains

CHAIN_START = 0x7F5500000000
CHAIN_PAGES = 16


def chain_page(level: int, i: int) -> bytes:
    """Page i as image `level` of a sample chain stores it."""
    return pattern(1000 * level + i, PAGE)


def chain_memory(levels: int) -> bytes:
    """The process's memory after `levels` images of a sample chain: image 0 writes every
    page, image L >= 1 rewrites pages L % 16 and (L + 1) % 16 and discards page 15 - L % 16
    (a ZERO run), the rest stays as the parents have it."""
    pages = [chain_page(0, i) for i in range(CHAIN_PAGES)]
    for lv in range(1, levels):
        for i in (lv % CHAIN_PAGES, (lv + 1) % CHAIN_PAGES):
            pages[i] = chain_page(lv, i)
        z = CHAIN_PAGES - 1 - lv % CHAIN_PAGES
        if z not in (lv % CHAIN_PAGES, (lv + 1) % CHAIN_PAGES):
            pages[z] = bytes(PAGE)
    return b"".join(pages)


def chain_uuid(level: int) -> bytes:
    return bytes([0xC0 + level % 64]) + bytes(15 - 2) + level.to_bytes(2, "big")


def chain_image(
    out: BinaryIO,
    level: int,
    parent: bytes | None = None,
    *,
    predump: bool = True,
    name: str = "",
    minor: int = FORMAT_MINOR,
) -> None:
    """Image `level` of a sample chain of one process (pid 100, one anonymous VMA of 16
    pages; chain_memory says what each holds).  `parent`: the parent image's bytes (level
    >= 1), named `name` in the Parent record.  A pre-dump holds memory only; a final
    image its thread too."""
    flags = R.HeaderFlags.PREDUMP if predump else 0
    if level:
        flags |= R.HeaderFlags.INCREMENTAL
    hdr = header(
        created_ns=CREATED_NS + level * 10**9,
        flags=flags,
        root_pid=100,
        uuid=chain_uuid(level),
        parent_uuid=chain_uuid(level - 1) if level else bytes(16),
    )
    procs: list[Any] = [
        R.Process(pid=100, state=R.ProcessState.ALIVE, pgid=100, sid=100, comm="chain")
    ]
    if not predump:
        procs.append(
            R.Thread(
                pid=100,
                tid=100,
                regs=_regs(0x401000, 0x7FFD0000F000),
                fpregs=bytes(512),
                comm="chain",
            )
        )
        procs += [
            R.Creds(pid=100, groups=[]),
            R.Rlimits(pid=100, limits=[]),
            R.Sigactions(pid=100, actions=[]),
            R.TaskState(pid=100, umask=0o22),
        ]
    vma = R.Vma(
        pid=100,
        kind=R.VmaKind.ANON,
        prot=3,
        flags=0x22,
        start=CHAIN_START,
        end=CHAIN_START + CHAIN_PAGES * PAGE,
    )

    def run(i: int, n: int, flag: int, off: int = 0) -> R.PagemapRun:
        return R.PagemapRun(
            owner_kind=R.OwnerKind.PROCESS,
            flags=flag,
            owner=100,
            vaddr=CHAIN_START + i * PAGE,
            nr_pages=n,
            data_offset=off,
        )

    with ImageWriter(out, hdr, minor=minor) as w:
        runs: list[R.PagemapRun] = []
        if not level:
            off = w.write_pages(b"".join(chain_page(0, i) for i in range(CHAIN_PAGES)))
            runs.append(run(0, CHAIN_PAGES, R.PageFlags.PRESENT, off))
        else:
            new = {level % CHAIN_PAGES, (level + 1) % CHAIN_PAGES}
            zero = CHAIN_PAGES - 1 - level % CHAIN_PAGES
            for i in range(CHAIN_PAGES):
                if i in new:
                    runs.append(run(i, 1, R.PageFlags.PRESENT, w.write_pages(chain_page(level, i))))
                elif i == zero:
                    runs.append(run(i, 1, R.PageFlags.ZERO))
                else:
                    runs.append(run(i, 1, R.PageFlags.PARENT))
        w.add_section(R.SectionType.PROCESS, procs)
        w.add_section(R.SectionType.MM, [vma] if predump else [R.Mm(pid=100), vma])
        if parent is not None:
            from cptimage.container import ImageReader

            pr = ImageReader(io.BytesIO(parent))
            w.add_section(
                R.SectionType.CHAIN,
                [
                    R.Parent(
                        uuid=pr.header.uuid,
                        digest=pr.digest,
                        size=pr.size,
                        created_ns=pr.header.created_ns,
                        flags=pr.header.flags,
                        name=name,
                    )
                ],
            )
        w.add_section(R.SectionType.PAGEMAP, runs)


def write_chain(directory: str, levels: int, *, final: bool = True) -> list[str]:
    """A sample chain of `levels` images in `directory` (chain-0.img, chain-1.img, ...),
    pre-dumps but the last one when `final`; returns their paths, oldest first."""
    paths: list[str] = []
    parent: bytes | None = None
    for lv in range(levels):
        buf = io.BytesIO()
        chain_image(
            buf,
            lv,
            parent,
            predump=not (final and lv == levels - 1),
            name=f"chain-{lv - 1}.img" if lv else "",
        )
        parent = buf.getvalue()
        path = os.path.join(directory, f"chain-{lv}.img")
        with open(path, "wb") as f:
            f.write(parent)
        paths.append(path)
    return paths


def _chain_predump(out: BinaryIO) -> None:
    chain_image(out, 0, minor=3)


def _chain_final(out: BinaryIO) -> None:
    base = io.BytesIO()
    _chain_predump(base)
    chain_image(out, 1, base.getvalue(), predump=False, name="chain-predump.img", minor=3)


def task_extra_image(out: BinaryIO, *, minor: int = FORMAT_MINOR) -> None:
    """The tree with format 1.5's per-thread scheduling (ThreadSched: nice, SCHED_IDLE,
    SCHED_FIFO with RESET_ON_FORK) and per-process TaskExtra (login uid, a process stopped
    by SIGTSTP, a membarrier registration)."""
    tree = _Tree(0)
    recs = tree.process()
    scheds = [
        dict(policy=0, nice=5),
        dict(policy=5, nice=5),
        dict(policy=1, flags=1, priority=7),
        dict(policy=3, nice=-3),
    ]
    n = 0
    for rec in list(recs):
        if isinstance(rec, R.Thread):
            recs.append(R.ThreadSched(pid=rec.pid, tid=rec.tid, **scheds[n % len(scheds)]))
            n += 1
        elif isinstance(rec, R.Process):
            stopped = rec.pid == 102
            recs.append(
                R.TaskExtra(
                    pid=rec.pid,
                    loginuid=4242,
                    stop_signal=20 if stopped else 0,
                    membarrier=1 << 4 if rec.pid == 100 else 0,
                )
            )
    with ImageWriter(out, header(), minor=minor) as w:
        w.add_section(R.SectionType.PROCESS, recs)
        w.add_section(R.SectionType.MM, tree.mm())
        w.add_section(R.SectionType.FILES, tree.files())
        w.add_section(R.SectionType.FDS, tree.fds())


# --------------------------------------------------------------------------- format 1.4

# the record types format 1.4 added (sockets): the 1.0 goldens lack them
SOCKET_RECORDS_1_4 = ("SockOpts", "UnixBind", "UnixScm", "PacketSocket", "NetlinkSocket")


def _socket_records() -> list[Any]:
    return [
        R.UnixSocket(
            id=20, flags=2, type=2, state=R.SockState.ESTABLISHED, ino=9001, name=b"rel.sock",
            queue=[b"with files", b"plain"], senders=[b"", b""], fmode=0o755,
        ),
        R.UnixBind(file_id=20, flags=R.UnixBindFlags.DELETED, dir="/srv/app"),
        R.UnixScm(
            file_id=20, index=0, flags=R.ScmFlags.CREDS, pid=100, uid=0, gid=0, fds=[21, 22]
        ),
        R.InetSocket(
            id=21, flags=2, family=2, type=1, proto=6, state=R.SockState.LISTEN, backlog=8,
            src_port=8080, src_addr=bytes([127, 0, 0, 1]) + bytes(12), ino=9002,
        ),
        R.SockOpts(
            file_id=21,
            keys=[(1 << 32) | 25, (6 << 32) | 13, (1 << 32) | 26],
            values=[b"lo", b"reno", bytes.fromhex("80000000000000001600000000000000")],
        ),
        R.PacketSocket(
            id=22, flags=2, type=3, proto=0x0300, ifindex=1, ino=9003, ifname="lo",
            rx_ring=[65536, 4, 2048, 128, 0, 0, 0],
            mclist=[bytes.fromhex("0100000001000000") + bytes(8)],
        ),
        R.SockOpts(file_id=22, keys=[(263 << 32) | 10], values=[b"\x01\0\0\0"]),
        R.NetlinkSocket(
            id=23, flags=2, type=3, proto=0, portid=0x40000064, ino=9004, groups=[0x11, 1]
        ),
    ]  # fmt: skip


def sockets_image(out: BinaryIO, *, minor: int = FORMAT_MINOR) -> None:
    """Format 1.4: the tree plus a unix socket bound to a removed relative name with a
    message carrying credentials and two files in flight (a TCP listener with options and
    a packet socket with a ring and a membership, the packet socket also held by an fd and
    its ring mapped), and a netlink socket."""
    tree = _Tree(0)
    extra = _socket_records()
    ring = R.Vma(
        pid=100, kind=R.VmaKind.PACKET_RING, prot=3, flags=1,
        start=0x7F0000100000, end=0x7F0000140000, file_id=22,
    )  # fmt: skip
    with ImageWriter(out, header(), minor=minor) as w:
        w.add_section(R.SectionType.PROCESS, [*tree.process(), owner_record()])
        w.add_section(R.SectionType.MM, tree.mm(extra=(ring,)))
        w.add_section(R.SectionType.FILES, tree.files() + extra)
        w.add_section(
            R.SectionType.FDS,
            [
                *tree.fds(),
                R.Fd(pid=100, fd=40, file_id=20),
                R.Fd(pid=100, fd=41, file_id=23),
                R.Fd(pid=100, fd=42, file_id=22),
            ],
        )
        w.add_section(R.SectionType.PAGEMAP, tree.pages(w))


# --------------------------------------------------------------------------- format 1.6

# the record types format 1.6 added: the older goldens lack them
RECORDS_1_6 = ("PidFd", "FileOwner", "GuardRegion", "SeccompStrict")


def fds_image(
    out: BinaryIO,
    *,
    minor: int = FORMAT_MINOR,
    tweak: Callable[[list[Any]], None] = lambda records: None,
) -> None:
    """Format 1.6: the tree with pidfds (of process 101, shared by two fds; of thread 102,
    non-blocking; of a process reaped before the dump), a pipe with O_ASYNC whose signals go
    to process 100 as SIGRTMIN+1, the socket's to the group 100, a read lease on the log
    file (LockKind.LEASE), a guard page in the heap of process 101, an AIO ring of
    process 103 (VmaKind.AIO_RING) and thread 102 in strict seccomp mode."""
    tree = _Tree(0)
    extra = [
        R.PidFd(id=20, flags=0o2, pid=101),
        R.PidFd(id=21, flags=0o2 | 0o4000 | 0o200, pid=102),
        R.PidFd(id=22, flags=0o2, pid=-1),
        R.FileOwner(file_id=3, pid=100, fd=4, owner_type=R.OwnerType.PID, owner=100, signum=35),
        R.FileOwner(file_id=5, pid=101, fd=5, owner_type=R.OwnerType.PGRP, owner=100),
        R.FileLock(pid=103, fd=3, file_id=4, kind=R.LockKind.LEASE),
    ]
    aio = R.Vma(
        pid=103, kind=R.VmaKind.AIO_RING, prot=3, flags=1,
        start=0x7F0000200000, end=0x7F0000202000, vmflags=R.VmFlags.DONTFORK,
    )  # fmt: skip
    procs = [*tree.process(), owner_record(), R.SeccompStrict(pid=101, tid=102)]
    mm = [*tree.mm(extra=(aio,)), R.GuardRegion(pid=101, start=0x406000, end=0x407000)]
    files = tree.files() + extra
    every = procs + mm + files
    tweak(every)
    for rec in every[len(procs) + len(mm) + len(files) :]:  # records the tweak added
        {R.SectionType.PROCESS: procs, R.SectionType.FILES: files}[
            R.section_of_tag(rec.TAG)
        ].append(rec)
    with ImageWriter(out, header(), minor=minor) as w:
        w.add_section(R.SectionType.PROCESS, procs)
        w.add_section(R.SectionType.MM, mm)
        w.add_section(R.SectionType.FILES, files)
        w.add_section(
            R.SectionType.FDS,
            [
                *tree.fds(),
                R.Fd(pid=100, fd=10, file_id=20),
                R.Fd(pid=100, fd=11, file_id=20, flags=1),
                R.Fd(pid=101, fd=10, file_id=21, flags=1),
                R.Fd(pid=103, fd=10, file_id=22),
            ],
        )
        w.add_section(R.SectionType.PAGEMAP, tree.pages(w))


# --------------------------------------------------------------------------- format 1.7


# the record types format 1.7 added
RECORDS_1_7 = ("TaskShares", "PtyState")


def proc_image(out: BinaryIO, *, minor: int = FORMAT_MINOR) -> None:
    """Format 1.7: the tree of fds-1.6 (every record of 1.6) where process 101 called
    mlockall(MCL_FUTURE) and 103 mlockall(MCL_FUTURE | MCL_ONFAULT) (Mm LOCK_FUTURE,
    LOCK_ONFAULT), 103 is in process group 99, whose leader had exited (no record names
    it: restore makes a temporary leader), 101 shares its parent's fd table and fs struct
    and 103 its fd table (TaskShares), pty 0's slave has queued input, owner and mode
    (PtyState), and the cwd of 100 is a removed directory (a ghost of kind DIR)."""

    def tweak(records: list[Any]) -> None:
        for r in records:
            if isinstance(r, R.Mm) and r.pid == 101:
                r.flags = R.MmFlags.LOCK_FUTURE
            elif isinstance(r, R.Mm) and r.pid == 103:
                r.flags = R.MmFlags.LOCK_FUTURE | R.MmFlags.LOCK_ONFAULT
            elif isinstance(r, R.Process) and r.pid == 103:
                r.pgid, r.nspgid = 99, [99, 0]
            elif isinstance(r, R.TaskState) and r.pid == 100:
                r.cwd_id = 9
        records += [
            R.TaskShares(pid=101, flags=R.ShareFlags.FILES | R.ShareFlags.FS),
            R.TaskShares(pid=103, flags=R.ShareFlags.FILES),
            R.PtyState(tty_id=1, uid=1000, gid=5, mode=0o620, input=b"ls -l\nhalf"),
            R.PathObj(
                id=9, kind=R.PathKind.DIR, flags=R.PathFlags.DELETED | R.PathFlags.GHOST,
                mode=0o40750, uid=1000, gid=1000, mnt_id=21, ino=9, dev=0x801,
                path="/home/user/gone",
            ),
        ]  # fmt: skip

    fds_image(out, minor=minor, tweak=tweak)


# --------------------------------------------------------------------------- benchmarks


def _process_state(pid: int) -> list[Any]:
    """The per-process records every live process has (SPEC.md section 11), minimal."""
    return [
        R.Creds(pid=pid),
        R.Rlimits(pid=pid),
        R.Sigactions(pid=pid),
        R.TaskState(pid=pid),
    ]


def pages_image(out: BinaryIO, size: int, *, block: int = 16 << 20) -> None:
    """One process with one anonymous VMA of ``size`` bytes, all of it PRESENT."""
    start = 0x7F0000000000
    chunk = pattern(1, min(block, size))
    with ImageWriter(out, header(), block_size=block) as w:
        w.add_section(
            R.SectionType.PROCESS,
            [
                R.Process(pid=100, state=R.ProcessState.ALIVE, pgid=100, sid=100, comm="big"),
                R.Thread(
                    pid=100,
                    tid=100,
                    regs=_regs(0x401000, 0x7FFD0000F000),
                    fpregs=bytes(512),
                    comm="big",
                ),
                *_process_state(100),
            ],
        )
        w.add_section(
            R.SectionType.MM,
            [
                R.Mm(pid=100),
                R.Vma(
                    pid=100, kind=R.VmaKind.ANON, prot=3, flags=0x22, start=start, end=start + size
                ),
            ],
        )
        for pos in range(0, size, len(chunk)):
            w.write_pages(chunk[: min(len(chunk), size - pos)])
        w.add_section(
            R.SectionType.PAGEMAP,
            [
                R.PagemapRun(
                    owner_kind=R.OwnerKind.PROCESS,
                    flags=R.PageFlags.PRESENT,
                    owner=100,
                    vaddr=start,
                    nr_pages=size // PAGE,
                    data_offset=0,
                )
            ],
        )


def many_image(out: BinaryIO, nvmas: int, nfds: int) -> None:
    """One process with ``nvmas`` VMAs (each with one page) and ``nfds`` open files."""
    base = 0x10000000
    page = pattern(2, PAGE)
    with ImageWriter(out, header()) as w:
        w.add_section(
            R.SectionType.PROCESS,
            [
                R.Process(pid=100, state=R.ProcessState.ALIVE, pgid=100, sid=100, comm="many"),
                R.Thread(
                    pid=100,
                    tid=100,
                    regs=_regs(0x401000, 0x7FFD0000F000),
                    fpregs=bytes(512),
                    comm="many",
                ),
                *_process_state(100),
            ],
        )
        w.add_section(
            R.SectionType.MM,
            [
                R.Mm(pid=100),
                *(
                    R.Vma(
                        pid=100,
                        kind=R.VmaKind.FILE_PRIVATE if i % 2 else R.VmaKind.ANON,
                        prot=3,
                        flags=2,
                        start=base + 2 * i * PAGE,
                        end=base + (2 * i + 1) * PAGE,
                        file_id=1 if i % 2 else 0,
                    )
                    for i in range(nvmas)
                ),
            ],
        )
        files: list[Any] = [
            R.PathObj(
                id=1,
                kind=R.PathKind.REG,
                mode=0o100644,
                size=1 << 20,
                ino=77,
                dev=0x801,
                path="/var/lib/data.bin",
            )
        ]
        files += [R.RegFile(id=i + 1, path_id=1, flags=0o2, pos=i) for i in range(nfds)]
        w.add_section(R.SectionType.FILES, files)
        w.add_section(R.SectionType.FDS, [R.Fd(pid=100, fd=i, file_id=i + 1) for i in range(nfds)])
        runs = []
        for i in range(nvmas):
            off = w.write_pages(page)
            runs.append(
                R.PagemapRun(
                    owner_kind=R.OwnerKind.PROCESS,
                    flags=R.PageFlags.PRESENT,
                    owner=100,
                    vaddr=base + 2 * i * PAGE,
                    nr_pages=1,
                    data_offset=off,
                )
            )
        w.add_section(R.SectionType.PAGEMAP, runs)


# --------------------------------------------------------------------------- goldens


# name -> its writer; each golden is of the format version it was made for (1.0: the
# first three; 1.1 added the user namespace of a VE, 1.2 the tree's owner; 1.3 incremental
# images: a pre-dump and the final image on it), and stays so
GOLDENS: dict[str, Callable[[BinaryIO], None]] = {
    "tree": lambda out: tree_image(out, minor=0),
    "tree-zstd": lambda out: tree_image(out, variant=1, compress=True, minor=0),
    "every-record": lambda out: every_record_image(out, minor=0),
    "ve-userns": lambda out: ve_userns_image(out, minor=1),
    "tree-owner": lambda out: tree_owner_image(out, minor=2),
    "chain-predump": _chain_predump,
    "chain-final": _chain_final,
    "task-extra": lambda out: task_extra_image(out, minor=5),
    "sockets-1.4": lambda out: sockets_image(out, minor=4),
    "fds-1.6": lambda out: fds_image(out, minor=6),
    "proc-1.7": lambda out: proc_image(out, minor=7),
}


def write_goldens(directory: str) -> list[str]:
    """(Re)write every golden image and its JSON form; returns the paths written."""
    written = []
    for name, build in GOLDENS.items():
        img = os.path.join(directory, f"{name}.img")
        with open(img, "wb") as f:
            build(f)
        with open(os.path.join(directory, f"{name}.json"), "w", encoding="utf-8") as j:
            decode_to(img, j)
        written += [img, img[:-4] + ".json"]
    return written


def missing_record_types(doc: dict[str, Any]) -> set[str]:
    """Record types of the registry a decoded document lacks (the container's own aside)."""
    have = {r["record"] for s in doc["sections"] for r in s.get("records", [])}
    have |= {"Header", "IndexEntry"}
    return {c.name for c in REGISTRY.values()} - have


if __name__ == "__main__":
    for p in write_goldens(sys.argv[1] if len(sys.argv) > 1 else "fixtures/images"):
        print(p)
