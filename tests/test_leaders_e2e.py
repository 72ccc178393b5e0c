"""End to end: sessions and process groups whose leader has exited, and mlockall(MCL_FUTURE),
through the `cpt chkpnt --pid` / `cpt restore` commands (format 1.7: Mm's LOCK_FUTURE).

fixtures/workloads/leaders.c checks itself after restore (each member's pid, ppid, pgid,
sid; its group still exists; no process holds a dead leader's PID; a mapping made after
restore in the MCL_FUTURE process is locked and populated); the tests also check the
image, /proc of the restored tree, and that a sabotaged restored workload fails.
"""

from __future__ import annotations

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

from cptimage.records import Mm, MmFlags, Process, SectionType

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="checkpoint/restore needs root (ptrace, clone3 set_tid)"
    ),
]


def ids(root: int) -> dict[int, tuple[int, int, int]]:
    """(ppid, pgid, sid) of every process of the tree, from /proc/PID/stat."""
    out = {}
    for pid in sorted(descendants(root) | {root}):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out[pid] = (int(fields[1]), int(fields[2]), int(fields[3]))
    return out


def test_dead_leaders_and_mlockall_future(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("leaders")
    wl.wait_counter()
    before = ids(wl.pid)
    dead = {p for _, pgid, sid in before.values() for p in (pgid, sid)} - set(before)
    assert len(dead) == 2, before  # A's group, S's session (and group)
    img = tmp_path / "leaders.img"
    checkpoint(cpt, wl, img)
    procs = image_records(img, SectionType.PROCESS, Process)
    assert {p.pid for p in procs} == set(before)
    flags = {m.pid: m.flags for m in image_records(img, SectionType.MM, Mm)}
    locked = [pid for pid, f in flags.items() if f & MmFlags.LOCK_FUTURE]
    assert len(locked) == 1 and not flags[locked[0]] & MmFlags.LOCK_ONFAULT, flags
    rc, out, err = cpt("image", "verify", img)
    assert rc == 0, out + err
    restore(cpt, wl, img)
    assert ids(wl.pid) == before, "the same parents, groups and sessions"
    assert not any(str(p) in os.listdir("/proc") for p in dead), "a temporary leader is left"
    wl.wait_counter()
    with reaping(wl):
        assert wl.finish() == "PASS"


@pytest.mark.parametrize(
    ("item", "reason"), [("pgid", "P pgid is"), ("mlock", "not locked: MCL_FUTURE lost")]
)
def test_leaders_sabotage_after_restore(
    workloads, cpt, tmp_path: Path, item: str, reason: str
) -> None:
    verdict = verdict_after_restore(workloads, cpt, tmp_path, "leaders", item)
    assert verdict.startswith("FAIL: ") and reason in verdict, verdict


def test_dead_session_members_of_two_parents_refused() -> None:
    """A session whose leader exited, with members whose parents differ and are outside it,
    is refused before the freeze, naming the session; one parent is accepted."""
    from cpt.dump.pstree import TaskInfo, check_sessions
    from cpt.errors import DumpError

    def info(pid: int, ppid: int, pgid: int, sid: int) -> TaskInfo:
        return TaskInfo(pid, ppid, pgid, sid, False, 0, "x", [pid], [pgid], [sid])

    tree = {1: info(1, 0, 1, 1), 2: info(2, 1, 2, 1), 3: info(3, 1, 9, 9), 4: info(4, 2, 9, 9)}
    with pytest.raises(DumpError, match=r"session 9, whose leader exited, .*\[1, 2\]"):
        check_sessions(tree, 1)
    tree[4] = info(4, 3, 9, 9)
    check_sessions(tree, 1)
