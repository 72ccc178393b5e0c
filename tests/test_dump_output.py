"""The dump file's page area (cpt/dump/output.py): sized from the live tree, faulted in
before the freeze, grown when the tree holds more at the freeze, dropped when the
filesystem cannot hold it; every image that comes out verifies and restores."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from workloads import reaping, workloads_fixture  # noqa: F401

from cpt.dump import output
from cpt.dump.options import DumpOptions
from cpt.dump.pages import estimate
from cpt.stages.stage import Stage
from cpt.stages.trees import TreeStages

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="checkpoint needs root (ptrace)"),
]

MiB = 1 << 20


def test_estimate_counts_the_touched_memory(workloads) -> None:  # type: ignore[no-untyped-def]
    small = workloads.start("counter")
    big = workloads.start("counter", "8")
    base = estimate([small.pid])
    assert 0 < base < MiB, "a small C process: its stack, data and libc's pages"
    assert 8 * MiB <= estimate([big.pid]) < 8 * MiB + 2 * base + MiB
    assert estimate([small.pid, big.pid]) == base + estimate([big.pid])
    assert estimate([2**22 + 12345]) == 0, "a PID that does not exist counts nothing"


def test_reserve_sizes_and_faults_in_the_area(workloads, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    wl = workloads.start("counter", "4")
    out = output.ImageOutput(str(tmp_path / "dump.img"))
    out.reserve([wl.pid], DumpOptions())
    assert out.area is not None
    assert out.area.capacity >= 4 * MiB
    assert os.fstat(out.file.fileno()).st_size > 4 * MiB
    out.abort()
    assert os.listdir(tmp_path) == [], "abort leaves no temporary file"

    out = output.ImageOutput(str(tmp_path / "dump.img"))
    out.reserve([wl.pid], DumpOptions(compress=True))
    assert out.area is None, "compressed pages are streamed"
    out.abort()


@pytest.fixture
def in_process_run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CPT_RUN_DIR", str(tmp_path / "run"))
    yield


def _restore_and_check(cpt, wl, img: Path) -> None:  # type: ignore[no-untyped-def]
    rc, out, err = cpt("image", "verify", img)
    assert rc == 0, out + err
    rc, _, err = cpt("restore", "--dumpfile", img)
    assert rc == 0, err
    wl.refresh()
    wl.wait_counter()
    with reaping(wl):
        assert wl.finish() == "PASS"


@pytest.mark.usefixtures("in_process_run_dir")
def test_pages_beyond_the_reservation_grow_the_area(  # type: ignore[no-untyped-def]
    workloads, cpt, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tree holds more pages at the freeze than were reserved before it (here: none
    were): the area grows, and the image is the same as ever."""
    monkeypatch.setattr(output, "estimate", lambda pids, proc=None: 0)
    wl = workloads.start("counter", "24")
    wl.wait_counter()
    img = tmp_path / "dump.img"
    with reaping(wl):
        stats = TreeStages(wl.pid).chkpnt(Stage.CHKPNT, str(img), DumpOptions())
        assert stats is not None
    assert stats.pages_bytes >= 24 * MiB
    _restore_and_check(cpt, wl, img)


@pytest.mark.usefixtures("in_process_run_dir")
def test_a_filesystem_without_room_for_the_area_gets_the_stream(  # type: ignore[no-untyped-def]
    workloads, cpt, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the area cannot be faulted in, the image is streamed through the buffer."""

    def refuse(buf: object, **kw: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(output, "populate_write", refuse)
    wl = workloads.start("counter", "4")
    wl.wait_counter()
    img = tmp_path / "dump.img"
    with reaping(wl):
        TreeStages(wl.pid).chkpnt(Stage.CHKPNT, str(img), DumpOptions())
    _restore_and_check(cpt, wl, img)


def test_full_filesystem_fails_cleanly(workloads, cpt, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A dump that does not fit: one line naming the tree, exit 16, the tree runs on,
    nothing is left in the directory."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "cpt-test", str(mnt)], check=True)
    try:
        wl = workloads.start("counter", "8")
        wl.wait_counter()
        rc, out, err = cpt(
            "chkpnt", "--pid", wl.pid, "--dumpfile", mnt / "dump.img", "--leave-running"
        )
        assert rc == 16, out + err
        assert err.count("\n") == 1 and f"tree {wl.pid}" in err, err
        assert "Traceback" not in err
        assert os.listdir(mnt) == []
        c = wl.counter()
        assert wl.wait_counter(above=c) > c, "the tree runs on"
        assert wl.finish() == "PASS"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
