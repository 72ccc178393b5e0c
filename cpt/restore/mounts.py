"""A VE's mount table, rebuilt from its Mount and MountData records and made its root.

    problems(mounts)       what THIS host lacks for it, before anything is created
    host_path(mounts, p)   where a VE path is on the host before restore
    build(mounts, data)    mount everything in record order, then pivot_root into it

A VE that contains its root (a user namespace) is built in two parts, so that what comes
from the host comes back LOCKED, as when it started (ve/boot.py):

    host_side(mounts, data)            which mounts are the host's part: the root, the
                                       external binds, a tmpfs holding device nodes (the
                                       VE's root may not create them), a bind of part of
                                       one of those
    build_host_side(mounts, data, ids) those, in a mount namespace of the host's user
                                       namespace, before the VE's user namespace exists
    build(mounts, data, host_side=ids) the rest, in the VE's mount namespace (a copy,
                                       owned by the VE's user namespace, where the host's
                                       part is locked), over a second bind of the root

The kinds of mount are those of cpt/dump/mounts.py: external binds from the host (the
VE's root first), filesystems mounted afresh (proc, sysfs, devpts, mqueue, cgroup2, tmpfs
with its files from a tar stream), and binds of a part of one of those.

Every mount comes back private: shared/slave propagation recorded in the image
(shared_group, master_group) is not recreated, and nothing the restore mounts propagates
to the host.  Mountpoints are never created: those on the VE's own filesystem are in the
restored private area, those inside a tmpfs come from its tar stream; a missing one is an
error.  Mountpoints are walked component by component without following symlinks, so a
symlink planted in the VE's files cannot send a mount onto a host path.
"""

from __future__ import annotations

import io
import os
import posixpath
import stat
from typing import TYPE_CHECKING

from cptimage.records import Mount

from ..dump.mounts import RECREATED
from ..errors import RestoreError
from ..procfs import fd_path
from ..sys.ns import (
    MNT_DETACH,
    MS_BIND,
    MS_DIRSYNC,
    MS_LAZYTIME,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    MS_SYNCHRONOUS,
    mount,
    pivot_root,
    umount2,
)

if TYPE_CHECKING:
    import tarfile

__all__ = ["build", "build_host_side", "host_path", "host_side", "problems"]

# superblock flags shown among mountinfo's super options (show_sb_opts)
_SB_FLAGS = {"sync": MS_SYNCHRONOUS, "dirsync": MS_DIRSYNC, "lazytime": MS_LAZYTIME}

# the tar entry types a tmpfs's data may hold (tarfile's REGTYPE, AREGTYPE, DIRTYPE,
# SYMTYPE, LNKTYPE, CHRTYPE, BLKTYPE, FIFOTYPE): tarfile itself (with bz2, lzma,
# decimal) is imported only to read such data
_DIRTYPE = b"5"
_TAR_TYPES = frozenset({b"0", b"\0", _DIRTYPE, b"2", b"1", b"3", b"4", b"6"})


def problems(mounts: list[Mount]) -> list[str]:
    """What keeps the mount table from being rebuilt here, one line each: the table's
    shape, and each external mount's host source (it must exist and be on the recorded
    device).  The VE's root only needs to exist: it is the VE's private area, whose
    identity is its filesystem snapshot's business (FsSnapshot), and a btrfs subvolume's
    device number is not stable (a rolled back area is a new subvolume; a remount or
    another host gives another)."""
    if not mounts:
        return ["the VE image has no mount table"]
    out = []
    root = mounts[0]
    if root.mountpoint != "/" or not root.external:
        out.append(
            f"VE mount table: its first mount ({root.mountpoint}, {root.fstype}) is not "
            f"the VE's root bound from the host"
        )
    seen: set[int] = set()
    whole: set[int] = set()  # devices of the filesystems mounted afresh so far
    for i, m in enumerate(mounts):
        what = f"VE mount {m.mountpoint}"
        if i and m.parent_id not in seen:
            out.append(f"{what}: its parent mount {m.parent_id} is not before it in the image")
        seen.add(m.mnt_id)
        if not m.external:
            if m.fstype not in RECREATED:
                out.append(f"{what}: cpt cannot recreate a {m.fstype} mount")
            elif m.root == "/":
                whole.add(m.dev)
            elif m.dev not in whole:
                out.append(
                    f"{what}: shows {m.root} of a {m.fstype} that is not mounted whole before it"
                )
            continue
        try:
            st = os.stat(m.source)
        except FileNotFoundError:
            out.append(f"{what}: its host source {m.source} is missing")
            continue
        except OSError as e:
            out.append(f"{what}: its host source {m.source}: {e.strerror}")
            continue
        if i and st.st_dev != m.dev:  # the root: see below
            out.append(
                f"{what}: its host source {m.source} is on device {_devtext(st.st_dev)}, "
                f"not {_devtext(m.dev)} as dumped"
            )
    return out


