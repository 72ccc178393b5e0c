"""SysV IPC and POSIX message queues through `cpt chkpnt` / `cpt restore`.

The sysvipc workload checks ids, keys, contents, sharing, SHM_DEST segments, semaphore
values, message order and queue attributes itself after restore.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from workloads import Workload, reaping, workloads_fixture  # noqa: F401

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="checkpoint/restore needs root"),
]


def ipc_ns(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/ipc")


def test_a_tree_with_its_own_ipc_namespace(workloads, cpt, tmp_path: Path) -> None:
    """Every object of the namespace is dumped; restore makes a new namespace with them."""
    wl: Workload = workloads.start("sysvipc", "ns")
    wl.wait_counter()
    before = ipc_ns(wl.pid)
    assert before != ipc_ns(os.getpid())
    img = tmp_path / "ns.img"
    with reaping(wl):
        rc, _, err = cpt("chkpnt", "--pid", wl.pid, "--dumpfile", img)
    assert rc == 0, err
    assert cpt("image", "verify", img)[0] == 0
    rc, _, err = cpt("restore", "--dumpfile", img)
    assert rc == 0, err
    wl.refresh()
    after = ipc_ns(wl.pid)
    assert after != ipc_ns(os.getpid()), "restored into a namespace of its own"
    with reaping(wl):
        assert wl.finish() == "PASS"


def test_ids_in_use_are_refused_unless_ipcns(workloads, cpt, tmp_path: Path) -> None:
    """The original keeps its segment (suspended): a restore into this namespace would need
    the same id; --ipcns (with --pidns for the PIDs) restores a copy beside it."""
    wl: Workload = workloads.start("sysvipc")
    wl.wait_counter()
    img = tmp_path / "host.img"
    assert cpt("chkpnt", "--pid", wl.pid, "--suspend")[0] == 0
    assert cpt("chkpnt", "--pid", wl.pid, "--dump", "--dumpfile", img)[0] == 0
    rc, _, err = cpt("restore", "--dumpfile", img, "--pidns")
    assert rc == 17 and "SysV shared memory id" in err and "--ipcns" in err, err
    rc, _, err = cpt(
        "restore", "--dumpfile", img, "--pidns", "--ipcns", "--pidfile", tmp_path / "p"
    )
    assert rc == 0, err
    copy = int((tmp_path / "p").read_text())
    # the copy's PID namespace: its init (the copy's parent) takes every process of it along
    with open(f"/proc/{copy}/stat") as f:
        init = int(f.read().rsplit(")", 1)[1].split()[1])
    try:
        assert ipc_ns(copy) != ipc_ns(wl.pid)
        with open(f"/proc/{copy}/maps") as f:
            assert "/SYSV00000000 (deleted)" in f.read()
    finally:
        os.kill(init, signal.SIGKILL)
    assert cpt("chkpnt", "--pid", wl.pid, "--resume")[0] == 0
    with reaping(wl):
        assert wl.finish() == "PASS"
