"""End to end: a thread in strict seccomp mode (format 1.6 record SeccompStrict) through the
`cpt chkpnt --pid` / `cpt restore` commands.  The dump and the restore inject into it
with seccomp suspended for the tracer (PTRACE_O_SUSPEND_SECCOMP); the restore enters the
mode again in that thread.  fixtures/workloads/strict.c checks itself after restore (the
thread's Seccomp: 1, its echo through read/write, its exit)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from workloads import checkpoint, reaping, restore, workloads_fixture  # noqa: F401

from cptimage.container import ImageReader
from cptimage.records import SeccompFilter, SeccompStrict, SectionType

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="checkpoint/restore needs root (ptrace, clone3 set_tid)"
    ),
]


def seccomp_modes(pid: int) -> dict[int, int]:
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
            if line.startswith("Seccomp:"):
                out[int(tid)] = int(line.split()[1])
    return out


@pytest.mark.parametrize("leave_running", [False, True], ids=["kill", "leave-running"])
def test_strict_thread_checkpoint_restore(
    workloads, cpt, tmp_path: Path, leave_running: bool
) -> None:
    wl = workloads.start("strict")
    wl.wait_counter()
    modes = seccomp_modes(wl.pid)
    assert sorted(modes.values()) == [0, 1], modes
    img = tmp_path / "strict.img"
    checkpoint(cpt, wl, img, *(["--leave-running"] if leave_running else []))
    with ImageReader(str(img)) as r:
        recs = r.records(SectionType.PROCESS)
    strict = [x.tid for x in recs if isinstance(x, SeccompStrict)]
    assert strict == [t for t, m in modes.items() if m == 1], strict
    assert not [x for x in recs if isinstance(x, SeccompFilter)]
    if not leave_running:
        rc, out, err = cpt("image", "verify", img)
        assert rc == 0, out + err
        restore(cpt, wl, img)
        assert seccomp_modes(wl.pid) == modes, "the same thread in strict mode, the other not"
    wl.wait_counter()
    with reaping(wl):
        assert wl.finish() == "PASS"
