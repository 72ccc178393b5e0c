"""Rebuild an address space inside a stub.

Order (ENGINE-NOTES, restore 2-7): a scratch mapping free in both layouts takes over as
the syscall trampoline; every stub mapping but the vDSO trio goes; the trio moves to its
dumped place; the dumped VMAs are mapped (PROT_WRITE added where pages will be written);
pages are written with process_vm_writev straight from the image; protections and
madvise flags are put back; one PR_SET_MM_MAP sets the mm fields, auxv and exe.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable, Iterable

from cptimage.records import OwnerKind, PathObj, Vma, VmaKind, VmFlags

from .. import procfs as P
from ..errors import RestoreError
from ..procfs import Proc
from ..sys.arch import PAGE_SIZE, SYSCALL_INSN
from ..sys.ipc import SHM_EXEC, SHM_RDONLY
from ..sys.mem import (
    MADV_DONTDUMP,
    MADV_DONTFORK,
    MADV_GUARD_INSTALL,
    MADV_HUGEPAGE,
    MADV_MERGEABLE,
    MADV_NOHUGEPAGE,
    MADV_RANDOM,
    MADV_SEQUENTIAL,
    MADV_WIPEONFORK,
    MAP_FIXED,
    MREMAP_FIXED,
    MREMAP_MAYMOVE,
    PROT_WRITE,
    process_vm_writev,
)
from ..sys.syscalls import NR
from ..sys.task import PR_SET_MM, PR_SET_MM_MAP, pack_prctl_mm_map
from ..trace.scratch import Scratch, free_gap
from .creds import open_held
from .model import ImageModel, ProcImage
from .pages import PageSource, has_data
from .pstree import Task

O_RDONLY, O_RDWR, O_CLOEXEC = 0, 2, 0o2000000
_TRIO = {"[vvar]": VmaKind.VVAR, "[vvar_vclock]": VmaKind.VVAR_VCLOCK, "[vdso]": VmaKind.VDSO}
_KEEP = {*_TRIO, "[vsyscall]"}
_SPECIAL = (VmaKind.VDSO, VmaKind.VVAR, VmaKind.VVAR_VCLOCK, VmaKind.VSYSCALL)
_MADVISE = [
    (VmFlags.DONTFORK, MADV_DONTFORK),
    (VmFlags.DONTDUMP, MADV_DONTDUMP),
    (VmFlags.HUGEPAGE, MADV_HUGEPAGE),
    (VmFlags.NOHUGEPAGE, MADV_NOHUGEPAGE),
    (VmFlags.WIPEONFORK, MADV_WIPEONFORK),
    (VmFlags.MERGEABLE, MADV_MERGEABLE),
    (VmFlags.SEQ_READ, MADV_SEQUENTIAL),
    (VmFlags.RAND_READ, MADV_RANDOM),
]


Share = Callable[[Iterable[int]], None]


def open_in_target(
    task: Task,
    model: ImageModel,
    path: PathObj,
    flags: int,
    pidfd_slot: int,
    share: Share | None = None,
) -> int:
    """The file `path` as an fd of the task (to be closed by the caller): opened by the
    restorer with the task's own credentials (creds.py: a mapping or an executable is a
    file the process could open itself; a VE's paths resolve inside its root), then
    taken by the task through the inherited pidfd (pidfd_getfd: the same open file).

    `share`: the pidfd is not the restorer's but that of the user namespace's helper of
    a VE that contains its root (userns.Donor), which holds the restorer's files under
    the same numbers: the file is handed to it first (Donor.mirror), else the stub would
    take whatever the helper has under that number."""
    what = f"process {task.pid}: cannot open {path.path}"
    try:
        local = open_held(model, [task.pid], path, flags | O_CLOEXEC, what)
    except OSError as e:
        raise RestoreError(
            f"{what} ({e.strerror}); was it changed since the checkpoint?", pid=task.pid
        ) from None
    try:
        if share is not None:
            share([local])
        fd = task.leader.syscall(NR.pidfd_getfd, pidfd_slot, local, 0)
    finally:
        os.close(local)
    if fd < 0:
        raise RestoreError(f"{what}: pidfd_getfd failed (errno {-fd})", pid=task.pid)
    return fd


def take_over(task: Task, proc: Proc) -> None:
    """Map the scratch trampoline and clear the stub's own mappings (but the vDSO trio)."""
    t = task.leader
    stub_maps = proc.maps(task.host_pid)
    occupied = [(m.start, m.end) for m in stub_maps] + [(v.start, v.end) for v in task.img.vmas]
    sc = Scratch.map(t, occupied, exec_=True)
    sc.put(SYSCALL_INSN)
    t.syscall_addr = sc.addr
    task.scratch = sc
    for m in stub_maps:
        if m.path not in _KEEP:
            t.syscall_checked(NR.munmap, m.start, m.end - m.start)
    _move_vdso(task, [m for m in stub_maps if m.path in _TRIO], occupied)


