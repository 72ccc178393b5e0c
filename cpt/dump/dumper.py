"""The dump of a stopped tree into one image: per-process state first, then the pages
(`run`: every thread of the tree is in a ptrace-stop while it runs), then the record
sections, the index and the trailer (`finish`: the tree may run again by then).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from cptimage.container import ImageWriter
from cptimage.fields import fields_of
from cptimage.records import (
    Creds,
    Header,
    HeaderFlags,
    Owner,
    PacketSocket,
    SectionType,
    SourceKind,
    Vma,
    VmaKind,
    section_of_tag,
)

from .. import fault
from .. import procfs as P
from ..errors import UnsupportedError
from ..procfs import Proc
from ..sys import host as hostinfo
from ..sys.arch import PAGE_SIZE
from ..sys.mem import guard_vmflag
from .creds import dump_creds, dump_ns_creds
from .fds import FdTable
from .ipc import IpcDumper
from .mm import apply_vmflags, dump_mm, dump_vmas, ring_socket_fd, vmflag_codes
from .options import DumpOptions
from .output import ImageOutput
from .pages import PageDumper, guard_regions
from .paths import PathTable
from .probe import probe
from .pstree import TaskInfo, process_record
from .seccomp import dump_seccomp
from .shares import dump_shares
from .shmem import ShmemTable
from .signals import dump_pending, dump_sigactions, ignored_sigtrap
from .task import dump_itimers, dump_rlimits, dump_sched, dump_task_extra, dump_task_state
from .threads import dump_thread
from .timers import dump_timers
from .tty import dump_ttys
from .ve import dump_namespaces, dump_userns

TOOL_VERSION = "cpt 0.1.0"


@dataclasses.dataclass
class DumpStats:
    processes: int = 0
    threads: int = 0
    pages_bytes: int = 0
    image_bytes: int = 0
    reserve_s: float = 0.0  # the image's page area sized and faulted in, before the freeze
    state_s: float = 0.0  # per-process state (probe, threads, fds, ...)
    pages_s: float = 0.0  # page scan and copy
    finish_s: float = 0.0  # records, page checksums, index: after the frozen window
    sync_s: float = 0.0  # fsync of the image, rename, fsync of its directory
    frozen_s: float = 0.0  # freeze to resume or kill (full checkpoints)
    fs_snapshot_s: float = 0.0  # a VE's filesystem snapshot, inside the frozen window


# a process with at least this much resident memory has its smaps and guard regions
# read on the second thread (DumpReads); a smaller one in line (a thread's hand-over
# costs more than the read)
AHEAD_BYTES = 32 << 20
SWITCH_INTERVAL = 0.0005  # the GIL's, while the second thread reads (seconds)


class _Read:
    def __init__(self, pid: int, vmas: list[Vma]) -> None:
        self.pid = pid
        self.vmas = vmas
        self.done = threading.Event()
        self.codes: list[frozenset[str]] = []  # VmFlags codes, one set per mapping
        self.guards: list[Any] = []
        self.error: BaseException | None = None


class DumpReads:
    """The two reads of the frozen window whose cost grows with a process's memory,
    done on a second thread while this one goes on with the rest of the window: its
    smaps (for VmFlags; the kernel walks the page tables for the Rss beside them, ~9 ms
    per GiB) and its guard regions (a PAGEMAP_SCAN of the mappings that may hold them,
    pages.guard_regions: of the whole address space on a kernel that does not say which).
    The tree is stopped, so they read the frozen moment as in line.  Both take the mm's
    lock for reading: a process's reads are started after its probe, whose scratch
    mapping takes it for writing (a later writer waits for them; nothing is missed, only
    serialized)."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.reads: dict[int, _Read] = {}
        self._lock = threading.Lock()
        self._queue: list[_Read] = []
        self._wake = threading.Semaphore(0)
        self._thread: threading.Thread | None = None
        self._interval = 0.0

    def start(self, pid: int, vmas: list[Vma], rss: int) -> None:
        """Read `pid`'s (its mappings `vmas`): on the second thread from AHEAD_BYTES of
        resident memory on, else now."""
        r = self.reads[pid] = _Read(pid, vmas)
        if rss < AHEAD_BYTES:
            self._run(r)
            return
        if self._thread is None:
            # the reads need the GIL back after each read() (smaps comes ~4 KiB a call):
            # with the default 5 ms switch interval they would wait for this thread's
            # Python work; shorter while both run
            self._interval = sys.getswitchinterval()
            sys.setswitchinterval(min(self._interval, SWITCH_INTERVAL))
            self._thread = threading.Thread(target=self._worker, name="cpt-dump-reads")
            self._thread.start()
        with self._lock:
            self._queue.append(r)
        self._wake.release()

    def take(self, pid: int) -> _Read:
        """`pid`'s reads, once done, its VmFlags set in its vmas; raises what they did."""
        r = self.reads.pop(pid)
        r.done.wait()
        if r.error is not None:
            raise r.error
        apply_vmflags(r.vmas, r.codes)
        return r

    def close(self) -> None:
        """End the second thread (after the reads queued so far: each is bounded)."""
        if self._thread is not None:
            with self._lock:
                self._queue.append(None)  # type: ignore[arg-type]
            self._wake.release()
            self._thread.join()
            self._thread = None
            sys.setswitchinterval(self._interval)

    def _worker(self) -> None:
        while True:
            self._wake.acquire()
            with self._lock:
                r = self._queue.pop(0)
            if r is None:
                return
            self._run(r)

    def _run(self, r: _Read) -> None:
        try:
            r.codes = vmflag_codes(r.vmas, self.proc.smaps_vmflags(r.pid))
            r.guards = guard_regions(r.pid, r.vmas, r.codes)
        except BaseException as e:  # handed to take()
            r.error = e
        finally:
            r.done.set()


