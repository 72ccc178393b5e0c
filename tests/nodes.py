"""Two cpt nodes and a client on one machine, for migration tests and benches.

    with cluster() as c:            # or the pytest fixture `nodes` (tests/conftest.py)
        c.a.cpt("ve", "create", "101", "--ip", "198.18.0.10/24")   # cpt ON node A
        c.a.run(["ip", "addr"])                                     # any command on A
        c.a.ssh(c.b, "cpt", "ve", "list")                          # A -> B over OpenSSH
        c.client.run(["ping", "-c1", "198.18.0.10"])               # from the client
        c.a.ssh_opts()  # "-i KEY -o UserKnownHostsFile=... -p 22 ...": for --ssh-opts

What it builds (names unique per run: two runs never meet):
  - a LAN: a network namespace `cptn<tok>-lan` holding the bridge `br0` (nothing of it in
    the host's namespace); 198.18.<n>.0/24 and 2001:2:0:<n>::/64 on it (`n` per run);
  - nodes A and B: a network namespace each (`cptn<tok>-a`, `-b`) whose `eth0` is on the
    bridge (198.18.<n>.1 and .2), each with its own node root (CPT_ROOT: its own pool
    loop file, run directory, so its own cgroup and interface names, ve.runtime) and its
    own sshd, started in the namespace by `nsenter --net=/run/netns/NAME` (not `ip netns
    exec`, which remounts /sys and hides cgroup2) on a private sshd_config with host keys
    made for the run; the login's environment (sshd SetEnv) puts a `cpt` of this checkout
    first on PATH with the node's CPT_ROOT, so `ssh NODE cpt ...` works under that node;
  - a client namespace (`cptn<tok>-c`, 198.18.<n>.100) on the same bridge, whose only
    routes are its connected subnets;
  - one user key and one known_hosts (both nodes' host keys) for every ssh client here.
The nodes share one scratch id-range directory (CPT_IDMAP_DIR): ranges are machine-wide,
as on a real machine with two node roots.

Teardown (also after a failure): every VE of each node stopped and destroyed through cpt,
what is left in the node's cgroups (ve-*@<tag>) killed, every process in a namespace of
the run (sshd, its sessions) killed by PID, the pools unmounted and detached, the
namespaces deleted by name, the temp directory removed: `leftovers()` says what is not.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SSHD = "/usr/sbin/sshd"
SSH_PORT = 22
NETNS_DIR = Path("/run/netns")
WAIT = 10.0  # bound of every wait here (s)


_PING = r"""
import os, socket, struct, sys, time
addr, timeout = sys.argv[1], float(sys.argv[2])
v6 = ":" in addr
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_RAW,
                  socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
ident = os.getpid() & 0xFFFF
def csum(b):
    b += b"\0" * (len(b) % 2)
    t = sum(struct.unpack(f"!{len(b) // 2}H", b))
    t = (t >> 16) + (t & 0xFFFF); t += t >> 16
    return ~t & 0xFFFF
kind = 128 if v6 else 8
hdr = struct.pack("!BBHHH", kind, 0, 0, ident, 1) + b"cpt-ping"
if not v6:
    hdr = hdr[:2] + struct.pack("!H", csum(hdr)) + hdr[4:]