def _move_vdso(task: Task, stub_trio: list[P.Vma], occupied: list[tuple[int, int]]) -> None:
    t = task.leader
    dumped = [
        v for v in task.img.vmas if v.kind in (VmaKind.VVAR, VmaKind.VVAR_VCLOCK, VmaKind.VDSO)
    ]
    want = sorted((v.start, v.end, v.kind) for v in dumped)
    kinds = {k for _, _, k in want}
    have = []
    for m in sorted(stub_trio, key=lambda m: m.start):
        if _TRIO[m.path] in kinds:
            have.append((m.start, m.end, _TRIO[m.path]))
        else:  # the process had unmapped it (all of the trio, or only its [vdso])
            t.syscall_checked(NR.munmap, m.start, m.end - m.start)
    if not want:
        return
    shape_have = [(s - have[0][0], e - s, k) for s, e, k in have]
    shape_want = [(s - want[0][0], e - s, k) for s, e, k in want]
    if shape_have != shape_want:
        raise RestoreError(
            f"process {task.pid}: the vDSO layout of this kernel differs from the image's "
            f"(same kernel needed)",
            pid=task.pid,
        )
    if have[0][0] == want[0][0]:
        return
    size = have[-1][1] - have[0][0]
    sc = task.scratch
    assert sc is not None
    # through a temporary spot, so that overlapping old and new places never collide
    tmp = free_gap([*occupied, (sc.addr, sc.addr + sc.size)], size)
    flags = MREMAP_MAYMOVE | MREMAP_FIXED
    for s, e, _ in have:
        t.syscall_checked(NR.mremap, s, e - s, e - s, flags, tmp + (s - have[0][0]))
    for off, length, _ in shape_have:
        t.syscall_checked(NR.mremap, tmp + off, length, length, flags, want[0][0] + off)


def _written(vmas: list[Vma], runs: list) -> set[int]:
    """Indexes of the VMAs that runs with data (here or in a parent) write into."""
    out = set()
    i = 0
    for r in runs:
        if not has_data(r):
            continue
        while i < len(vmas) and vmas[i].end <= r.vaddr:
            i += 1
        if i < len(vmas) and vmas[i].start <= r.vaddr:
            out.add(i)
    return out


def map_vmas(
    task: Task,
    model: ImageModel,
    pidfd_slot: int,
    share: Share | None = None,
    files: dict[int, int] | None = None,
) -> set[int]:
    """mmap every dumped VMA; returns the indexes given PROT_WRITE for page writing.

    Shared memory objects exist in the restorer (shmem.py); their fd is pulled through
    the stub's inherited pidfd (`pidfd_slot`), mapped, and closed; a mapped file is
    opened as the process (open_in_target, `share`).  So is a packet socket whose rings
    were mapped: `files` holds the restorer's fd of each description (the socket, with
    its rings set up again: they come back empty)."""
    t = task.leader
    pi = task.img
    written = _written(pi.vmas, pi.runs)
    fds: dict[tuple[int, int], int] = {}
    try:
        for i, v in enumerate(pi.vmas):
            if v.kind in _SPECIAL or v.kind == VmaKind.AIO_RING:
                continue
            prot = v.prot | (PROT_WRITE if i in written else 0)
            fd, off = -1, 0
            if v.kind == VmaKind.SYSV_SHM:
                _attach_sysv(task, model, v, i)
                continue
            if v.kind == VmaKind.SHMEM:
                key = (-v.shmem_id, 0)
                if key not in fds:
                    local = model.shmem_fds[v.shmem_id]
                    fds[key] = t.syscall_checked(NR.pidfd_getfd, pidfd_slot, local, 0)
                fd, off = fds[key], v.pgoff
            elif v.kind == VmaKind.PACKET_RING:
                key = (-v.file_id, 1)
                if key not in fds:
                    ring = (files or {}).get(v.file_id)
                    if ring is None:
                        raise RestoreError(
                            f"process {task.pid}: the packet socket whose rings were mapped at "
                            f"{v.start:x} (description {v.file_id}) is not in the image",
                            pid=task.pid,
                        )
                    fds[key] = t.syscall_checked(NR.pidfd_getfd, pidfd_slot, ring, 0)
                fd = fds[key]
            elif v.kind in (VmaKind.FILE_PRIVATE, VmaKind.FILE_SHARED):
                mode = O_RDWR if v.kind == VmaKind.FILE_SHARED and v.prot & PROT_WRITE else O_RDONLY
                key = (v.file_id, mode)
                if key not in fds:
                    fds[key] = open_in_target(
                        task, model, model.path(v.file_id), mode, pidfd_slot, share
                    )
                fd, off = fds[key], v.pgoff
            got = t.syscall(NR.mmap, v.start, v.end - v.start, prot, v.flags | MAP_FIXED, fd, off)
            if got != v.start:
                raise RestoreError(
                    f"process {task.pid}: mmap of {v.start:x}-{v.end:x} failed "
                    f"(errno {-got if got < 0 else 0})",
                    pid=task.pid,
                )
            if task.scratch is not None:
                task.scratch.reset()
    finally:
        for fd in fds.values():
            t.syscall(NR.close, fd)
    for v in pi.vmas:  # once every other mapping is in place: io_setup maps anywhere free
        if v.kind == VmaKind.AIO_RING:
            _aio_ring(task, v)
    return written


