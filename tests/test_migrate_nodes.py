"""`cpt migrate` between two nodes over real OpenSSH (tests/nodes.py: nodes A and B are
network namespaces with their own node roots and sshd, a client on the same LAN).

Each test checks, after a success or a failure: the VE runs on exactly one node, the other
holds nothing of it (no config, area, cgroup, journal), and the error names the stage.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cptcli import REPO
from nodes import Cluster, NodeNs

pytestmark = [
    pytest.mark.root,
    pytest.mark.destructive,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="VEs, netns and btrfs need root"),
]

COUNTER = (
    "i=0; while :; do i=$((i+1)); echo $i > /root/count.tmp; mv /root/count.tmp /root/count; "
    "sleep 0.05; done"
)


def ok(node: NodeNs, *args: object, timeout: float = 180) -> str:
    rc, out, err = node.cpt(*args, timeout=timeout)
    assert rc == 0, f"{node.label}: cpt {' '.join(map(str, args))}: rc {rc}: {out}{err}"
    return out


def status(node: NodeNs, veid: str) -> str:
    rc, out, _ = node.cpt("ve", "status", veid, "--json")
    if rc != 0:
        return "absent"
    return str(json.loads(out)["status"])


def area(node: NodeNs, veid: str) -> Path:
    return node.root / "pool" / "private" / veid


def count(node: NodeNs, veid: str) -> int:
    p = area(node, veid) / "root" / "count"
    for _ in range(100):
        try:
            return int(p.read_text())
        except (ValueError, FileNotFoundError):
            time.sleep(0.02)
    raise AssertionError(f"{p} unreadable")


def ticks(node: NodeNs, veid: str) -> int:
    c = count(node, veid)
    deadline = time.monotonic() + 10
    while (n := count(node, veid)) <= c:
        assert time.monotonic() < deadline, f"{node.label}: VE {veid}'s counter does not run"
        time.sleep(0.05)
    return n


def ve_ip(c: Cluster, host: int) -> str:
    """A VE address off the LAN's subnet (198.19.N.HOST/32): the host side of a VE's veth
    takes the first host of the VE's subnet, which on the LAN is node A's address."""
    return f"198.19.{c.net}.{host}/32"


# 4 MiB held in a shell variable: memory that pre-copy sends once and the VE never writes
HOLD_4MIB = "held=$(head -c 4194304 /dev/zero | tr '\\0' a); "


def counter_ve(c: Cluster, veid: str, host: int = 10, hold: str = "") -> NodeNs:
    a = c.a
    ok(a, "ve", "create", veid, "--ip", ve_ip(c, host), "--", "/bin/sh", "-c", hold + COUNTER)
    (area(a, veid) / "root").mkdir(exist_ok=True)
    ok(a, "ve", "start", veid)
    ticks(a, veid)
    return a


def migrate(src: NodeNs, dst: NodeNs, veid: str, *args: str) -> tuple[int, str, str]:
    return src.cpt("migrate", *args, dst.host(), veid, "--ssh-opts", src.ssh_opts())


def only_on(node: NodeNs, other: NodeNs, veid: str) -> None:
    """The VE runs on `node`; `other` holds nothing of it but, if it left there, its
    .migrated config."""
    assert status(node, veid) == "running", status(node, veid)
    ticks(node, veid)
    assert status(other, veid) in ("absent", "migrated"), status(other, veid)
    assert not area(other, veid).exists()
    assert not (other.root / "ve" / f"{veid}.toml").exists()
    assert not (other.root / "run" / f"migrate-{veid}.json").exists()
    assert not list((other.root / "pool").glob(f"migrate/{veid}/*"))


def test_online_noiter_moves_a_running_ve(nodes: Cluster) -> None:
    a, b = nodes.a, nodes.b
    counter_ve(nodes, "201")
    pid_before = a.run(["cat", f"/proc/{_init(a, '201')}/status"]).stdout
    rc, out, err = migrate(a, b, "201", "--online", "--noiter", "-t")
    assert rc == 0, f"{out}{err}"
    assert "total frozen" in out, out
    n = count(b, "201")
    only_on(b, a, "201")
    assert count(b, "201") > n
    assert "NSpid" in pid_before
    ok(b, "ve", "stop", "201")


def _init(node: NodeNs, veid: str) -> int:
    return int(json.loads(ok(node, "ve", "status", veid, "--json"))["init_pid"])


# -- helpers of the fault tests


def bindir(c: Cluster) -> Path:
    """Where the remote login finds `cpt` (tests/nodes.py's wrapper)."""
    return Path(c.b.env["PATH"].split(":")[0])


def remote_fault(c: Cluster, spec: str) -> None:
    """The destination's agent (run over ssh) gets CPT_FAULT=spec."""
    w = bindir(c) / "cpt"
    text = w.read_text()
    w.write_text(text.replace("exec ", f"CPT_FAULT={spec} exec ", 1))


def agents(node: NodeNs) -> list[int]:
    """The pids of `cpt node serve` sessions of `node` (its CPT_ROOT)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in cmd and b"--stdio" in cmd and f"CPT_ROOT={node.root}".encode() in env:
            out.append(int(d.name))
    return out


def journal(node: NodeNs, veid: str) -> str:
    try:
        return (node.root / "run" / f"migrate-{veid}.json").read_text()
    except FileNotFoundError:
        return ""


def wait_for(cond, what: str, timeout: float = 180.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def one_line(err: str, *words: str) -> None:
    lines = [x for x in err.splitlines() if x.strip() and "fault injection" not in x]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], err


def never_frozen(node: NodeNs, veid: str) -> None:
    """A pre-flight refusal froze nothing: the VE runs, no stage state was left."""
    assert status(node, veid) == "running"
    ticks(node, veid)
    assert not list((node.root / "pool").glob(f"migrate/{veid}/*"))


# -- bad input and pre-flight refusals (nothing frozen)


def test_bad_input_and_preflight_refusals(nodes: Cluster) -> None:
    a, b = nodes.a, nodes.b
    counter_ve(nodes, "211")
    rc, _, err = migrate(a, b, "nosuch", "--online")
    assert rc == 21, err
    one_line(err, "nosuch", "does not exist")
    # unreachable: no host at that address
    rc, _, err = a.cpt("migrate", "--online", f"root@{nodes.addr(77)}", "211", "--ssh-opts",
                       a.ssh_opts())  # fmt: skip
    assert rc == 4, err
    one_line(err, "connect")
    never_frozen(a, "211")
    # the VEID on the destination
    ok(b, "ve", "create", "211", "--privileged", "--ip", ve_ip(nodes, 11))
    rc, _, err = migrate(a, b, "211", "--online")
    assert rc == 9, err
    one_line(err, "pre-flight", "exists on the destination")
    ok(b, "ve", "destroy", "211")
    never_frozen(a, "211")
    # its address held there by another VE
    ok(b, "ve", "create", "other", "--privileged", "--ip", ve_ip(nodes, 10))
    rc, _, err = migrate(a, b, "211", "--online")
    assert rc == 9, err
    one_line(err, "pre-flight", "VE other")
    ok(b, "ve", "destroy", "other")
    # another kernel there (the host check, simulated)
    remote_fault(nodes, "migrate:other-kernel")
    rc, _, err = migrate(a, b, "211", "--online", "--dry-run")
    assert rc == 17, err
    one_line(err, "pre-flight", "kernel")
    (bindir(nodes) / "cpt").write_text((bindir(nodes) / "cpt").read_text().replace(
        "CPT_FAULT=migrate:other-kernel ", ""))  # fmt: skip
    # the destination's pool too small
    fill = b.root / "pool" / "fill"
    free = os.statvfs(b.root / "pool").f_bavail * os.statvfs(b.root / "pool").f_frsize
    with open(fill, "wb") as f:  # less room than the VE's memory
        os.posix_fallocate(f.fileno(), 0, max(free - (128 << 10), 0))
    os.sync()  # btrfs counts the space taken at its commit
    try:
        rc, _, err = migrate(a, b, "211", "--online")
    finally:
        fill.unlink()
    assert rc == 6, err
    one_line(err, "pre-flight", "pool")
    never_frozen(a, "211")
    # locked here by another cpt command: 9, said to be the lock
    import fcntl

    with open(a.root / "run" / "ve-211.lock", "a") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        rc, _, err = migrate(a, b, "211", "--online")
    assert rc == 9, err
    one_line(err, "locked")
    assert "destination" not in err
    # a stopped VE: no online migration (2); --dry-run passes
    ok(a, "ve", "stop", "211")
    rc, _, err = migrate(a, b, "211", "--online")
    assert rc == 2, err
    one_line(err, "not running")
    out = ok(a, "migrate", "--dry-run", b.host(), "211", "--ssh-opts", a.ssh_opts())
    assert "pre-flight" in out and status(b, "211") == "absent"
    # a wrong host key: refused by ssh (4), nothing frozen
    ok(a, "ve", "start", "211")
    kh = Path(a.known_hosts)
    saved = kh.read_text()
    other = next(p for p in nodes.tmp.glob("sshd-a/ssh_host_ed25519_key.pub"))
    key = " ".join(other.read_text().split()[:2])
    kh.write_text("".join(
        f"{line.split()[0]} {key}\n" if line.startswith(b.addr) else line + "\n"
        for line in saved.splitlines()
    ))  # fmt: skip
    try:
        rc, _, err = migrate(a, b, "211", "--online")
    finally:
        kh.write_text(saved)
    assert rc == 4, err
    one_line(err, "connect")
    never_frozen(a, "211")
    assert status(b, "211") == "absent"


# -- faults at every stage


def test_destination_restore_failing_resumes_the_source(nodes: Cluster) -> None:
    a, b = nodes.a, nodes.b
    counter_ve(nodes, "221")
    remote_fault(nodes, "restore:memory")
    rc, _, err = migrate(a, b, "221", "--online", "--noiter")
    assert rc == 7, err
    one_line(err, "restore")
    only_on(a, b, "221")
    # a pre-dump is verified as it arrives, while the VE runs: one that came damaged
    # ends the migration there (6), the VE never frozen
    remote_fault(nodes, "migrate:damaged-predump")
    rc, _, err = migrate(a, b, "221", "--online", "--max-downtime", "2000")
    assert rc == 6, err
    one_line(err, "pre-dump P1-", "came damaged")
    only_on(a, b, "221")


def test_destination_pool_full_while_copying(nodes: Cluster) -> None:
    """The pre-flight found room; the pool filled up before the image came."""
    a, b = nodes.a, nodes.b
    counter_ve(nodes, "226")
    p = start_migrate(a, b, "226", "migrate:send:delay")
    fill = b.root / "pool" / "fill"
    try:
        wait_for(lambda: list(b.root.glob("pool/migrate/226/r0/*")), "nothing received")
        time.sleep(1.0)  # in the delay: frozen, the image not sent
        st = os.statvfs(b.root / "pool")
        with open(fill, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, max(st.f_bavail * st.f_frsize - (64 << 10), 0))
        _, err = p.communicate(timeout=240)
    finally:
        if p.poll() is None:
            p.kill()
        fill.unlink(missing_ok=True)
    assert p.returncode == 6, err
    one_line(err.decode(), "copy", "image")
    only_on(a, b, "226")


def test_destination_agent_killed(nodes: Cluster) -> None:
    a, b = nodes.a, nodes.b
    counter_ve(nodes, "222")
    remote_fault(nodes, "migrate:restore:delay")
    p = start_migrate(a, b, "222")
    try:
        wait_for(lambda: "restoring" in journal(b, "222"), "the destination never restored")
        for pid in agents(b):
            os.kill(pid, signal.SIGKILL)
        _, err = p.communicate(timeout=240)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 7, err
    assert "restore" in err.decode()
    only_on(a, b, "222")


def test_ssh_cut_during_restore_leaves_it_on_the_destination(nodes: Cluster) -> None:
    a, b = nodes.a, nodes.b
    counter_ve(nodes, "223")
    remote_fault(nodes, "migrate:restore:delay")
    p = start_migrate(a, b, "223")
    try:
        wait_for(lambda: "restoring" in journal(b, "223"), "the destination never restored")
        ssh = [c for c in _children(p.pid) if _comm(c) == "ssh"]
        assert ssh, "no ssh under cpt migrate"
        for pid in ssh:
            os.kill(pid, signal.SIGKILL)
        _, err = p.communicate(timeout=240)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert "runs on" in err.decode(), err
    only_on(b, a, "223")


def test_ssh_cut_while_copying_leaves_it_on_the_source(nodes: Cluster) -> None:
    a, b = nodes.a, nodes.b
    counter_ve(nodes, "224")
    p = start_migrate(a, b, "224", "migrate:send:delay")
    try:
        wait_for(lambda: list(b.root.glob("pool/migrate/224/r0/*")), "nothing received")
        time.sleep(1.0)  # in the delay: frozen, the image not sent
        for pid in [c for c in _children(p.pid) if _comm(c) == "ssh"]:
            os.kill(pid, signal.SIGKILL)
        _, err = p.communicate(timeout=240)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 6, err
    one_line(err.decode(), "copy")
    only_on(a, b, "224")


def test_source_killed_after_the_destination_resumed(nodes: Cluster) -> None:
    a, b = nodes.a, nodes.b
    counter_ve(nodes, "225")
    p = start_migrate(a, b, "225", "migrate:resumed:stall")
    try:
        wait_for(lambda: status(b, "225") == "running", "never resumed on the destination")
        time.sleep(1.0)
        os.kill(p.pid, signal.SIGKILL)
        p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert "running" not in status(a, "225"), status(a, "225")
    ticks(b, "225")
    # the next `cpt migrate` of the VE settles it
    rc, _, err = migrate(a, b, "225", "--online")
    assert rc == 0, err
    only_on(b, a, "225")


def start_migrate(a: NodeNs, b: NodeNs, veid: str, fault: str = "") -> subprocess.Popen[bytes]:
    """`cpt migrate --online --noiter` from A to B, running (CPT_FAULT=fault on A)."""
    argv = [sys.executable, "-m", "cli.main", "migrate", "--online", "--noiter", b.host(), veid,
            "--ssh-opts", a.ssh_opts()]  # fmt: skip
    env = dict(a.env, CPT_FAULT=fault) if fault else a.env
    return subprocess.Popen(a.argv(argv), env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip


def _children(pid: int) -> list[int]:
    out = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for t in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(x) for x in (t / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_online_precopy_sends_memory_while_it_runs(nodes: Cluster) -> None:
    """--online (pre-copy): passes while the VE runs, then only what is left frozen; the
    counter goes on over there, in the same in-VE process."""
    a, b = nodes.a, nodes.b
    counter_ve(nodes, "231", hold=HOLD_4MIB)
    before = ve_pids(a, "231")
    rc, out, err = migrate(a, b, "231", "--online", "--max-downtime", "2000", "--json")
    assert rc == 0, f"{out}{err}"
    rep = json.loads(out)
    assert rep["mode"] == "pre-copy" and len(rep["passes"]) >= 2, rep
    assert rep["passes"][0]["bytes"] >= 4 << 20, rep  # the held memory went in pass 1
    assert rep["bytes_final"] < rep["passes"][0]["bytes"], rep  # and not again, frozen
    assert rep["bytes_image"] <= 3 * rep["memory"] + (1 << 20), rep
    only_on(b, a, "231")
    assert ve_pids(b, "231") == before
    ok(b, "ve", "stop", "231")


def ve_pids(node: NodeNs, veid: str) -> set[int]:
    """The VE's long-lived processes as the VE sees them (the last NSpid of each; the
    counter's `sleep` and `mv` come and go)."""
    init = _init(node, veid)
    ns = os.readlink(f"/proc/{init}/ns/pid")
    out = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if os.readlink(d / "ns" / "pid") != ns:
                continue
            if (d / "comm").read_text().strip() in ("sleep", "mv"):
                continue
            for line in (d / "status").read_text().splitlines():
                if line.startswith("NSpid:"):
                    out.add(int(line.split()[-1]))
        except OSError:
            continue
    return out


def digest(root: Path, skip: tuple[str, ...] = ("root/count", "root/count.tmp")) -> dict[str, str]:
    """Every file of a private area: contents' digest, mode, owner (but `skip`)."""
    import hashlib

    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if rel in skip:
                continue
            st = p.lstat()
            data = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "-"
            out[rel] = f"{data}:{st.st_mode:o}:{st.st_uid}:{st.st_gid}"
    return out


def test_a_streaming_tcp_ve_goes_a_to_b_to_a(nodes: Cluster, tmp_path: Path) -> None:
    """The issue's end-to-end: a VE with a TCP echo server, a client on the LAN streaming
    to it the whole time, a counter and memory being written, migrates A -> B -> A
    online: no byte lost or reordered, no reset, the counter goes on, the in-VE PIDs and
    the private area are the same, nothing is left on the node it left, and the client
    changed nothing (it reaches the VE's address wherever it runs)."""
    a, b, client = nodes.a, nodes.b, nodes.client
    addr = nodes.addr(10)
    ok(a, "ve", "create", "241", "--ip", f"{addr}/24", "--", "/usr/bin/python3",
       "/root/echo_ve.py", "16", "1")  # fmt: skip
    (area(a, "241") / "root").mkdir(exist_ok=True)
    import shutil

    shutil.copy(REPO / "fixtures" / "workloads" / "echo_ve.py", area(a, "241") / "root")
    ok(a, "ve", "start", "241")
    ticks(a, "241")
    wait_for(lambda: client.connect(addr, 7), f"the client cannot reach {addr}:7")
    stop, verdict = tmp_path / "stop", tmp_path / "verdict.json"
    streamer = client.popen([sys.executable, REPO / "tests" / "stream_client.py", addr, "7",
                             stop, verdict])  # fmt: skip
    out = out2 = ""
    try:
        time.sleep(1.0)
        pids = ve_pids(a, "241")
        files = digest(area(a, "241"))
        c0 = count(a, "241")
        rc, out, err = migrate(a, b, "241", "--online", "--max-downtime", "2000", "-t")
        assert rc == 0, f"A -> B: {out}{err}"
        only_on(b, a, "241")
        assert count(b, "241") > c0
        assert ve_pids(b, "241") == pids
        assert digest(area(b, "241")) == files
        time.sleep(1.0)
        c1 = count(b, "241")
        rc, out2, err = b.cpt("migrate", "--online", "--max-downtime", "2000", "-t", a.host(),
                              "241", "--ssh-opts", b.ssh_opts())  # fmt: skip
        assert rc == 0, f"B -> A: {out2}{err}"
        only_on(a, b, "241")
        assert count(a, "241") > c1
        assert ve_pids(a, "241") == pids
        assert digest(area(a, "241")) == files
        time.sleep(1.0)
    finally:
        stop.write_text("")
        try:
            streamer.wait(90)
        finally:
            if streamer.poll() is None:
                streamer.kill()
    got = json.loads(verdict.read_text())

    def where() -> str:  # what a failure shows: the two reports, the nodes' proxies and routes
        nets = "".join(f"{n.name}: {n.sh('ip neigh show proxy; ip route')}" for n in (a, b))
        return f"{got}\nA->B:\n{out}B->A:\n{out2}{nets}"

    assert got["error"] == "", where()
    assert got["sent"] > 200 and got["echoed"] == got["sent"], where()
    print(f"A->B:\n{out}B->A:\n{out2}longest pause the client saw: {got['max_gap_s']:.3f} s")
    ok(a, "ve", "stop", "241")


def test_precopy_that_cannot_fit_aborts_and_the_ve_runs_on(nodes: Cluster) -> None:
    """A budget no switch-over can meet: the pre-copy stops making progress and aborts
    (8) without ever freezing the VE; --force would switch over all the same."""
    a, b = nodes.a, nodes.b
    counter_ve(nodes, "232")
    rc, _, err = migrate(a, b, "232", "--online", "--max-downtime", "1")
    assert rc == 8, err
    assert "pre-copy" in err and "--max-downtime 1 ms" in err, err
    only_on(a, b, "232")
