"""A VE contains its root (issue 12): every escape a VE's root tried before, run from
inside real VEs with `cpt ve exec`, now fails, and each answer is the kernel's (an errno
of the very system call, from a probe that makes it, never a missing tool).  The same
probes in a privileged VE (the old model, `--privileged`) succeed, which shows that each
probe can succeed and that the difference is the VE's user namespace, locked mounts and
seccomp filter.  Also: ownership of files through the id range, the filter and the locks
after a checkpoint and restore, snapshots and rollback keeping the mapped owners, and the
refusals of a restore whose id range is not the VE's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from ve_node import CPT, REPO, Node

pytestmark = [
    pytest.mark.root,
    pytest.mark.destructive,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="VEs need root (namespaces, veth, mounts)"),
]

# Runs inside a VE as /usr/bin/python3 -c PROBE NAME [ARGS]; prints JSON: "ok", "ok:TEXT"
# or the errno's name of the system call the probe made.
PROBE = r"""
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sysc(nr, *a):
    r = libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(x) if isinstance(x, int) else x for x in a))
    return r if r != -1 else -ctypes.get_errno()
def res(r, text=""):
    return errno.errorcode[-r] if r < 0 else "ok" + (":" + text if text else "")
def oserr(fn):
    try:
        return "ok" + (":" + str(fn()) if fn() is not None else "")
    except OSError as e:
        return errno.errorcode[e.errno]
name, args = sys.argv[1], sys.argv[2:]
out = {}
if name == "shocker":  # read a root-only host file through a file handle
    htype, hexbytes = int(args[0]), bytes.fromhex(args[1])
    fh = ctypes.create_string_buffer(len(hexbytes).to_bytes(4, "little")
                                     + htype.to_bytes(4, "little", signed=True) + hexbytes)
    mfd = os.open("/usr", os.O_RDONLY | os.O_DIRECTORY)
    fd = sysc(304, mfd, fh, os.O_RDONLY)  # open_by_handle_at
    out["open_by_handle_at"] = res(fd, os.read(fd, 100).decode() if fd >= 0 else "")
elif name == "usr":  # the template's read-only bind from the host
    MS_REMOUNT, MS_BIND, MNT_DETACH = 0x20, 0x1000, 2
    out["remount_rw"] = res(sysc(165, 0, b"/usr", 0, MS_REMOUNT | MS_BIND, 0))
    out["umount"] = res(sysc(166, b"/usr", MNT_DETACH))
    out["write"] = oserr(lambda: os.close(os.open("/usr/cpt-escape", os.O_CREAT | os.O_WRONLY)))
elif name == "host_global":  # host-wide files in /proc/sys and /sys: opened for writing
    for key, path in (("core_pattern", "/proc/sys/kernel/core_pattern"),
                      ("drop_caches", "/proc/sys/vm/drop_caches"),
                      ("sys_kernel", "/sys/kernel/mm/transparent_hugepage/enabled")):
        out[key] = oserr(lambda: os.close(os.open(path, os.O_WRONLY)))  # nothing written
elif name == "cgroup":  # mount the cgroup2 hierarchy
    os.makedirs("/tmp/cg", exist_ok=True)
    r = sysc(165, b"none", b"/tmp/cg", b"cgroup2", 0, 0)
    out["mount"] = res(r)
    if r == 0:
        out["entries"] = sorted(os.listdir("/tmp/cg"))
        out["procs"] = sorted(int(p) for p in open("/tmp/cg/cgroup.procs").read().split())
        out["self"] = os.getpid()
        sysc(166, b"/tmp/cg", 2)
elif name == "mknod":  # a block device node of the host's disk, in /dev and in /tmp
    major, minor = int(args[0]), int(args[1])
    for where in ("/dev", "/tmp"):
        path = where + "/cpt-disk"
        out[where] = oserr(lambda: os.mknod(path, 0o60600, os.makedev(major, minor)))
        if out[where] == "ok":
            os.unlink(path)
elif name == "signal":  # a host process that joined the VE's PID namespace
    pid = int(args[0])
    out["kill"] = oserr(lambda: os.kill(pid, 0))
    out["ptrace"] = res(sysc(101, 16, pid, 0, 0))  # PTRACE_ATTACH
    if out["ptrace"] == "ok":
        sysc(101, 17, pid, 0, 0)  # PTRACE_DETACH
    out["kill_own"] = oserr(lambda: os.kill(1, 0))
