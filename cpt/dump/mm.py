"""Address space layout: mm fields (code/data/brk/stack/args/env, auxv, exe) and VMAs."""

from __future__ import annotations

import bisect
import struct

from cptimage.records import Mm, MmFlags, Vma, VmaKind, VmFlags

from .. import procfs as P
from ..errors import UnsupportedError
from ..sys.mem import (
    MAP_ANONYMOUS,
    MAP_GROWSDOWN,
    MAP_NORESERVE,
    MAP_PRIVATE,
    MAP_SHARED,
    MemoryFault,
    process_vm_readv,
)
from . import ghost
from .paths import PathTable
from .probe import Probe
from .shmem import ShmemTable

# smaps VmFlags two-letter codes -> our VmFlags bits
_VMFLAGS = {
    "dc": VmFlags.DONTFORK,
    "dd": VmFlags.DONTDUMP,
    "hg": VmFlags.HUGEPAGE,
    "nh": VmFlags.NOHUGEPAGE,
    "wf": VmFlags.WIPEONFORK,
    "mg": VmFlags.MERGEABLE,
    "sr": VmFlags.SEQ_READ,
    "rr": VmFlags.RAND_READ,
    "lo": VmFlags.LOCKED,
    "gd": VmFlags.GROWSDOWN,
    "nr": VmFlags.NORESERVE,
    "io": VmFlags.IO,
}

_SPECIAL = {
    P.VmaKind.VDSO: VmaKind.VDSO,
    P.VmaKind.VVAR: VmaKind.VVAR,
    P.VmaKind.VVAR_VCLOCK: VmaKind.VVAR_VCLOCK,
    P.VmaKind.VSYSCALL: VmaKind.VSYSCALL,
}
_ANON = (P.VmaKind.ANON, P.VmaKind.ANON_NAMED, P.VmaKind.HEAP, P.VmaKind.STACK)
AIO_PATH = "/[aio]"  # an AIO context's ring, as maps shows it (deleted)
# struct aio_ring's head: id, nr, head, tail, magic, compat_features, incompat_features,
# header_length
_AIO_RING = struct.Struct("<IIIIIIII")
AIO_RING_MAGIC = 0xA10A10A1


def unsupported_vma(
    pid: int, v: P.Vma, ghost_limit: int | None = None, root: str = ""
) -> str | None:
    """Why this mapping cannot be dumped yet, or None.  Also run before freezing, with the
    --ghost-limit for deleted files (the dump's PathTable checks them itself)."""
    where = f"process {pid} mapping {v.start:x}-{v.end:x}"
    k = v.kind
    if k is P.VmaKind.SPECIAL:
        return f"{where}: special mapping {v.path} is not supported"
    if k is P.VmaKind.FILE:
        if v.path == AIO_PATH:
            return _aio_problem(where, pid, v)
        if v.deleted and ghost_limit is not None:
            link = P.map_files_path(pid, v.start, v.end)
            return ghost.problem(where, link, v.path, ghost_limit, pid, root)
        if v.path.startswith("/dev/"):
            return f"{where}: device mapping {v.path} is not supported"
        if v.path.startswith("socket:["):
            return _ring_problem(where, pid, v)
    return None


def _aio_problem(where: str, pid: int, v: P.Vma) -> str | None:
    """An AIO ring is carried empty: restore sets up a new context, whose ring starts with
    nothing in it.  Completed events not yet reaped would be lost: refused.  (Requests
    still in flight do not show in the ring; the freeze does not wait for them.)"""
    head = bytearray(_AIO_RING.size)
    try:
        process_vm_readv(pid, [(v.start, len(head))], head)
    except MemoryFault:
        return f"{where}: an AIO ring (io_setup) whose header cannot be read; not supported"
    _id, nr, ring_head, tail, magic, _c, _i, _h = _AIO_RING.unpack(head)
    if magic != AIO_RING_MAGIC:
        return f"{where}: an AIO ring (io_setup) without its magic number; not supported"
    if ring_head != tail:
        done = (tail - ring_head) % nr if nr else 0
        return (
            f"{where}: an AIO context (io_setup) with {done} completed event(s) not reaped yet "
            "(io_getevents); checkpoint once they are reaped"
        )
    return None


def _ring_problem(where: str, pid: int, v: P.Vma) -> str | None:
    """A packet socket's rings are mapped again from the restored socket: the mapping
    must be all of them (one mmap at offset 0) and the socket held by an fd of the
    process (the mapping alone does not say which socket it was)."""
    if v.pgoff != 0 or not v.shared:
        return f"{where}: a partial mapping of {v.path} (a packet socket's rings) is not supported"
    if v.path not in {t.target for t in P.Proc().fd_targets(pid).values()}:
        return (
            f"{where}: the rings of {v.path} are mapped but no fd of the process holds the "
            f"socket; not supported"
        )
    return None


def ring_socket_fd(pid: int, v: P.Vma) -> int:
    """The fd of process `pid` holding the packet socket whose rings `v` maps."""
    for fd, t in sorted(P.Proc().fd_targets(pid).items()):
        if t.target == v.path:
            return fd
    raise UnsupportedError(
        _ring_problem(f"process {pid} mapping {v.start:x}-{v.end:x}", pid, v)
        or f"process {pid}: {v.path} vanished",
        pid=pid,
    )


