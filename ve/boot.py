"""What runs inside a starting VE: PID 1 of fresh PID, mount, UTS, IPC and network
namespaces, forked from `cpt ve start`.

It waits until the host has set up its side (cgroup, veth), builds the VE's mounts,
pivot_roots into the private area, sets the hostname and the network, forks the
configured command, and then execs the VE's init (a static reaper): no Python stays
resident in a VE.  A failure is reported on the status pipe and the process exits.
"""

from __future__ import annotations

import os
import socket
import stat
import traceback

from cpt.sys.ns import (
    MNT_DETACH,
    MS_BIND,
    MS_NOATIME,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    mount,
    pivot_root,
    umount2,
)

from . import net
from .config import VEConfig
from .rootfs import INIT, OLDROOT, host_dirs

# /dev inside a VE: name, (major, minor), mode
DEVICES = (
    ("null", (1, 3), 0o666),
    ("zero", (1, 5), 0o666),
    ("full", (1, 7), 0o666),
    ("random", (1, 8), 0o666),
    ("urandom", (1, 9), 0o666),
    ("tty", (5, 0), 0o666),
)
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}


def boot(cfg: VEConfig, go_fd: int, status_fd: int) -> None:
    """Never returns: execs the VE's init, or exits 1 after reporting a failure."""
    try:
        if os.read(go_fd, 16) != b"go":
            os._exit(1)  # the host side failed: it cleans up
        os.close(go_fd)
        os.setsid()  # the VE's own session and group (1 inside), not the starting shell's
        net.load()  # setup_inside runs after the pivot_root, where pyroute2 cannot be found
        build_mounts(cfg.private, cfg.template)
        enter_root(cfg.private)
        socket.sethostname(cfg.hostname)
        net.setup_inside(cfg.ip)
        if cfg.command:
            start_command(cfg.command)
        os.write(status_fd, b"ok")
        os.close(status_fd)
        os.execve(INIT, [INIT], {})
    except BaseException as e:  # report anything, then die: never run half-configured
        msg = f"{type(e).__name__}: {e}" if str(e) else traceback.format_exc(limit=1)
        try:
            os.write(status_fd, msg.encode()[:4000])
        finally:
            os._exit(1)


def build_mounts(root: str, template: str) -> None:
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount leaks to the host
    mount(root, root, None, MS_BIND | MS_REC)  # the root must be a mount for pivot_root
    # the host mounts the pool nosuid,nodev (storage/pool.py); the VE's own view of its
    # area is a mount of its own that allows both, as its root expects (noatime kept: a
    # read must not count as a change of the area)
    mount(None, root, None, MS_BIND | MS_REMOUNT | MS_NOATIME)
    if template == "host":
        for d in host_dirs():
            if os.path.islink(f"/{d}"):
                continue  # merged /usr: the symlink inside points into the bound /usr
            target = os.path.join(root, d)
            mount(f"/{d}", target, None, MS_BIND | MS_REC)
            mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    mount("proc", os.path.join(root, "proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount("sysfs", os.path.join(root, "sys"), "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    dev = os.path.join(root, "dev")
    mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755,size=64k")
    for name, (major, minor), mode in DEVICES:
        path = os.path.join(dev, name)
        os.mknod(path, stat.S_IFCHR | mode, os.makedev(major, minor))
        os.chmod(path, mode)  # mknod applies the umask
    os.makedirs(os.path.join(dev, "pts"))
    mount("devpts", os.path.join(dev, "pts"), "devpts", MS_NOSUID | MS_NOEXEC,
          "newinstance,ptmxmode=0666,mode=0620")  # fmt: skip
    os.symlink("pts/ptmx", os.path.join(dev, "ptmx"))
    mount("tmpfs", os.path.join(root, "tmp"), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")


def enter_root(root: str) -> None:
    os.chdir(root)
    pivot_root(".", OLDROOT.lstrip("/"))
    os.chdir("/")
    umount2(OLDROOT, MNT_DETACH)


def start_command(argv: list[str]) -> None:
    pid = os.fork()
    if pid:
        return
    try:
        os.setsid()
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, 65536)
        os.chdir("/root")
        os.execvpe(argv[0], argv, ENV)
    except BaseException:
        os._exit(127)
