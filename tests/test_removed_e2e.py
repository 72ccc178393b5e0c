"""End to end: directories and a FIFO removed while held (a cwd, an O_DIRECTORY fd, a
FIFO with unread bytes), through `cpt chkpnt --pid` / `cpt restore` (format 1.7: PathObj
GHOST of kind DIR and FIFO, recreated empty and removed again); the refusal of a removed
device node is in test_files_e2e.py.

fixtures/workloads/removed.c checks itself after restore (modes, no links, the /proc
names, nothing can be created in the removed directories, the FIFO's bytes); the test also
checks the image and that a sabotaged restored workload fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from workloads import (  # noqa: F401
    checkpoint,
    image_records,
    reaping,
    restore,
    verdict_after_restore,
    workloads_fixture,
)

from cptimage.records import PathFlags, PathKind, PathObj, SectionType

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="checkpoint/restore needs root (ptrace, clone3 set_tid)"
    ),
]


def test_removed_dirs_and_fifo(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("removed")
    wl.wait_counter()
    img = tmp_path / "removed.img"
    checkpoint(cpt, wl, img)
    ghosts = {
        Path(p.path).name: p
        for p in image_records(img, SectionType.FILES, PathObj)
        if p.flags & PathFlags.GHOST
    }
    assert {n: (g.kind, g.mode & 0o7777, g.size) for n, g in ghosts.items()} == {
        "gone-cwd": (PathKind.DIR, 0o751, 0),
        "gone-dir": (PathKind.DIR, 0o705, 0),
        "gone-fifo": (PathKind.FIFO, 0o640, 0),
    }
    rc, out, err = cpt("image", "verify", img)
    assert rc == 0, out + err
    restore(cpt, wl, img)
    assert os.readlink(f"/proc/{wl.pid}/cwd").endswith("/gone-cwd (deleted)")
    assert not (wl.dir / "gone-cwd").exists() and not (wl.dir / "gone-fifo").exists()
    wl.wait_counter()
    with reaping(wl):
        assert wl.finish() == "PASS"


@pytest.mark.parametrize(
    ("item", "reason"),
    [("fifo", "fifo: 299 bytes pending, want 300"), ("dir", "dir: mode 040700")],
)
def test_removed_sabotage_after_restore(
    workloads, cpt, tmp_path: Path, item: str, reason: str
) -> None:
    verdict = verdict_after_restore(workloads, cpt, tmp_path, "removed", item)
    assert verdict.startswith("FAIL: ") and reason in verdict, verdict
