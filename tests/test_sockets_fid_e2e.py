"""End to end, through the `cpt` command: socket fidelity (issue 14, sockets).

sockopts (inet/raw/packet/netlink sockets and their options) is in ALL_WORKLOADS, so
test_engine_e2e checkpoints, kills and restores it; here: --tcp-close with clients that
reconnect, and the privilege rule (a raw socket held by a process that had dropped
CAP_NET_RAW is not recreated).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from workloads import Workload, reaping, workloads_fixture  # noqa: F401

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="checkpoint/restore needs root"),
]


def checkpoint(cpt, wl: Workload, img: Path, *extra: object) -> str:  # type: ignore[no-untyped-def]
    with reaping(wl):
        rc, out, err = cpt("chkpnt", "--pid", wl.pid, "--dumpfile", img, *extra)
    assert rc == 0, err
    return out


class EchoServer:
    """A TCP echo server outside the tree, on 127.0.0.1: one thread per connection."""

    def __init__(self) -> None:
        self.lsn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsn.bind(("127.0.0.1", 0))
        self.lsn.listen(8)
        self.port = self.lsn.getsockname()[1]
        self.accepted = 0
        self._stop = False
        self._t = threading.Thread(target=self._serve, daemon=True)
        self._t.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                c, _ = self.lsn.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    @staticmethod
    def _echo(c: socket.socket) -> None:
        with c:
            try:
                while b := c.recv(4096):
                    c.sendall(b)
            except OSError:
                pass

    def close(self) -> None:
        self._stop = True
        self.lsn.shutdown(socket.SHUT_RDWR)
        self.lsn.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    e = EchoServer()
    try:
        yield e
    finally:
        e.close()


def test_tcp_close_restores_connections_closed_and_clients_reconnect(
    workloads, cpt, tmp_path: Path, echo: EchoServer
) -> None:
    wl = workloads.start("tcpclose", str(echo.port))
    wl.wait_counter(by=3)
    rc, _, err = cpt("chkpnt", "--pid", wl.pid, "--dumpfile", tmp_path / "refused.img")
    assert rc == 16 and "--tcp-close" in err, err
    checkpoint(cpt, wl, tmp_path / "d.img", "--tcp-close")
    assert not os.path.exists(f"/proc/{wl.pid}")
    rc, _, err = cpt("restore", "--dumpfile", tmp_path / "d.img")
    assert rc == 17 and "restore with --tcp-close" in err, err
    rc, _, err = cpt("restore", "--dumpfile", tmp_path / "d.img", "--tcp-close")
    assert rc == 0, err
    wl.refresh()
    wl.wait_counter(by=3)
    with reaping(wl):
        assert wl.finish() == "PASS"
    assert sorted((wl.dir / "reconnects").read_text().split()) == ["inner", "outer"]
    assert echo.accepted == 2


def test_tcpclose_left_alone_never_reconnects(workloads, echo: EchoServer) -> None:
    wl = workloads.start("tcpclose", str(echo.port))
    wl.wait_counter(by=3)
    assert wl.finish() == "PASS"
    assert (wl.dir / "reconnects").read_text() == ""
    wl2 = workloads.start("tcpclose", str(echo.port), sabotage="echo")
    wl2.wait_counter()
    verdict = wl2.finish()
    assert verdict.startswith("FAIL: outer: the last echo was"), verdict


_DROPS_CAPS = r"""
import ctypes, os, socket, struct, sys, time
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
hdr = struct.pack("II", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
data = bytes(24)  # effective, permitted, inheritable: all empty
if ctypes.CDLL(None).capset(hdr, data) != 0:
    sys.exit(3)
open(sys.argv[1], "w").write("ready")
time.sleep(120)
"""


def test_raw_socket_of_a_process_without_cap_net_raw_is_not_recreated(cpt, tmp_path: Path) -> None:
    """As ping does: the raw socket is made, then every capability dropped.  The image's
    credentials do not hold CAP_NET_RAW, so restore refuses to recreate the socket."""
    ready = tmp_path / "ready"
    p = subprocess.Popen(
        [sys.executable, "-c", _DROPS_CAPS, str(ready)],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60  # the interpreter's start on a loaded machine
        while not ready.exists() and p.poll() is None and time.monotonic() < deadline:
            threading.Event().wait(0.01)
        assert ready.exists(), p.poll()
        eff = [
            ln for ln in Path(f"/proc/{p.pid}/status").read_text().splitlines() if "CapEff" in ln
        ]
        assert eff == ["CapEff:\t0000000000000000"], eff
        reaper = threading.Thread(target=p.wait, daemon=True)  # the kill leaves our child
        reaper.start()
        rc, _, err = cpt("chkpnt", "--pid", p.pid, "--dumpfile", tmp_path / "d.img")
        assert rc == 0, err
        reaper.join(60)
        rc, _, err = cpt("restore", "--dumpfile", tmp_path / "d.img")
        assert rc == 17, err
        assert "raw socket" in err and "needs CAP_NET_RAW" in err, err
        assert f"process {p.pid}" in err, err
        assert not os.path.exists(f"/proc/{p.pid}")
    finally:
        if p.poll() is None:
            p.kill()
        if os.path.exists(f"/proc/{p.pid}"):
            p.wait(10)