def host_path(mounts: list[Mount], path: str) -> str | None:
    """Where the VE path `path` (absolute, as the VE sees it) is on THIS host before
    restore, through the mount with the longest matching mountpoint (the last one stacked
    there): its host source and the rest of the path for an external mount, None for a
    path on a mount restore creates (proc, sysfs, devpts, tmpfs, mqueue...) and for a
    name that is not an absolute path."""
    if not path.startswith("/"):
        return None  # not a path of the VE's tree ("pipe:[...]", "anon_inode:...")
    path = "/" + posixpath.normpath(path).lstrip("/")
    best: Mount | None = None
    for m in mounts:
        mp = m.mountpoint
        if (mp == "/" or path == mp or path.startswith(mp + "/")) and (
            best is None or len(mp) >= len(best.mountpoint)
        ):
            best = m
    if best is None or not best.external:
        return None
    rest = path[len(best.mountpoint) :].lstrip("/")
    return os.path.join(best.source, rest) if rest else best.source


def host_side(mounts: list[Mount], data: dict[int, bytes]) -> set[int]:
    """The mnt_ids of a VE's mounts that are made before its user namespace (see the
    module's docstring); RestoreError when one of them hangs below a mount the VE makes
    itself (it could not be made first)."""
    if not mounts:
        return set()
    ids = {mounts[0].mnt_id}
    devs: set[int] = set()  # filesystems of the host's part
    for m in mounts[1:]:
        if m.external:
            ids.add(m.mnt_id)
        elif m.root == "/" and m.fstype == "tmpfs" and _has_devices(data.get(m.mnt_id)):
            ids.add(m.mnt_id)
            devs.add(m.dev)
        elif m.root != "/" and m.dev in devs:
            ids.add(m.mnt_id)
        else:
            continue
        if m.parent_id not in ids:
            parent = next((p for p in mounts if p.mnt_id == m.parent_id), None)
            where = f" ({parent.mountpoint}, {parent.fstype})" if parent else ""
            raise RestoreError(
                f"VE mount {m.mountpoint} ({m.fstype}): comes from the host but hangs below "
                f"a mount the VE makes itself{where}; a VE with a user namespace cannot "
                f"have it"
            )
    return ids


def _has_devices(blob: bytes | None) -> bool:
    if not blob:
        return False
    import tarfile

    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tf:
            return any(ti.ischr() or ti.isblk() for ti in tf.getmembers())
    except tarfile.TarError as e:
        raise RestoreError(f"a tmpfs's data of the VE image is not a tar stream: {e}") from None


