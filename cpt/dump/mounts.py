"""The mount table of a VE: the mounts its init sees (/proc/PID/mountinfo) as Mount
records, parents before children, and the files of its tmpfs mounts as MountData.

Each mount is one of three kinds (cpt/restore/mounts.py rebuilds them in record order):

- recreated (external=0): proc, sysfs, devpts, mqueue, cgroup2 and tmpfs are mounted
  afresh at restore with their filesystem options (Mount.super_options).  A tmpfs brings
  its files along: MountData holds a POSIX tar stream (pax headers: exact nanosecond
  mtimes, long names) of that mount only, with modes, owners, mtimes, symlinks, hard
  links, device nodes and FIFOs.  Sockets are left out (a bound socket's file is
  meaningless without its socket, which the process's fd records carry); so are extended
  attributes and ACLs.  Mount.dev is the filesystem's device number in the VE.
- bound inside the VE (external=0, root != "/"): a second mount of a recreated
  filesystem, e.g. a read-only bind of /proc/sys over itself; restore binds it from the
  first mount of the same filesystem (same Mount.dev), which must show its root.
- external (external=1): everything else, the VE's root mount first of all (the private
  area), is a bind of a directory the host shows: Mount.source is that host path and
  Mount.dev its st_dev, checked at restore before anything is built.  A tmpfs the host
  mounts too (same device) is such a host directory, not the VE's own.

Refused (UnsupportedError, one line naming the mount): automounts (autofs), FUSE and
network filesystems (their server is not part of the dump), idmapped mounts, a second
mount stacked on the VE's root, a mount no host path shows, a tmpfs over `tmpfs_limit`
bytes of file data, a mount hidden under a later one.

Propagation (shared:N, master:N) is recorded; restore makes every mount private.

How the VE's side is read: a forked helper joins the VE's mount namespace (and first its
user namespace, for a VE that contains its root) and takes a private copy of it
(unshare), so it sees what the VE's init sees without changing anything of the VE.
Walking the records backwards, it stats each mountpoint, hands the dumper an fd of each
tmpfs's root (the dumper archives it, seeing owners as this host does), then unmounts
that mount in its copy: the tmpfs underneath a child mount then shows its own directory
(e.g. /dev/pts of the /dev tmpfs), and every mount is seen at its place exactly as
restore, mounting forwards, will recreate it.  A mount the host made for a VE that
contains its root is locked and stays (it cannot hide anything of the VE's).
"""

from __future__ import annotations

import dataclasses
import errno
import io
import os
import socket
import stat
import struct

from cptimage.records import Mount, MountData

from ..errors import CptError, DumpError, UnsupportedError
from ..procfs import MountInfo, Proc, fd_path, ns_path, root_path
from ..sys.ns import (
    CLONE_NEWNS,
    CLONE_NEWUSER,
    MNT_DETACH,
    MS_NOATIME,
    MS_NODEV,
    MS_NODIRATIME,
    MS_NOEXEC,
    MS_NOSUID,
    MS_NOSYMFOLLOW,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_RELATIME,
    MS_STRICTATIME,
    mount,
    setns,
    umount2,
    unshare,
)

__all__ = [
    "RECREATED",
    "MountTable",
    "dump_mounts",
    "mount_flags",
    "mtime_text",
    "tar_tree",
]

# mountinfo field 6 (show_mnt_opts) -> MS_* bit
_OPTION_FLAGS = {
    "rw": 0,
    "ro": MS_RDONLY,
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "nosymfollow": MS_NOSYMFOLLOW,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
    "strictatime": MS_STRICTATIME,
}

# filesystems restore mounts afresh (tmpfs with its files)
RECREATED = frozenset({"proc", "sysfs", "devpts", "mqueue", "cgroup2", "tmpfs"})

_NETWORK_FS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "afs", "ncpfs", "lustre"}
)

# helper -> dumper frames: kind u8, mnt_id u32, payload length u64, payload
_FRAME = struct.Struct("<BIQ")
_STAT = struct.Struct("<QQI")  # st_dev, st_ino, st_mode
_F_STAT, _F_ROOT, _F_ERROR = 1, 2, 3  # _F_ROOT carries an fd of a tmpfs's root


