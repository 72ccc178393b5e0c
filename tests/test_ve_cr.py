"""VE checkpoint and restore through `cpt chkpnt VEID` / `cpt restore VEID`, each stage
its own command: real namespaces, real veth, a real loop-file btrfs pool.

A host client keeps an established TCP connection to an echo server in a VE across
--suspend, --dump, --kill and restore; a VE of several processes (a shell, the Python
and C counter workloads) comes back with the same in-VE PIDs and goes on counting; the
refusals (32, 31) and the rollback of a failed dump; nothing is left behind.  Addresses
are from 198.18.0.0/15 only.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from ve_node import Node, route
from workloads import SOURCES, build

pytestmark = [
    pytest.mark.root,
    pytest.mark.destructive,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="VEs need root (namespaces, veth, mounts)"),
]

ECHO = (
    "import socket\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', 7007)); s.listen()\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    while True:\n"
    "        d = c.recv(65536)\n"
    "        if not d:\n"
    "            break\n"
    "        c.sendall(d)\n"
    "    c.close()\n"
)


def status(node: Node, veid: str) -> str:
    return node.cpt("ve", "status", veid)[1].split()[-1]


def cgroup(node: Node, veid: str) -> Path:
    return node.cgroup(veid)


def ve_pids(node: Node, veid: str) -> dict[int, str]:
    """In-VE PID -> comm of every process of the running VE (from the host)."""
    out = {}
    for host_pid in (cgroup(node, veid) / "cgroup.procs").read_text().split():
        try:
            status = Path(f"/proc/{host_pid}/status").read_text()
            comm = Path(f"/proc/{host_pid}/comm").read_text().strip()
        except FileNotFoundError:
            continue
        nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
        out[int(nspid.split()[-1])] = comm
    return out


def connect(addr: str, port: int, timeout: float = 10.0) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection((addr, port), timeout=2)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def echo(c: socket.socket, data: bytes, timeout: float = 60.0) -> bytes:
    """Send `data`, return what comes back (all of it, or fail after `timeout`)."""
    c.settimeout(timeout)
    c.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = c.recv(65536)
        assert chunk, f"connection closed after {len(got)} of {len(data)} bytes"
        got += chunk
    return got


def test_tcp_connection_survives_staged_chkpnt_and_restore(node: Node) -> None:
    node.create("301", "--ip", "198.18.31.2/24", "--", "/usr/bin/python3", "-c", ECHO)
    assert node.cpt("ve", "start", "301")[0] == 0
    c = connect("198.18.31.2", 7007)
    try:
        sent = received = b""
        for i in range(20):
            msg = f"before {i:04d} ".encode() * 50
            sent += msg
            received += echo(c, msg)
        rc, out, err = node.cpt("chkpnt", "301", "--suspend")
        assert rc == 0, err
        assert status(node, "301") == "suspended"
        assert route("198.18.31.2").startswith("blackhole"), "held while suspended"
        # bytes sent to a frozen VE are dropped (no RST): TCP sends them again later
        during = b"while frozen " * 1000
        c.sendall(during)
        sent += during
        rc, out, err = node.cpt("chkpnt", "301", "--dump")
        assert rc == 0, err
        dumpfile = node.root / "dump" / "Dump.301"
        assert dumpfile.exists() and (dumpfile.stat().st_mode & 0o777) == 0o600
        rc, out, err = node.cpt("chkpnt", "301", "--kill")
        assert rc == 0, err
        assert status(node, "301") == "suspended", "a dump file waits: vzctl says suspended"
        assert not cgroup(node, "301").exists()
        assert (
            node.ifname("301")
            not in subprocess.run(["ip", "link"], capture_output=True, text=True).stdout
        )
        assert route("198.18.31.2").startswith("blackhole"), "held while dumped"
        rc, out, err = node.cpt("image", "show", dumpfile)
        assert rc == 0 and "VE 301" in out, out
        rc, out, err = node.cpt("restore", "301")
        assert rc == 0, err
        assert status(node, "301") == "running"
        assert not dumpfile.exists(), "a full restore removes the default dump file"
        assert f"dev {node.ifname('301')}" in route("198.18.31.2")
        # everything sent so far comes back, in order, on the same connection
        c.settimeout(60)
        while len(received) < len(sent):
            chunk = c.recv(65536)
            assert chunk, "the connection was closed"
            received += chunk
        assert received == sent
        for i in range(20):
            msg = f"after {i:04d} ".encode() * 50
            assert echo(c, msg) == msg
    finally:
        c.close()
    assert node.cpt("ve", "stop", "301", "--timeout", "2")[0] == 0


def _install_workloads(private: Path) -> None:
    bindir = private / "root" / "bin"
    bindir.mkdir(parents=True)
    shutil.copy(build("counter"), bindir / "counter")
    for name in ("counter.py", "_wl.py"):
        shutil.copy(SOURCES / name, bindir / name)


def _ready(path: Path, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return int(path.read_text())


def _count(wl: Path) -> int:
    return int((wl / "counter").read_text())


def test_multiprocess_ve_keeps_its_pids_and_state(node: Node) -> None:
    launcher = (
        "cd /root; mkdir -p c py; "
        "setsid bin/counter /root/c 8 </dev/null >/root/c/log 2>&1 & "
        "setsid python3 -E -s -B bin/counter.py /root/py </dev/null >/root/py/log 2>&1 & "
        "echo kept in tmpfs > /tmp/note; wait"
    )
    node.create("302", "--ip", "198.18.32.2/24", "--hostname", "ve302.test",
                "--", "/bin/sh", "-c", launcher)  # fmt: skip
    private = node.root / "pool" / "private" / "302"
    assert private.is_dir()
    _install_workloads(private)
    assert node.cpt("ve", "start", "302")[0] == 0
    c_dir, py_dir = private / "root" / "c", private / "root" / "py"
    c_pid, py_pid = _ready(c_dir / "ready"), _ready(py_dir / "ready")
    before = ve_pids(node, "302")
    assert before[1] == "init" and before[c_pid] == "counter" and c_pid != py_pid
    assert len(before) == 4, before  # init, sh, counter, python
    rc, out, err = node.cpt("chkpnt", "302")
    assert rc == 0, err
    assert status(node, "302") == "suspended"
    counted = _count(c_dir), _count(py_dir)
    time.sleep(0.3)
    assert (_count(c_dir), _count(py_dir)) == counted, "nothing runs while dumped"
    rc, out, err = node.cpt("restore", "302")
    assert rc == 0, err
    assert ve_pids(node, "302") == before, "the same in-VE PIDs"
    deadline = time.monotonic() + 10
    while _count(c_dir) <= counted[0] or _count(py_dir) <= counted[1]:
        assert time.monotonic() < deadline, "the counters did not go on"
        time.sleep(0.05)
    rc, out, _ = node.cpt("ve", "exec", "302", "--", "/bin/sh", "-c", "hostname; cat /tmp/note")
    assert rc == 0 and out.split("\n")[:2] == ["ve302.test", "kept in tmpfs"], out
    # the workloads check everything they set up (memory, pipe, thread, fds) at SIGTERM
    rc, _, err = node.cpt("ve", "exec", "302", "--", "/bin/kill", "-TERM", str(c_pid), str(py_pid))
    assert rc == 0, err
    for wl in (c_dir, py_dir):
        result = wl / "result"
        deadline = time.monotonic() + 20
        while not result.exists():
            assert time.monotonic() < deadline, f"{wl.name}: no result; log: {_log(wl)}"
            time.sleep(0.05)
        assert result.read_text() == "PASS\n", f"{wl.name}: {result.read_text()} {_log(wl)}"
    # its last processes gone, the VE ends by itself; its address stays held
    deadline = time.monotonic() + 10
    while status(node, "302") != "stopped":
        assert time.monotonic() < deadline, "the VE did not end with its processes"
        time.sleep(0.05)
    assert route("198.18.32.2").startswith("blackhole")
    assert node.cpt("ve", "stop", "302")[0] == 31
    assert not cgroup(node, "302").exists(), "what the ended VE left is cleared"


def _log(wl: Path) -> str:
    try:
        return (wl / "log").read_text()[-2000:]
    except OSError:
        return ""


def test_refusals_and_a_failed_dump_resumes_the_ve(node: Node) -> None:
    node.create("303", "--ip", "198.18.33.2/24", "--", "/usr/bin/python3", "-c", ECHO)
    rc, _, err = node.cpt("chkpnt", "303")
    assert rc == 31 and "not running" in err
    assert node.cpt("ve", "start", "303")[0] == 0
    rc, _, err = node.cpt("restore", "303", "--dumpfile", "/nonexistent/dump")
    assert rc == 32 and "running" in err, "refused before the dump file is looked at"
    c = connect("198.18.33.2", 7007)
    try:
        assert echo(c, b"hello") == b"hello"
        env = dict(node.env, CPT_FAULT="dump:pages")
        p = subprocess.run(
            [*node_cmd(), "chkpnt", "303"], env=env, capture_output=True, text=True, timeout=60
        )
        assert p.returncode == 16, p.stderr
        assert p.stderr.count("\n") == 1, p.stderr
        assert status(node, "303") == "running"
        assert not (node.root / "dump" / "Dump.303").exists()
        assert f"dev {node.ifname('303')}" in route("198.18.33.2")
        assert echo(c, b"still there") == b"still there"
        # a stage out of order
        rc, _, err = node.cpt("chkpnt", "303", "--dump")
        assert rc == 16 and "not suspended" in err
        rc, _, err = node.cpt("restore", "303", "--resume")
        assert rc == 31
        # undump, then resume, as separate commands
        assert node.cpt("chkpnt", "303")[0] == 0
        rc, _, err = node.cpt("restore", "303", "--undump")
        assert rc == 0, err
        assert status(node, "303") == "suspended"
        assert route("198.18.33.2").startswith("blackhole")
        rc, _, err = node.cpt("restore", "303", "--resume")
        assert rc == 0, err
        assert status(node, "303") == "running"
        assert echo(c, b"after undump and resume") == b"after undump and resume"
    finally:
        c.close()
    # chkpnt, then `ve start` restores from the dump file, as vzctl start does
    assert node.cpt("chkpnt", "303")[0] == 0
    rc, _, err = node.cpt("ve", "start", "303")
    assert rc == 0, err
    assert not (node.root / "dump" / "Dump.303").exists()
    c = connect("198.18.33.2", 7007)
    with c:
        assert echo(c, b"a new connection") == b"a new connection"
    assert node.cpt("ve", "stop", "303", "--timeout", "2")[0] == 0


def node_cmd() -> list[str]:
    from ve_node import CPT

    return list(CPT)


def test_nothing_is_left_behind(node: Node) -> None:
    """After the tests above: no veth, no cgroup, no stray mount of a VE remains."""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for veid in ("301", "302", "303"):
        assert node.ifname(veid) not in links
        assert not cgroup(node, veid).exists()
    with open("/proc/self/mountinfo") as f:
        assert "/private/30" not in f.read()
