"""End to end: guard regions (format 1.6 record GuardRegion), mlock and madvise flags,
through the `cpt chkpnt --pid` / `cpt restore` commands.

fixtures/workloads/memflags.c checks itself after restore (pagemap's guard bit and a failing
read of each guard page, VmFlags of every region, VmLck, the bytes of every page, and a
child forked after restore: no DONTFORK region, zeros in the WIPEONFORK one).  A guard page
used to fail the dump with EIO (PAGEMAP_SCAN reports it as swapped; reading it faults).
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

from cpt.dump import dumper, pages
from cpt.dump.options import DumpOptions
from cpt.stages.stage import Stage
from cpt.stages.trees import TreeStages
from cptimage.records import GuardRegion, SectionType, Vma, VmFlags

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="checkpoint/restore needs root (ptrace, clone3 set_tid)"
    ),
]


def guards(img: Path) -> list[GuardRegion]:
    return image_records(img, SectionType.MM, GuardRegion)


def test_memflags_checkpoint_restore(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("memflags")
    wl.wait_counter()
    img = tmp_path / "memflags.img"
    checkpoint(cpt, wl, img)
    got = guards(img)
    assert len(got) == 2 and all(g.end - g.start == 4096 and g.pid == wl.pid for g in got), got
    assert got[1].start - got[0].start == 2 * 4096, "pages 1 and 3 of one region"
    rc, out, err = cpt("image", "verify", img)
    assert rc == 0, out + err
    restore(cpt, wl, img)
    wl.wait_counter()
    with reaping(wl):
        assert wl.finish() == "PASS"


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ("guard", "guard page 1: pagemap 0, guard bit clear"),
        ("wipe", "wipeonfork: the forked child reads bytes that are not zero"),
    ],
)
def test_memflags_sabotage_after_restore(
    workloads, cpt, tmp_path: Path, item: str, reason: str
) -> None:
    verdict = verdict_after_restore(workloads, cpt, tmp_path, "memflags", item)
    assert verdict.startswith("FAIL: ") and reason in verdict, verdict


def test_memflags_leave_running(workloads, cpt, tmp_path: Path) -> None:
    """A dump that lets the tree run leaves its guard pages, locks and flags as they were."""
    wl = workloads.start("memflags")
    wl.wait_counter()
    checkpoint(cpt, wl, tmp_path / "memflags.img", "--leave-running")
    assert len(guards(tmp_path / "memflags.img")) == 2
    with reaping(wl):
        assert wl.finish() == "PASS"


def test_memflags_run_from_a_memfd(workloads, cpt, tmp_path: Path) -> None:
    """A process started by exec of a memfd (fexecve): its exe and its code are the memfd's
    after restore as before (the workload checks /proc/self/exe and where its code is)."""
    wl = workloads.start("memflags", env={"CPT_WL_MEMFD_EXEC": "1"})
    wl.wait_counter()
    exe = os.readlink(f"/proc/{wl.pid}/exe")
    assert exe == "/memfd:memflags (deleted)", exe
    img = tmp_path / "memflags.img"
    checkpoint(cpt, wl, img)
    restore(cpt, wl, img)
    assert os.readlink(f"/proc/{wl.pid}/exe") == exe
    wl.wait_counter()
    with reaping(wl):
        assert wl.finish() == "PASS"


def test_memflags_read_on_the_second_thread(
    workloads, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The VmFlags and guard regions a dump reads on its second thread (DumpReads: a
    process with AHEAD_BYTES of memory, here any) are those it reads in line, in a full
    dump (the pages chosen by them) and in a leave-running one (the last round scanning
    meanwhile); the guard regions found by scanning only the mappings smaps marks "gu"
    are those a scan of the whole address space finds; the tree runs on unharmed."""
    monkeypatch.setenv("CPT_RUN_DIR", str(tmp_path / "run"))
    wl = workloads.start("memflags")
    wl.wait_counter()
    st = TreeStages(wl.pid)
    got = {}
    runs = [("staged", 0), ("leave-running", 0), ("in line", 1 << 62), ("whole span", 1 << 62)]
    for name, ahead in runs:
        monkeypatch.setattr(dumper, "AHEAD_BYTES", ahead)
        if name == "whole span":
            monkeypatch.setattr(pages, "guard_vmflag", lambda: False)
        img = tmp_path / f"{name}.img"
        if name == "staged":
            st.chkpnt(Stage.SUSPEND)
            st.chkpnt(Stage.DUMP, str(img), DumpOptions())
            st.chkpnt(Stage.RESUME)
        else:
            st.chkpnt(Stage.CHKPNT, str(img), DumpOptions(leave_running=True))
        vmas = image_records(img, SectionType.MM, Vma)
        got[name] = (
            [(v.start, v.end, v.vmflags, v.flags) for v in vmas],
            [(g.start, g.end) for g in guards(img)],
        )
    assert got["staged"] == got["in line"] == got["leave-running"] == got["whole span"]
    flags = [f for _, _, f, _ in got["in line"][0]]
    for bit in (VmFlags.WIPEONFORK, VmFlags.DONTFORK, VmFlags.LOCKED):
        assert any(f & bit for f in flags), bit
    assert len(got["in line"][1]) == 2
    with reaping(wl):
        assert wl.finish() == "PASS"