@dataclasses.dataclass
class MountTable:
    mounts: list[Mount]
    data: list[MountData]


def mount_flags(options: str) -> int:
    """MS_* bits of a mountinfo per-mount option string ("rw,nosuid,relatime").

    The kernel never prints "strictatime": a mount showing neither relatime nor noatime
    is strictatime, and gets MS_STRICTATIME (mount(2) would default to relatime).
    Raises ValueError naming an option that has no MS_* bit (e.g. "idmapped")."""
    flags = 0
    for opt in options.split(","):
        if not opt:
            continue
        if opt not in _OPTION_FLAGS:
            raise ValueError(opt)
        flags |= _OPTION_FLAGS[opt]
    if not flags & (MS_RELATIME | MS_NOATIME):
        flags |= MS_STRICTATIME
    return flags


def mtime_text(ns: int) -> str:
    """A pax "mtime" value with every nanosecond: "1700000000.123456789"."""
    sign = "-" if ns < 0 else ""
    sec, frac = divmod(abs(ns), 10**9)
    return f"{sign}{sec}.{frac:09d}"


def dump_mounts(pid: int, *, tmpfs_limit: int = 64 << 20) -> MountTable:
    """The mount table of the VE whose init is `pid` (its root is the VE's root)."""
    proc = Proc()
    ordered = _parents_first(proc.mountinfo(pid), pid)
    host = proc.mountinfo(os.getpid())
    host_devs = {(h.major, h.minor) for h in host}

    external: list[MountInfo] = []
    first_of_dev: dict[tuple[int, int], MountInfo] = {}
    tmpfs: dict[int, int] = {}  # mnt_id -> dev, for the tmpfs mounts whose files we take
    flags: dict[int, int] = {}
    for i, m in enumerate(ordered):
        flags[m.mount_id] = _flags_of(m)
        _refuse(m, is_root=i == 0)
        majmin = (m.major, m.minor)
        if i == 0 or m.fstype not in RECREATED or (m.fstype == "tmpfs" and majmin in host_devs):
            external.append(m)
        elif majmin not in first_of_dev:
            if m.root != "/":
                raise UnsupportedError(
                    f"VE mount {m.mount_point} ({m.fstype} {m.root}): shows part of a "
                    f"filesystem the VE does not mount whole; cpt cannot recreate it",
                    pid=pid,
                )
            first_of_dev[majmin] = m
            if m.fstype == "tmpfs":
                tmpfs[m.mount_id] = os.makedev(*majmin)

    stats, tars = _inspect(pid, ordered, tmpfs, tmpfs_limit)
    ext = {m.mount_id: _host_source(m, host, stats[m.mount_id], pid) for m in external}

    records: list[Mount] = []
    for m in ordered:
        dev = os.makedev(m.major, m.minor)
        if m.mount_id in ext:
            source, dev = ext[m.mount_id]
        else:
            source = m.source
            st_dev = stats[m.mount_id][0]
            if st_dev != dev:
                raise UnsupportedError(
                    f"VE mount {m.mount_point} ({m.fstype}): hidden under another mount "
                    f"(its path shows device {_devtext(st_dev)}, not {m.major}:{m.minor})",
                    pid=pid,
                )
        records.append(
            Mount(
                mnt_id=m.mount_id,
                parent_id=m.parent_id,
                flags=flags[m.mount_id],
                shared_group=m.shared or 0,
                master_group=m.master or 0,
                external=1 if m.mount_id in ext else 0,
                dev=dev,
                root=m.root,
                mountpoint=m.mount_point,
                fstype=m.fstype,
                source=source,
                options=m.options,
                super_options=m.super_options,
            )
        )
    data = [
        MountData(mnt_id=m.mount_id, data=tars[m.mount_id]) for m in ordered if m.mount_id in tars
    ]
    return MountTable(mounts=records, data=data)


# ---- the table ----