elif name == "read":  # a file of another VE
    out["read"] = oserr(lambda: open(args[0]).read())
elif name == "seccomp":
    st = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
    out["mode"] = st["Seccomp"].strip()
    out["filters"] = st.get("Seccomp_filters", "").strip()
    for call, nr, a in (("kexec_load", 246, (0, 0, 0, 0xDEAD0000)), ("bpf", 321, (-1, 0, 0)),
                        ("keyctl", 250, (-1, 0, 0, 0, 0)), ("init_module", 175, (0, 0, 0)),
                        ("perf_event_open", 298, (0, 0, 0, 0, 0)),
                        ("userfaultfd", 323, (-1,)), ("io_uring_setup", 425, (0, 0)),
                        ("reboot", 169, (0, 0, 0, 0)), ("getpid", 39, ())):
        out[call] = res(sysc(nr, *a))
elif name == "ids":
    st = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
    out["uid_map"] = open("/proc/self/uid_map").read().split()
    out["caps"] = st["CapEff"].strip()
    out["usr_owner"] = os.stat("/usr").st_uid
    out["seccomp"] = st["Seccomp"].strip()
print(json.dumps(out))
"""

COUNT = 65536


def probe(node: Node, veid: str, name: str, *args: object) -> dict:  # type: ignore[type-arg]
    rc, out, err = node.cpt("ve", "exec", veid, "--", "/usr/bin/python3", "-c", PROBE, name, *args)
    assert rc == 0, f"probe {name} in VE {veid}: {rc} {err}"
    return json.loads(out)


def bare_probe(node: Node, veid: str, name: str, *args: object) -> dict:  # type: ignore[type-arg]
    """The probe as the VE's root in all its namespaces, entered by nsenter from the host
    without the VE's seccomp filter: what the kernel itself refuses."""
    init = info(node, veid)["init_pid"]
    p = subprocess.run(
        ["nsenter", "-t", str(init), "-U", "-C", "-i", "-u", "-n", "-p", "-m", "--",
         "/usr/bin/python3", "-c", PROBE, name, *map(str, args)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert p.returncode == 0, f"bare probe {name} in VE {veid}: {p.returncode} {p.stderr}"
    return json.loads(p.stdout)


def info(node: Node, veid: str) -> dict:  # type: ignore[type-arg]
    rc, out, err = node.cpt("ve", "status", veid, "--json")
    assert rc == 0, err
    return json.loads(out)


def base_of(node: Node, veid: str) -> int:
    first = info(node, veid)["ids"].split("-")[0]
    return int(first)


def private(node: Node, veid: str) -> Path:
    return node.root / "pool" / "private" / veid


def start(node: Node, veid: str, *args: str) -> None:
    node.create(veid, *args, "--", "/bin/sh", "-c", "sleep 1000")
    rc, _, err = node.cpt("ve", "start", veid)
    assert rc == 0, err


@pytest.fixture(scope="module")
def ves(node: Node) -> tuple[str, str]:
    """A VE that contains its root (1201) and a privileged one (1202), running."""
    start(node, "1201", "--ip", "198.18.120.2/24")
    start(node, "1202", "--ip", "198.18.120.3/24", "--privileged")
    return "1201", "1202"


def test_status_and_list_say_which_is_privileged(node: Node, ves: tuple[str, str]) -> None:
    contained, privileged = ves
    assert node.cpt("ve", "status", contained)[1].strip() == f"VE {contained} running"
    assert node.cpt("ve", "status", privileged)[1].strip() == (
        f"VE {privileged} running (privileged)"
    )
    a, b = info(node, contained), info(node, privileged)
    assert a["privileged"] is False and b["privileged"] is True and b["ids"] is None
    first, last = map(int, a["ids"].split("-"))
    assert last - first == COUNT - 1 and first >= 100000
    rows = {r["veid"]: r for r in json.loads(node.cpt("ve", "list", "--json")[1])}
    assert rows[contained]["ids"] == a["ids"] and rows[privileged]["privileged"] is True
    table = node.cpt("ve", "list")[1]
    assert "privileged" in table and a["ids"] in table
    # the range is in the node's scratch subuid and subgid files, never the machine's
    line = f"cpt-ve-{contained}:{first}:{COUNT}"
    assert line in (node.ids / "subuid").read_text().split()
    assert line in (node.ids / "subgid").read_text().split()


def test_the_ves_root_is_root_inside_only(node: Node, ves: tuple[str, str]) -> None:
    contained, privileged = ves
    base = base_of(node, contained)
    got = probe(node, contained, "ids")
    assert got["uid_map"] == ["0", str(base), str(COUNT)]
    assert got["caps"] == "000001ffffffffff", "every capability, in its namespaces"
    assert got["seccomp"] == "2"
    assert got["usr_owner"] == 65534, "the host's /usr is nobody's inside"
    assert probe(node, privileged, "ids")["uid_map"] == ["0", "0", "4294967295"]
    # a file the VE's root writes is the mapped uid's on the host; a VE user's too
    rc, _, err = node.cpt(
        "ve", "exec", contained, "--", "/bin/sh", "-c",
        "echo mine > /root/owned && setpriv --reuid 1000 --regid 1000 --clear-groups "
        "sh -c 'echo theirs > /tmp/user-file' && cp -p /tmp/user-file /user-file",
    )  # fmt: skip
    assert rc == 0, err
    st = os.stat(private(node, contained) / "root" / "owned")
    assert (st.st_uid, st.st_gid) == (base, base)
    st = os.stat(private(node, contained) / "user-file")
    assert (st.st_uid, st.st_gid) == (base + 1000, base + 1000)
    area = os.stat(private(node, contained))
    assert (area.st_uid, area.st_gid) == (base, base), "the template belongs to the range"
    assert os.lstat(private(node, contained) / "etc" / "passwd").st_uid == base


def test_shocker_reads_nothing(node: Node, ves: tuple[str, str], tmp_path: Path) -> None:
    """open_by_handle_at on the /usr bind with a handle of a root-only host file."""
    from cpt.sys.fsnotify import name_to_handle_at

    secret = Path("/var/tmp") / f"cpt-shocker-{os.getpid()}"
    secret.write_text("host secret")
    os.chmod(secret, 0o600)
    try:
        htype, handle, _ = name_to_handle_at(-100, str(secret))  # AT_FDCWD
        contained, privileged = ves
        got = probe(node, contained, "shocker", htype, handle.hex())
        assert got["open_by_handle_at"] == "EPERM"
        # the kernel refuses it too (no CAP_DAC_READ_SEARCH over the host), filter or not
        bare = bare_probe(node, contained, "ids")
        assert bare["seccomp"] == "0" and bare["uid_map"] == [
            "0",
            str(base_of(node, contained)),
            str(COUNT),
        ]
        got = bare_probe(node, contained, "shocker", htype, handle.hex())
        assert got["open_by_handle_at"] == "EPERM"
        got = probe(node, privileged, "shocker", htype, handle.hex())
        assert got["open_by_handle_at"] == "ok:host secret", "the probe works where it may"
    finally:
        secret.unlink()


def test_the_usr_bind_is_locked(node: Node, ves: tuple[str, str]) -> None:
    got = probe(node, ves[0], "usr")
    assert got == {"remount_rw": "EPERM", "umount": "EINVAL", "write": "EROFS"}
    assert not Path("/usr/cpt-escape").exists()


def test_host_global_files_are_read_only(node: Node, ves: tuple[str, str]) -> None:
    got = probe(node, ves[0], "host_global")
    assert got == {"core_pattern": "EACCES", "drop_caches": "EACCES", "sys_kernel": "EROFS"}
    # the privileged VE could (it wrote back the value that was there)
    assert probe(node, ves[1], "host_global")["core_pattern"] == "ok"


def test_cgroup2_shows_the_ves_own_cgroup(node: Node, ves: tuple[str, str]) -> None:
    contained, privileged = ves
    got = probe(node, contained, "cgroup")
    assert got["mount"] == "ok"
    assert "cpt" not in got["entries"] and not [e for e in got["entries"] if e.startswith("ve-")]
    assert "cgroup.procs" in got["entries"]
    assert got["self"] in got["procs"] and 1 in got["procs"], "its own processes, its ids"
    assert max(got["procs"]) < 100, got["procs"]
    got = probe(node, privileged, "cgroup")
    assert got["mount"] == "ok" and "cpt" in got["entries"], "the host's tree"


def test_no_device_of_the_host(node: Node, ves: tuple[str, str]) -> None:
    dev = os.stat("/usr").st_dev
    contained, privileged = ves
    got = probe(node, contained, "mknod", os.major(dev), os.minor(dev))
    assert got == {"/dev": "EPERM", "/tmp": "EPERM"}
    got = probe(node, privileged, "mknod", os.major(dev), os.minor(dev))
    assert got["/dev"] == "ok", "a privileged VE makes the node of the host's disk"


def test_a_setuid_file_of_the_ve_gives_a_host_user_no_root(
    node: Node, ves: tuple[str, str]
) -> None:
    contained, privileged = ves
    for veid in ves:
        rc, _, err = node.cpt(
            "ve",
            "exec",
            veid,
            "--",
            "/bin/sh",
            "-c",
            "cp /usr/bin/id /suid-id; chmod 4755 /suid-id",
        )
        assert rc == 0, err

    def run_as_nobody(path: Path) -> int:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            p = subprocess.run(
                [f"/proc/self/fd/{fd}", "-u"], capture_output=True, text=True, pass_fds=(fd,),
                user=65534, group=65534, extra_groups=[], timeout=10,
            )  # fmt: skip
        finally:
            os.close(fd)
        assert p.returncode == 0, p.stderr
        return int(p.stdout)

    euid = run_as_nobody(private(node, contained) / "suid-id")
    assert euid != 0, "the VE's root is not the host's"
    assert euid in (base_of(node, contained), 65534)  # 65534: a nosuid pool ignores the bit
    assert run_as_nobody(private(node, privileged) / "suid-id") in (0, 65534)


def test_no_signal_nor_ptrace_to_a_host_process(node: Node, ves: tuple[str, str]) -> None:
    """A process of the host's root that joined the VE's PID namespace is visible
    inside, and out of reach."""
    contained = ves[0]
    init = info(node, contained)["init_pid"]
    host = subprocess.Popen(["nsenter", "-t", str(init), "-p", "--", "sleep", "60"])
    try:
        deadline = time.monotonic() + 10
        inner = 0
        while not inner:
            assert time.monotonic() < deadline, "the host process did not appear"
            for child in Path(f"/proc/{host.pid}/task/{host.pid}/children").read_text().split():
                status = Path(f"/proc/{child}/status").read_text()
                nspid = next(ln for ln in status.splitlines() if ln.startswith("NSpid:"))
                inner = int(nspid.split()[-1])
            time.sleep(0.02)
        got = probe(node, contained, "signal", inner)
        assert got == {"kill": "EPERM", "ptrace": "EPERM", "kill_own": "ok"}
    finally:
        host.send_signal(signal.SIGKILL)
        host.wait(10)


def test_a_ve_cannot_read_another_ves_files(node: Node, ves: tuple[str, str]) -> None:
    start(node, "1203")
    rc, _, err = node.cpt(
        "ve",
        "exec",
        "1203",
        "--",
        "/bin/sh",
        "-c",
        "echo private > /root/secret; chmod 600 /root/secret",
    )
    assert rc == 0, err
    other = private(node, "1203") / "root" / "secret"
    assert os.stat(other).st_uid == base_of(node, "1203")
    for veid in ves:  # the file, with its owner, where each VE sees it
        shutil.copy2(other, private(node, veid) / "other-secret")
        st = os.stat(other)
        os.chown(private(node, veid) / "other-secret", st.st_uid, st.st_gid)
    assert probe(node, ves[0], "read", "/other-secret") == {"read": "EACCES"}
    assert probe(node, ves[1], "read", "/other-secret") == {"read": "ok:private\n"}
    assert node.cpt("ve", "stop", "1203", "--timeout", "1")[0] == 0


def test_the_seccomp_filter_denies_its_list(node: Node, ves: tuple[str, str]) -> None:
    got = probe(node, ves[0], "seccomp")
    assert got.pop("mode") == "2" and got.pop("filters") == "1"
    assert got.pop("getpid") == "ok"
    assert set(got.values()) == {"EPERM"}, got
    got = probe(node, ves[1], "seccomp")
    assert got["mode"] == "0", "a privileged VE runs without the filter"


def test_chkpnt_and_restore_keep_the_filter_the_locks_and_the_ids(
    node: Node, ves: tuple[str, str]
) -> None:
    contained = ves[0]
    base = base_of(node, contained)
    rc, _, err = node.cpt("chkpnt", contained)
    assert rc == 0, err
    dump = node.root / "dump" / f"Dump.{contained}"
    rc, out, _ = node.cpt("image", "show", dump)
    assert rc == 0 and "USERNS" in out
    rc, out, _ = node.cpt("image", "decode", dump)
    doc = json.loads(out)
    recs = [r for s in doc["sections"] for r in s.get("records", [])]
    userns = next(r for r in recs if r["record"] == "UserNs")
    assert userns["uid_map"] == [{"inside": 0, "outside": base, "count": COUNT}]
    creds = {r["pid"]: r for r in recs if r["record"] == "Creds"}
    inside = [r for r in recs if r["record"] == "NsCreds"]
    assert inside and all(r["uid"] == 0 and creds[r["pid"]]["uid"] == base for r in inside)
    rc, _, err = node.cpt("restore", contained)
    assert rc == 0, err
    got = probe(node, contained, "seccomp")
    assert (got["mode"], got["filters"], got["kexec_load"]) == ("2", "1", "EPERM")
    # the restored init and shell have it too, and their ids inside
    init = info(node, contained)["init_pid"]
    status = Path(f"/proc/{init}/status").read_text()
    assert "Seccomp:\t2" in status and f"Uid:\t{base}\t{base}\t{base}\t{base}" in status
    assert probe(node, contained, "usr") == {
        "remount_rw": "EPERM", "umount": "EINVAL", "write": "EROFS",
    }, "the host's mounts came back locked"  # fmt: skip
    assert probe(node, contained, "host_global")["core_pattern"] == "EACCES"
    assert probe(node, contained, "ids")["uid_map"] == ["0", str(base), str(COUNT)]


def test_restore_refuses_a_range_held_by_another_ve(node: Node, ves: tuple[str, str]) -> None:
    """The image's maps must be the VE's own range, and that range nobody else's."""
    from ve.idmap import IdRegistry

    contained = ves[0]
    base = base_of(node, contained)
    rc, _, err = node.cpt("chkpnt", contained)
    assert rc == 0, err
    dump = node.root / "dump" / f"Dump.{contained}"
    rc, _, err = node.cpt("restore", "--dumpfile", dump)
    assert rc == 17 and f"restore it as the VE (`cpt restore {contained}`)" in err, err
    reg = IdRegistry(str(node.ids))
    reg.release(contained, str(node.root))  # as if another VE took the range meanwhile
    other = node.root.parent / "other-node"
    (other / "ve").mkdir(parents=True, exist_ok=True)
    (other / "ve" / "1299.toml").write_text("")
    reg.ensure("1299", str(other), base)
    try:
        rc, _, err = node.cpt("restore", contained)
        assert rc == 17 and err.count("\n") == 1, err
        assert f"ids {base}-{base + COUNT - 1}" in err and "VE 1299" in err, err
        assert node.cpt("ve", "status", contained)[1].split()[-1] == "suspended"
    finally:
        reg.release("1299", str(other))
    rc, _, err = node.cpt("restore", contained)
    assert rc == 0, err
    assert reg.holders()[contained].base == base, "registered again, for its node root"


def test_snapshots_and_rollback_keep_the_mapped_owners(node: Node, ves: tuple[str, str]) -> None:
    contained = ves[0]
    base = base_of(node, contained)
    area = private(node, contained)
    rc, _, err = node.cpt("ve", "exec", contained, "--", "/bin/sh", "-c", "echo one > /root/kept")
    assert rc == 0, err
    rc, _, err = node.cpt("snapshot", "create", contained, "--name", "owners")
    assert rc == 0, err
    rc, _, err = node.cpt("ve", "exec", contained, "--", "/bin/sh", "-c", "rm /root/kept")
    assert rc == 0, err
    assert node.cpt("ve", "stop", contained, "--timeout", "1")[0] == 0
    rc, _, err = node.cpt("snapshot", "rollback", contained, "owners")
    assert rc == 0, err
    st = os.stat(area / "root" / "kept")
    assert (st.st_uid, st.st_gid) == (base, base)
    assert os.stat(area).st_uid == base
    # the snapshot held the processes too: the VE runs again, restored in its namespace
    assert node.cpt("ve", "status", contained)[1].strip() == f"VE {contained} running"
    assert probe(node, contained, "read", "/root/kept") == {"read": "ok:one\n"}
    assert probe(node, contained, "ids")["uid_map"] == ["0", str(base), str(COUNT)]


def test_privileged_conversion_moves_the_owners(node: Node) -> None:
    node.create("1204", "--privileged")
    area = private(node, "1204")
    assert os.stat(area / "etc" / "passwd").st_uid == 0
    rc, _, err = node.cpt("ve", "set", "1204", "--no-privileged")
    assert rc == 0, err
    base = base_of(node, "1204")
    assert os.stat(area / "etc" / "passwd").st_uid == base and os.stat(area).st_gid == base
    rc, _, err = node.cpt("ve", "set", "1204", "--privileged")
    assert rc == 0, err
    assert os.stat(area / "etc" / "passwd").st_uid == 0 and info(node, "1204")["privileged"]
    assert "cpt-ve-1204:" not in (node.ids / "subuid").read_text(), "its range given back"


def test_destroy_gives_the_range_back(node: Node) -> None:
    node.create("1205")
    base = base_of(node, "1205")
    assert f"cpt-ve-1205:{base}:{COUNT}" in (node.ids / "subuid").read_text()
    assert node.cpt("ve", "destroy", "1205")[0] == 0
    node.created.remove("1205")
    assert "cpt-ve-1205" not in (node.ids / "subuid").read_text()
    assert "1205" not in json.loads((node.ids / "cpt-idmap.json").read_text())["ranges"]


def test_start_refuses_a_range_held_by_another_ve(node: Node) -> None:
    """`ve start` checks the VE's range before it makes anything: taken meanwhile by a VE
    of another node root on this machine, the start is refused, naming the range and
    its holder; given back, the VE starts and its range is registered for it again."""
    from ve.idmap import IdRegistry

    node.create("1208", "--", "/bin/sh", "-c", "sleep 1000")
    base = base_of(node, "1208")
    reg = IdRegistry(str(node.ids))
    reg.release("1208", str(node.root))
    other = node.root.parent / "third-node"
    (other / "ve").mkdir(parents=True, exist_ok=True)
    (other / "ve" / "1298.toml").write_text("")
    reg.ensure("1298", str(other), base)
    try:
        rc, _, err = node.cpt("ve", "start", "1208")
        assert rc == 21 and err.count("\n") == 1, err
        assert f"ids {base}-{base + COUNT - 1}" in err and "VE 1298" in err, err
        assert node.cpt("ve", "status", "1208")[1].split()[-1] == "stopped"
    finally:
        reg.release("1298", str(other))
    rc, _, err = node.cpt("ve", "start", "1208")
    assert rc == 0, err
    assert reg.holders()["1208"].base == base
    assert probe(node, "1208", "ids")["uid_map"] == ["0", str(base), str(COUNT)]
    assert node.cpt("ve", "stop", "1208", "--timeout", "1")[0] == 0


def test_concurrent_creates_get_distinct_ranges(node: Node) -> None:
    """Two `cpt ve create` commands at the same moment on one machine (two node roots
    sharing its id files): two ranges, both in subuid and subgid."""
    other = Node(node.root.parent / "second-node")
    other.env["CPT_IDMAP_DIR"] = str(node.ids)  # the same machine-wide files
    procs = [
        subprocess.Popen([*CPT, "ve", "create", veid], cwd=REPO, env=n.env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for n, veid in ((node, "1206"), (other, "1207"))
    ]  # fmt: skip
    try:
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
        node.created.append("1206")
        other.created.append("1207")
        ranges = json.loads((node.ids / "cpt-idmap.json").read_text())["ranges"]
        a, b = ranges["1206"]["base"], ranges["1207"]["base"]
        assert abs(a - b) >= COUNT
        assert ranges["1207"]["root"] == str(other.root)
        lines = (node.ids / "subuid").read_text().split()
        assert f"cpt-ve-1206:{a}:{COUNT}" in lines and f"cpt-ve-1207:{b}:{COUNT}" in lines
    finally:
        other.cleanup()
        from storage import pool

        pool.teardown(str(other.root))
