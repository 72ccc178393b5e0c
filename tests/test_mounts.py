"""A VE's mount table: dumped from a small VE built for real (mount and PID namespaces,
binds, proc, sysfs, tmpfs with files, devpts), then rebuilt by a restore in new
namespaces and compared from inside.

Every mount happens inside throwaway mount namespaces: the host's mount table is the same
before and after (checked).  Every process is killed and reaped by PID.
"""

from __future__ import annotations

import dataclasses
import fcntl
import io
import json
import os
import select
import signal
import socket
import stat
import struct
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cpt.dump.mounts import MountTable, dump_mounts, mount_flags
from cpt.errors import RestoreError, UnsupportedError
from cpt.procfs import parse_mountinfo
from cpt.restore.mounts import build, host_path, problems
from cpt.sys.ns import (
    CLONE_NEWNS,
    CLONE_NEWPID,
    MNT_DETACH,
    MS_BIND,
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
    MS_REMOUNT,
    MS_STRICTATIME,
    mount,
    pivot_root,
    umount2,
    unshare,
)
from cptimage.records import Mount

pytestmark = [
    pytest.mark.root,
    pytest.mark.destructive,
    pytest.mark.skipif(os.geteuid() != 0, reason="mount and PID namespaces need root"),
]

OLD_NS = 1_000_000_000_123_456_789  # an mtime in the past, to the nanosecond
SUB_NS = 1_200_000_000_987_654_321


def _host_tmpfs(path: str) -> str | None:
    """`path` if THIS process sees a tmpfs mounted there."""
    tops = {
        m.mount_point: m.fstype for m in parse_mountinfo(Path("/proc/self/mountinfo").read_bytes())
    }
    return path if tops.get(path) == "tmpfs" else None


HOST_SHM = _host_tmpfs("/dev/shm")
TIOCGPTN, TIOCSPTLCK = 0x80045430, 0x40045431  # asm-generic/ioctls.h (termios lacks them)


# ---- processes in throwaway namespaces ----


@dataclasses.dataclass
class NsChild:
    outer: int  # our child: it unshared, then waits for `inner`
    fd: int  # read end of the pipe `inner` writes to
    inner: int = 0  # PID 1 of the new PID namespace (its PID here)
    out: bytes = b""  # what `inner` wrote so far

    def read_until(self, done: Callable[[bytes], bool], timeout: float = 60) -> str:
        """What it wrote, once `done` says so or at end of file."""
        end = time.monotonic() + timeout
        while not done(self.out):
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise AssertionError(f"child timed out; it said {self.out!r}")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                break
            self.out += chunk
        return self.out.decode(errors="replace")

    def stop(self) -> None:
        """Kill PID 1 of its namespace (and so all of it), then reap the outer child."""
        os.close(self.fd)
        if self.inner:
            try:
                os.kill(self.inner, signal.SIGKILL)
            except ProcessLookupError:
                pass
        end = time.monotonic() + 10
        while os.waitpid(self.outer, os.WNOHANG) == (0, 0):
            if time.monotonic() > end:
                os.kill(self.outer, signal.SIGKILL)
                os.waitpid(self.outer, 0)
                return
            time.sleep(0.01)


def spawn_in_namespaces(fn: Callable[[int], None]) -> NsChild:
    """fn(w) runs as PID 1 of new mount and PID namespaces (the mount tree a private copy
    of ours) and writes to the pipe `w`; if it raises, "error <what>" is written."""
    r, w = os.pipe()
    pid_r, pid_w = os.pipe()
    outer = os.fork()
    if outer == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(r)
            os.close(pid_r)
            unshare(CLONE_NEWNS | CLONE_NEWPID)
            mount(None, "/", None, MS_REC | MS_PRIVATE)
            inner = os.fork()
            if inner == 0:
                try:
                    os.close(pid_w)
                    fn(w)
                except BaseException as e:
                    os.write(w, f"error {type(e).__name__}: {e}\n".encode())
                finally:
                    os._exit(1)
            os.close(w)
            os.write(pid_w, str(inner).encode())
            os.close(pid_w)
            os.waitpid(inner, 0)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    os.close(pid_w)
    child = NsChild(outer, r)
    try:
        if not select.select([pid_r], [], [], 30)[0]:
            raise AssertionError("the namespaces' first process did not start")
        child.inner = int(os.read(pid_r, 32))
    except BaseException:
        child.stop()
        raise
    finally:
        os.close(pid_r)
    return child


