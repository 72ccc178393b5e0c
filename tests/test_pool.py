"""The embedded pool: a loop-file btrfs inside the state directory, created once, mounted
again after an unmount or a detach (a reboot), used directly when the state directory is
already on btrfs; teardown leaves no mount and no loop device."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from storage import pool
from storage.mounts import mount_of


def root_only(test: Callable[..., None]) -> Callable[..., None]:
    """Marks of a test that attaches loop devices and mounts."""
    for mark in (
        pytest.mark.root,
        pytest.mark.destructive,
        pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and mounts need root"),
    ):
        test = mark(test)
    return test


def _loops_of(image: Path) -> list[str]:
    out = subprocess.run(["losetup", "--associated", str(image)], check=True,
                         capture_output=True, text=True, timeout=30).stdout  # fmt: skip
    return [line.split(":", 1)[0] for line in out.splitlines()]


def _leftovers(path: Path) -> list[str]:
    mounts = [line for line in Path("/proc/mounts").read_text().splitlines() if str(path) in line]
    loops = subprocess.run(["losetup", "-a"], check=True, capture_output=True, text=True,
                           timeout=30).stdout.splitlines()  # fmt: skip
    return mounts + [line for line in loops if str(path) in line]


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """A state directory; whatever pool it gets is torn down and its image removed."""
    d = tmp_path / "state"
    try:
        yield d
    finally:
        if d.exists():
            pool.teardown(d)
        (d / pool.IMAGE).unlink(missing_ok=True)
        assert _leftovers(tmp_path) == []


def test_parse_size() -> None:
    assert pool.parse_size("4G") == 4 << 30
    assert pool.parse_size("512MiB") == 512 << 20
    assert pool.parse_size("1048576") == 1 << 20
    assert pool.parse_size("2 gb") == 2 << 30
    with pytest.raises(ValueError, match="invalid size"):
        pool.parse_size("4X")


@root_only
def test_init_creates_a_sparse_noatime_loop_btrfs_once(state: Path) -> None:
    path = pool.init(state, size=256 << 20)
    image = state / pool.IMAGE
    assert path == state / pool.POOL
    assert image.stat().st_size == 256 << 20
    assert image.stat().st_blocks * 512 < 64 << 20  # sparse
    m = mount_of(path)
    assert (m.mount_point, m.fstype) == (str(path), "btrfs")
    assert "noatime" in m.options.split(",")
    [device] = _loops_of(image)
    record = json.loads((state / pool.RECORD).read_text())
    assert record == {"mode": "loop", "path": str(path), "image": str(image),
                      "device": device, "size": 256 << 20}  # fmt: skip
    (path / "data").write_text("kept")
    # Again: nothing formatted, attached or mounted twice; the size of a pool stays.
    assert pool.init(state, size=1 << 30) == path
    assert pool.ensure(state) == path
    assert _loops_of(image) == [device]
    assert (path / "data").read_text() == "kept"
    mounts = Path("/proc/mounts").read_text().splitlines()
    assert len([line for line in mounts if f" {path} " in line]) == 1
    status = pool.status(state)
    assert status["mounted"] and status["device"] == device and status["mode"] == "loop"
    assert status["size"] > 200 << 20 and 0 < status["used"] < status["size"]


@root_only
def test_ensure_mounts_again_after_unmount_and_after_detach(state: Path) -> None:
    path = pool.init(state, size=256 << 20)
    image = state / pool.IMAGE
    (path / "data").write_text("survives")
    [device] = _loops_of(image)
    # Unmounted, loop still attached: the same device is mounted again.
    subprocess.run(["umount", str(path)], check=True, timeout=30)
    assert pool.ensure(state) == path
    assert _loops_of(image) == [device]
    assert (path / "data").read_text() == "survives"
    # As after a reboot: neither mounted nor attached.
    pool.teardown(state)
    assert _loops_of(image) == []
    assert not os.path.ismount(path)
    assert pool.status(state)["mounted"] is False
    assert pool.ensure(state) == path
    assert len(_loops_of(image)) == 1
    assert (path / "data").read_text() == "survives"
    assert json.loads((state / pool.RECORD).read_text())["device"] == _loops_of(image)[0]
    pool.teardown(state)
    pool.teardown(state)  # idempotent too


@root_only
def test_ensure_creates_the_default_pool_on_first_use(state: Path) -> None:
    path = pool.ensure(state)
    assert (state / pool.IMAGE).stat().st_size == pool.DEFAULT_SIZE
    assert mount_of(path).fstype == "btrfs"


@root_only
def test_a_state_directory_on_btrfs_is_used_directly(state: Path) -> None:
    outer = pool.init(state, size=256 << 20)
    inner = outer / f"node-{uuid.uuid4().hex[:8]}"
    path = pool.ensure(inner)
    assert path == inner / pool.POOL and path.is_dir()
    assert not (inner / pool.IMAGE).exists()
    assert json.loads((inner / pool.RECORD).read_text()) == {"mode": "direct", "path": str(path)}
    status = pool.status(inner)
    assert (status["mode"], status["image"], status["device"]) == ("direct", None, None)
    assert status["size"] > 0


@root_only
def test_pool_commands(state: Path) -> None:
    """`cpt --root STATE pool init --size 300M` then `pool status --json`; a bad size is
    refused in one line (exit 21)."""
    import sys

    def cpt(*args: str) -> subprocess.CompletedProcess[str]:
        repo = Path(__file__).resolve().parent.parent
        return subprocess.run([sys.executable, "-m", "cli.main", "--root", str(state), *args],
                              cwd=repo, capture_output=True, text=True, timeout=120)  # fmt: skip

    bad = cpt("pool", "init", "--size", "12 parsecs")
    assert bad.returncode == 21 and bad.stderr.count("\n") == 1, bad.stderr
    assert json.loads(cpt("pool", "status", "--json").stdout)["mode"] == "none"
    done = cpt("pool", "init", "--size", "300M")
    assert done.returncode == 0, done.stderr
    st = json.loads(cpt("pool", "status", "--json").stdout)
    assert st["mounted"] and st["mode"] == "loop" and st["size"] == 300 << 20
    assert mount_of(Path(st["path"])).fstype == "btrfs"
