"""cpt.sys.clone.fork_into_cgroup: os.fork whose child starts in a cgroup (clone3
CLONE_INTO_CGROUP), as ve start forks a VE's first process.  Needs root (cgroups)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from cpt.sys.cgroup import Freezer
from cpt.sys.clone import fork_into_cgroup

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="cgroups need root"),
]

# run in a fresh interpreter of one thread (pytest's may have more)
CHILD = r"""
import json, os, sys, threading
from cpt.sys.clone import _tid_address, fork_into_cgroup
seen = []
os.register_at_fork(after_in_child=lambda: seen.append("child"),
                    after_in_parent=lambda: seen.append("parent"))
r, w = os.pipe()
pid = fork_into_cgroup(sys.argv[1])
if pid == 0:
    out = dict(cgroup=open("/proc/self/cgroup").read(), pid=os.getpid(),
               native=threading.get_native_id(), glibc_tid=_tid_address() is not None,
               hooks=seen)
    os.write(w, json.dumps(out).encode())
    os._exit(0)
os.close(w)
got = json.loads(os.read(r, 65536))
_, status = os.waitpid(pid, 0)
print(json.dumps(dict(child=got, pid=pid, status=status, hooks=seen,
                      cgroup=open("/proc/self/cgroup").read())))
"""


@pytest.fixture
def freezer():
    fz = Freezer(f"test-clone-{os.getpid()}")
    fz.create()
    try:
        yield fz
    finally:
        fz.kill_all()
        fz.remove()


def test_the_child_starts_in_the_cgroup_as_a_forked_python(freezer: Freezer) -> None:
    """The child is in the cgroup from its first instruction, the parent stays where it
    was; the child is a whole Python process (its pid, glibc's tid, fork hooks run)."""
    p = subprocess.run([sys.executable, "-c", CHILD, freezer.path], capture_output=True,
                       text=True, timeout=30)  # fmt: skip
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    child = out["child"]
    assert f"0::{freezer.rel}\n" in child["cgroup"], child["cgroup"]
    assert freezer.rel not in out["cgroup"]
    assert child["pid"] == out["pid"] == child["native"], out
    assert child["glibc_tid"], "glibc's thread block holds the child's own tid"
    assert child["hooks"] == ["child"] and out["hooks"] == ["parent"], out
    assert out["status"] == 0


def test_it_declines_while_another_thread_runs(freezer: Freezer) -> None:
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert fork_into_cgroup(freezer.path) is None
    finally:
        stop.set()
        t.join()
    assert freezer.procs() == []
