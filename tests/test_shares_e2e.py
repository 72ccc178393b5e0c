"""End to end: an fd table and an fs struct shared between processes (CLONE_FILES,
CLONE_FS) through `cpt chkpnt --pid` / `cpt restore` (format 1.7: TaskShares).

fixtures/workloads/shares.c checks itself after restore (an fd opened by one process is in
the other's table, a chdir and umask of one are seen by the child sharing its fs and not
by the other); the test also checks the image and, with kcmp(2), that the restored
processes share the structures again.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest
from workloads import (  # noqa: F401
    checkpoint,
    descendants,
    image_records,
    reaping,
    restore,
    verdict_after_restore,
    workloads_fixture,
)

from cptimage.records import SectionType, ShareFlags, TaskShares

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="checkpoint/restore needs root (ptrace, clone3 set_tid)"
    ),
]

SYS_KCMP, KCMP_FILES, KCMP_FS = 312, 2, 3
_libc = ctypes.CDLL(None, use_errno=True)


def shared(a: int, b: int, kind: int) -> bool:
    r = _libc.syscall(SYS_KCMP, a, b, kind, 0, 0)
    assert r >= 0, os.strerror(ctypes.get_errno())
    return r == 0


def test_shared_fd_table_and_fs(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("shares")
    wl.wait_counter()
    c, d = sorted(descendants(wl.pid))
    assert shared(wl.pid, c, KCMP_FILES) and shared(wl.pid, c, KCMP_FS)
    assert shared(wl.pid, d, KCMP_FILES) and not shared(wl.pid, d, KCMP_FS)
    img = tmp_path / "shares.img"
    checkpoint(cpt, wl, img)
    recs = {r.pid: r.flags for r in image_records(img, SectionType.PROCESS, TaskShares)}
    assert recs == {c: ShareFlags.FILES | ShareFlags.FS, d: ShareFlags.FILES}, recs
    rc, out, err = cpt("image", "verify", img)
    assert rc == 0, out + err
    restore(cpt, wl, img)
    assert sorted(descendants(wl.pid)) == [c, d]
    assert shared(wl.pid, c, KCMP_FILES) and shared(wl.pid, c, KCMP_FS)
    assert shared(wl.pid, d, KCMP_FILES) and not shared(wl.pid, d, KCMP_FS)
    wl.wait_counter()
    with reaping(wl):
        assert wl.finish() == "PASS"


@pytest.mark.parametrize(
    ("item", "reason"),
    [("files", "that C opened on c.dat is not in the root's table"), ("fs", "C: cwd and umask")],
)
def test_shares_sabotage_after_restore(
    workloads, cpt, tmp_path: Path, item: str, reason: str
) -> None:
    verdict = verdict_after_restore(workloads, cpt, tmp_path, "shares", item)
    assert verdict.startswith("FAIL: ") and reason in verdict, verdict