def _parents_first(infos: list[MountInfo], pid: int) -> list[MountInfo]:
    """mountinfo order (creation order), except that a mount moved under a younger one
    comes after it; the VE's root first."""
    ids = {m.mount_id for m in infos}
    roots = [m for m in infos if m.parent_id not in ids or m.parent_id == m.mount_id]
    if len(roots) != 1 or roots[0].mount_point != "/":
        raise DumpError(
            f"VE init {pid}: its mount table has no single root mount "
            f"({', '.join(m.mount_point for m in roots) or 'none'})",
            pid=pid,
        )
    out = [roots[0]]
    done = {roots[0].mount_id}
    todo = [m for m in infos if m is not roots[0]]
    while todo:
        rest = []
        for m in todo:
            if m.parent_id in done:
                out.append(m)
                done.add(m.mount_id)
            else:
                rest.append(m)
        if len(rest) == len(todo):
            raise DumpError(
                f"VE init {pid}: mounts {', '.join(m.mount_point for m in rest)} "
                f"hang from no mount of its table",
                pid=pid,
            )
        todo = rest
    return out


def _flags_of(m: MountInfo) -> int:
    try:
        return mount_flags(m.options)
    except ValueError as e:
        raise UnsupportedError(
            f"VE mount {m.mount_point} ({m.fstype}): the mount option {e} is not supported"
        ) from None


def _refuse(m: MountInfo, *, is_root: bool) -> None:
    what = f"VE mount {m.mount_point} ({m.fstype} {m.source})"
    fs = m.fstype
    if fs == "autofs":
        raise UnsupportedError(f"{what}: an automount point; its daemon is not in the dump")
    if fs in ("fuse", "fuseblk", "fusectl") or fs.startswith("fuse."):
        raise UnsupportedError(f"{what}: a FUSE filesystem; its server is not in the dump")
    if fs in _NETWORK_FS or fs.startswith("nfs"):
        raise UnsupportedError(
            f"{what}: a network filesystem; cpt only binds local host directories into a VE"
        )
    if not is_root and m.mount_point == "/":
        raise UnsupportedError(f"{what}: a mount stacked on the VE's root is not supported")


def _host_source(
    m: MountInfo, host: list[MountInfo], ve_stat: tuple[int, int, int], pid: int
) -> tuple[str, int]:
    """(host path, its st_dev) of an external mount: a path of THIS process that shows the
    same directory (same st_dev and st_ino) as the mount's root in the VE."""
    for h in host:
        if (h.major, h.minor) != (m.major, m.minor):
            continue
        if h.root == "/":
            rest = m.root
        elif m.root == h.root or m.root.startswith(h.root + "/"):
            rest = m.root[len(h.root) :]
        else:
            continue
        tail = rest.strip("/")
        path = os.path.join(h.mount_point, tail) if tail else h.mount_point
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == ve_stat[:2]:
            return path, st.st_dev
    raise UnsupportedError(
        f"VE mount {m.mount_point} ({m.fstype} {m.root}): no host path shows it; only "
        f"proc, sysfs, devpts, mqueue, cgroup2, tmpfs and binds of host directories are "
        f"supported",
        pid=pid,
    )


def _devtext(dev: int) -> str:
    return f"{os.major(dev)}:{os.minor(dev)}"


# ---- the VE's side, read by a helper in a copy of its mount namespace ----