def prepare_dump() -> None:
    """Pay the one-time costs of a process's first dump before the tree is frozen rather
    than inside the frozen window: the host facts of the header (vDSO digest, CPU flags:
    ~2 ms), whether smaps says which mappings may hold guard regions (~1.5 ms).  Each
    is cached.  (The page area or buffer: ImageOutput.reserve.)"""
    hostinfo.vdso_digest()
    hostinfo.isa_flags()
    guard_vmflag()


class Dumper:
    def __init__(
        self,
        tree: dict[int, TaskInfo],
        root: int,
        opts: DumpOptions,
        proc: Proc,
        extra: list[Any] | None = None,
    ) -> None:
        """`extra`: records made outside the engine in the same frozen window (a VE's
        filesystem snapshot), written into the sections their tags name."""
        self.tree = tree
        self.extra = list(extra or [])
        self.root = root
        self.opts = opts
        self.proc = proc
        self.recs: dict[int, list[Any]] = defaultdict(list)
        self.paths = PathTable(ghost_limit=opts.ghost_limit, root=opts.root)
        self.files = FdTable(self.paths, opts)
        self.shmem = ShmemTable()
        self.files.ctx.cache["shmem"] = self.shmem
        self.files.ctx.cache["tree"] = tree  # whose pidfds and fd owners can be carried
        dump_ttys(self.files.ctx, tree, root, proc)
        self.ipc = IpcDumper(root, proc, self.shmem)
        self.vmas: dict[int, list[Vma]] = {}
        self.stats = DumpStats()
        self.writer: ImageWriter | None = None
        self.others: list[Any] = []  # records beside the processes', collected by run()
        self.later_runs: list[Callable[[], list[Any]]] = []  # runs made by finish()
        self.reads = DumpReads(proc)
        self.mm: dict[int, list[Any]] = {}  # a process's Mm and Vmas, until its reads are in
        # a VE that contains its root: its ids as the VE sees them go into the image too
        self.userns = dump_userns(root, proc) if opts.ve_id else None

    def run(
        self,
        out: ImageOutput,
        *,
        writer: ImageWriter | None = None,
        pages: Callable[[int, list[Vma], ImageWriter], Callable[[], list[Any]]] | None = None,
        header: Callable[[Header], Header] | None = None,
    ) -> DumpStats:
        """The frozen part: every process's state, then the pages into the image (into
        its page area, if `out` has one).  `finish` writes the rest.  An incremental dump
        or one with pre-copy rounds (cpt/dump/incremental.py) gives `pages(pid, vmas,
        writer)`, which writes a process's remaining pages and returns what makes its
        PagemapRuns in `finish` (after the freeze), instead of copying them all here; and the `writer` it opened before (pages of the
        rounds in it), or `header`, which makes the header this one writes its own (an
        incremental one)."""
        t0 = time.perf_counter()
        out.stats = self.stats
        try:
            for info in self.tree.values():
                self.recs[SectionType.PROCESS].append(process_record(info))
                if not info.zombie:
                    self._process(info)
            attached = {
                v.shmem_id for vs in self.vmas.values() for v in vs if v.kind == VmaKind.SYSV_SHM
            }
            self.ipc.dump({self.shmem.sysv_id(i) for i in attached})
            if self.opts.ve_id:
                self.recs[SectionType.NAMESPACES] += dump_namespaces(
                    self.root, self.proc, self.userns
                )
            else:
                self.recs[SectionType.PROCESS] += self._owner()
            t1 = time.perf_counter()
            fault.point("dump:pages")
            if writer is None:
                h = self._header()
                h = header(h) if header is not None else h
                writer = ImageWriter(out.file, h, compress_pages=self.opts.compress, area=out.area)
            self.writer = writer
            if pages is not None:
                # the last round scans while the reads may still run: they need the VmFlags
                # only in finish()
                for pid, vmas in self.vmas.items():
                    self.later_runs.append(pages(pid, vmas, writer))
                self._take_reads()
            else:
                self._take_reads()  # which pages are dumped depends on the VmFlags
                for pid, vmas in self.vmas.items():
                    pd = PageDumper(pid, writer)
                    self.recs[SectionType.PAGEMAP] += pd.dump(vmas)
                    self.stats.pages_bytes += pd.bytes
            self.recs[SectionType.PAGEMAP] += self.shmem.dump_pages(writer)
        finally:
            self.reads.close()
            self.ipc.close()
        # what needs the tree still stopped (the TCP repair state: FdTable.records runs
        # the fds' finish steps) is collected here, not in finish(), which may come
        # after the tree runs again
        self.others = (
            self.shmem.records + self.ipc.records + self.paths.records + self.files.records
        )
        t2 = time.perf_counter()
        self.stats.processes = len(self.tree)
        self.stats.reserve_s = out.reserve_s
        self.stats.state_s = t1 - t0
        self.stats.pages_s = t2 - t1
        return self.stats

    def _take_reads(self) -> None:
        """Each process's smaps and guard regions (DumpReads) into its records, and its
        MM records into their section, in the order of the processes."""
        for pid in self.vmas:
            mm = self.mm.pop(pid)
            self.recs[SectionType.MM] += mm + self.reads.take(pid).guards

    def finish(self) -> DumpStats:
        """The records, the page area's headers and checksums, the index and the trailer:
        nothing that needs the tree stopped (the caller fsyncs)."""
        t0 = time.perf_counter()
        writer = self.writer
        assert writer is not None, "finish() before run()"
        made = [r for make in self.later_runs for r in make()]
        self.recs[SectionType.PAGEMAP][:0] = made  # the processes' runs first, as run() has
        # every other record goes to the section its tag names
        for rec in self.others + self.extra:
            self.recs[section_of_tag(rec.TAG)].append(rec)
        for stype in SectionType:
            if stype not in (SectionType.PAGES, SectionType.INDEX):
                writer.add_section(stype, self.recs.get(stype, []))
        writer.close()
        self.stats.image_bytes = writer.pos
        self.stats.finish_s = time.perf_counter() - t0
        return self.stats

    def release(self, killed: bool) -> None:
        """After the dump: the tree was killed (True) or runs on (False)."""
        for fn in self.files.ctx.release:
            fn(killed)

    def _process(self, info: TaskInfo) -> None:
        pid, proc = info.pid, self.proc
        status = proc.status(pid)
        maps = proc.maps(pid)
        vmas = dump_vmas(pid, maps, None, self.paths, self.shmem, self.ipc.ns_ino)
        pr = probe(info.tracees, [(v.start, v.end) for v in maps])
        stat = proc.stat(pid)
        self.reads.start(pid, vmas, stat.rss * PAGE_SIZE)  # after the probe's scratch
        trap = ignored_sigtrap(status.sigign, pr)
        rec = self.recs[SectionType.PROCESS]
        threads = [dump_thread(pid, t, pr, proc) for t in info.tracees]
        self.stats.threads += len(threads)
        rec += threads
        rec.append(dump_creds(pid, status, pr))
        if self.userns is not None:
            rec.append(dump_ns_creds(pid, status, self.userns))
        rec.append(dump_rlimits(pid, proc))
        rec.append(dump_sigactions(pid, pr))
        rec.append(dump_task_state(pid, status, pr, proc, self.paths))
        rec.append(dump_itimers(pid, pr))
        rec += dump_sched(pid, info.tracees)
        rec.append(dump_task_extra(pid, info.tracees, pr, proc))
        rec += dump_shares(info, self.tree)
        rec += dump_seccomp(pid, info.tracees, status.seccomp, proc)
        rec += dump_pending(pid, info.tracees)
        rec += dump_timers(pid, info.tracees, proc, [(v.start, v.end) for v in maps])
        self.mm[pid] = [dump_mm(pid, stat, proc.auxv(pid), pr, self.paths), *vmas]
        self.vmas[pid] = vmas
        infos = proc.fdinfos(pid)
        for fd, ft in sorted(proc.fd_targets(pid).items()):
            self.recs[SectionType.FDS].append(self.files.dump_fd(pid, fd, ft, infos[fd]))
        for v, m in zip(vmas, maps, strict=True):
            if v.kind == VmaKind.PACKET_RING:
                v.file_id = self._ring_socket(pid, m)
        if trap is not None:  # the last injection: each one reset it to SIG_DFL
            info.leader.ignore_sigtrap(trap.flags, trap.restorer, trap.mask)

    def _ring_socket(self, pid: int, m: P.Vma) -> int:
        """The description id of the packet socket whose rings mapping `m` maps (all of
        them, or refused: a restore maps them again in one piece)."""
        ident = self.files.ctx.ids[(pid, ring_socket_fd(pid, m))]
        desc = next(d for d in self.files.descriptions if d.id == ident)
        where = f"process {pid} mapping {m.start:x}-{m.end:x}"
        if not isinstance(desc, PacketSocket):
            raise UnsupportedError(f"{where}: a mapping of {m.path} is not supported", pid=pid)
        size = sum(r[0] * r[1] for r in (desc.rx_ring, desc.tx_ring) if r)
        if size != m.end - m.start:
            raise UnsupportedError(
                f"{where}: maps {m.end - m.start} bytes of the {size} of the rings of "
                f"packet socket {desc.ino}; only a mapping of them all is supported",
                pid=pid,
            )
        return ident

    def _owner(self) -> list[Owner]:
        """The tree's owner: its root process's credentials, which restore holds every
        process of the image to (a root that is a zombie has none: no Owner)."""
        for rec in self.recs[SectionType.PROCESS]:
            if isinstance(rec, Creds) and rec.pid == self.root:
                return [Owner(**{name: getattr(rec, name) for name, _ in fields_of(Owner)})]
        return []

    def _header(self) -> Header:
        first = next(r for r in self.recs[SectionType.PROCESS] if type(r).__name__ == "Thread")
        flags = HeaderFlags.USERNS if self.userns is not None else 0
        return build_header(self.opts, self.root, first.xstate, flags=flags)