s.sendto(hdr, (addr, 0))
end = time.monotonic() + timeout
while (left := end - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        data, src = s.recvfrom(2048)
    except socket.timeout:
        break
    icmp = data if v6 else data[(data[0] & 15) * 4:]
    if src[0] == addr and icmp[0] == (129 if v6 else 0) and icmp[4:6] == struct.pack("!H", ident):
        sys.exit(0)
sys.exit(1)
"""


def sh(argv: Sequence[str | Path], *, timeout: float = 60, check: bool = True) -> str:
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode:
        raise RuntimeError(f"{shlex.join(map(str, argv))}: rc {p.returncode}: {p.stderr.strip()}")
    return p.stdout


class Netns:
    """A network namespace of the run (/run/netns/NAME) and commands run in it."""

    def __init__(self, name: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.path = NETNS_DIR / name
        self.env = dict(os.environ, **(env or {}))

    def argv(self, argv: Sequence[str | Path]) -> list[str]:
        return ["nsenter", f"--net={self.path}", "--", *map(str, argv)]

    def run(
        self, argv: Sequence[str | Path], *, timeout: float = 60, input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run `argv` in this namespace (with its environment); never raises on rc."""
        return subprocess.run(
            self.argv(argv), capture_output=True, text=True, timeout=timeout, input=input,
            env=dict(self.env, **(env or {})), cwd=REPO,
        )  # fmt: skip

    def popen(self, argv: Sequence[str | Path], **kw: object) -> subprocess.Popen[bytes]:
        """Start `argv` in this namespace (the caller ends it; the teardown kills it too)."""
        return subprocess.Popen(self.argv(argv), env=self.env, cwd=REPO, **kw)  # type: ignore[call-overload,no-any-return]

    def sh(self, cmd: str, *, timeout: float = 60) -> str:
        """A shell command here; RuntimeError naming it on a non-zero exit."""
        p = self.run(["sh", "-c", cmd], timeout=timeout)
        if p.returncode:
            raise RuntimeError(f"{self.name}: {cmd}: rc {p.returncode}: {p.stderr.strip()}")
        return p.stdout

    def ping(self, addr: str, timeout: float = 2.0) -> bool:
        """One ICMP(v6) echo from here to `addr` answered within `timeout` s (no ping
        binary needed: a raw socket of this interpreter)."""
        p = self.run([sys.executable, "-c", _PING, addr, str(timeout)], timeout=timeout + 10)
        return p.returncode == 0

    def connect(self, addr: str, port: int, timeout: float = 2.0) -> bool:
        """A TCP connection from here to addr:port is accepted within `timeout` s."""
        code = (
            "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), "
            "timeout=float(sys.argv[3])).close()"
        )
        p = self.run([sys.executable, "-c", code, addr, str(port), str(timeout)],
                     timeout=timeout + 10)  # fmt: skip
        return p.returncode == 0

    def echo(self, addr: str, port: int, data: bytes, timeout: float = 5.0) -> bytes | None:
        """Send `data` to a TCP echo server at addr:port from here (retried until
        `timeout`): what came back, None if no connection was accepted."""
        code = (
            "import socket,sys,time\n"
            "end = time.monotonic() + float(sys.argv[4])\n"
            "while True:\n"
            " try:\n"
            "  c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)\n"
            "  break\n"
            " except OSError:\n"
            "  if time.monotonic() > end: sys.exit(3)\n"
            "  time.sleep(0.05)\n"
            "c.sendall(bytes.fromhex(sys.argv[3])); c.shutdown(socket.SHUT_WR)\n"
            "got = b''\n"
            "while (b := c.recv(65536)): got += b\n"
            "sys.stdout.write(got.hex())\n"
        )
        p = self.run([sys.executable, "-c", code, addr, str(port), data.hex(), str(timeout)],
                     timeout=timeout + 10)  # fmt: skip
        return bytes.fromhex(p.stdout.strip()) if p.returncode == 0 else None

    def sysctl(self, name: str) -> str:
        """net.* sysctl `name` (a path under /proc/sys/net) of this namespace."""
        return self.sh(f"cat /proc/sys/net/{name}").strip()

    def inode(self) -> int:
        return os.stat(self.path).st_ino

    def neighbour(self, addr: str) -> tuple[str, str] | None:
        """(lladdr, state) of `addr` in this namespace's neighbour table, None if absent."""
        fam = "-6" if ":" in addr else "-4"
        for line in self.sh(f"ip {fam} neigh show {addr}").splitlines():
            parts = line.split()
            if "lladdr" in parts:
                return parts[parts.index("lladdr") + 1], parts[-1]
        return None

    def mac(self, ifname: str = "eth0") -> str:
        """The MAC address of `ifname` here (`ip -br link`: /sys is the host's)."""
        return self.sh(f"ip -br link show dev {ifname}").split()[2]


class NodeNs(Netns):
    """A cpt node: a namespace on the LAN with its own node root and sshd."""

    def __init__(
        self, name: str, label: str, root: Path, ids: Path, addr: str, addr6: str, bindir: Path
    ) -> None:
        self.label = label
        self.root = root
        self.addr = addr
        self.addr6 = addr6
        env = {
            "CPT_ROOT": str(root), "CPT_IDMAP_DIR": str(ids),
            "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
        }  # fmt: skip
        super().__init__(name, env)
        self.env.pop("CPT_RUN_DIR", None)  # the node's own: <root>/run
        self.sshd: subprocess.Popen[bytes] | None = None
        self.key: Path = Path()
        self.known_hosts: Path = Path()

    @property
    def tag(self) -> str:
        from cpt.stages.store import node_tag

        return node_tag(str(self.root))

    def cpt(
        self, *args: object, timeout: float = 120, input: str | None = None
    ) -> tuple[int, str, str]:
        """`cpt ARGS` on this node (its namespace, its root): (exit code, stdout, stderr)."""
        p = self.run([sys.executable, "-m", "cli.main", *map(str, args)], timeout=timeout,
                     input=input)  # fmt: skip
        return p.returncode, p.stdout, p.stderr

    def ssh_opts(self) -> str:
        """The ssh options that reach the nodes of the run (identity, known hosts, port)."""
        return (
            f"-i {self.key} -o UserKnownHostsFile={self.known_hosts} -p {SSH_PORT} "
            "-o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes "
            "-o IdentitiesOnly=yes -o BatchMode=yes -o ConnectTimeout=5 -F /dev/null"
        )

    def host(self) -> str:
        """HOST as `cpt migrate` takes it."""
        return f"root@{self.addr}"

    def ssh(
        self, other: NodeNs, *cmd: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` on `other` over ssh, from this node's namespace."""
        return self.run(["ssh", *shlex.split(self.ssh_opts()), other.host(), *cmd],
                        timeout=timeout)  # fmt: skip


class Cluster:
    def __init__(
        self, a: NodeNs, b: NodeNs, client: Netns, lan: Netns, tmp: Path, net: int
    ) -> None:
        self.a, self.b, self.client, self.lan, self.tmp, self.net = a, b, client, lan, tmp, net

    @property
    def nodes(self) -> tuple[NodeNs, NodeNs]:
        return (self.a, self.b)

    def addr(self, host: int) -> str:
        """198.18.<n>.<host>: an address of the LAN (1, 2: the nodes; 100: the client)."""
        return f"198.18.{self.net}.{host}"

    def addr6(self, host: int) -> str:
        return f"2001:2:0:{self.net:x}::{host:x}"


def _keys(tmp: Path) -> tuple[Path, Path]:
    """The user key pair (its public half is every node's authorized key)."""
    key = tmp / "id_ed25519"
    sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cpt-nodes", "-f", key])
    return key, Path(f"{key}.pub")


def _cpt_wrapper(bindir: Path) -> None:
    """`cpt` of this checkout, run by this interpreter: what the remote login finds."""
    bindir.mkdir()
    w = bindir / "cpt"
    w.write_text(
        f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(REPO))} exec {shlex.quote(sys.executable)} "
        f'-m cli.main "$@"\n'
    )
    w.chmod(0o755)


def _start_sshd(n: NodeNs, d: Path, pub: Path) -> None:
    d.mkdir()
    hostkey = d / "ssh_host_ed25519_key"
    sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", n.name, "-f", hostkey])
    auth = d / "authorized_keys"
    shutil.copy(pub, auth)
    auth.chmod(0o600)
    setenv = " ".join(f"{k}={n.env[k]}" for k in ("PATH", "CPT_ROOT", "CPT_IDMAP_DIR"))
    conf = d / "sshd_config"
    conf.write_text(
        f"Port {SSH_PORT}\nListenAddress {n.addr}\nListenAddress {n.addr6}\n"
        f"HostKey {hostkey}\nPidFile {d / 'sshd.pid'}\nAuthorizedKeysFile {auth}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nUseDNS no\n"
        "PrintMotd no\nPrintLastLog no\nX11Forwarding no\nAllowTcpForwarding no\n"
        "PermitUserEnvironment no\nLogLevel ERROR\nMaxStartups 50\nMaxSessions 50\n"
        f"SetEnv {setenv}\n"
    )
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation
    with open(d / "sshd.log", "wb") as log:  # sshd keeps its own copy of the fd
        n.sshd = n.popen([SSHD, "-D", "-e", "-f", conf], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip
    deadline = time.monotonic() + WAIT
    while f"{n.addr}:{SSH_PORT}" not in n.sh("ss -Htln"):
        if n.sshd.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"sshd of {n.name} did not start: {(d / 'sshd.log').read_text()}")
        time.sleep(0.02)


def _net_procs(inodes: set[int]) -> list[int]:
    """The processes whose network namespace is one of `inodes` (not this one)."""
    out = []
    for e in os.scandir("/proc"):
        if not e.name.isdigit() or int(e.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{e.name}/ns/net").st_ino in inodes:
                out.append(int(e.name))
    return out


def _cgroups(tag: str) -> list[Path]:
    """The VE cgroups of the node whose tag is `tag` (ve-*@tag)."""
    from cpt.sys.cgroup import CPT_CGROUP, cgroup2_mount

    top = Path(cgroup2_mount(), CPT_CGROUP)
    return sorted(top.glob(f"ve-*@{tag}")) if tag and top.is_dir() else []


def _kill_cgroup(cg: Path) -> None:
    with contextlib.suppress(OSError):
        (cg / "cgroup.kill").write_text("1")
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            cg.rmdir()
            return
        time.sleep(0.02)


def leftovers(c: Cluster) -> list[str]:
    """What of the run is still on the machine (empty after a clean teardown)."""
    out = [f"netns {ns.name}" for ns in (c.a, c.b, c.client, c.lan) if ns.path.exists()]
    out += [f"cgroup {cg}" for n in c.nodes for cg in _cgroups(n.tag)]
    out += [f"process {p} of {n.name}" for n in c.nodes if n.sshd and _alive(n.sshd.pid)
            for p in [n.sshd.pid]]  # fmt: skip
    losetup = sh(["losetup", "-a"], check=False)
    out += [f"loop {ln}" for ln in losetup.splitlines() if str(c.tmp) in ln]
    mounts = Path("/proc/self/mounts").read_text()
    out += [f"mount {ln.split()[1]}" for ln in mounts.splitlines() if str(c.tmp) in ln]
    if c.tmp.exists():
        out.append(f"directory {c.tmp}")
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    return False


@contextlib.contextmanager
def cluster(net: int | None = None) -> Iterator[Cluster]:
    """Build the LAN, nodes A and B (with sshd) and the client; tear all down on exit.
    `net`: the third octet of the LAN's subnet (random by default)."""
    tok = secrets.token_hex(3)
    net = secrets.randbelow(254) + 1 if net is None else net
    tmp = Path(tempfile.mkdtemp(prefix=f"cpt-nodes-{tok}-"))
    tmp.chmod(0o755)
    bindir = tmp / "bin"
    _cpt_wrapper(bindir)
    ids = tmp / "ids"
    lan = Netns(f"cptn{tok}-lan")
    a = NodeNs(f"cptn{tok}-a", "A", tmp / "a", ids, f"198.18.{net}.1", f"2001:2:0:{net:x}::1",
               bindir)  # fmt: skip
    b = NodeNs(f"cptn{tok}-b", "B", tmp / "b", ids, f"198.18.{net}.2", f"2001:2:0:{net:x}::2",
               bindir)  # fmt: skip
    client = Netns(f"cptn{tok}-c")
    c = Cluster(a, b, client, lan, tmp, net)
    made: list[Netns] = []
    try:
        for ns in (lan, a, b, client):
            sh(["ip", "netns", "add", ns.name])
            made.append(ns)
        lan.sh("ip link set lo up && ip link add br0 type bridge && ip link set br0 up")
        hosts = [(a, 1), (b, 2), (client, 100)]
        for ns, host in hosts:
            port = f"p{host}"
            lan.sh(f"ip link add {port} type veth peer name eth0 netns {ns.path}")
            lan.sh(f"ip link set {port} master br0 && ip link set {port} up")
            ns.sh(  # and no forwarding at all: cpt turns it on per interface where needed
                "echo 0 > /proc/sys/net/ipv4/ip_forward && "
                "echo 0 > /proc/sys/net/ipv6/conf/all/forwarding && "
                f"ip link set lo up && ip addr add 198.18.{net}.{host}/24 dev eth0 && "
                f"ip addr add 2001:2:0:{net:x}::{host:x}/64 dev eth0 nodad && ip link set eth0 up"
            )
        key, pub = _keys(tmp)
        kh = tmp / "known_hosts"
        for n in (a, b):
            n.root.mkdir(mode=0o700)
            n.key, n.known_hosts = key, kh
            _start_sshd(n, tmp / f"sshd-{n.label.lower()}", pub)
            hostkey = (tmp / f"sshd-{n.label.lower()}" / "ssh_host_ed25519_key.pub").read_text()
            with open(kh, "a") as f:
                for addr in (n.addr, n.addr6):
                    f.write(f"{addr} {' '.join(hostkey.split()[:2])}\n")
        yield c
    finally:
        _teardown(c, made, raising=sys.exc_info()[0] is None)


def _teardown(c: Cluster, made: list[Netns], *, raising: bool) -> None:
    """Remove everything of the run; `raising`: a failure to is an error (not while the
    test's own failure unwinds: that one is what the report must show)."""
    errors: list[str] = []
    for n in c.nodes:
        if not n.root.exists():
            continue
        for veid in sorted(p.stem for p in (n.root / "ve").glob("*.toml")):
            with contextlib.suppress(subprocess.TimeoutExpired):
                n.cpt("ve", "stop", veid, "--timeout", "1", timeout=60)
                n.cpt("ve", "destroy", veid, timeout=60)
        for cg in _cgroups(n.tag):
            _kill_cgroup(cg)
    inodes = set()
    for ns in made:
        with contextlib.suppress(OSError):
            inodes.add(ns.inode())
    for n in c.nodes:
        if n.sshd is not None:
            with contextlib.suppress(ProcessLookupError):
                n.sshd.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                n.sshd.wait(WAIT)
    for pid in _net_procs(inodes):  # ssh sessions, what a test left running on a node
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    from storage import pool

    for n in c.nodes:
        if n.root.exists():
            try:
                pool.teardown(str(n.root))
            except Exception as e:  # said below; the rest is still torn down
                errors.append(f"pool of {n.name}: {e}")
    for ns in reversed(made):
        p = subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, text=True)
        if p.returncode:
            errors.append(f"netns {ns.name}: {p.stderr.strip()}")
    mounted = [ln for ln in Path("/proc/self/mounts").read_text().splitlines() if str(c.tmp) in ln]
    if mounted:
        errors.append(f"{c.tmp} kept: still mounted there: {mounted}")
    else:
        shutil.rmtree(c.tmp, ignore_errors=True)
    if errors and raising:
        raise RuntimeError("teardown of the nodes: " + "; ".join(errors))
