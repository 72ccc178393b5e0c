"""Verify before restore: can THIS host restore this image without failing half-way or
corrupting the workload?

Checked, each problem named precisely: the kernel (release and build) and its vDSO, the
CPU features the saved state depends on (cpuid flags and the XSAVE feature mask), the
PIDs and TIDs the tree needs, and every file the image references (exe, mapped files,
open files, cwd, root): it must exist and be the same file (inode, size, mtime); a file
deleted at the dump is in the image (a ghost) and needs nothing on disk.  A VE's paths are
its own: each is looked up through the VE's mount table (its private area, the host
directories bound into it, each of which must still be there on the same device); a file
on a filesystem the restore recreates (tmpfs, proc, devpts) comes from the image or the
kernel.  A VE gets new PID and IPC namespaces: no PID or IPC id can be in use.
The image's own checksums are cptimage.verify's job; restore runs both.
"""

from __future__ import annotations

import functools
import os
import stat

from cptimage.container import ImageReader
from cptimage.errors import shorten
from cptimage.records import PathFlags, PathKind, PathObj
from cptimage.verify import Problem

from ..procfs.paths import pid_of_path
from ..restore import mounts
from ..restore.ipc import IpcObjects
from ..restore.model import ImageModel
from ..restore.restorer import pids_in_use
from ..restore.stub import kill_and_reap, spawn_stub
from ..sys import host as hostinfo


def _problem(kind: str, message: str) -> Problem:
    return Problem(section="host", record=kind, offset=None, message=message)


@functools.cache
def host_xcr0() -> int:
    """The XSAVE feature mask user state may use here, read from a throwaway stub."""
    t = spawn_stub()
    try:
        return hostinfo.xfeatures_of(t.get_xstate())
    finally:
        kill_and_reap(t.pid)


def platform_problems(
    image_arch: str,
    image_release: str,
    image_version: str,
    vdso_digest: int,
    cpu_flags: list[str] | tuple[str, ...],
    xcr0: int,
) -> list[Problem]:
    """Whether this host's kernel and CPU take an image of these facts (its header's, or
    a migration source's before any image exists): "kernel" and "cpu" problems."""
    out: list[Problem] = []
    arch, release, version = hostinfo.kernel()
    if image_arch != arch:
        out.append(
            _problem("kernel", f"the image is for {shorten(image_arch)}, this host is {arch}")
        )
    if (image_release, image_version) != (release, version):
        out.append(
            _problem(
                "kernel",
                f"the image was dumped on kernel {shorten(image_release)} "
                f"({shorten(image_version)}); this "
                f"host runs {release} ({version}): the same kernel is needed (vDSO, layout)",
            )
        )
    elif vdso_digest and vdso_digest != hostinfo.vdso_digest():
        out.append(_problem("kernel", "this kernel's vDSO differs from the image's"))
    missing = sorted(set(cpu_flags) - hostinfo.cpu_flags())
    if missing:
        out.append(
            _problem("cpu", f"this CPU lacks {shorten(', '.join(missing))}, which the image uses")
        )
    if xcr0 and xcr0 & ~host_xcr0():
        out.append(
            _problem(
                "cpu",
                f"the image's XSAVE features {xcr0:#x} are not all enabled here ({host_xcr0():#x})",
            )
        )
    return out


def check_host(reader: ImageReader, *, pids: bool = True, ipcns: bool = False) -> list[Problem]:
    """Problems of restoring the image here: `pids=False` for a new PID namespace,
    `ipcns=True` for a new IPC namespace (where no id can be taken)."""
    h = reader.header
    out = platform_problems(
        h.arch, h.kernel_release, h.kernel_version, h.vdso_digest, h.cpu_flags, h.xcr0
    )
    model = ImageModel(reader)
    if model.ve:
        return out + _ve_problems(model)
    if pids:
        for pid, what in pids_in_use(model):
            out.append(
                _problem(
                    "pid",
                    f"PID {pid} is in use ({what}); free it, or restore with --pidns",
                )
            )
    if not (ipcns or model.ipc_own):
        for conflict in IpcObjects(model).conflicts():
            out.append(_problem("ipc", conflict))
    own = _tree_ids(model)
    for p in model.paths.values():
        if pid_of_path(p.path) in own:
            continue  # a /proc file of the tree's own processes: there once the tree is
        why = changed(p)
        if why:
            out.append(_problem("file", f"{shorten(p.path, 160)}: {why}"))
    return out


def _tree_ids(model: ImageModel) -> set[int]:
    """Every PID and TID of the image's tree (as seen by the restorer)."""
    ids = set(model.procs)
    for proc in model.procs.values():
        ids.update(th.tid for th in proc.threads)
    return ids


def _ve_problems(model: ImageModel) -> list[Problem]:
    out = [_problem("mount", why) for why in mounts.problems(model.mounts)]
    for p in model.paths.values():
        where = mounts.host_path(model.mounts, p.path)
        if where is None:
            continue  # on a filesystem the restore recreates
        why = changed(p, where)
        if why:
            out.append(_problem("file", f"{shorten(p.path, 160)}: {why}"))
    return out


def changed(p: PathObj, where: str | None = None) -> str | None:
    """Why the file at p.path (found at `where` on this host, by default p.path) is not
    the one the image references, or None."""
    if p.flags & PathFlags.GHOST:
        return None  # deleted at the dump: its contents are in the image
    try:
        st = os.stat(where or p.path)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"cannot stat: {e.strerror}"
    if p.kind and stat.S_IFMT(st.st_mode) != stat.S_IFMT(p.mode):
        return "is a different kind of file now"
    if st.st_ino != p.ino:
        return f"was replaced (inode {p.ino} -> {st.st_ino})"
    if p.kind == PathKind.REG:
        if st.st_size != p.size:
            return f"changed since the checkpoint (size {p.size} -> {st.st_size})"
        if st.st_mtime_ns != p.mtime_ns:
            return "changed since the checkpoint (modification time differs)"
    if p.kind == PathKind.CHR and st.st_rdev != p.rdev:
        return "is another device now"
    return None
