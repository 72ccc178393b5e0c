"""End to end: sockets checkpointed, killed and restored through the `cpt` command.

unixzoo (every kind of unix socket, queues both ways, a pending connection, a shared
socket) and tcpzoo (listeners, UDP, a TCP connection inside the tree, and one to a peer
process OUTSIDE the tree, in a network namespace this test creates, joined by a veth pair
with addresses from 198.18.0.0/15) check themselves after restore; the peer checks that
every byte arrived in order and that it never saw a reset.  The refusals are checked too:
what they say, and that the tree runs on untouched.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from workloads import SOURCES, Workload, reaping, workloads_fixture  # noqa: F401

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="checkpoint/restore needs root (ptrace, TCP_REPAIR, netns)"
    ),
]

PEER = SOURCES / "_tcp_peer.py"


def checkpoint(cpt, wl: Workload, img: Path, *extra: object) -> str:  # type: ignore[no-untyped-def]
    with reaping(wl):
        rc, out, err = cpt("chkpnt", "--pid", wl.pid, "--dumpfile", img, *extra)
    assert rc == 0, err
    return out


def restore(cpt, wl: Workload, img: Path) -> None:  # type: ignore[no-untyped-def]
    rc, _, err = cpt("restore", "--dumpfile", img)
    assert rc == 0, err
    wl.refresh()


def nft_rules() -> str:
    """Our drop rules (empty when cpt's table does not exist)."""
    p = subprocess.run(["nft", "list", "table", "inet", "cpt"], capture_output=True, text=True)
    return p.stdout if p.returncode == 0 else ""


# --------------------------------------------------------------------------- unix


def test_unixzoo_checkpoint_kill_restore(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("unixzoo")
    wl.wait_counter(by=2)
    checkpoint(cpt, wl, tmp_path / "d.img")
    assert not os.path.exists(f"/proc/{wl.pid}")
    restore(cpt, wl, tmp_path / "d.img")
    wl.wait_counter(by=2)
    with reaping(wl):
        assert wl.finish() == "PASS"


def test_unixzoo_leave_running_consumes_nothing(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("unixzoo")
    wl.wait_counter()
    checkpoint(cpt, wl, tmp_path / "d.img", "--leave-running")
    wl.wait_counter(by=2)
    with reaping(wl):
        assert wl.finish() == "PASS"


@pytest.fixture
def dgram_server(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A /dev/log-like datagram server outside the tree."""
    path = str(tmp_path / "log.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(10)
    try:
        yield s, path
    finally:
        s.close()


def test_external_unix_peer_refused_then_reconnected(
    workloads, cpt, tmp_path: Path, dgram_server: tuple[socket.socket, str]
) -> None:
    server, path = dgram_server
    wl = workloads.start("unixzoo", path)
    wl.wait_counter()
    rc, _, err = cpt("chkpnt", "--pid", wl.pid, "--dumpfile", tmp_path / "d.img")
    assert rc == 16, err
    assert f"process {wl.pid} fd " in err and "outside the tree" in err and path in err, err
    assert "--ext-unix-sk" in err, err
    assert not (tmp_path / "d.img").exists()
    wl.wait_counter(by=2)  # untouched, running
    checkpoint(cpt, wl, tmp_path / "d.img", "--ext-unix-sk")
    restore(cpt, wl, tmp_path / "d.img")
    wl.wait_counter()
    with reaping(wl):
        assert wl.finish() == "PASS"
    assert server.recv(100) == b"unixzoo %d still connected" % wl.pid


def test_external_unix_stream_refused_even_with_flag(cpt, tmp_path: Path) -> None:
    """A stream connection to an outside listener cannot be handed back to it."""
    path = str(tmp_path / "srv.sock")
    lsn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsn.bind(path)
    lsn.listen(1)
    code = f"import socket,time;s=socket.socket(socket.AF_UNIX);s.connect({path!r});time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        conn, _ = lsn.accept()
        rc, _, err = cpt(
            "chkpnt", "--pid", child.pid, "--dumpfile", tmp_path / "d.img", "--ext-unix-sk"
        )
        assert rc == 16, err
        assert f"process {child.pid} fd 3" in err and "only datagram sockets" in err, err
        assert child.poll() is None
        conn.close()
    finally:
        child.kill()
        child.wait()
        lsn.close()


# --------------------------------------------------------------------------- TCP


class NetNs:
    """A network namespace joined to this one by a veth pair: HOST_IP here, PEER_IP there."""

    def __init__(self) -> None:
        n = os.getpid() % 250 + 1
        self.name = f"cpt-test-{os.getpid()}"
        self.veth = f"cptv{os.getpid() % 100000}"
        self.host_ip = f"198.18.{n}.1"
        self.peer_ip = f"198.18.{n}.2"

    def ip(self, *args: str, ns: bool = False) -> None:
        argv = ["ip", *(["-n", self.name] if ns else []), *args]
        subprocess.run(argv, check=True, capture_output=True)

    def create(self) -> None:
        self.ip("netns", "add", self.name)
        self.ip(
            "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.name
        )
        self.ip("addr", "add", f"{self.host_ip}/30", "dev", self.veth)
        self.ip("link", "set", self.veth, "up")
        self.ip("addr", "add", f"{self.peer_ip}/30", "dev", "eth0", ns=True)
        self.ip("link", "set", "eth0", "up", ns=True)
        self.ip("link", "set", "lo", "up", ns=True)

    def destroy(self) -> None:
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


@pytest.fixture
def netns() -> Iterator[NetNs]:
    ns = NetNs()
    try:
        ns.create()
        yield ns
    finally:
        ns.destroy()


class Peer:
    """_tcp_peer.py running in the test's network namespace (not part of any tree)."""

    def __init__(self, ns: NetNs, status: Path) -> None:
        self.status_path = status
        self.port = 40000 + os.getpid() % 20000
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns.name,
                sys.executable,
                str(PEER),
                ns.peer_ip,
                str(self.port),
                str(status),
            ],
            stdin=subprocess.DEVNULL,
        )
        self.wait(lambda st: st["state"] in ("listening", "connected"))

    def status(self) -> dict:  # type: ignore[type-arg]
        try:
            return json.loads(self.status_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {"state": "starting"}

    def wait(self, cond, timeout: float = 10.0) -> dict:  # type: ignore[no-untyped-def,type-arg]
        deadline = time.monotonic() + timeout
        while not cond(st := self.status()):
            assert self.proc.poll() is None, "the peer exited"
            assert time.monotonic() < deadline, f"peer status {st}"
            time.sleep(0.02)
        return st

    def stop(self) -> dict:  # type: ignore[type-arg]
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.status()


@pytest.fixture
def peer(netns: NetNs, tmp_path: Path) -> Iterator[Peer]:
    p = Peer(netns, tmp_path / "peer.json")
    try:
        yield p
    finally:
        p.stop()


def start_tcpzoo(workloads, netns: NetNs, peer: Peer) -> Workload:  # type: ignore[no-untyped-def]
    wl = workloads.start("tcpzoo", netns.peer_ip, str(peer.port), netns.host_ip)
    wl.wait_counter(by=3)
    peer.wait(lambda st: st["received"] > 0 and st["sent"] > 0)
    return wl


def tuple_of(netns: NetNs, peer: Peer) -> str:
    """The 4-tuple of tcpzoo's connection to the peer, as cpt and nft name it."""
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"dst {netns.peer_ip}:{peer.port}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[2].rsplit(":", 1)[1]  # our port


def test_tcp_established_refused_without_flag(workloads, cpt, tmp_path, netns, peer) -> None:  # type: ignore[no-untyped-def]
    wl = start_tcpzoo(workloads, netns, peer)
    rc, _, err = cpt("chkpnt", "--pid", wl.pid, "--dumpfile", tmp_path / "d.img")
    assert rc == 16, err
    lport = tuple_of(netns, peer)
    assert f"process {wl.pid} fd " in err, err
    assert f"{netns.host_ip}:{lport} <-> {netns.peer_ip}:{peer.port}" in err, err
    assert "--tcp-established" in err, err
    assert nft_rules() == "" and not (tmp_path / "d.img").exists()
    before = peer.status()["received"]
    wl.wait_counter(by=2)
    st = peer.wait(lambda st: st["received"] > before)
    assert st["error"] is None, st  # (a reset may follow when the workload exits)
    with reaping(wl):
        assert wl.finish() == "PASS"


def test_tcp_established_checkpoint_kill_restore(
    workloads, cpt, tmp_path: Path, netns: NetNs, peer: Peer
) -> None:
    wl = start_tcpzoo(workloads, netns, peer)
    lport = tuple_of(netns, peer)
    img = tmp_path / "d.img"
    checkpoint(cpt, wl, img, "--tcp-established")
    rules = nft_rules()
    assert (
        f"ip saddr {netns.peer_ip} ip daddr {netns.host_ip} tcp sport {peer.port} "
        f"tcp dport {lport} drop" in rules
    ), rules
    dumped = peer.status()["received"]
    time.sleep(0.3)  # the peer keeps sending into the drop rule meanwhile
    assert peer.status()["error"] is None
    restore(cpt, wl, img)
    assert nft_rules() == "", "the drop rules are removed once the restore is done"
    wl.wait_counter(by=3)
    st = peer.wait(lambda st: st["received"] > dumped + 4096)
    assert st["error"] is None, st
    with reaping(wl):
        assert wl.finish() == "PASS"
    assert peer.status()["received"] > dumped


def test_tcp_failed_restore_keeps_the_connection_restorable(
    workloads, cpt, tmp_path: Path, netns: NetNs, peer: Peer
) -> None:
    """A restore that fails closes the rebuilt sockets in repair mode and keeps the drop
    rules: the peer sees nothing, and the next restore of the same image succeeds."""
    wl = start_tcpzoo(workloads, netns, peer)
    img = tmp_path / "d.img"
    checkpoint(cpt, wl, img, "--tcp-established")
    rules = nft_rules()
    rc, _, err = cpt("restore", "--dumpfile", img, fault="restore:memory")
    assert rc == 17, err
    assert not os.path.exists(f"/proc/{wl.pid}")
    assert nft_rules() == rules, "a failed restore keeps the rules"
    assert peer.status()["error"] is None
    dumped = peer.status()["received"]
    restore(cpt, wl, img)
    assert nft_rules() == ""
    st = peer.wait(lambda st: st["received"] > dumped + 4096)
    assert st["error"] is None, st
    with reaping(wl):
        assert wl.finish() == "PASS"


def test_tcp_leave_running_leaves_no_rule(workloads, cpt, tmp_path, netns, peer) -> None:  # type: ignore[no-untyped-def]
    wl = start_tcpzoo(workloads, netns, peer)
    checkpoint(cpt, wl, tmp_path / "d.img", "--tcp-established", "--leave-running")
    assert nft_rules() == ""
    before = peer.status()["received"]
    wl.wait_counter(by=3)
    st = peer.wait(lambda st: st["received"] > before + 4096)
    assert st["error"] is None, st
    with reaping(wl):
        assert wl.finish() == "PASS"


def test_tcp_staged_dump_refused(workloads, cpt, tmp_path, netns, peer) -> None:  # type: ignore[no-untyped-def]
    wl = start_tcpzoo(workloads, netns, peer)
    rc, _, err = cpt("chkpnt", "--pid", wl.pid, "--suspend", "--tcp-established")
    try:
        assert rc == 16, err
        assert "one-command chkpnt" in err, err
    finally:
        if rc == 0:
            cpt("chkpnt", "--pid", wl.pid, "--resume")
    wl.wait_counter(by=2)
    with reaping(wl):
        assert wl.finish() == "PASS"


def test_tcpzoo_sabotage_stream_fails(workloads, netns, peer) -> None:  # type: ignore[no-untyped-def]
    wl = workloads.start("tcpzoo", netns.peer_ip, str(peer.port), netns.host_ip, sabotage="1")
    wl.wait_counter(by=3)
    verdict = wl.finish()
    assert verdict.startswith("FAIL: stream with the peer: byte ") and "is wrong" in verdict