def uuid4() -> bytes:
    """A random (version 4) UUID's 16 bytes, as uuid.uuid4().bytes gives them (the uuid
    module imports platform: ~3 ms of a chkpnt's start)."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # variant RFC 4122
    return bytes(b)


def build_header(
    opts: DumpOptions, root: int, xstate: bytes, flags: int = 0, parent_uuid: bytes = b""
) -> Header:
    """The header of a dump of the tree rooted at `root`; `xstate`: an NT_X86_XSTATE of
    one of its threads (b"" for a pre-dump, which holds no threads)."""
    arch, release, version = hostinfo.kernel()
    flags |= HeaderFlags.LEAVE_RUNNING if opts.leave_running else 0
    if opts.ve_id:
        flags |= HeaderFlags.VE | HeaderFlags.PIDNS
    return Header(
        created_ns=time.time_ns(),
        page_size=os.sysconf("SC_PAGE_SIZE"),
        flags=flags,
        xcr0=hostinfo.xfeatures_of(xstate) if xstate else 0,
        xstate_size=len(xstate),
        source_kind=SourceKind.VE if opts.ve_id else SourceKind.PID,
        root_pid=root,
        uuid=uuid4(),
        parent_uuid=parent_uuid or bytes(16),
        vdso_digest=hostinfo.vdso_digest(),
        arch=arch,
        kernel_release=release,
        kernel_version=version,
        cpu_flags=hostinfo.isa_flags(),
        hostname=socket.gethostname(),
        tool_version=TOOL_VERSION,
        source_id=opts.ve_id or str(root),
    )