def _inspect(
    pid: int, ordered: list[MountInfo], tmpfs: dict[int, int], limit: int
) -> tuple[dict[int, tuple[int, int, int]], dict[int, bytes]]:
    """For each mount, (st_dev, st_ino, st_mode) of its root as seen at its mountpoint,
    and the tar stream of each tmpfs in `tmpfs` (mnt_id -> its dev).

    The helper sends an fd of each tmpfs's root (its later mounts gone) and this process
    archives it: the owners in the archive are then as THIS host sees them, also when the
    helper works in the VE's user namespace."""
    ns_fd = os.open(ns_path(pid, "mnt"), os.O_RDONLY | os.O_CLOEXEC)
    user_fd = -1
    try:
        if Proc().ns(pid).get("user") != Proc().ns(os.getpid()).get("user"):
            user_fd = os.open(ns_path(pid, "user"), os.O_RDONLY | os.O_CLOEXEC)
        st = os.stat(root_path(pid))
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            child = os.fork()
        except BaseException:
            ours.close()
            theirs.close()
            raise
        if child == 0:  # pragma: no cover - runs in the helper
            code = 0
            try:
                ours.close()
                _helper(theirs, ns_fd, user_fd, (st.st_dev, st.st_ino), ordered, tmpfs, pid)
            except BaseException as e:
                kind = b"U" if isinstance(e, UnsupportedError) else b"D"
                msg = str(e) if isinstance(e, CptError) else f"{type(e).__name__}: {e}"
                try:
                    _write_frame(theirs, _F_ERROR, 0, kind + msg.encode(errors="replace"))
                except BaseException:
                    pass
                code = 1
            finally:
                os._exit(code)
    finally:
        os.close(ns_fd)
        if user_fd >= 0:
            os.close(user_fd)
    theirs.close()
    chunks: list[bytes] = []
    fds: list[int] = []
    try:
        with ours:
            while True:
                data, got, _, _ = socket.recv_fds(ours, 1 << 20, 16)
                fds += got
                if not data:
                    break
                chunks.append(data)
        _, status = os.waitpid(child, 0)
        stats, roots = _parse_frames(b"".join(chunks), pid)  # raises the helper's error
        if status != 0 or len(stats) != len(ordered) or len(roots) != len(fds):
            raise DumpError(
                f"reading the mounts of VE init {pid}: the helper process ended with status "
                f"{status:#x} after {len(stats)} of {len(ordered)} mounts",
                pid=pid,
            )
        # "/.": through the fd's magic link to the directory itself (an lstat of the
        # link alone would stat the link)
        where = {m.mount_id: m.mount_point for m in ordered}
        tars = {
            mnt_id: tar_tree(fd_path("self", fd) + "/.", limit, where[mnt_id])
            for mnt_id, fd in zip(roots, fds, strict=True)
        }
    finally:
        for fd in fds:
            os.close(fd)
    return stats, tars


def _parse_frames(buf: bytes, pid: int) -> tuple[dict[int, tuple[int, int, int]], list[int]]:
    """The helper's frames: the stats, and the mnt_ids whose root fds came, in order."""
    stats: dict[int, tuple[int, int, int]] = {}
    roots: list[int] = []
    off = 0
    while off < len(buf):
        kind, mnt_id, n = _FRAME.unpack_from(buf, off)
        off += _FRAME.size
        payload = buf[off : off + n]
        off += n
        if kind == _F_STAT:
            stats[mnt_id] = _STAT.unpack(payload)
        elif kind == _F_ROOT:
            roots.append(mnt_id)
        else:
            msg = payload[1:].decode(errors="replace")
            if payload[:1] == b"U":
                raise UnsupportedError(msg, pid=pid)
            raise DumpError(f"reading the mounts of VE init {pid}: {msg}", pid=pid)
    return stats, roots


def _write_frame(
    sock: socket.socket, kind: int, mnt_id: int, payload: bytes, fd: int | None = None
) -> None:
    data = _FRAME.pack(kind, mnt_id, len(payload)) + payload
    if fd is not None:  # the fd goes with the frame's first byte
        sent = socket.send_fds(sock, [data], [fd])
        data = data[sent:]
    sock.sendall(data)


