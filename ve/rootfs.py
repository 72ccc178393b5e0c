"""The minimal root filesystem of a new VE, written into its private area.

Either template gives /root, /tmp, /etc (hostname, hosts, passwd, group), /proc, /sys,
/dev and /.cpt (cpt's own: the VE's init program and the old root during pivot_root).
`host` leaves /usr, /lib*, /bin and /sbin to read-only bind mounts of the host's (done at
start, see boot.py): what the host has is what C and Python programs find inside.
`busybox` installs busybox-static and a link per applet.
"""

from __future__ import annotations

import os
import shutil

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
