"""Real filesystems for the storage tests: loop-file btrfs and ext4, tmpfs, an LVM thin
pool on a loop file; each removed (umount, losetup -d, vgremove, image files) even when
the test fails, and checked to leave no mount or loop device behind."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import btrfsutil

# lvm2 warns about every fd it inherits (pytest's among them)
LVM_ENV = {"LVM_SUPPRESS_FD_WARNINGS": "1"}
MKFS = {"btrfs": ["mkfs.btrfs", "-q", "-f"], "ext4": ["mkfs.ext4", "-q"]}
DM_MISSING = (
    "no device-mapper: /dev/mapper/control cannot be opened (not in this kernel), so no LV "
    "can be created"
)


def sh(*argv: str | Path, timeout: float = 60, env: dict[str, str] | None = None) -> str:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}).stdout  # fmt: skip


def leftovers(path: Path) -> list[str]:
    """Mounts and loop devices that still refer to anything under `path`."""
    mounts = [line for line in Path("/proc/mounts").read_text().splitlines() if str(path) in line]
    loops = [line for line in sh("losetup", "-a").splitlines() if str(path) in line]
    return mounts + loops


@contextlib.contextmanager
def mounted(top: Path, kinds: Iterable[str], size: int = 512 << 20) -> Iterator[dict[str, Path]]:
    """Each of `kinds` ("btrfs", "ext4": a loop file of `size` bytes mounted noatime;
    "tmpfs") mounted at top/KIND; all removed afterwards."""
    mounted: dict[str, Path] = {}
    devices: list[str] = []
    try:
        for kind in kinds:
            mnt = top / kind
            mnt.mkdir()
            if kind == "tmpfs":
                sh("mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", mnt)
            else:
                image = top / f"{kind}.img"
                with open(image, "wb") as f:
                    f.truncate(size)
                devices.append(sh("losetup", "--find", "--show", image).strip())
                sh(*MKFS[kind], devices[-1])
                sh("mount", "-o", "noatime", devices[-1], mnt)
            mounted[kind] = mnt
        yield mounted
    finally:
        for mnt in mounted.values():
            sh("umount", mnt)
        for device in devices:
            sh("losetup", "--detach", device)
        for image in top.glob("*.img"):
            image.unlink()
        assert leftovers(top) == []


def delete_subvolumes(root: Path) -> None:
    """Every subvolume under `root`, children first (read-only ones included)."""
    for rel, _ in btrfsutil.SubvolumeIterator(root, post_order=True):
        btrfsutil.delete_subvolume(root / rel)


def device_mapper() -> bool:
    try:
        os.close(os.open("/dev/mapper/control", os.O_RDWR))
    except OSError:
        return False
    return True


@contextlib.contextmanager
def thin_pool(top: Path) -> Iterator[tuple[str, str]]:
    """A VG on a loop file with a thin pool "pool": (vg, pool); removed afterwards with every
    LV in it (those mounted below `top` unmounted first)."""
    image = top / "pv.img"
    with open(image, "wb") as f:
        f.truncate(1 << 30)
    vg = f"cpttest{uuid.uuid4().hex[:8]}"
    device = sh("losetup", "--find", "--show", image).strip()
    try:
        sh("pvcreate", "-q", device, env=LVM_ENV, timeout=120)
        sh("vgcreate", "-q", vg, device, env=LVM_ENV, timeout=120)
        sh("lvcreate", "-q", "--type", "thin-pool", "--size", "512M", "--name", "pool", vg,
           env=LVM_ENV, timeout=120)  # fmt: skip
        yield vg, "pool"
    finally:
        for line in reversed(Path("/proc/mounts").read_text().splitlines()):
            if f" {top}/" in line:
                subprocess.run(["umount", line.split()[1]], capture_output=True, timeout=60)
        subprocess.run(["vgremove", "-ff", "-y", vg], capture_output=True, timeout=120)
        subprocess.run(["pvremove", "-ff", "-y", device], capture_output=True, timeout=120)
        sh("losetup", "--detach", device)
        image.unlink()