def _helper(
    sock: socket.socket,
    ns_fd: int,
    user_fd: int,
    root: tuple[int, int],
    ordered: list[MountInfo],
    tmpfs: dict[int, int],
    pid: int,
) -> None:  # pragma: no cover - runs in the helper
    if user_fd >= 0:
        # a VE that contains its root: its user namespace first, so that the copy below
        # is owned by it too (a copy made from the host's would lock every mount)
        setns(user_fd, CLONE_NEWUSER)
    setns(ns_fd, CLONE_NEWNS)
    unshare(CLONE_NEWNS)  # a copy of the VE's mounts: what we unmount is ours only
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # no unmount propagates to the VE's peers
    st = os.stat("/")
    if (st.st_dev, st.st_ino) != root:
        raise UnsupportedError(
            f"VE init {pid}: its root is not the root of its mount namespace (a chroot "
            f"inside the VE?)"
        )
    for m in reversed(ordered):
        st = os.lstat(m.mount_point)
        _write_frame(sock, _F_STAT, m.mount_id, _STAT.pack(st.st_dev, st.st_ino, st.st_mode))
        if m.mount_id in tmpfs:
            if st.st_dev != tmpfs[m.mount_id]:
                raise UnsupportedError(
                    f"VE mount {m.mount_point} (tmpfs): hidden under another mount "
                    f"(its path shows device {_devtext(st.st_dev)})"
                )
            fd = os.open(m.mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                _write_frame(sock, _F_ROOT, m.mount_id, b"", fd)
            finally:
                os.close(fd)
        if m is not ordered[0]:
            try:
                umount2(m.mount_point, MNT_DETACH)
            except OSError as e:
                # a mount the host made for a VE that contains its root is locked: it
                # stays, and hides nothing the VE made (else a later stat says so)
                if e.errno != errno.EINVAL:
                    raise


def tar_tree(top: str, limit: int, name: str = "") -> bytes:
    """The files of the filesystem mounted at `top` (no other filesystem: submounts are
    skipped by st_dev) as a pax tar stream; "." is `top` itself.  UnsupportedError past
    `limit` bytes of file data, naming the mount `name` (default: `top`)."""
    import tarfile  # (and decimal, bz2, lzma: for a VE's recreated mounts only)

    shown = name or top
    dev = os.lstat(top).st_dev
    buf = io.BytesIO()
    links: dict[int, str] = {}  # inode -> first name, for hard links
    total = 0

    def add(name: str, path: str) -> None:
        nonlocal total
        st = os.lstat(path)
        if st.st_dev != dev:
            return  # another filesystem mounted here
        mode = st.st_mode
        if stat.S_ISSOCK(mode):
            return  # a socket's file is its bound address: the socket records carry it
        ti = tarfile.TarInfo(name)
        ti.mode = stat.S_IMODE(mode)
        ti.uid, ti.gid = st.st_uid, st.st_gid
        ti.uname = ti.gname = ""
        ti.mtime = st.st_mtime_ns // 10**9
        ti.pax_headers = {"mtime": mtime_text(st.st_mtime_ns)}
        content = None
        if not stat.S_ISDIR(mode) and not stat.S_ISLNK(mode) and st.st_nlink > 1:
            first = links.setdefault(st.st_ino, name)
            if first != name:
                ti.type, ti.linkname = tarfile.LNKTYPE, first
                tar.addfile(ti)
                return
        if stat.S_ISDIR(mode):
            ti.type = tarfile.DIRTYPE
        elif stat.S_ISREG(mode):
            if total + st.st_size > limit:
                raise UnsupportedError(
                    f"VE mount {shown} (tmpfs): holds more than {limit} bytes of file data "
                    f"(the tmpfs limit, tmpfs_limit)"
                )
            content = _read_file(path)
            total += len(content)
            if total > limit:  # it grew since the stat
                raise UnsupportedError(
                    f"VE mount {shown} (tmpfs): holds more than {limit} bytes of file data "
                    f"(the tmpfs limit, tmpfs_limit)"
                )
            ti.type, ti.size = tarfile.REGTYPE, len(content)
        elif stat.S_ISLNK(mode):
            ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(path)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(mode):
            ti.type = tarfile.FIFOTYPE
        else:
            return
        tar.addfile(ti, io.BytesIO(content) if content is not None else None)
        if stat.S_ISDIR(mode):
            for entry in sorted(os.listdir(path)):
                add(entry if name == "." else f"{name}/{entry}", os.path.join(path, entry))

    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        add(".", top)
    return buf.getvalue()


def _read_file(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOATIME | os.O_CLOEXEC)
    try:
        parts = []
        while chunk := os.read(fd, 1 << 20):
            parts.append(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)