def build_host_side(mounts: list[Mount], data: dict[int, bytes], ids: set[int]) -> None:
    """The host's part of a VE's mounts (`ids`, from host_side), in this process's mount
    namespace (a new one of the host's user namespace: called in a forked helper), in
    record order, below the root's source path.  RestoreError on any failure."""
    errs = problems(mounts)
    if errs:
        raise RestoreError(f"{errs[0]}" + (f" (and {len(errs) - 1} more)" if errs[1:] else ""))
    root = mounts[0]
    try:
        mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below leaks to the host
        mount(root.source, root.source, None, MS_BIND)
        mount(None, root.source, None, MS_BIND | MS_REMOUNT | root.flags)
        root_fd = os.open(root.source, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise RestoreError(f"VE mount / (bind of {root.source}): {e}") from None
    fds = [root_fd]
    firsts: dict[int, tuple[Mount, int]] = {}
    try:
        for m in mounts[1:]:
            if m.mnt_id not in ids:
                continue
            try:
                _mount_one(m, root_fd, data, firsts, fds)
            except OSError as e:
                raise RestoreError(f"VE mount {m.mountpoint} ({m.fstype}): {e}") from None
    finally:
        for fd in fds:
            os.close(fd)


def build(
    mounts: list[Mount], data: dict[int, bytes], *, host_side: set[int] | None = None
) -> None:
    """Recreate the VE's mount table and make it the root of this process's mount
    namespace.

    Called in a forked, single-threaded process that is already in the new mount and PID
    namespaces of the restored VE (so a new proc shows the VE's PIDs), with /proc of the
    namespace it came from still mounted (mountpoints are reached through
    /proc/self/fd).  "/" is made recursively private first; the root mount's source is
    bound onto itself, every other mount follows in record order below it, and
    pivot_root(".", ".") + umount2(".", MNT_DETACH) makes it the root with no directory
    needed for the old one.  Ends with the cwd at "/".  RestoreError on any failure.

    With `host_side` (a VE with a user namespace), the mounts it names are there already,
    locked, below the root's source: the root is bound again, recursively (the top of a
    new bind is not locked, and pivot_root refuses a locked root), and they are skipped."""
    errs = problems(mounts)
    if errs:
        raise RestoreError(f"{errs[0]}" + (f" (and {len(errs) - 1} more)" if errs[1:] else ""))
    root = mounts[0]
    made = host_side or set()
    try:
        mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below leaks to the host
        # pivot_root needs a mount
        mount(root.source, root.source, None, MS_BIND | (MS_REC if made else 0))
        mount(None, root.source, None, MS_BIND | MS_REMOUNT | root.flags)
        root_fd = os.open(root.source, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise RestoreError(f"VE mount / (bind of {root.source}): {e}") from None
    fds = [root_fd]
    firsts: dict[int, tuple[Mount, int]] = {}  # dev -> first fresh mount, fd of its root
    try:
        for m in mounts[1:]:
            if m.mnt_id in made:
                continue
            try:
                _mount_one(m, root_fd, data, firsts, fds)
            except OSError as e:
                raise RestoreError(f"VE mount {m.mountpoint} ({m.fstype}): {e}") from None
        os.fchdir(root_fd)
    finally:
        for fd in fds:
            os.close(fd)
    try:
        pivot_root(".", ".")  # the old root is now stacked on the new one ...
        umount2(".", MNT_DETACH)  # ... and goes
        os.chdir("/")
    except OSError as e:
        raise RestoreError(f"VE mount /: pivot_root into {root.source}: {e}") from None


def _mount_one(
    m: Mount, root_fd: int, data: dict[int, bytes], firsts: dict[int, tuple[Mount, int]],
    fds: list[int],
) -> None:  # fmt: skip
    target = _walk(root_fd, m.mountpoint, m)
    try:
        if m.external:
            mount(m.source, _fd_path(target), None, MS_BIND)
        elif m.dev in firsts:  # a part of a filesystem mounted earlier
            first, first_fd = firsts[m.dev]
            src = _walk(first_fd, posixpath.relpath(m.root, first.root), m)
            try:
                mount(_fd_path(src), _fd_path(target), None, MS_BIND)
            finally:
                os.close(src)
        else:
            _mount_fresh(m, root_fd, target, data)
    finally:
        os.close(target)
    top = _walk(root_fd, m.mountpoint, m)  # the new mount, on top now
    fds.append(top)
    mount(None, _fd_path(top), None, MS_BIND | MS_REMOUNT | m.flags)  # per-mount flags
    if not m.external and m.dev not in firsts:
        firsts[m.dev] = (m, top)


def _mount_fresh(m: Mount, root_fd: int, target: int, data: dict[int, bytes]) -> None:
    if m.root != "/":
        raise RestoreError(
            f"VE mount {m.mountpoint} ({m.fstype} {m.root}): a part of a filesystem that "
            f"is not mounted whole before it"
        )
    sb_flags, sb_ro, options = _fs_options(m)
    blob = data.get(m.mnt_id) if m.fstype == "tmpfs" else None
    if m.fstype == "tmpfs" and blob is None:
        raise RestoreError(f"VE mount {m.mountpoint} (tmpfs): the image has no data for it")
    ro = MS_RDONLY if sb_ro and blob is None else 0
    mount(m.source, _fd_path(target), m.fstype, sb_flags | ro, options)
    if blob is None:
        return
    top = _walk(root_fd, m.mountpoint, m)
    try:
        os.fchdir(top)
        _extract(m, blob)
        if sb_ro:
            mount(None, _fd_path(top), None, MS_REMOUNT | MS_RDONLY | sb_flags, options)
    finally:
        os.fchdir(root_fd)
        os.close(top)


def _fs_options(m: Mount) -> tuple[int, bool, str]:
    """(superblock MS_* flags, superblock read-only, the data string for mount(2)) from
    the recorded super options."""
    flags, ro, opts = 0, False, []
    for o in m.super_options.split(","):
        if o in ("", "rw"):
            continue
        if o == "ro":
            ro = True
        elif o in _SB_FLAGS:
            flags |= _SB_FLAGS[o]
        elif o != "mand":  # mandatory locking is gone from the kernel (5.15)
            opts.append(o)
    if m.fstype == "devpts" and "newinstance" not in opts:
        opts.insert(0, "newinstance")  # never the host's ptys
    return flags, ro, ",".join(opts)


def _walk(base_fd: int, path: str, m: Mount) -> int:
    """An O_PATH fd of `path` below `base_fd`, one component at a time, never following a
    symlink (nor ".."): RestoreError naming the mount when a component is missing."""
    fd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=base_fd)
    walked = ""
    try:
        for part in path.split("/"):
            if part in ("", "."):
                continue
            walked += "/" + part
            if part == "..":
                raise RestoreError(f"VE mount {m.mountpoint}: '..' in the path {path}")
            try:
                nfd = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                raise RestoreError(
                    f"VE mount {m.mountpoint}: its mountpoint is missing in the restored "
                    f"tree ({walked} does not exist)"
                ) from None
            except NotADirectoryError:
                raise RestoreError(
                    f"VE mount {m.mountpoint}: {walked} is below a non-directory in the "
                    f"restored tree"
                ) from None
            os.close(fd)
            fd = nfd
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                raise RestoreError(
                    f"VE mount {m.mountpoint}: {walked} is a symlink in the restored tree"
                )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _fd_path(fd: int) -> str:
    return fd_path("self", fd)


def _devtext(dev: int) -> str:
    return f"{os.major(dev)}:{os.minor(dev)}"


# ---- a tmpfs's files ----


def _extract(m: Mount, blob: bytes) -> None:
    """The tar stream `blob` into the cwd (the fresh tmpfs), with modes, owners and
    nanosecond mtimes as dumped."""
    import tarfile

    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tf:
            tf.errorlevel = 2  # every failure (chown, utime...) is an error
            members = tf.getmembers()
            _check_members(m, members)
            if getattr(tarfile, "tar_filter", None) is not None:  # 3.11.4: extraction filters
                tf.extractall(".", members, numeric_owner=True, filter=_keep_mode)
            else:
                tf.extractall(".", members, numeric_owner=True)
    except (tarfile.TarError, OSError) as e:
        raise RestoreError(f"VE mount {m.mountpoint} (tmpfs): extracting its files: {e}") from None
    for ti in members:
        # tarfile sets float mtimes (and none on symlinks): the pax header has them exactly
        ns = _mtime_ns(ti)
        if ns is not None and not ti.islnk():
            os.utime(ti.name, ns=(ns, ns), follow_symlinks=False)


def _keep_mode(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """tarfile's "tar" filter (no absolute names, nothing outside the destination) without
    its clearing of set-id, sticky and group/other-write bits: /tmp is 1777, /dev/null
    0666 in a VE."""
    import tarfile

    new = tarfile.tar_filter(member, dest)
    if new is None:
        return None
    out: tarfile.TarInfo = new.replace(mode=member.mode, deep=False)
    return out


def _check_members(m: Mount, members: list[tarfile.TarInfo]) -> None:
    """A stream from an image is input: relative names, each once, no path through a
    symlink of the stream, hard links to an earlier non-directory of the stream."""
    kinds: dict[str, bytes] = {}

    def bad(ti: tarfile.TarInfo, why: str) -> RestoreError:
        return RestoreError(f"VE mount {m.mountpoint} (tmpfs): its data holds {ti.name!r}: {why}")

    def check_path(ti: tarfile.TarInfo, name: str) -> str:
        norm = posixpath.normpath(name)
        if name.startswith("/") or norm == ".." or norm.startswith("../"):
            raise bad(ti, "a path outside the mount")
        parts = norm.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if kinds.get(parent) not in (None, _DIRTYPE):
                raise bad(ti, f"a path through {parent}, not a directory")
        return norm

    for ti in members:
        if ti.type not in _TAR_TYPES:
            raise bad(ti, f"an entry of tar type {ti.type!r}")
        name = check_path(ti, ti.name)
        if name in kinds:
            raise bad(ti, "a second entry of that name")
        if ti.islnk():
            target = check_path(ti, ti.linkname)
            if kinds.get(target) in (None, _DIRTYPE):
                raise bad(ti, "a hard link to no earlier file")
        kinds[name] = ti.type


def _mtime_ns(ti: tarfile.TarInfo) -> int | None:
    text = ti.pax_headers.get("mtime")
    if text is None:
        return None
    from decimal import Decimal, InvalidOperation

    try:
        return int(Decimal(text) * 10**9)
    except (InvalidOperation, ValueError):
        return None
