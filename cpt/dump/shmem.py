"""Shared memory objects: MAP_SHARED anonymous memory and memfds.

Each object is dumped ONCE, whoever maps it or holds an fd of it (found by its inode): a
ShmemObject record (kind, size, memfd name and seals), and its allocated pages, found
with SEEK_DATA/SEEK_HOLE and read through /proc/PID/map_files/RANGE or /proc/PID/fd/N,
into the page store as runs of owner SHMEM (vaddr = offset in the object).  VMAs refer
to it by shmem_id; memfd fds by a MemfdFile description.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Any

from cptimage.container import ImageWriter
from cptimage.records import (
    MemfdFile,
    OwnerKind,
    PageFlags,
    PagemapRun,
    ShmemKind,
    ShmemObject,
)

from .. import procfs as P
from ..sys.arch import PAGE_SIZE
from ..sys.files import F_GET_SEALS
from .fdbase import FdContext, file_flags
from .options import DumpOptions
from .pages import BUF_SIZE, page_buffer

SEEK_DATA, SEEK_HOLE = 3, 4


class ShmemTable:
    """The shared memory objects of the tree, one record each."""

    def __init__(self) -> None:
        self.records: list[ShmemObject] = []
        self._by_inode: dict[tuple[int, int], int] = {}
        self._source: dict[int, str] = {}  # object id -> a /proc path that opens it

    def add(self, key: tuple[int, int], source: str, kind: int, name: str) -> int:
        ident = self._by_inode.get(key)
        if ident is not None:
            return ident
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            # every shmem file answers F_GET_SEALS; one that memfd_create did not make
            # (MAP_SHARED anonymous memory) says F_SEAL_SEAL: sealing is not for it
            seals = fcntl.fcntl(fd, F_GET_SEALS) if kind == ShmemKind.MEMFD else 0
        finally:
            os.close(fd)
        ident = len(self.records) + 1
        self.records.append(
            ShmemObject(id=ident, kind=kind, seals=seals, size=size, ino=key[1], name=name)
        )
        self._by_inode[key] = ident
        self._source[ident] = source
        return ident

    def from_vma(self, pid: int, v: P.Vma, ipc_ns: int) -> int:
        """The object a VMA maps (a SysV segment is known by its id in `ipc_ns`)."""
        source = P.map_files_path(pid, v.start, v.end)
        if v.kind is P.VmaKind.SYSV:
            # the segment's inode number is its shmid (ipc/shm.c)
            return self.add((-ipc_ns, v.inode), source, ShmemKind.SYSV, "")
        kind = ShmemKind.MEMFD if v.kind is P.VmaKind.MEMFD else ShmemKind.SHARED_ANON
        name = memfd_name(v.path) if kind == ShmemKind.MEMFD else ""
        return self.add((os.makedev(v.major, v.minor), v.inode), source, kind, name)

    def sysv_id(self, shmem_id: int) -> int:
        """The shmid of a SysV segment's object (its key holds it)."""
        return next(k[1] for k, v in self._by_inode.items() if v == shmem_id)

    def dump_pages(self, writer: ImageWriter) -> list[PagemapRun]:
        """Every object's allocated pages into the page store (the tree still stopped):
        read straight into the image's page area, or through the page buffer."""
        runs: list[PagemapRun] = []
        view: memoryview | None = None
        for obj in self.records:
            fd = os.open(self._source[obj.id], os.O_RDONLY | os.O_CLOEXEC)
            try:
                for start, end in data_ranges(fd, obj.size):
                    off = start
                    while off < end:
                        room = writer.page_room()
                        n = min(end - off, room or BUF_SIZE)
                        if room:  # a claimed piece of a new file reads as zeros already
                            base, dst = writer.claim_pages(n)
                        else:
                            view = view or memoryview(page_buffer())
                            base, dst = -1, view[:n]
                        try:
                            got = os.preadv(fd, [dst], off)
                            if got != n:
                                if off + got != obj.size:
                                    raise OSError(f"short read of shared memory object {obj.id}")
                                if base < 0:
                                    dst[got:n] = bytes(n - got)  # the tail of the last page
                            if base < 0:
                                base = writer.write_pages(dst)
                        finally:
                            dst.release()
                        runs.append(
                            PagemapRun(
                                owner_kind=OwnerKind.SHMEM,
                                flags=PageFlags.PRESENT,
                                owner=obj.id,
                                vaddr=off,
                                nr_pages=n // PAGE_SIZE,
                                data_offset=base,
                            )
                        )
                        off += n
            finally:
                os.close(fd)
        if view is not None:
            view.release()
        return runs


def data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """Page-aligned [start, end) ranges of an object that hold data (not holes)."""
    out = []
    pos = 0
    limit = (size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    while pos < limit:
        try:
            start = os.lseek(fd, pos, SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after pos
                break
            raise
        end = os.lseek(fd, start, SEEK_HOLE)
        start &= ~(PAGE_SIZE - 1)
        end = min((end + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1), limit)
        if start < end:
            out.append((start, end))
        pos = end
    return out


def memfd_name(path: str) -> str:
    """ "/memfd:NAME" -> "NAME" (maps and fd links show it so; " (deleted)" is gone)."""
    return path[len("/memfd:") :] if path.startswith("/memfd:") else path


class Memfds:
    """fds of memfds: a MemfdFile description over the object's ShmemObject."""

    kinds = frozenset({P.FdKind.MEMFD})

    def unsupported(self, pid: int, fd: int, ft: P.FdTarget, opts: DumpOptions) -> str | None:
        if ft.name and "hugetlb" in ft.name:
            return f"process {pid} fd {fd}: hugetlb memfd {ft.target} is not supported"
        return None

    def key(self, pid: int, fd: int, ft: P.FdTarget, fi: P.FdInfo) -> tuple[Any, ...]:
        st = os.stat(P.fd_path(pid, fd))
        return ("memfd", st.st_dev, st.st_ino)

    def dump(
        self, ctx: FdContext, ident: int, pid: int, fd: int, ft: P.FdTarget, fi: P.FdInfo
    ) -> Any:
        table: ShmemTable = ctx.cache["shmem"]
        source = P.fd_path(pid, fd)
        st = os.stat(source)
        shmem_id = table.add((st.st_dev, st.st_ino), source, ShmemKind.MEMFD, ft.name or "")
        return MemfdFile(id=ident, shmem_id=shmem_id, flags=file_flags(fi), pos=fi.pos)


HANDLER = Memfds()
