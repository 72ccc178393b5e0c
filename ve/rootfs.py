"""The minimal root filesystem of a new VE, written into its private area.

Either template gives /root, /tmp, /etc (hostname, hosts, passwd, group), /proc, /sys,
/dev and /.cpt (cpt's own: the VE's init program and the old root during pivot_root).
`host` leaves /usr, /lib*, /bin and /sbin to read-only bind mounts of the host's (done at
start, see boot.py): what the host has is what C and Python programs find inside.
`busybox` installs busybox-static and a link per applet.

A VE that contains its root sees its files through its user namespace: `shift_ids` moves
the ownership of a private area from one id range to another (host root's files of a new
area to the VE's range, or a privileged VE's area to its new range), never following a
symlink, keeping set-id bits and file capabilities.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat

from cpt.errors import CptError
from cpt.restore.stub import build_reaper
from cpt.sys import runner

# host directories a `host` VE sees read-only (those the host has)
HOST_DIRS = ("usr", "lib", "lib32", "lib64", "libx32", "bin", "sbin")
INIT = "/.cpt/init"  # the VE's init: a static program that reaps (cpt.restore.stub.build_reaper)
OLDROOT = "/.cpt/oldroot"
BUSYBOX = "/bin/busybox"


def populate(root: str, template: str, hostname: str, address: str) -> None:
    for d in ("root", "tmp", "etc", "proc", "sys", "dev", ".cpt", ".cpt/oldroot"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    os.chmod(os.path.join(root, "root"), 0o700)
    etc = os.path.join(root, "etc")
    _write(os.path.join(etc, "hostname"), f"{hostname}\n")
    hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost\n"
    if address:
        hosts += f"{address}\t{hostname}\n"
    _write(os.path.join(etc, "hosts"), hosts)
    _write(os.path.join(etc, "passwd"), "root:x:0:0:root:/root:/bin/sh\n")
    _write(os.path.join(etc, "group"), "root:x:0:\n")
    init = os.path.join(root, INIT.lstrip("/"))
    with open(init, "wb") as f:
        f.write(build_reaper())
    os.chmod(init, 0o755)
    if template == "host":
        for d in host_dirs():
            _mountpoint_like(root, d)
    else:
        _busybox(root)


def host_dirs() -> list[str]:
    return [d for d in HOST_DIRS if os.path.lexists(f"/{d}")]


def _mountpoint_like(root: str, d: str) -> None:
    """/bin may be a symlink to usr/bin on the host (merged /usr): the same symlink inside,
    else a directory for the bind mount."""
    dest = os.path.join(root, d)
    if os.path.islink(f"/{d}"):
        if not os.path.lexists(dest):
            os.symlink(os.readlink(f"/{d}"), dest)
    else:
        os.makedirs(dest, exist_ok=True)


def _busybox(root: str) -> None:
    if not os.path.exists(BUSYBOX):
        raise CptError(f"{BUSYBOX} is missing: install busybox-static (make setup does)")
    bindir = os.path.join(root, "bin")
    os.makedirs(bindir, exist_ok=True)
    os.makedirs(os.path.join(root, "sbin"), exist_ok=True)
    shutil.copy2(BUSYBOX, os.path.join(bindir, "busybox"))
    applets = runner.run([BUSYBOX, "--list"], timeout=10).stdout.decode().split()
    for name in applets:
        link = os.path.join(bindir, name)
        if not os.path.lexists(link):
            os.symlink("busybox", link)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


_CAPS_XATTR = "security.capability"


def shift_ids(root: str, old_base: int, new_base: int, count: int) -> int:
    """Every file of the tree `root` (one filesystem: mountpoints are not crossed) whose
    uid or gid is in old_base..old_base+count-1 gets the same offset in new_base..; other
    ids stay (a host file placed in the area shows as nobody inside).  chown(2) clears
    set-id bits and file capabilities: both are put back.  Returns the files changed."""
    changed = 0

    def new(i: int) -> int:
        return i - old_base + new_base if old_base <= i < old_base + count else i

    def fix(name: str, dfd: int) -> None:
        nonlocal changed
        st = os.lstat(name, dir_fd=dfd)
        if st.st_dev != dev:
            return
        uid, gid = new(st.st_uid), new(st.st_gid)
        if (uid, gid) == (st.st_uid, st.st_gid):
            return
        mode = st.st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # never open a device or FIFO
            os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)
            changed += 1
            return
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            if os.fstat(fd).st_ino != st.st_ino:
                raise CptError(f"{root}: {name} changed while its owner was shifted")
            try:
                caps = os.getxattr(fd, _CAPS_XATTR)
            except OSError as e:
                if e.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
                    raise
                caps = None
            os.chown(fd, uid, gid)
            if stat.S_IMODE(mode) & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(fd, stat.S_IMODE(mode))
            if caps is not None:
                os.setxattr(fd, _CAPS_XATTR, caps)
        finally:
            os.close(fd)
        changed += 1

    try:
        dev = os.lstat(root).st_dev
        top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fix(".", top)
        finally:
            os.close(top)
        for _, dirs, files, dfd in os.fwalk(root, follow_symlinks=False):
            for name in dirs + files:
                fix(name, dfd)
            # do not descend into another filesystem (a nested mount)
            dirs[:] = [d for d in dirs if os.lstat(d, dir_fd=dfd).st_dev == dev]
    except OSError as e:
        raise CptError(f"shifting the owners of {root}: {e}") from None
    return changed
