"""What runs inside a starting VE: PID 1 of fresh PID, mount, UTS, IPC and network
namespaces, forked from `cpt ve start`.

It builds the VE's mounts, pivot_roots into the private area and sets the hostname while
the host sets up the VE's network (the veth pair, and from the host, inside the VE's
network namespace: its address and routes), waits until the host is done, forks the
configured command, and then execs the VE's init (a static reaper): no Python stays
resident in a VE, and nothing here imports a module after it leaves the host's files (or,
in a VE that contains its root, after it became the VE's root, who may not read them).  A
failure is reported on the status pipe and the process exits.

A VE that contains its root (not privileged) is made in this order by the process that
forks its init (`contain`), because the order is what makes it safe:
  1. a mount namespace of the HOST's user namespace, where the mounts that come from the
     host are made: the VE's root, the template's read-only binds, the /dev tmpfs with
     its device nodes (the VE's root may not create device nodes);
  2. a new user namespace; the host writes its maps (ids 0..65535 -> the VE's range) and
     puts the process in the VE's cgroup;
  3. the VE's mount, PID, UTS, IPC, network and cgroup namespaces, owned by the new user
     namespace: the mount tree copied into a namespace of a less privileged user
     namespace is LOCKED (those mounts cannot be remounted writable nor unmounted to show
     what is below), and the cgroup namespace is rooted at the VE's cgroup; then a
     second bind of the VE's root (pivot_root refuses a locked root), and root inside
     (setresgid/setgroups/setresuid 0).
The init then mounts, inside, what belongs to the VE's namespaces (proc, sysfs, devpts,
/tmp), pivot_roots, and installs the VE's seccomp filter (seccomp.py) before it forks
the command and execs.
"""

from __future__ import annotations

import os
import socket
import stat
import traceback
from collections.abc import Callable

from cpt.sys.ns import (
    CLONE_NEWCGROUP,
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
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
    unshare,
)

from . import seccomp
from .config import VEConfig
from .rootfs import INIT, OLDROOT, host_dirs

# the namespaces of a VE that contains its root, owned by its user namespace
CONTAINED_NAMESPACES = (
    CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWCGROUP
)

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
        os.setsid()  # the VE's own session and group (1 inside), not the starting shell's
        # its own side first, while the host sets up its cgroup and network: nothing of
        # it needs them, and nothing of the VE runs before the host's word
        if cfg.privileged:
            build_mounts(cfg.private, cfg.template)
            enter_root(cfg.private)
        else:
            inside_mounts()  # the cwd is the VE's root: contain() left it there
            enter_root(None)
        socket.sethostname(cfg.hostname)
        if not cfg.privileged:
            seccomp.apply()  # every process of the VE descends from here: all have it
        if os.read(go_fd, 16) != b"go":
            os._exit(1)  # the host side failed: it cleans up
        os.close(go_fd)
        if cfg.command:
            start_command(cfg.command)
        os.write(status_fd, b"ok")
        os.close(status_fd)
        os.execve(INIT, [INIT], {})
    except BaseException as e:  # report anything, then die: never run half-configured
        msg = f"{type(e).__name__}: {e}" if str(e) else traceback.format_exc(limit=1)
        if os.environ.get("CPT_DEBUG"):
            msg = traceback.format_exc()
        try:
            os.write(status_fd, msg.encode()[:4000])
        finally:
            os._exit(1)


def build_mounts(root: str, template: str) -> None:
    """A privileged VE's mounts, all in one mount namespace."""
    host_mounts(root, template)
    _mount_proc_sys(root)
    _mount_pts_tmp(root)


def host_mounts(root: str, template: str, owner: int = 0) -> None:
    """What comes from the host: the root (a bind of the private area onto itself: it
    must be a mount for pivot_root), the template's read-only binds, the /dev tmpfs with
    its device nodes (owned by host id `owner`: the VE's root)."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount leaks to the host
    mount(root, root, None, MS_BIND | MS_REC)
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
    dev = os.path.join(root, "dev")
    ids = f",uid={owner},gid={owner}" if owner else ""
    mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755,size=64k" + ids)
    for name, (major, minor), mode in DEVICES:
        path = os.path.join(dev, name)
        os.mknod(path, stat.S_IFCHR | mode, os.makedev(major, minor))
        os.chmod(path, mode)  # mknod applies the umask
        os.chown(path, owner, owner)
    os.makedirs(os.path.join(dev, "pts"))
    os.chown(os.path.join(dev, "pts"), owner, owner)
    os.symlink("pts/ptmx", os.path.join(dev, "ptmx"))
    os.chown(os.path.join(dev, "ptmx"), owner, owner, follow_symlinks=False)


def inside_mounts() -> None:
    """In the namespaces of a VE that contains its root, as its root, from its root (the
    cwd, see contain): what belongs to the VE's own namespaces.  Relative paths: the
    host's directories above the private area need not be open to the VE's root."""
    _mount_proc_sys(".")
    _mount_pts_tmp(".")


def _mount_proc_sys(root: str) -> None:
    mount("proc", os.path.join(root, "proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount("sysfs", os.path.join(root, "sys"), "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _mount_pts_tmp(root: str) -> None:
    mount("devpts", os.path.join(root, "dev", "pts"), "devpts", MS_NOSUID | MS_NOEXEC,
          "newinstance,ptmxmode=0666,mode=0620")  # fmt: skip
    mount("tmpfs", os.path.join(root, "tmp"), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")


def contain(cfg: VEConfig, ask_host: Callable[[], None]) -> None:
    """In the process that forks the init of a VE that contains its root: steps 1-3 of
    the module's docstring.  `ask_host()` returns once the host has written the new user
    namespace's maps and put this process in the VE's cgroup.  Ends as the VE's root with
    its cwd the VE's root directory: a second bind of the private area over the first
    (whose mounts from the host came locked with the namespace; the top of a new bind is
    not, so pivot_root takes it), made while this process still has the host root's uid,
    which walks the host's directories above the area as their owner."""
    unshare(CLONE_NEWNS)
    host_mounts(cfg.private, cfg.template, owner=cfg.id_base)
    os.setgroups([])  # no host group travels into the namespace
    unshare(CLONE_NEWUSER)
    ask_host()
    unshare(CONTAINED_NAMESPACES)  # every capability in the new user namespace already
    mount(cfg.private, cfg.private, None, MS_BIND | MS_REC)
    os.chdir(cfg.private)  # the new bind, on top
    os.setresgid(0, 0, 0)
    os.setgroups([0])
    os.setresuid(0, 0, 0)  # the VE's root: every capability, inside its namespaces only


def enter_root(root: str | None) -> None:
    """pivot_root into `root` (None: the cwd) and let go of the old root."""
    if root is not None:
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