def vma_kind(v: P.Vma) -> int:
    if v.kind is P.VmaKind.FILE and v.path.startswith("socket:["):
        return VmaKind.PACKET_RING
    if v.kind is P.VmaKind.FILE and v.path == AIO_PATH:
        return VmaKind.AIO_RING
    if v.kind in _SPECIAL:
        return _SPECIAL[v.kind]
    if v.kind in _ANON:
        return VmaKind.ANON
    if v.kind in (P.VmaKind.SHMEM, P.VmaKind.MEMFD):
        return VmaKind.SHMEM
    if v.kind is P.VmaKind.SYSV:
        return VmaKind.SYSV_SHM
    return VmaKind.FILE_SHARED if v.shared else VmaKind.FILE_PRIVATE


def dump_vmas(
    pid: int,
    maps: list[P.Vma],
    vmflags: dict[tuple[int, int], frozenset[str]] | None,
    paths: PathTable,
    shmem: ShmemTable,
    ipc_ns: int,
) -> list[Vma]:
    """The Vma records of `maps`; their VmFlags from `vmflags` (smaps), or later through
    apply_vmflags (None: the dump reads smaps on another thread, DumpReads)."""
    out = []
    file_ids: dict[tuple[str, int, int, int], int] = {}
    for v in maps:
        why = unsupported_vma(pid, v)
        if why:
            raise UnsupportedError(why, pid=pid)
        kind = vma_kind(v)
        prot = (1 if v.read else 0) | (2 if v.write else 0) | (4 if v.exec else 0)
        flags = MAP_SHARED if v.shared else MAP_PRIVATE
        file_id = shmem_id = 0
        if kind == VmaKind.ANON:
            flags |= MAP_ANONYMOUS
        elif kind in (VmaKind.SHMEM, VmaKind.SYSV_SHM):
            shmem_id = shmem.from_vma(pid, v, ipc_ns)
        elif kind in (VmaKind.FILE_PRIVATE, VmaKind.FILE_SHARED):
            key = (v.path, v.major, v.minor, v.inode)
            file_id = file_ids.get(key, 0)
            if not file_id:
                file_id = file_ids[key] = paths.add_link(pid, f"map_files/{v.start:x}-{v.end:x}")
        out.append(
            Vma(
                pid=pid,
                kind=kind,
                prot=prot,
                flags=flags,
                start=v.start,
                end=v.end,
                pgoff=v.pgoff,
                vmflags=0,
                file_id=file_id,
                shmem_id=shmem_id,
                name=v.path if v.path.startswith("[") else "",
            )
        )
    if vmflags is not None:
        apply_vmflags(out, vmflag_codes(out, vmflags))
    return out


def vmflag_codes(
    vmas: list[Vma], vmflags: dict[tuple[int, int], frozenset[str]]
) -> list[frozenset[str]]:
    """The VmFlags codes of each of `vmas`, from smaps read in the same freeze.  A
    mapping smaps does not list by its own range is looked up in the entry that contains
    it: registering a new mapping for write tracking in the freeze may merge it with a
    neighbour, which the kernel does only when their flags are the same."""
    out = []
    starts: list[tuple[int, int]] | None = None
    for v in vmas:
        codes = vmflags.get((v.start, v.end))
        if codes is None:
            if starts is None:
                starts = sorted(vmflags)
            i = bisect.bisect_right(starts, (v.start, 1 << 64)) - 1
            inside = i >= 0 and starts[i][0] <= v.start and v.end <= starts[i][1]
            codes = vmflags[starts[i]] if inside else frozenset()
        out.append(codes)
    return out


def apply_vmflags(vmas: list[Vma], codes: list[frozenset[str]]) -> None:
    """Set the VmFlags of `vmas` from their codes (vmflag_codes), and the MAP_GROWSDOWN
    and MAP_NORESERVE they imply."""
    for v, cs in zip(vmas, codes, strict=True):
        vf = 0
        for code in cs:
            vf |= _VMFLAGS.get(code, 0)
        v.vmflags = vf
        if vf & VmFlags.GROWSDOWN:
            v.flags |= MAP_GROWSDOWN
        if vf & VmFlags.NORESERVE:
            v.flags |= MAP_NORESERVE


def dump_mm(
    pid: int, st: P.ProcStat, auxv: list[P.AuxvEntry], probe: Probe, paths: PathTable
) -> Mm:
    flat: list[int] = []
    for atype, value in auxv:
        flat += (atype, value)
    flat += (0, 0)  # AT_NULL: the kernel's saved_auxv keeps it
    return Mm(
        pid=pid,
        exe_id=paths.add_link(pid, "exe"),
        flags=(MmFlags.THP_DISABLE if probe.thp_disable else 0) | probe.lock_future,
        start_code=st.start_code,
        end_code=st.end_code,
        start_data=st.start_data,
        end_data=st.end_data,
        start_brk=st.start_brk,
        brk=probe.brk,
        start_stack=st.start_stack,
        arg_start=st.arg_start,
        arg_end=st.arg_end,
        env_start=st.env_start,
        env_end=st.env_end,
        auxv=flat,
    )
