"""VE lifecycle through the `cpt ve` commands: real namespaces, veth, loop-file btrfs.

Each test module gets its own node root (CPT_ROOT) whose embedded pool is a loop-file
btrfs; everything is removed at the end: VEs stopped and destroyed, routes gone, the
pool unmounted and its loop device detached.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time

import pytest
from ve_node import Node, route

pytestmark = [
    pytest.mark.root,
    pytest.mark.destructive,
    pytest.mark.skipif(os.geteuid() != 0, reason="VEs need root (namespaces, veth, mounts)"),
]


def test_lifecycle_host_template(node: Node) -> None:
    node.create("201", "--ip", "198.18.21.2/24", "--", "/bin/sh", "-c", "sleep 1000")
    assert node.cpt("ve", "status", "201")[1].strip() == "VE 201 stopped"
    assert route("198.18.21.2").startswith("blackhole"), "a stopped VE's address is held"
    rc, out, err = node.cpt("ve", "start", "201")
    assert rc == 0, err
    assert node.cpt("ve", "status", "201")[1].strip() == "VE 201 running"
    assert f"dev {node.ifname('201')}" in route("198.18.21.2")
    rc, out, _ = node.cpt(
        "ve", "exec", "201", "--", "/bin/sh", "-c",
        "hostname; cat /proc/1/cmdline; echo; readlink /proc/self/ns/pid; ls -a /; exit 5",
    )  # fmt: skip
    assert rc == 5
    lines = out.splitlines()
    assert lines[0] == "ve201" and lines[1].startswith("/.cpt/init")
    assert lines[2] != os.readlink("/proc/self/ns/pid"), "its own PID namespace"
    assert {"usr", "proc", "dev", "tmp", "root"} <= set(lines[3:])
    rc, out, _ = node.cpt("ve", "exec", "201", "--", "/bin/cat", input="through stdin\n")
    assert rc == 0 and out == "through stdin\n"
    assert node.cpt("ve", "exec", "201", "--", "/no/such/program")[0] == 127
    assert node.cpt("ve", "start", "201")[0] == 32
    rc, out, _ = node.cpt("ve", "list", "--json")
    rows = {r["veid"]: r for r in json.loads(out)}
    assert rows["201"]["status"] == "running" and rows["201"]["init_pid"]
    assert node.cpt("ve", "destroy", "201")[0] == 32, "a running VE is not destroyed"
    assert node.cpt("ve", "stop", "201")[0] == 0
    assert node.cpt("ve", "stop", "201")[0] == 31
    assert route("198.18.21.2").startswith("blackhole")
    assert not node.cgroup("201").exists()
    assert node.cpt("ve", "destroy", "201")[0] == 0
    node.created.remove("201")
    assert route("198.18.21.2") == ""
    assert not (node.root / "ve" / "201.toml").exists()


def test_busybox_template_and_network(node: Node) -> None:
    server = (
        "import socket\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('0.0.0.0', 7007)); s.listen()\n"
        "while True:\n c, _ = s.accept(); c.sendall(c.recv(100)); c.close()\n"
    )
    node.create("202", "--ip", "198.18.22.2/24", "--", "/usr/bin/python3", "-c", server)
    node.create("203", "--template", "busybox", "--", "/bin/sh", "-c", "sleep 1000")
    assert node.cpt("ve", "start", "202")[0] == 0
    assert node.cpt("ve", "start", "203")[0] == 0
    deadline = time.monotonic() + 5
    while True:
        try:
            with socket.create_connection(("198.18.22.2", 7007), timeout=1) as c:
                c.sendall(b"ping through the veth")
                assert c.recv(100) == b"ping through the veth"
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    rc, out, _ = node.cpt("ve", "exec", "203", "--", "/bin/sh", "-c", "ls -l /bin/sh; ps")
    assert rc == 0 and "-> busybox" in out and "/.cpt/init" in out
    rc, out, _ = node.cpt("ve", "exec", "202", "--", "/usr/bin/python3", "-c",
                          "import socket; print(socket.gethostbyname(socket.gethostname()))")  # fmt: skip
    assert rc == 0 and out.strip() == "198.18.22.2"
    for veid in ("202", "203"):
        assert node.cpt("ve", "stop", veid, "--timeout", "2")[0] == 0


def test_stop_kills_what_ignores_sigterm(node: Node) -> None:
    node.create("204", "--", "/bin/sh", "-c", "trap '' TERM; while true; do sleep 1; done")
    assert node.cpt("ve", "start", "204")[0] == 0
    t0 = time.monotonic()
    assert node.cpt("ve", "stop", "204", "--timeout", "1")[0] == 0
    assert time.monotonic() - t0 < 15
    assert node.cpt("ve", "status", "204")[1].strip() == "VE 204 stopped"


def test_a_locked_ve_fails_clearly(node: Node) -> None:
    node.create("205", "--", "/bin/sh", "-c", "sleep 1000")
    run = node.root / "run"
    run.mkdir(exist_ok=True)
    fd = os.open(run / "ve-205.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        rc, _, err = node.cpt("ve", "start", "205")
        assert rc == 9 and "VE 205 is locked" in err
    finally:
        os.close(fd)


def test_bad_input_is_one_line(node: Node) -> None:
    rc, _, err = node.cpt("ve", "create", "bad id!")
    assert rc == 21 and err.count("\n") == 1
    rc, _, err = node.cpt("ve", "create", "206", "--ip", "not-an-ip")
    assert rc == 21 and "--ip" in err
    rc, _, err = node.cpt("ve", "start", "nosuchve")
    assert rc == 21 and "does not exist" in err


def test_a_ve_whose_own_side_fails_says_why_and_leaves_nothing(node: Node) -> None:
    """The init builds its mounts while the host sets up the cgroup and network: a VE of
    each kind whose area lost its /proc mountpoint fails to start (exit 3) with the
    init's reason, and leaves no process, cgroup or veth; its address stays held."""
    for veid, ip, kind in (("207", "198.18.27.2", ()), ("208", "198.18.28.2", ("--privileged",))):
        node.create(veid, "--ip", f"{ip}/24", *kind, "--", "/bin/sh", "-c", "sleep 1000")
        os.rmdir(node.root / "pool" / "private" / veid / "proc")
        rc, _, err = node.cpt("ve", "start", veid)
        assert rc == 3 and f"VE {veid} failed to start" in err and "proc" in err, (rc, err)
        assert err.count("\n") == 1, err
        assert node.cpt("ve", "status", veid)[1].startswith(f"VE {veid} stopped")
        assert not node.cgroup(veid).exists()
        assert not os.path.exists(f"/sys/class/net/{node.ifname(veid)}")
        assert route(ip).startswith("blackhole")
