"""Shared memory objects, recreated once in the restorer and mapped by every process.

A MAP_SHARED anonymous object is recreated as one again (cpt.sys.files.shared_anon_file:
/proc/PID/maps still says "/dev/zero (deleted)"), a memfd as a memfd of the same name,
size and seals; their pages are written with pwrite straight from the image.  Processes
map them through an fd pulled with an injected pidfd_getfd (mm.map_vmas), so every
mapping, in any process, is of the same object: shared as before.
"""

from __future__ import annotations

import fcntl
import os
from typing import Any

from cptimage.records import MemfdFile, OwnerKind, ShmemKind

from ..errors import RestoreError
from ..procfs import fd_path
from ..sys.files import F_ADD_SEALS, MFD_ALLOW_SEALING, MFD_CLOEXEC, memfd_create, shared_anon_file
from .fdbase import O_ACCMODE, SETFL_MASK
from .model import ImageModel
from .pages import PageSource, has_data
from .pstree import Task


def create_objects(model: ImageModel, pages: PageSource) -> None:
    """Create every shared memory object of the image in this process (model.shmem_fds)."""
    for obj in model.shmem.values():
        if obj.kind == ShmemKind.SYSV:
            continue  # SysV segments are made by ipc.py, with their ids
        if obj.kind == ShmemKind.SHARED_ANON:
            fd = shared_anon_file(max(obj.size, 1))
        elif obj.kind == ShmemKind.MEMFD:
            fd = memfd_create(obj.name, MFD_CLOEXEC | MFD_ALLOW_SEALING)
            os.ftruncate(fd, obj.size)
        else:
            raise RestoreError(f"shared memory object {obj.id}: kind {obj.kind} not supported")
        model.shmem_fds[obj.id] = fd
        _fill(fd, obj.id, obj.size, model.shmem_runs.get(obj.id, []), pages)
        if obj.seals:
            # the same seals, as the dump saw them (F_SEAL_SEAL last: it forbids the rest)
            fcntl.fcntl(fd, F_ADD_SEALS, obj.seals)


def _fill(fd: int, ident: int, size: int, runs: list[Any], pages: PageSource) -> None:
    """Write the object's pages; the last page is cut at the object's size (a write past it
    would grow the object)."""
    runs = [r for r in runs if has_data(r)]
    pieces = pages.pieces(OwnerKind.SHMEM, ident, runs)
    if pieces is None:
        for offset, data in pages.chunks(OwnerKind.SHMEM, ident, runs):
            os.pwrite(fd, data[: max(0, size - offset)], offset)
        return
    views = pages.views()
    try:
        for offset, n, level, file_off in pieces:
            n = min(n, size - offset)
            view = views[level]
            if n > 0 and view is not None:
                os.pwrite(fd, view[file_off : file_off + n], offset)
    finally:
        for v in views:
            if v is not None:
                v.release()


def close_objects(model: ImageModel) -> None:
    for fd in model.shmem_fds.values():
        os.close(fd)
    model.shmem_fds.clear()


class Memfds:
    """MemfdFile descriptions: new opens of the restored memfd, with their flags and offset."""

    records = (MemfdFile,)

    def open(self, model: ImageModel, desc: Any) -> int:
        obj_fd = model.shmem_fds[desc.shmem_id]
        # reopening through /proc gives a new description of the same memfd
        fd = os.open(fd_path("self", obj_fd), (desc.flags & O_ACCMODE) | os.O_CLOEXEC)
        fcntl.fcntl(fd, fcntl.F_SETFL, desc.flags & SETFL_MASK)
        os.lseek(fd, desc.pos, os.SEEK_SET)
        return fd

    def after_install(self, model: ImageModel, task: Task, local: dict[int, int]) -> None:
        pass

    def close(self) -> None:
        pass
