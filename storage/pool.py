"""The embedded default storage of a node: a btrfs for the private areas and snapshots,
so that cpt works on an ext4 host with no preparation.

    STATE/pool.img    a sparse file holding the btrfs (only when STATE is not on btrfs)
    STATE/pool/       where it is mounted (noatime: a read must not count as a change;
                      nosuid,nodev: a VE's root may make set-id programs and device
                      nodes in its private area, and a host user must gain nothing by
                      them; the VE's own view of its area is mounted apart, see
                      ve/boot.py); when STATE is itself on btrfs, a plain directory on it
    STATE/pool.json   what was set up: mode (loop or direct), image, loop device, size
    STATE/pool.lock   flock: one cpt at a time sets the pool up

The state directory is the caller's choice (/var/lib/cpt by default; CPT_ROOT and --root
are resolved by the caller). init() and ensure() are idempotent: an existing image is never
formatted again (its btrfs signature is checked), a loop device already attached to it is
reused (after a reboot none is, and a new one is attached), a mounted pool is left as it is.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpt.sys import runner
from cptimage.errors import quote
from storage import atomic
from storage.errors import PoolError
from storage.mounts import is_mount_point, mount_of, mounts

if TYPE_CHECKING:
    from storage.base import StrPath

DEFAULT_STATE_DIR = Path("/var/lib/cpt")
DEFAULT_SIZE = 4 << 30
POOL = "pool"
IMAGE = "pool.img"
RECORD = "pool.json"
LOCK = "pool.lock"
LABEL = "cpt-pool"
MOUNT_OPTIONS = "noatime,nosuid,nodev"
# The primary btrfs superblock is at 64 KiB; its magic at offset 0x40 in it.
_MAGIC_AT = 0x10040
_MAGIC = b"_BHRfS_M"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from "4G", "512M", "1T", "1048576" (binary units; "GiB" and "GB" alike)."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if not m:
        raise ValueError(f"invalid size {quote(text)}: use a number with K, M, G or T")
    return int(m.group(1)) * _UNITS[m.group(2)]


def init(state_dir: StrPath, size: int = DEFAULT_SIZE) -> Path:
    """Create the pool if there is none, mount it if it is not; returns its directory.
    `size` applies to a new image only: an existing pool keeps its size."""
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    with _locked(state):
        return _ensure(state, size)


def ensure(state_dir: StrPath) -> Path:
    """The pool's directory, ready for use: created with the default size on first use,
    mounted again when its image is not (after a reboot)."""
    return init(state_dir)


def teardown(state_dir: StrPath) -> None:
    """Unmount the pool and detach its loop devices; the image and record stay."""
    state = Path(state_dir)
    if not state.is_dir():
        return
    with _locked(state):
        pool = state / POOL
        if is_mount_point(pool):
            runner.run(["umount", pool])
        for device in _loops(state / IMAGE):
            runner.run(["losetup", "--detach", device])


def status(state_dir: StrPath) -> dict[str, Any]:
    """What `cpt pool status` shows: path, mode (loop, direct or none), image, device,
    size and used bytes (None while unknown), mounted."""
    state = Path(state_dir)
    pool, image = state / POOL, state / IMAGE
    record = _read_record(state)
    mounted = is_mount_point(pool)
    mode = record.get("mode", "loop" if image.exists() else "none")
    usable = mounted or (mode == "direct" and pool.is_dir())
    size = used = None
    if usable:
        st = os.statvfs(pool)
        size, used = st.f_blocks * st.f_frsize, (st.f_blocks - st.f_bfree) * st.f_frsize
    elif image.exists():
        size = image.stat().st_size
    return {
        "path": str(pool),
        "mode": mode,
        "image": str(image) if image.exists() else None,
        "device": mount_of(pool).source if mounted else None,
        "size": size,
        "used": used,
        "mounted": mounted,
    }


@contextmanager
def _locked(state: Path) -> Iterator[None]:
    with open(state / LOCK, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _ensure(state: Path, size: int) -> Path:
    pool, image = state / POOL, state / IMAGE
    if not image.exists() and mount_of(state).fstype == "btrfs":
        pool.mkdir(exist_ok=True)
        _write_record(state, {"mode": "direct", "path": str(pool)})
        return pool
    table = mounts()
    if is_mount_point(pool, table):
        m = mount_of(pool, table)
        if m.fstype != "btrfs":
            raise PoolError(f"{pool} is a mount of {m.fstype}, not of the pool", path=pool)
        if not {"nosuid", "nodev"} <= set(m.options.split(",")):  # mounted by an older cpt
            runner.run(["mount", "-o", f"remount,{MOUNT_OPTIONS}", pool])
        _write_record(state, _loop_record(pool, image, m.source))
        return pool
    if not image.exists():
        with open(image, "xb") as f:
            f.truncate(size)
    attached = _loops(image)
    device = attached[0] if attached else _attach(image)
    try:
        if not _formatted(image):
            runner.run(["mkfs.btrfs", "-q", "-f", "-L", LABEL, device])
        pool.mkdir(exist_ok=True)
        runner.run(["mount", "-o", MOUNT_OPTIONS, device, pool])
    except BaseException:
        if not attached:
            runner.run(["losetup", "--detach", device], check=False)
        raise
    _write_record(state, _loop_record(pool, image, device))
    return pool


def _loop_record(pool: Path, image: Path, device: str) -> dict[str, Any]:
    return {
        "mode": "loop",
        "path": str(pool),
        "image": str(image),
        "device": device,
        "size": image.stat().st_size,
    }


def _loops(image: Path) -> list[str]:
    """The loop devices attached to `image` (`losetup -j`: "/dev/loop3: [2049]:12 (...)")."""
    if not image.exists():
        return []
    out = runner.run(["losetup", "--associated", image]).stdout.decode()
    return [line.split(":", 1)[0] for line in out.splitlines() if line.strip()]


def _attach(image: Path) -> str:
    # Direct I/O: the image's pages are not cached twice (by btrfs and by the host file);
    # sync() before a freeze takes half the time (~40 instead of ~70 ms for 100 MiB).
    argv: list[str | Path] = ["losetup", "--find", "--show", "--direct-io=on", image]
    return runner.run(argv).stdout.decode().strip()


def _formatted(image: Path) -> bool:
    with open(image, "rb") as f:
        f.seek(_MAGIC_AT)
        return f.read(len(_MAGIC)) == _MAGIC


def _read_record(state: Path) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads((state / RECORD).read_bytes())
    except FileNotFoundError:
        return {}
    return doc


def _write_record(state: Path, doc: dict[str, Any]) -> None:
    if _read_record(state) != doc:
        atomic.write_json(state / RECORD, doc)
