"""The dump of a stopped tree into one image: per-process state first, then the pages
(`run`: every thread of the tree is in a ptrace-stop while it runs), then the record
sections, the index and the trailer (`finish`: the tree may run again by then).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
import uuid
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
from .creds import dump_creds, dump_ns_creds
from .fds import FdTable
from .ipc import IpcDumper
from .mm import dump_mm, dump_vmas, ring_socket_fd
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


def prepare_dump() -> None:
    """Pay the one-time costs of a process's first dump before the tree is frozen rather
    than inside the frozen window: the host facts of the header (vDSO digest, CPU flags:
    ~2 ms).  Each is cached.  (The page area or buffer: ImageOutput.reserve.)"""
    hostinfo.vdso_digest()
    hostinfo.isa_flags()


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
        for info in self.tree.values():
            self.recs[SectionType.PROCESS].append(process_record(info))
            if not info.zombie:
                self._process(info)
        attached = {
            v.shmem_id for vs in self.vmas.values() for v in vs if v.kind == VmaKind.SYSV_SHM
        }
        self.ipc.dump({self.shmem.sysv_id(i) for i in attached})
        if self.opts.ve_id:
            self.recs[SectionType.NAMESPACES] += dump_namespaces(self.root, self.proc, self.userns)
        else:
            self.recs[SectionType.PROCESS] += self._owner()
        t1 = time.perf_counter()
        fault.point("dump:pages")
        try:
            if writer is None:
                h = self._header()
                h = header(h) if header is not None else h
                writer = ImageWriter(out.file, h, compress_pages=self.opts.compress, area=out.area)
            self.writer = writer
            for pid, vmas in self.vmas.items():
                if pages is not None:
                    self.later_runs.append(pages(pid, vmas, writer))
                    continue
                pd = PageDumper(pid, writer)
                self.recs[SectionType.PAGEMAP] += pd.dump(vmas)
                self.stats.pages_bytes += pd.bytes
            self.recs[SectionType.PAGEMAP] += self.shmem.dump_pages(writer)
        finally:
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
        vmas = dump_vmas(
            pid, maps, proc.smaps_vmflags(pid), self.paths, self.shmem, self.ipc.ns_ino
        )
        pr = probe(info.tracees, [(v.start, v.end) for v in maps])
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
        self.recs[SectionType.MM].append(
            dump_mm(pid, proc.stat(pid), proc.auxv(pid), pr, self.paths)
        )
        self.recs[SectionType.MM] += vmas
        self.recs[SectionType.MM] += guard_regions(pid, vmas)
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
        uuid=uuid.uuid4().bytes,
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
