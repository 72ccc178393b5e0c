"""End to end: Linux AIO contexts (VmaKind.AIO_RING, format 1.6) through the
`cpt chkpnt --pid` / `cpt restore` commands.

fixtures/workloads/aio.c checks itself after restore: each context id is an [aio] mapping
of its old size, its ring header is sane and empty, and requests submitted through both
contexts complete with the right bytes.  A context holding a completed request not yet
reaped is refused (its event would be lost), naming the process and the mapping.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from workloads import checkpoint, image_records, reaping, restore, workloads_fixture  # noqa: F401

from cptimage.records import SectionType, Vma, VmaKind

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="checkpoint/restore needs root (ptrace, clone3 set_tid)"
    ),
]


def aio_rings(img: Path) -> list[Vma]:
    return [x for x in image_records(img, SectionType.MM, Vma) if x.kind == VmaKind.AIO_RING]


def test_aio_checkpoint_restore(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("aio")
    wl.wait_counter()
    img = tmp_path / "aio.img"
    checkpoint(cpt, wl, img)
    rings = aio_rings(img)
    assert len(rings) == 2 and all(r.file_id == 0 for r in rings), rings
    rc, out, err = cpt("image", "verify", img)
    assert rc == 0, out + err
    restore(cpt, wl, img)
    maps = Path(f"/proc/{wl.pid}/maps").read_text()
    for r in rings:
        assert f"{r.start:x}-{r.end:x} " in maps and "/[aio]" in maps, maps
    wl.wait_counter()
    with reaping(wl):
        assert wl.finish() == "PASS"


def test_aio_sabotage_after_restore(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("aio", sabotage="ctx")
    wl.wait_counter()
    img = tmp_path / "aio.img"
    checkpoint(cpt, wl, img)
    restore(cpt, wl, img)
    wl.wait_counter()
    with reaping(wl):
        verdict = wl.finish()
    assert verdict.startswith("FAIL: ") and "context a: [aio] mapping of 0 bytes" in verdict


def test_aio_unreaped_event_refused(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("aio", "pending")
    wl.wait_counter()
    img = tmp_path / "x.img"
    with reaping(wl):
        rc, _, err = cpt("chkpnt", "--pid", wl.pid, "--dumpfile", img)
    assert rc == 16, err
    assert f"process {wl.pid} mapping " in err, err
    assert "an AIO context (io_setup) with 1 completed event(s) not reaped yet" in err, err
    assert len(err.strip().splitlines()) == 1 and not img.exists()
    c = wl.counter()
    assert wl.wait_counter(above=c) > c, "the tree runs on"
