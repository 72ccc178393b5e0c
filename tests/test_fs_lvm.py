"""The LVM thin backend: what only it does.

This machine's kernel has no device-mapper (no /dev/mapper/control): lvm2 can create a PV and
a VG here but never an LV. So these tests are MOCKS: the commands the backend builds are
checked with a fake runner (FakeLvm) that records every argv and answers `lvs` as lvm2 does;
where lvm2 is installed, the argv of the commands that get past its option parser without
device-mapper are given to the real tools.  The real thing, on a thin pool of a loop-file
VG, is the Filesystem contract (test_fs_contract.py, backend "lvm") and the probe test at
the end: both run where device-mapper exists and are skipped here, saying so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from loopfs import DM_MISSING, LVM_ENV, device_mapper, thin_pool

from cpt.errors import CommandError
from cpt.sys import runner
from cptimage.records import FsBackend
from storage import backend_for, lvm
from storage.errors import UnsupportedFs
from storage.lvm import DESCRIPTOR, LvmFilesystem
from storage.mounts import Mount

ENV = LVM_ENV
LV_UUID = "Gx8oLC-8yK2-xyLi-3d0Q-QjXw-1pXn-A3bqVk"


class FakeLvm:
    """A fake command runner, because device-mapper cannot exist here: records each argv,
    answers `lvs` with lvm2's JSON report, fails the first command containing `fail_on`."""

    def __init__(self, vg: str = "vg0", fail_on: str = "") -> None:
        self.vg = vg
        self.fail_on = fail_on
        self.calls: list[list[str]] = []
        self.answers = {
            "vg_name": vg, "lv_name": "area", "pool_lv": "pool", "lv_uuid": LV_UUID,
            "transaction_id": "7", "lv_attr": "Vri---tz-k", "lv_size": "1073741824",
            "data_percent": "12.50",
        }  # fmt: skip

    def __call__(
        self, argv: list[str], *, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        assert env == ENV
        self.calls.append(argv)
        if self.fail_on and self.fail_on in " ".join(argv):
            self.fail_on = ""
            raise CommandError(f"{argv[0]} failed", argv=argv, returncode=5)
        out = b""
        if argv[0] == "lvs":
            fields = argv[argv.index("-o") + 1].split(",")
            row = {f: self.answers[f] for f in fields}
            out = json.dumps({"report": [{"lv": [row]}]}).encode()
        return subprocess.CompletedProcess(argv, 0, out, b"")


def _lvs(fields: str, target: str) -> list[str]:
    return ["lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", fields, target]


@pytest.fixture
def area(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An area directory the mount table says is ext4 on the thin LV vg0/area."""
    area = tmp_path / "private" / "101"
    area.mkdir(parents=True)
    mount = Mount(1, (253, 3), "/", str(area), "rw", "ext4", "/dev/mapper/vg0-area")
    monkeypatch.setattr(lvm, "mount_of", lambda path, table=None: mount)
    return area


def _snapshot(fake: FakeLvm, area: Path, dest: Path) -> tuple[LvmFilesystem, str]:
    fs = LvmFilesystem(fake.vg, "pool", run=fake)
    fs.snapshot(area, dest)
    return fs, json.loads((dest / DESCRIPTOR).read_text())["lv"]


def test_create_and_delete_area(tmp_path: Path, area: Path) -> None:
    fake = FakeLvm()
    fs = LvmFilesystem("vg0", "pool", area_size="2G", run=fake)
    new = tmp_path / "private" / "102"
    fs.create_area(new)
    name = fake.calls[0][6]
    assert re.fullmatch(r"cpt_102_[0-9a-f]{8}", name)
    assert fake.calls == [
        ["lvcreate", "--yes", "--thin", "--virtualsize", "2G", "--name", name, "vg0/pool"],
        ["mkfs.ext4", "-q", f"/dev/vg0/{name}"],
        ["mount", f"/dev/vg0/{name}", str(new)],
    ]
    fake.calls.clear()
    fs.delete_area(area)
    assert fake.calls == [
        _lvs("vg_name,lv_name", "/dev/mapper/vg0-area"),
        ["umount", str(area)],
        ["lvremove", "--yes", "vg0/area"],
    ]
    assert not area.exists()


def test_an_area_whose_filesystem_failed_is_removed(tmp_path: Path) -> None:
    fake = FakeLvm(fail_on="mkfs.ext4")
    with pytest.raises(CommandError):
        LvmFilesystem("vg0", "pool", run=fake).create_area(tmp_path / "103")
    name = fake.calls[0][6]
    assert fake.calls[1:] == [
        ["mkfs.ext4", "-q", f"/dev/vg0/{name}"],
        ["lvremove", "--yes", f"vg0/{name}"],
    ]


def test_snapshot_commands_descriptor_and_info(tmp_path: Path, area: Path) -> None:
    fake = FakeLvm()
    dest = tmp_path / "snaps" / "1"
    fs = LvmFilesystem("vg0", "pool", run=fake)
    info = fs.snapshot(area, dest)
    lv = fake.calls[1][3]
    assert re.fullmatch(r"area_snap_[0-9a-f]{8}", lv)
    assert fake.calls == [
        _lvs("vg_name,lv_name", "/dev/mapper/vg0-area"),
        ["lvcreate", "--snapshot", "--name", lv, "--permission", "r", "vg0/area"],
        _lvs("lv_uuid", f"vg0/{lv}"),
        _lvs("transaction_id", "vg0/pool"),
        _lvs("lv_attr", f"vg0/{lv}"),
    ]
    d = json.loads((dest / DESCRIPTOR).read_text())
    assert d["vg"] == "vg0" and d["lv"] == lv and d["origin"] == "area"
    assert d["area"] == str(area) and d["fstype"] == "ext4"
    assert info.backend is FsBackend.LVM and info.read_only and info.generation == 7
    assert info.uuid == uuid.uuid5(uuid.NAMESPACE_OID, LV_UUID)
    assert info.subvolume == area and info.path == dest
    assert fs.size(dest) == 1073741824 // 8
    fake.calls.clear()
    fs.delete_snapshot(dest)
    assert fake.calls == [["lvremove", "--yes", f"vg0/{lv}"]]
    assert not dest.exists()


def test_a_snapshot_whose_descriptor_failed_is_removed(tmp_path: Path, area: Path) -> None:
    fake = FakeLvm(fail_on="transaction_id")
    dest = tmp_path / "snaps" / "1"
    with pytest.raises(CommandError):
        LvmFilesystem("vg0", "pool", run=fake).snapshot(area, dest)
    lv = fake.calls[1][3]
    assert fake.calls[-1] == ["lvremove", "--yes", f"vg0/{lv}"]
    assert not dest.exists()


def _rollback_calls(area: Path, snap_lv: str, pre: str) -> list[list[str]]:
    return [
        ["umount", str(area)],
        ["lvrename", "vg0", "area", pre],
        ["lvchange", "--permission", "r", "--setactivationskip", "y", f"vg0/{pre}"],
        ["lvchange", "--activate", "n", f"vg0/{pre}"],
        ["lvcreate", "--snapshot", "--name", "area", "--setactivationskip", "n",
         "--permission", "rw", f"vg0/{snap_lv}"],
        ["mount", "/dev/vg0/area", str(area)],
    ]  # fmt: skip


def test_rollback_renames_the_origin_away_and_snapshots_the_snapshot(
    tmp_path: Path, area: Path
) -> None:
    fake = FakeLvm()
    fs, snap_lv = _snapshot(fake, area, tmp_path / "snap")
    fake.calls.clear()
    keep = fs.rollback(area, tmp_path / "snap", keep=tmp_path / "pre")
    pre = fake.calls[2][3]
    assert re.fullmatch(r"area_pre_[0-9a-f]{8}", pre)
    assert fake.calls == [
        _lvs("vg_name,lv_name", "/dev/mapper/vg0-area"),
        *_rollback_calls(area, snap_lv, pre),
        _lvs("lv_uuid", f"vg0/{pre}"),
        _lvs("transaction_id", "vg0/pool"),
        _lvs("lv_attr", f"vg0/{pre}"),
    ]
    assert keep == tmp_path / "pre"
    assert json.loads((keep / DESCRIPTOR).read_text())["lv"] == pre


def test_a_failed_rollback_undoes_its_steps(tmp_path: Path, area: Path) -> None:
    fake = FakeLvm()
    fs, snap_lv = _snapshot(fake, area, tmp_path / "snap")
    fake.calls.clear()
    fake.fail_on = "lvcreate"
    with pytest.raises(CommandError):
        fs.rollback(area, tmp_path / "snap", keep=tmp_path / "pre")
    pre = fake.calls[2][3]
    assert fake.calls[1:] == [
        *_rollback_calls(area, snap_lv, pre)[:5],
        ["lvchange", "--activate", "y", f"vg0/{pre}"],
        ["lvchange", "--permission", "rw", "--setactivationskip", "n", f"vg0/{pre}"],
        ["lvrename", "vg0", pre, "area"],
        ["mount", "/dev/vg0/area", str(area)],
    ]
    assert not (tmp_path / "pre").exists()


@pytest.mark.parametrize(("fstype", "options"), [("ext4", "ro,noload"),
                                                  ("xfs", "ro,nouuid,norecovery")])  # fmt: skip
def test_changes_since_mounts_the_snapshot_read_only(
    tmp_path: Path, area: Path, fstype: str, options: str
) -> None:
    fake = FakeLvm()
    snap = tmp_path / "snap"
    fs, lv = _snapshot(fake, area, snap)
    d = json.loads((snap / DESCRIPTOR).read_text())
    (snap / DESCRIPTOR).write_text(json.dumps({**d, "fstype": fstype}))
    # The fake mount mounts nothing: SNAP/mnt is filled here to stand for the snapshot.
    (snap / "mnt").mkdir()
    for root in (snap / "mnt", area):
        (root / "same").write_text("same")
        (root / "changed").write_text("old")
        os.utime(root / "same", ns=(1, 1))
    (area / "changed").write_text("new!")
    (area / "added").write_text("added")
    for root in (snap / "mnt", area):
        os.utime(root, ns=(1, 1))
    fake.calls.clear()
    assert fs.changed_since(area, snap) == ["added", "changed"]
    assert fake.calls == [
        ["lvchange", "--activate", "y", "--ignoreactivationskip", f"vg0/{lv}"],
        ["mount", "-o", options, f"/dev/vg0/{lv}", str(snap / "mnt")],
        ["umount", str(snap / "mnt")],
        ["lvchange", "--activate", "n", f"vg0/{lv}"],
    ]


def test_probe_reads_the_device_mapper_uuid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = os.stat(tmp_path)
    dm = tmp_path / "sys" / f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}" / "dm"
    monkeypatch.setattr(lvm, "SYS_BLOCK", tmp_path / "sys")
    assert not LvmFilesystem.probe(tmp_path)
    dm.mkdir(parents=True)
    (dm / "uuid").write_text("CRYPT-LUKS2-0123")
    assert not LvmFilesystem.probe(tmp_path)
    (dm / "uuid").write_text("LVM-abcdef")
    assert LvmFilesystem.probe(tmp_path)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="lvm2 reads the block devices as root")
@pytest.mark.skipif(shutil.which("lvcreate") is None, reason="lvm2 is not installed")
def test_lvm2_parses_the_commands_built(tmp_path: Path, area: Path) -> None:
    """Every lvm2 command the backend builds gets past lvm2's option parser (which exits 3
    on a bad command line) and fails only on the missing VG. `--driverloaded n` keeps lvm2
    away from device-mapper: without it, lvcreate refuses thin and snapshot argv before
    parsing them, and libdevmapper creates a /dev/mapper/control no kernel driver backs."""
    vg = f"cptnovg{uuid.uuid4().hex[:8]}"
    fake = FakeLvm(vg=vg)
    fs, _ = _snapshot(fake, area, tmp_path / "snap")
    fs.create_area(tmp_path / "new")
    fs.rollback(area, tmp_path / "snap", keep=tmp_path / "pre")
    fs.changed_since(area, tmp_path / "snap")
    fs.delete_snapshot(tmp_path / "pre")
    lvm2 = [
        c for c in fake.calls if c[0] in ("lvcreate", "lvchange", "lvrename", "lvremove", "lvs")
    ]
    assert {c[0] for c in lvm2} == {"lvcreate", "lvchange", "lvrename", "lvremove", "lvs"}
    for argv in lvm2:
        result = runner.run([argv[0], "--driverloaded", "n", *argv[1:]], check=False, env=ENV)
        assert result.returncode == 5, (argv, result.stderr)
        # The area's /dev/mapper/vg0-area is understood as VG vg0, LV area.
        missing = "vg0" if "/dev/mapper/vg0-area" in argv else vg
        assert f'Volume group "{missing}" not found' in result.stderr.decode(), argv


# --------------------------------------------------------------------------- the real thing


@pytest.mark.root
@pytest.mark.destructive
@pytest.mark.skipif(shutil.which("lvcreate") is None, reason="lvm2 is not installed")
@pytest.mark.skipif(not device_mapper(), reason=DM_MISSING)
def test_a_real_thin_lv_is_probed_as_lvm(tmp_path: Path) -> None:
    with thin_pool(tmp_path) as (vg, pool):
        fs = LvmFilesystem(vg, pool, area_size="256M")
        area = tmp_path / "area"
        fs.create_area(area)
        try:
            assert LvmFilesystem.probe(area)
            assert isinstance(backend_for(area), LvmFilesystem)
        finally:
            fs.delete_area(area)


def test_descriptor_is_required(tmp_path: Path) -> None:
    fs = LvmFilesystem("vg0", "pool", run=FakeLvm())
    with pytest.raises(UnsupportedFs, match="not an LVM snapshot"):
        fs.info(tmp_path)