def result_of(child: NsChild, timeout: float = 60) -> Any:
    """The JSON document a one-shot child wrote."""
    text = child.read_until(lambda b: False, timeout).strip()
    assert text and not text.startswith("error"), text
    return json.loads(text)


def host_mount_ids() -> set[tuple[str, str]]:
    with open("/proc/self/mountinfo") as f:
        return {(ln.split()[0], ln.split()[4]) for ln in f}


# ---- the fake VE ----


def make_private_area(root: Path) -> None:
    for d in ("usr", "proc", "sys", "dev", "tmp", "mnt", "etc", "run"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc" / "hostname").write_text("fake\n")


def fill_tmp(tmp: str) -> None:
    """Files of every kind the dump keeps (and a socket it leaves out)."""
    p = Path(tmp)
    (p / "a").write_bytes(b"hello\n")
    os.chmod(p / "a", 0o644)
    os.link(p / "a", p / "a2")
    os.symlink("a", p / "link")
    os.symlink("/etc/hostname", p / "abs")
    (p / "sub").mkdir()
    (p / "sub" / "b").write_bytes(b"x" * 5000)
    os.chown(p / "sub", 1000, 1000)
    os.chmod(p / "sub", 0o750)
    os.utime(p / "sub", ns=(SUB_NS, SUB_NS))
    (p / "secret").write_bytes(b"s3cret")
    os.chmod(p / "secret", 0o600)
    os.chown(p / "secret", 1234, 5678)
    os.utime(p / "secret", ns=(OLD_NS, OLD_NS))
    (p / "setuid").write_bytes(b"")
    os.chmod(p / "setuid", 0o4755)
    os.mkfifo(p / "fifo", 0o640)
    os.mknod(p / "nullcopy", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(p / "sock"))
    s.close()
    (p / "inner").mkdir(mode=0o711)
    (p / "inner" / "hidden").write_bytes(b"under the inner mount")


def ve_init(root: str, extra: Callable[[str], None] | None) -> Callable[[int], None]:
    """PID 1 of a fake VE: the mounts of ve/boot.py (and a few more), then
    pivot_root into `root`, say "ok" and sleep."""

    def run(w: int) -> None:
        r = root
        mount(r, r, None, MS_BIND)
        mount("/usr", f"{r}/usr", None, MS_BIND)
        mount(None, f"{r}/usr", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID)
        mount("proc", f"{r}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        mount("sysfs", f"{r}/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        mount(None, f"{r}/sys", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
        dev = f"{r}/dev"
        mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755,size=64k")
        for name, minor in (("null", 3), ("zero", 5)):
            os.mknod(f"{dev}/{name}", stat.S_IFCHR | 0o666, os.makedev(1, minor))
            os.chmod(f"{dev}/{name}", 0o666)
        os.mkdir(f"{dev}/pts")
        mount("devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC,
              "newinstance,ptmxmode=0666,mode=0620")  # fmt: skip
        os.symlink("pts/ptmx", f"{dev}/ptmx")
        tmp = f"{r}/tmp"
        mount("tmpfs", tmp, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=8m")
        fill_tmp(tmp)
        mount("tmpfs", f"{tmp}/inner", "tmpfs", 0, "size=1m,mode=700")
        Path(f"{tmp}/inner/deep").write_bytes(b"in the inner tmpfs")
        # binds of parts of the VE's own filesystems, as docker does for /proc/sys
        mount(f"{r}/proc/sys", f"{r}/proc/sys", None, MS_BIND)
        mount(None, f"{r}/proc/sys", None, MS_BIND | MS_REMOUNT | MS_RDONLY)
        mount(f"{tmp}/sub", f"{r}/mnt", None, MS_BIND)
        if HOST_SHM:  # a tmpfs of the host's: a host directory, not the VE's own tmpfs
            mount(HOST_SHM, f"{r}/run", None, MS_BIND)
        if extra is not None:
            extra(r)
        os.chdir(r)
        pivot_root(".", ".")
        umount2(".", MNT_DETACH)
        os.chdir("/")
        os.write(w, b"ok\n")
        while True:
            signal.pause()

    return run


def start_ve(root: Path, extra: Callable[[str], None] | None = None) -> NsChild:
    make_private_area(root)
    child = spawn_in_namespaces(ve_init(str(root), extra))
    try:
        said = child.read_until(lambda b: b"ok\n" in b)  # or end of file
        assert said == "ok\n", said
    except BaseException:
        child.stop()
        raise
    return child


def tree(top: str) -> dict[str, list[Any]]:
    """Everything of the filesystem at `top` (not of mounts below it), by relative name."""
    dev = os.lstat(top).st_dev
    out: dict[str, list[Any]] = {}

    def walk(name: str, path: str) -> None:
        st = os.lstat(path)
        if st.st_dev != dev:
            return
        m = st.st_mode
        item: list[Any] = [stat.S_IFMT(m), stat.S_IMODE(m), st.st_uid, st.st_gid, st.st_nlink]
        item.append(st.st_mtime_ns)
        if stat.S_ISREG(m):
            item.append(Path(path).read_bytes().hex())
        elif stat.S_ISLNK(m):
            item.append(os.readlink(path))
        elif stat.S_ISCHR(m) or stat.S_ISBLK(m):
            item.append(st.st_rdev)
        out[name] = item
        if stat.S_ISDIR(m):
            for e in sorted(os.listdir(path)):
                walk(e if name == "." else f"{name}/{e}", os.path.join(path, e))

    walk(".", top)
    return out


@dataclasses.dataclass
class DumpedVE:
    root: Path
    table: MountTable
    trees: dict[str, dict[str, list[Any]]]  # as the VE showed them: /tmp, /tmp/inner, /dev


@pytest.fixture(scope="module")
def dumped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DumpedVE]:
    before = host_mount_ids()
    root = tmp_path_factory.mktemp("mounts") / "ve"
    child = start_ve(root)
    try:
        table = dump_mounts(child.inner)
        base = f"/proc/{child.inner}/root"
        trees = {d: tree(base + d) for d in ("/tmp", "/tmp/inner", "/dev", "/mnt")}
    finally:
        child.stop()
    assert host_mount_ids() == before, "the fake VE's mounts leaked to the host"
    yield DumpedVE(root, table, trees)
    assert host_mount_ids() == before, "a test's mounts leaked to the host"


# ---- unit ----


def test_mount_flags() -> None:
    assert mount_flags("rw,relatime") == MS_RELATIME
    assert mount_flags("ro,nosuid,nodev,noexec,relatime") == (
        MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RELATIME
    )
    assert mount_flags("rw,noatime,nodiratime") == MS_NOATIME | MS_NODIRATIME
    assert mount_flags("rw,nosymfollow,relatime") == MS_NOSYMFOLLOW | MS_RELATIME
    # the kernel shows no atime option for strictatime
    assert mount_flags("rw") == MS_STRICTATIME
    assert mount_flags("rw,nosuid") == MS_NOSUID | MS_STRICTATIME
    with pytest.raises(ValueError, match="idmapped"):
        mount_flags("rw,relatime,idmapped")


# ---- dump ----


def test_dump_records(dumped: DumpedVE) -> None:
    t = dumped.table
    mps = [m.mountpoint for m in t.mounts]
    assert mps == [
        "/", "/usr", "/proc", "/sys", "/dev", "/dev/pts", "/tmp", "/tmp/inner", "/proc/sys",
        "/mnt", *(["/run"] if HOST_SHM else []),
    ]  # fmt: skip
    ids = [m.mnt_id for m in t.mounts]
    for i, m in enumerate(t.mounts[1:], 1):
        assert m.parent_id in ids[:i], f"{m.mountpoint}: parent not before it"
    by = {m.mountpoint: m for m in t.mounts}

    root = by["/"]
    assert root.external == 1
    assert root.source == str(dumped.root)
    assert root.dev == os.stat(dumped.root).st_dev
    assert root.root == str(dumped.root)  # the host's / is the same filesystem's root

    usr = by["/usr"]
    assert (usr.external, usr.source, usr.dev) == (1, "/usr", os.stat("/usr").st_dev)
    assert usr.flags & (MS_RDONLY | MS_NOSUID) == MS_RDONLY | MS_NOSUID
    assert "ro" in usr.options.split(",")

    proc = by["/proc"]
    assert (proc.external, proc.fstype, proc.root) == (0, "proc", "/")
    assert proc.flags & (MS_NOSUID | MS_NODEV | MS_NOEXEC) == MS_NOSUID | MS_NODEV | MS_NOEXEC
    assert not proc.flags & MS_RDONLY

    procsys = by["/proc/sys"]
    assert (procsys.external, procsys.fstype, procsys.root, procsys.dev) == (
        0, "proc", "/sys", proc.dev,
    )  # fmt: skip
    assert procsys.flags & MS_RDONLY

    sysfs = by["/sys"]
    assert (sysfs.external, sysfs.fstype) == (0, "sysfs")
    assert sysfs.flags & MS_RDONLY

    pts = by["/dev/pts"]
    assert (pts.external, pts.fstype) == (0, "devpts")
    assert "ptmxmode=666" in pts.super_options

    for mp in ("/dev", "/tmp", "/tmp/inner"):
        assert (by[mp].external, by[mp].fstype, by[mp].root) == (0, "tmpfs", "/")
    assert "size=64k" in by["/dev"].super_options
    assert by["/tmp"].flags & (MS_NOSUID | MS_NODEV) == MS_NOSUID | MS_NODEV
    if HOST_SHM:
        run = by["/run"]
        assert (run.external, run.fstype, run.source) == (1, "tmpfs", HOST_SHM)
        assert run.dev == os.stat(HOST_SHM).st_dev
    mnt = by["/mnt"]
    assert (mnt.external, mnt.fstype, mnt.root, mnt.dev) == (0, "tmpfs", "/sub", by["/tmp"].dev)

    for m in t.mounts:
        m.encode()  # every value fits its field


def members(table: MountTable, mountpoint: str) -> dict[str, tarfile.TarInfo]:
    mnt_id = next(m.mnt_id for m in table.mounts if m.mountpoint == mountpoint)
    blob = next(d.data for d in table.data if d.mnt_id == mnt_id)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tf:
        return {ti.name: ti for ti in tf.getmembers()}


def test_dump_tmpfs_data(dumped: DumpedVE) -> None:
    t = dumped.table
    with_data = {m.mountpoint for m in t.mounts if m.mnt_id in {d.mnt_id for d in t.data}}
    assert with_data == {"/dev", "/tmp", "/tmp/inner"}  # not /mnt: a bind of /tmp's

    tmp = members(t, "/tmp")
    # the directory under the inner mount, with what it hides; not the inner mount's files
    assert "inner/hidden" in tmp and "inner/deep" not in tmp
    assert tmp["inner"].mode == 0o711
    assert "sock" not in tmp  # sockets are left out
    assert tmp["a2"].islnk() and tmp["a2"].linkname == "a"
    assert tmp["link"].issym() and tmp["link"].linkname == "a"
    assert tmp["abs"].linkname == "/etc/hostname"
    assert tmp["fifo"].isfifo() and tmp["fifo"].mode == 0o640
    assert tmp["nullcopy"].ischr() and (tmp["nullcopy"].devmajor, tmp["nullcopy"].devminor) == (
        1, 3,
    )  # fmt: skip
    assert tmp["secret"].pax_headers["mtime"] == "1000000000.123456789"
    assert (tmp["secret"].uid, tmp["secret"].gid, tmp["secret"].mode) == (1234, 5678, 0o600)
    assert tmp["."].mode == 0o1777 and tmp["setuid"].mode == 0o4755

    dev = members(t, "/dev")
    assert dev["pts"].isdir() and not any(n.startswith("pts/") for n in dev)
    assert dev["ptmx"].linkname == "pts/ptmx"
    assert (dev["null"].mode, dev["null"].devmajor, dev["null"].devminor) == (0o666, 1, 3)

    assert set(members(t, "/tmp/inner")) == {".", "deep"}


def test_dump_tmpfs_limit(tmp_path: Path) -> None:
    child = start_ve(tmp_path / "ve")
    try:
        with pytest.raises(UnsupportedError, match=r"VE mount /tmp \(tmpfs\).*4096 bytes"):
            dump_mounts(child.inner, tmpfs_limit=4096)  # /tmp holds 5000 in sub/b
    finally:
        child.stop()


def _add_ramfs(r: str) -> None:
    mount("ramfs", f"{r}/etc", "ramfs")


def _add_autofs(r: str) -> None:
    os.mkdir(f"{r}/auto")
    os.setpgid(0, 0)  # autofs wants a process group of this PID namespace
    _, w = os.pipe()
    mount("autofs", f"{r}/auto", "autofs", 0, f"fd={w},pgrp={os.getpgrp()},minproto=5,maxproto=5")


def _kernel_has(fstype: str, module: str) -> bool:
    """Is the filesystem type registered, or can the kernel load its module on demand?
    Kernels differ between machines: one had no autofs at all (mount: ENODEV)."""
    if any(
        line.split()[-1] == fstype for line in Path("/proc/filesystems").read_text().splitlines()
    ):
        return True
    mods = Path("/lib/modules") / os.uname().release
    return mods.is_dir() and any(mods.rglob(f"{module}.ko*"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (_add_ramfs, r"^VE mount /etc \(ramfs /\): no host path shows it; "),
        pytest.param(
            _add_autofs,
            r"^VE mount /auto \(autofs .*\): an automount point",
            marks=pytest.mark.skipif(
                not _kernel_has("autofs", "autofs4"),
                reason="this kernel has no autofs (not in /proc/filesystems, no autofs4 module)",
            ),
        ),
    ],
    ids=["ramfs", "autofs"],
)
def test_dump_refuses(tmp_path: Path, extra: Callable[[str], None], message: str) -> None:
    child = start_ve(tmp_path / "ve", extra)
    try:
        with pytest.raises(UnsupportedError, match=message):
            dump_mounts(child.inner)
    finally:
        child.stop()


# ---- restore ----


def restore_and_look(mounts: list[Mount], data: dict[int, bytes]) -> Any:
    """build() as PID 1 of new namespaces, then what it sees, as JSON."""

    def run(w: int) -> None:
        build(mounts, data)
        info: dict[str, Any] = {"cwd": os.getcwd()}
        st = os.stat("/")
        info["root"] = [st.st_dev, st.st_ino]
        info["trees"] = {d: tree(d) for d in ("/tmp", "/tmp/inner", "/dev", "/mnt")}
        info["usr"] = os.statvfs("/usr").f_flag & (os.ST_RDONLY | os.ST_NOSUID)
        info["procsys_ro"] = bool(os.statvfs("/proc/sys").f_flag & os.ST_RDONLY)
        info["sys_ro"] = bool(os.statvfs("/sys").f_flag & os.ST_RDONLY)
        info["proc_self"] = os.readlink("/proc/self")
        info["proc_pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        with open("/proc/self/mountinfo") as f:
            info["mountinfo"] = f.read()
        ptmx = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY)
        n = struct.unpack("I", fcntl.ioctl(ptmx, TIOCGPTN, b"\0" * 4))[0]
        fcntl.ioctl(ptmx, TIOCSPTLCK, struct.pack("i", 0))
        pts = os.open(f"/dev/pts/{n}", os.O_RDWR | os.O_NOCTTY)
        os.write(pts, b"ping\n")
        info["pty"] = [n, os.read(ptmx, 100).decode()]
        info["hostname"] = Path("/etc/hostname").read_text()
        info["run_dev"] = os.stat("/run").st_dev
        umount2("/tmp/inner", MNT_DETACH)  # what the inner tmpfs covers came back too
        info["under_inner"] = [
            stat.S_IMODE(os.stat("/tmp/inner").st_mode),
            os.listdir("/tmp/inner"),
            Path("/tmp/inner/hidden").read_text(),
        ]
        os.write(w, json.dumps(info).encode() + b"\n")
        os._exit(0)

    child = spawn_in_namespaces(run)
    try:
        return result_of(child)
    finally:
        child.stop()


def test_restore(dumped: DumpedVE) -> None:
    t = dumped.table
    assert problems(t.mounts) == []
    got = restore_and_look(t.mounts, {d.mnt_id: d.data for d in t.data})
    st = os.stat(dumped.root)
    assert got["root"] == [st.st_dev, st.st_ino], "the private area is the root"
    assert got["cwd"] == "/"
    for d in ("/tmp", "/tmp/inner", "/dev", "/mnt"):
        want = {k: v for k, v in dumped.trees[d].items() if k != "sock"}  # left out
        have = got["trees"][d]
        assert have.keys() == want.keys(), d
        for name in want:
            assert have[name] == want[name], f"{d}/{name}"
    tmp = got["trees"]["/tmp"]
    assert tmp["secret"][5] == OLD_NS and tmp["sub"][5] == SUB_NS
    assert tmp["a"][4] == 2 and tmp["."][1] == 0o1777 and tmp["setuid"][1] == 0o4755
    assert "sock" not in tmp
    assert got["usr"] == os.ST_RDONLY | os.ST_NOSUID
    assert got["procsys_ro"] and got["sys_ro"]
    assert got["proc_self"] == "1" and got["proc_pids"] == [1]
    assert got["pty"] == [0, "ping\r\n"]
    assert got["hostname"] == "fake\n"
    assert got["under_inner"] == [0o711, ["hidden"], "under the inner mount"]
    if HOST_SHM:
        assert got["run_dev"] == os.stat(HOST_SHM).st_dev
    # the same table: places, filesystems, per-mount and filesystem options; all private
    seen = parse_mountinfo(got["mountinfo"].encode())
    assert [(m.mount_point, m.fstype, m.root, m.options, m.super_options) for m in seen] == [
        (m.mountpoint, m.fstype, m.root, m.options, m.super_options) for m in t.mounts
    ]
    assert all(not m.optional for m in seen)


def test_restore_missing_mountpoint(dumped: DumpedVE) -> None:
    t = dumped.table
    mounts = [dataclasses.replace(m) for m in t.mounts]
    usr = next(m for m in mounts if m.mountpoint == "/usr")
    usr.mountpoint = "/nonexistent/usr"
    child = spawn_in_namespaces(lambda w: build(mounts, {d.mnt_id: d.data for d in t.data}))
    try:
        said = child.read_until(lambda b: False)
    finally:
        child.stop()
    assert said.startswith(
        "error RestoreError: VE mount /nonexistent/usr: its mountpoint is missing"
    )


def test_restore_refuses_symlinked_mountpoint(dumped: DumpedVE, tmp_path: Path) -> None:
    """A symlink in the VE's files where a mountpoint was must not lead out of it."""
    t = dumped.table
    area = tmp_path / "area"
    make_private_area(area)
    (area / "tmp").rmdir()
    os.symlink(str(tmp_path / "outside"), area / "tmp")
    (tmp_path / "outside").mkdir()
    mounts = [dataclasses.replace(m) for m in t.mounts]
    mounts[0].source = str(area)
    mounts[0].dev = os.stat(area).st_dev
    child = spawn_in_namespaces(lambda w: build(mounts, {d.mnt_id: d.data for d in t.data}))
    try:
        said = child.read_until(lambda b: False)
    finally:
        child.stop()
    assert said.startswith("error RestoreError: VE mount /tmp: /tmp is a symlink"), said
    assert os.listdir(tmp_path / "outside") == []


def test_problems(dumped: DumpedVE, tmp_path: Path) -> None:
    mounts = [dataclasses.replace(m) for m in dumped.table.mounts]
    assert problems(mounts) == []
    usr = next(m for m in mounts if m.mountpoint == "/usr")
    usr.source = str(tmp_path / "gone")
    assert problems(mounts) == [f"VE mount /usr: its host source {tmp_path}/gone is missing"]
    usr.source = "/proc/sys"  # exists, on another device
    d = os.stat("/proc/sys").st_dev
    assert problems(mounts) == [
        f"VE mount /usr: its host source /proc/sys is on device {os.major(d)}:{os.minor(d)}, "
        f"not {os.major(usr.dev)}:{os.minor(usr.dev)} as dumped"
    ]
    assert problems([]) == ["the VE image has no mount table"]
    assert problems(mounts[1:])[0].startswith("VE mount table: its first mount (/usr")
    proc = next(m for m in mounts if m.mountpoint == "/proc")
    assert problems([m for m in mounts if m is not usr and m is not proc]) == [
        f"VE mount /proc/sys: its parent mount {proc.mnt_id} is not before it in the image",
        "VE mount /proc/sys: shows /sys of a proc that is not mounted whole before it",
    ]


def test_host_path(dumped: DumpedVE) -> None:
    m = dumped.table.mounts
    root = str(dumped.root)
    assert host_path(m, "/") == root
    assert host_path(m, "/etc/hostname") == f"{root}/etc/hostname"
    assert host_path(m, "/usr") == "/usr"
    assert host_path(m, "/usr/bin/env") == "/usr/bin/env"
    assert host_path(m, "/usrx/y") == f"{root}/usrx/y"
    assert host_path(m, "//usr/./lib/../bin") == "/usr/bin"
    if HOST_SHM:
        assert host_path(m, "/run/x") == f"{HOST_SHM}/x"
    for recreated in ("/proc/1/status", "/proc/sys/kernel", "/tmp/a", "/dev/null", "/mnt/b"):
        assert host_path(m, recreated) is None, recreated
    assert host_path(m, "pipe:[1234]") is None


def test_restore_error_is_restore_error() -> None:
    with pytest.raises(RestoreError, match="no mount table"):
        build([], {})


def test_the_tar_types_a_tmpfs_may_hold_are_tarfiles() -> None:
    """restore/mounts.py spells them out so that a restore imports tarfile only to read a
    tmpfs's data."""
    from cpt.restore import mounts as rm

    names = ("REGTYPE", "AREGTYPE", "DIRTYPE", "SYMTYPE", "LNKTYPE", "CHRTYPE", "BLKTYPE")
    assert {getattr(tarfile, n) for n in (*names, "FIFOTYPE")} == rm._TAR_TYPES
    assert tarfile.DIRTYPE == rm._DIRTYPE
