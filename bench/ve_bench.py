"""VE checkpoint/restore benchmark: a VE that contains its root, a privileged VE and the
same process tree by PID, one run.

Workload: 8 counter processes (fixtures/workloads/counter.c) with 32 MiB of touched
anonymous memory each, started by a shell: with the VE's init, 10 processes and 256 MiB.
The same launcher runs as a VE of each kind (template host, its own namespaces, veth, a
private area on the node's loop-file btrfs pool; the first in a user namespace of its
own with locked mounts and a seccomp filter, the second `--privileged`) and once as a
plain tree on the host (under a small parent that reaps it).  Per round (best of
--rounds kept for every figure):

  VE start        VEManager.start(): namespaces (a user namespace first for the VE that
                  contains its root), mounts, cgroup, veth, network, its init; wall time

  VE chkpnt       VeStages.chkpnt(CHKPNT): suspend (freeze the VE's cgroup, link down,
                  blackhole), dump (namespaces, mounts with their tmpfs contents,
                  network, the tree), kill; wall time and frozen time (freeze to kill)
  VE restore      VeStages.restore(RESTORE): verify, new namespaces, mounts, veth and
                  addresses, the tree, link up; wall time
  tree chkpnt     cpt.stages.dump.checkpoint() of the same launcher by PID (dump + kill)
  tree restore    open_for_restore() + cpt.stages.restore.restore()

and, in the same run, the physical limit of a dump: process_vm_readv of the same pages
of the 8 counters (one 16 MiB buffer), write() into one file, fsync (a full chkpnt makes
the dump file durable before it kills: that fsync is inside its frozen time).  The VE's
overhead is VE - tree; pages are compared with readv + write, chkpnt and frozen with
readv + write + fsync; what containing its root costs is VE / privileged (the target of
issue 12: within 10% for start, chkpnt and restore).  The order of the two VEs alternates
between rounds.

Before every timed step the memory is warmed up as in cr_bench (quiet()).  Everything
runs in this process (no interpreter start-up timed); this process is a
child subreaper and reaps every VE init and restored root by PID.  Needs root; prints a
note and exits 0 otherwise.

    python bench/ve_bench.py [--rounds 3] [--json FILE|-]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import mmap
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from cr_bench import (  # noqa: E402
    BUF_SIZE,
    PARENT,
    WARM_EXTRA,
    batches,
    dumped_ranges,
    freed,
    machine,
    settle,
    warm,
)
from workloads import build  # noqa: E402

from cpt.dump.options import DumpOptions  # noqa: E402
from cpt.stages.dump import checkpoint  # noqa: E402
from cpt.stages.restore import open_for_restore, restore  # noqa: E402
from cpt.stages.stage import Stage  # noqa: E402
from cpt.stages.tree import Tree  # noqa: E402
from cpt.sys.mem import process_vm_readv  # noqa: E402

MiB = 1 << 20
COUNTERS = 8
MIB_EACH = 32
VEID = "9301"  # contains its root
IP = "198.18.93.2/24"
PRIV_VEID = "9302"  # privileged
PRIV_IP = "198.18.93.3/24"
PR_SET_CHILD_SUBREAPER = 36


def launcher(exe: str, workdir: str) -> str:
    """sh starting the counters (each in DIR/N) and waiting for them."""
    cmds = [
        f"mkdir -p {workdir}/{i}; {exe} {workdir}/{i} {MIB_EACH} "
        f"</dev/null >{workdir}/{i}/log 2>&1 &"
        for i in range(COUNTERS)
    ]
    return " ".join(cmds) + " wait"


def wait_ready(workdir: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    for i in range(COUNTERS):
        ready = workdir / str(i) / "ready"
        while not ready.exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"counter {i} never became ready ({ready})")
            time.sleep(0.02)


def counters_of(root_pid: int) -> list[int]:
    """Host PIDs of the counters under a root (its children and theirs)."""
    out = []
    todo = [root_pid]
    while todo:
        pid = todo.pop()
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except FileNotFoundError:
            continue
        if comm.startswith("counter"):  # counter, or the cached counter-HASH
            out.append(pid)
        todo += [int(k) for k in kids]
    return out


def floor(pids: list[int], path: str) -> tuple[float, float, int]:
    """The physical limit of dumping these processes' pages: process_vm_readv of the pages
    the engine saves into one pre-faulted 16 MiB buffer, write() into one file, then fsync
    (a full chkpnt makes its file durable before it kills).  Returns (seconds to the last
    write, seconds with the fsync, bytes)."""
    buf = mmap.mmap(-1, BUF_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
    view = memoryview(buf)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    total = 0
    try:
        t0 = time.perf_counter()
        for pid in pids:
            for batch in batches(dumped_ranges(pid), BUF_SIZE):
                n = process_vm_readv(pid, batch, buf)
                total += n
                off = 0
                while off < n:
                    off += os.write(fd, view[off:n])
        written = time.perf_counter() - t0
        os.fsync(fd)
        durable = time.perf_counter() - t0
    finally:
        os.close(fd)
        os.unlink(path)
        view.release()
        buf.close()
    return written, durable, total


NEED = COUNTERS * MIB_EACH * MiB + WARM_EXTRA


def quiet(directory: str | None = None) -> None:
    """Before a timed step, as cr_bench does (see cr_bench.warm): let this VM's page
    reporting pass, then touch and free as much memory of the kind the step allocates
    (page cache in `directory`, else anonymous memory): a first touch of memory the host
    took back runs ~6x slower and decided the VE's figures by chance (pages 103 to 406 ms
    for the same dump)."""
    if directory is not None:
        os.makedirs(directory, exist_ok=True)
    freed()
    settle()
    warm(NEED, directory)


def reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def ve_round(veid: str, binary: Path, tmp: str) -> dict[str, float]:
    from snapshot.hooks import ve_manager

    mgr = ve_manager()
    cfg = mgr.config(veid)
    bindir = Path(cfg.private) / "root" / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    shutil.copy(binary, bindir / "counter")
    work = Path(cfg.private) / "root" / "w"
    shutil.rmtree(work, ignore_errors=True)
    quiet()
    t0 = time.perf_counter()
    rt = mgr.start(veid)
    boot = time.perf_counter() - t0
    wait_ready(work)
    quiet(tmp)
    floor_s, durable, floor_bytes = floor(counters_of(rt.init_pid), os.path.join(tmp, "floor"))
    ve = mgr.stages(veid)
    quiet(os.path.dirname(mgr.node.default_dumpfile(veid)))
    t0 = time.perf_counter()
    dstats = ve.chkpnt(Stage.CHKPNT, opts=DumpOptions())
    chk = time.perf_counter() - t0
    assert dstats is not None
    size = os.path.getsize(mgr.node.default_dumpfile(veid))
    reap(rt.init_pid)
    quiet()
    t0 = time.perf_counter()
    rstats = ve.restore(Stage.RESTORE)
    rst = time.perf_counter() - t0
    assert rstats is not None
    new = mgr.runtime(veid)
    assert new is not None and len(counters_of(new.init_pid)) == COUNTERS
    mgr.stop(veid, timeout=0.5)
    reap(new.init_pid)
    return dict(
        start=boot, chkpnt=chk, frozen=dstats.frozen_s, restore=rst, image=size,
        state=dstats.state_s, pages=dstats.pages_s,
        floor=floor_s, floor_bytes=floor_bytes, durable=durable,
    )  # fmt: skip


def tree_round(binary: Path, tmp: str) -> dict[str, float]:
    work = Path(tmp) / "tree"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    script = launcher(str(binary), str(work))
    parent = subprocess.Popen(
        [sys.executable, "-I", "-c", PARENT, "/bin/sh", "-c", script],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        cwd=tmp, close_fds=True,
    )  # fmt: skip
    wait_ready(work)
    kids = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
    root = int(kids[0])
    img = os.path.join(tmp, "tree.img")
    quiet(tmp)
    t0 = time.perf_counter()
    dstats = checkpoint(Tree(root), img, DumpOptions())
    chk = time.perf_counter() - t0
    parent.wait()
    quiet()
    t0 = time.perf_counter()
    with open_for_restore(img) as reader:
        rstats = restore(Tree(root), reader)
    rst = time.perf_counter() - t0
    restored = [rstats.host_pid, *counters_of(rstats.host_pid)]
    assert len(restored) == COUNTERS + 1, restored
    for pid in restored:  # the shell is our child; its counters come to us (subreaper)
        os.kill(pid, signal.SIGKILL)
    for pid in restored:
        reap(pid)
    os.unlink(img)
    return dict(
        chkpnt=chk, frozen=dstats.frozen_s, restore=rst, state=dstats.state_s,
        pages=dstats.pages_s,
    )  # fmt: skip


def ms(s: float) -> str:
    return f"{s * 1000:8.1f} ms"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="write the results as JSON to FILE (- for stdout)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("ve_bench: needs root (namespaces, veth, loop devices); skipped")
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    binary = build("counter")
    tmp = tempfile.mkdtemp(prefix="cpt-ve-bench-")
    node_root = os.path.join(tmp, "node")
    os.environ["CPT_ROOT"] = node_root
    os.environ["CPT_IDMAP_DIR"] = os.path.join(tmp, "ids")  # never the machine's /etc/subuid
    from snapshot.hooks import ve_manager
    from storage import pool

    mgr = ve_manager()
    results: dict[str, list[dict[str, float]]] = {"ve": [], "privileged": [], "tree": []}
    command = ["/bin/sh", "-c", launcher("/root/bin/counter", "/root/w")]
    try:
        mgr.create(VEID, ip=IP, template="host", command=command)
        mgr.create(PRIV_VEID, ip=PRIV_IP, template="host", command=command, privileged=True)
        for r in range(args.rounds):
            # alternate the order: neither kind always runs on a machine the other warmed
            kinds = [("ve", VEID), ("privileged", PRIV_VEID)]
            for kind, veid in kinds if r % 2 == 0 else kinds[::-1]:
                results[kind].append(ve_round(veid, binary, tmp))
            results["tree"].append(tree_round(binary, tmp))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        for veid in (VEID, PRIV_VEID):
            with contextlib.suppress(Exception):
                mgr.stop(veid, timeout=0.5)
            with contextlib.suppress(Exception):
                mgr.destroy(veid)
        pool.teardown(node_root)
        shutil.rmtree(tmp, ignore_errors=True)
    best = {kind: {k: min(r[k] for r in rows) for k in rows[0]} for kind, rows in results.items()}
    ve, priv, tree = best["ve"], best["privileged"], best["tree"]
    lim = {"pages": ve["floor"], "chkpnt": ve["durable"], "frozen": ve["durable"]}
    lines = [
        f"VE {VEID} (contains its root) and VE {PRIV_VEID} (privileged): {COUNTERS + 2} "
        f"processes, {COUNTERS * MIB_EACH} MiB each; tree by PID: {COUNTERS + 1} processes; "
        f"best of {args.rounds}",
        f"physical limit, the same {ve['floor_bytes'] / MiB:.0f} MiB: readv + write "
        f"{ms(ve['floor'])}, + fsync {ms(ve['durable'])} (a full chkpnt makes its file "
        f"durable before the kill: inside its frozen time)",
        f"{'':10}{'VE':>12}{'privileged':>12}{'VE/priv':>9}{'tree':>12}{'VE - tree':>12}"
        f"{'VE/limit':>10}",
    ]
    for k in ("start", "chkpnt", "frozen", "state", "pages", "restore"):
        ratio = f"{ve[k] / lim[k]:9.2f}x" if k in lim else f"{'':>10}"
        t = ms(tree[k]) if k in tree else f"{'-':>11}"
        d = ms(ve[k] - tree[k]) if k in tree else f"{'-':>11}"
        lines.append(f"{k:10}{ms(ve[k])}{ms(priv[k])}{ve[k] / priv[k]:8.2f}x{t}{d}{ratio}")
    lines.append(f"VE image: {ve['image'] / MiB:.1f} MiB, privileged {priv['image'] / MiB:.1f} MiB")
    print("\n".join(lines))
    doc: dict[str, Any] = {"machine": machine(), "best": best, "rounds": results}
    if args.json == "-":
        print(json.dumps(doc, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