AIO_RING_HEADER = 32  # struct aio_ring
IO_EVENT = 32  # struct io_event


def _aio_ring(task: Task, v: Vma) -> None:
    """A new AIO context whose ring is as large as the dumped one, moved (mremap, which the
    kernel follows: the context's id becomes the new address) to where that ring was.
    The ring comes back empty (the dump refuses one holding unreaped events).  io_setup
    sizes a ring from the request count doubled (at least 4 a CPU), plus 2, rounded up to
    pages: asking for (events - 2) / 2 gives the same pages when this host has no more
    CPUs than the dump's."""
    t = task.leader
    sc = task.scratch
    assert sc is not None
    size = v.end - v.start
    events = (size - AIO_RING_HEADER) // IO_EVENT
    where = f"process {task.pid}: the AIO ring at {v.start:x}-{v.end:x}"
    ctx_p = sc.push(bytes(8))
    try:
        ret = t.syscall(NR.io_setup, (events - 2) // 2, ctx_p)
        if ret < 0:
            raise RestoreError(
                f"{where}: io_setup failed ({os.strerror(-ret)}; see the sysctl fs.aio-max-nr)",
                pid=task.pid,
            )
        (ctx,) = struct.unpack("<Q", t.read_mem(ctx_p, 8))
        (nr,) = struct.unpack("<I", t.read_mem(ctx + 4, 4))
        if nr != events:
            t.syscall(NR.io_destroy, ctx)
            raise RestoreError(
                f"{where}: a new ring holds {nr} events, the dumped one {events} (io_setup "
                "sizes rings by the CPU count: this host has more CPUs than the dump's)",
                pid=task.pid,
            )
        if ctx != v.start:
            got = t.syscall(NR.mremap, ctx, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, v.start)
            if got != v.start:
                t.syscall(NR.io_destroy, ctx)
                raise RestoreError(
                    f"{where}: mremap of the new ring failed (errno {-got if got < 0 else 0})",
                    pid=task.pid,
                )
    finally:
        sc.reset()


PARALLEL_MIN = 64 << 20  # below this, a second thread costs more than it saves


def _attach_sysv(task: Task, model: ImageModel, v: Vma, index: int) -> None:
    """shmat the segment a VMA maps, where it was; keep only what the process had mapped
    of it (an attachment covers the whole segment) with each part's protection."""
    seg = model.sysv_shm[v.shmem_id]
    base = v.start - v.pgoff
    mine = [w for w in task.img.vmas if w.kind == VmaKind.SYSV_SHM and w.shmem_id == v.shmem_id]
    if mine[0] is not v:
        return  # attached with the first of its VMAs
    t = task.leader
    flags = (0 if v.prot & PROT_WRITE else SHM_RDONLY) | (SHM_EXEC if v.prot & 4 else 0)
    got = t.syscall(NR.shmat, seg.shmid, base, flags)
    if got != base:
        raise RestoreError(
            f"process {task.pid}: shmat of SysV segment {seg.shmid} at {base:x} failed "
            f"(errno {-got if got < 0 else 0})",
            pid=task.pid,
        )
    end = base + ((seg.size + 4095) & ~4095)
    covered = sorted((w.start, w.end) for w in mine)
    pos = base
    for s, e in [*covered, (end, end)]:
        if s > pos:
            t.syscall_checked(NR.munmap, pos, s - pos)
        pos = max(pos, e)
    for w in mine:
        t.syscall_checked(NR.mprotect, w.start, w.end - w.start, w.prot)


def write_pages(task: Task, pages: PageSource) -> int:
    """Copy the task's pages with data (from the image, or from the newest image of its
    chain holding them) into it; returns the bytes written.

    The cost is the target's page faults (allocating and zeroing fresh pages), which
    scale across CPUs: large address spaces are written by two threads at once.
    """
    runs = [r for r in task.img.runs if has_data(r)]
    if not runs:
        return 0
    pid = task.host_pid
    pieces = pages.pieces(OwnerKind.PROCESS, task.pid, runs)
    if pieces is None:
        total = 0
        for addr, data in pages.chunks(OwnerKind.PROCESS, task.pid, runs):
            process_vm_writev(pid, data, [(addr, len(data))])
            total += len(data)
        return total
    # pieces contiguous in one file go out in one call, whatever their addresses
    jobs: list[Job] = []
    i = 0
    while i < len(pieces):
        level = pieces[i].level
        start = end = pieces[i].offset
        remote = []
        while i < len(pieces) and pieces[i].level == level and pieces[i].offset == end:
            addr, n, _, off = pieces[i]
            remote.append((addr, n))
            end = off + n
            i += 1
        jobs.append((level, start, end, remote))
    total = sum(e - s for _, s, e, _ in jobs)
    views = pages.views()
    try:
        if total < PARALLEL_MIN or (os.cpu_count() or 1) < 2:
            _write_jobs(pid, views, jobs)
        else:
            _write_parallel(pid, views, jobs, total)
    finally:
        for v in views:
            if v is not None:
                v.release()
    return total


Job = tuple[int, int, int, list[tuple[int, int]]]  # image level, file start, end, ranges


def _write_jobs(pid: int, views: list[memoryview | None], jobs: list[Job]) -> None:
    for level, start, end, remote in jobs:
        view = views[level]
        assert view is not None
        process_vm_writev(pid, view[start:end], remote)


def _write_parallel(pid: int, views: list[memoryview | None], jobs: list[Job], total: int) -> None:
    """Split the jobs (at range boundaries) in two halves by bytes; write both at once."""
    halves: list[list[Job]] = [[], []]
    half = total // 2
    done = 0
    for level, start, end, remote in jobs:
        if done >= half or not remote:
            halves[1].append((level, start, end, remote))
            done += end - start
            continue
        # cut this job where the first half ends
        off = start
        first: list[tuple[int, int]] = []
        rest = list(remote)
        while rest and done < half:
            addr, n = rest.pop(0)
            take = min(n, (half - done + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
            first.append((addr, take))
            if take < n:  # cut a long range at a page boundary
                rest.insert(0, (addr + take, n - take))
            off += take
            done += take
        halves[0].append((level, start, off, first))
        if rest:
            halves[1].append((level, off, end, rest))
    errors: list[BaseException] = []

    def run(part: list[Job]) -> None:
        try:
            _write_jobs(pid, views, part)
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)

    helper = threading.Thread(target=run, args=(halves[1],), name="cpt-pages")
    helper.start()
    run(halves[0])
    helper.join()
    if errors:
        raise errors[0]


def finish_vmas(task: Task, written: set[int]) -> None:
    """Install the guard regions; put back the protections PROT_WRITE was added to; apply
    madvise and mlock."""
    t = task.leader
    for g in task.img.guards:
        t.syscall_checked(NR.madvise, g.start, g.end - g.start, MADV_GUARD_INSTALL)
    for i, v in enumerate(task.img.vmas):
        if v.kind in _SPECIAL or v.kind == VmaKind.AIO_RING:
            continue
        length = v.end - v.start
        if i in written and not v.prot & PROT_WRITE:
            t.syscall_checked(NR.mprotect, v.start, length, v.prot)
        for flag, advice in _MADVISE:
            if v.vmflags & flag:
                t.syscall_checked(NR.madvise, v.start, length, advice)
        if v.vmflags & VmFlags.LOCKED:
            t.syscall_checked(NR.mlock, v.start, length)


def set_mm(task: Task, model: ImageModel, pidfd_slot: int, share: Share | None = None) -> None:
    pi: ProcImage = task.img
    mm = pi.mm
    if mm is None:
        return
    t = task.leader
    sc = task.scratch
    assert sc is not None
    exe_fd = (
        open_in_target(task, model, model.path(mm.exe_id), O_RDONLY, pidfd_slot, share)
        if mm.exe_id
        else -1
    )
    try:
        auxv = struct.pack(f"<{len(mm.auxv)}Q", *mm.auxv)
        auxv_addr = sc.push(auxv)
        arg = pack_prctl_mm_map(
            mm.start_code,
            mm.end_code,
            mm.start_data,
            mm.end_data,
            mm.start_brk,
            mm.brk,
            mm.start_stack,
            mm.arg_start,
            mm.arg_end,
            mm.env_start,
            mm.env_end,
            auxv_addr,
            len(auxv),
            exe_fd,
        )
        ret = t.syscall(NR.prctl, PR_SET_MM, PR_SET_MM_MAP, sc.push(arg), len(arg), 0)
        if ret < 0:
            raise RestoreError(
                f"process {task.pid}: PR_SET_MM_MAP failed (errno {-ret}): the mm fields "
                f"do not fit the restored layout",
                pid=task.pid,
            )
    finally:
        if exe_fd >= 0:
            t.syscall(NR.close, exe_fd)
        sc.reset()
