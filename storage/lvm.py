"""LVM thin provisioning: areas are thin LVs, snapshots are thin snapshots (lvm2 commands).

An area is a thin LV of VG/POOL holding a filesystem (ext4 unless told otherwise) mounted at
the area's path. A snapshot is a thin snapshot LV with read-only permission (thin snapshots
skip activation by default: no device node until used) plus, at the snapshot's path, a
directory holding `lvm.json` (VG, LV, origin, UUID, pool transaction id, creation time,
filesystem type), so that snapshots have paths here as on every backend.

Taking the snapshot suspends the origin's device, which freezes the filesystem on it: no
fsfreeze is needed (and btrfs is never on this backend).

Rollback, as an LVM user does it without losing the snapshot:

    umount AREA
    lvrename VG LV LV_pre_TAG                       the live contents, kept ...
    lvchange --permission r --setactivationskip y VG/LV_pre_TAG
    lvchange --activate n VG/LV_pre_TAG             ... as a read-only inactive thin LV
    lvcreate --snapshot --name LV --setactivationskip n --permission rw VG/SNAP
    mount /dev/VG/LV AREA                           a writable child of the snapshot

A failed step undoes the ones before it. Not `lvconvert --merge`: a merge consumes the
snapshot (the catalog would lose it) and is deferred to the next activation while the origin
is open. Comparisons activate the snapshot (`--ignoreactivationskip`), mount it read-only
and compare trees (tree.py): xfs needs `nouuid` (the snapshot carries its origin's UUID) and
`norecovery`, ext4 `noload` (no journal replay on a read-only device).

All of it needs device-mapper: this backend's commands are unit-tested with a fake runner
and run for real only where /dev/mapper/control exists (tests/test_fs_lvm.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cpt.sys import runner
from cptimage.records import FsBackend
from storage import atomic
from storage.base import Changes, Filesystem, SnapshotInfo
from storage.errors import UnsupportedFs
from storage.mounts import mount_of
from storage.tree import compare, file_digest, scan

DESCRIPTOR = "lvm.json"
SYS_BLOCK = Path("/sys/dev/block")
# lvm2 warns on stderr about every inherited fd ("File descriptor N leaked").
_ENV = {"LVM_SUPPRESS_FD_WARNINGS": "1"}
_MOUNT_RO = {"ext4": "ro,noload", "ext3": "ro,noload", "xfs": "ro,nouuid,norecovery"}
_LV_CHARS = re.compile(r"[^A-Za-z0-9+_.-]")

Run = Callable[..., subprocess.CompletedProcess[bytes]]
Argv = tuple[str | Path, ...]


class LvmFilesystem(Filesystem):
    name = "lvm"

    def __init__(
        self,
        vg: str,
        pool: str,
        *,
        area_size: str = "10G",
        mkfs: tuple[str, ...] = ("mkfs.ext4", "-q"),
        run: Run = runner.run,
    ) -> None:
        self.vg = vg
        self.pool = pool
        self.area_size = area_size
        self.mkfs = mkfs
        self._runner = run

    @classmethod
    def probe(cls, path: Path) -> bool:
        st = os.stat(path)
        dm_uuid = SYS_BLOCK / f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}" / "dm" / "uuid"
        try:
            return dm_uuid.read_text().startswith("LVM-")
        except FileNotFoundError:
            return False

    @classmethod
    def for_path(cls, path: Path) -> LvmFilesystem:
        device = mount_of(path).source
        row = _lvs(runner.run, device, "vg_name,pool_lv")[0]
        if not row["pool_lv"]:
            raise UnsupportedFs(f"{path} is on {device}, not a thin LV", path=path)
        return cls(row["vg_name"], row["pool_lv"])

    def _run(self, *argv: str | Path, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return self._runner([str(a) for a in argv], check=check, env=_ENV)

    def _dev(self, lv: str) -> str:
        return f"/dev/{self.vg}/{lv}"

    def _create_area(self, path: Path) -> None:
        lv = _area_lv_name(path)
        self._run(
            "lvcreate",
            "--yes",
            "--thin",
            "--virtualsize",
            self.area_size,
            "--name",
            lv,
            f"{self.vg}/{self.pool}",
        )
        try:
            self._run(*self.mkfs, self._dev(lv))
            path.mkdir(exist_ok=True)
            self._run("mount", self._dev(lv), path)
        except BaseException:
            self._run("lvremove", "--yes", f"{self.vg}/{lv}", check=False)
            raise

    def _delete_area(self, path: Path) -> None:
        lv = self._lv_of(path)
        self._run("umount", path)
        self._run("lvremove", "--yes", f"{self.vg}/{lv}")
        path.rmdir()

    def _snapshot(self, area: Path, dest: Path, readonly: bool) -> SnapshotInfo:
        origin = self._lv_of(area)
        lv = f"{origin}_snap_{uuid.uuid4().hex[:8]}"
        self._run(
            "lvcreate",
            "--snapshot",
            "--name",
            lv,
            "--permission",
            "r" if readonly else "rw",
            f"{self.vg}/{origin}",
        )
        try:
            return self._describe(dest, lv, origin, area)
        except BaseException:
            # A snapshot whose metadata failed is removed.
            self._run("lvremove", "--yes", f"{self.vg}/{lv}", check=False)
            shutil.rmtree(dest, ignore_errors=True)
            raise

    def _describe(self, dest: Path, lv: str, origin: str, area: Path) -> SnapshotInfo:
        """Write the descriptor of snapshot LV `lv` at `dest`."""
        row = _lvs(self._runner, f"{self.vg}/{lv}", "lv_uuid")[0]
        pool = _lvs(self._runner, f"{self.vg}/{self.pool}", "transaction_id")[0]
        dest.mkdir(parents=True)
        atomic.write_json(
            dest / DESCRIPTOR,
            {
                "vg": self.vg,
                "lv": lv,
                "origin": origin,
                "area": os.path.abspath(area),
                "uuid": str(uuid.uuid5(uuid.NAMESPACE_OID, row["lv_uuid"])),
                "transaction_id": int(pool["transaction_id"]),
                "created_ns": time.time_ns(),
                "fstype": mount_of(area).fstype,
            },
        )
        return self._info(dest)

    def _info(self, path: Path) -> SnapshotInfo:
        d = _descriptor(path)
        attr = _lvs(self._runner, f"{d['vg']}/{d['lv']}", "lv_attr")[0]["lv_attr"]
        return SnapshotInfo(
            backend=FsBackend.LVM,
            path=path,
            subvolume=Path(d["area"]),
            uuid=uuid.UUID(d["uuid"]),
            parent_uuid=None,
            generation=d["transaction_id"],
            created_ns=d["created_ns"],
            # lv_attr: type, then permission (w or r).
            read_only=attr[1] == "r",
        )

    def _delete_snapshot(self, path: Path) -> None:
        d = _descriptor(path)
        self._run("lvremove", "--yes", f"{d['vg']}/{d['lv']}")
        shutil.rmtree(path)

    @contextmanager
    def _mounted(self, snapshot: Path) -> Iterator[Path]:
        """The snapshot, activated and mounted read-only at SNAPSHOT/mnt for the block."""
        d = _descriptor(snapshot)
        lv = f"{d['vg']}/{d['lv']}"
        mnt = snapshot / "mnt"
        mnt.mkdir(exist_ok=True)
        self._run("lvchange", "--activate", "y", "--ignoreactivationskip", lv)
        try:
            self._run("mount", "-o", _MOUNT_RO.get(d["fstype"], "ro"), f"/dev/{lv}", mnt)
            try:
                yield mnt
            finally:
                self._run("umount", mnt)
        finally:
            self._run("lvchange", "--activate", "n", lv)

    def _changes_since(self, area: Path, snapshot: Path) -> Changes:
        with self._mounted(snapshot) as old:
            return compare(
                scan(old), scan(area), lambda p: file_digest(old / p) == file_digest(area / p)
            )

    def _diff(self, a: Path, b: Path) -> Changes:
        with self._mounted(a) as old, self._mounted(b) as new:
            return compare(
                scan(old), scan(new), lambda p: file_digest(old / p) == file_digest(new / p)
            )

    def _rollback(self, area: Path, snapshot: Path, keep: Path) -> None:
        d = _descriptor(snapshot)
        lv = self._lv_of(area)
        pre = f"{lv}_pre_{uuid.uuid4().hex[:8]}"
        vg, dev, pre_lv = self.vg, self._dev(lv), f"{self.vg}/{pre}"
        child = ("--snapshot", "--name", lv, "--setactivationskip", "n", "--permission", "rw")
        steps: list[tuple[Argv, Argv]] = [  # (do, undo)
            (("umount", area), ("mount", dev, area)),
            (("lvrename", vg, lv, pre), ("lvrename", vg, pre, lv)),
            (("lvchange", "--permission", "r", "--setactivationskip", "y", pre_lv),
             ("lvchange", "--permission", "rw", "--setactivationskip", "n", pre_lv)),
            (("lvchange", "--activate", "n", pre_lv), ("lvchange", "--activate", "y", pre_lv)),
            (("lvcreate", *child, f"{d['vg']}/{d['lv']}"), ("lvremove", "--yes", f"{vg}/{lv}")),
            (("mount", dev, area), ("umount", area)),
        ]  # fmt: skip
        done: list[Argv] = []
        try:
            for do, undo in steps:
                self._run(*do)
                done.append(undo)
        except BaseException:
            for undo in reversed(done):
                self._run(*undo, check=False)
            raise
        try:
            self._describe(keep, pre, lv, area)
        except BaseException:
            # The rollback stands; only the pre-rollback point lacks its descriptor.
            shutil.rmtree(keep, ignore_errors=True)
            raise

    def _size(self, path: Path) -> int:
        if (path / DESCRIPTOR).exists():
            d = _descriptor(path)
            target = f"{d['vg']}/{d['lv']}"
        else:
            target = f"{self.vg}/{self._lv_of(path)}"
        row = _lvs(self._runner, target, "lv_size,data_percent")[0]
        # Mapped bytes of the thin LV, blocks shared with its origin included: best effort.
        return int(int(row["lv_size"]) * float(row["data_percent"] or 0) / 100)

    def _lv_of(self, area: Path) -> str:
        """The name of the LV mounted at `area`."""
        m = mount_of(area)
        if m.mount_point != os.path.realpath(area):
            raise UnsupportedFs(f"{area} is not a mounted LV", path=area)
        row = _lvs(self._runner, m.source, "vg_name,lv_name")[0]
        if row["vg_name"] != self.vg:
            raise UnsupportedFs(f"{area} is on VG {row['vg_name']}, not {self.vg}", path=area)
        return str(row["lv_name"])


def _lvs(run: Run, target: str, fields: str) -> list[dict[str, Any]]:
    """`lvs` rows for one LV (VG/LV or a device path), numbers in bytes."""
    out = run(
        ["lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", fields, target],
        check=True,
        env=_ENV,
    ).stdout
    rows: list[dict[str, Any]] = json.loads(out)["report"][0]["lv"]
    if not rows:
        raise UnsupportedFs(f"lvs knows no LV {target}", path=target)
    return rows


def _descriptor(snapshot: Path) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads((snapshot / DESCRIPTOR).read_bytes())
    except FileNotFoundError:
        raise UnsupportedFs(
            f"{snapshot} is not an LVM snapshot (no {DESCRIPTOR})", path=snapshot
        ) from None
    return doc


def _area_lv_name(path: Path) -> str:
    """An LV name for the area at `path`: its name, made legal, and a hash of the path."""
    tag = hashlib.sha256(os.fsencode(os.path.abspath(path))).hexdigest()[:8]
    return f"cpt_{_LV_CHARS.sub('_', path.name)}_{tag}"
