"""Hostile inputs to a VE (issue 11, "a dump file is code that root will run"): a dump
file planted at a VE's default path, VE images that do not stand on the VE's private
area, and a set-uid program a VE's root leaves in its area.  Real VEs on a real
loop-file btrfs pool; addresses from 198.18.0.0/15 only.
"""

from __future__ import annotations

import copy
import os
import shutil
import stat
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ve_node import Node

from cptimage import jsonio

pytestmark = [
    pytest.mark.root,
    pytest.mark.destructive,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="VEs need root (namespaces, veth, mounts)"),
]

LOOP = "while true; do sleep 1; done"
GOLDEN = Path(__file__).resolve().parent.parent / "fixtures" / "images" / "tree-owner.img"
Doc = dict[str, Any]


def status(node: Node, veid: str) -> str:
    return node.cpt("ve", "status", veid)[1].split()[-1]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def mount_options(path: Path) -> set[str]:
    real = os.path.realpath(path)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == real:
            opts = set(fields[5].split(","))
    return opts


# --------------------------------------------------------------------------- the pool


def test_a_setuid_copy_in_a_private_area_gives_a_host_user_nothing(node: Node) -> None:
    """The VE's root makes a set-uid copy of `id` in its area (inside, it works: the VE's
    own view allows set-uid); pool/private is 0700, and the pool is mounted nosuid,nodev
    on the host side, so a host user who reaches it anyway runs it as itself."""
    # privileged: the VE's root is the host's root (a VE that contains its root makes
    # a set-uid program of its range's first id, 100000 here, not of root)
    node.create("311", "--ip", "198.18.41.2/24", "--privileged", "--", "/bin/sh", "-c", LOOP)
    assert node.cpt("ve", "start", "311")[0] == 0
    pool = node.root / "pool"
    private = pool / "private"
    assert {"nosuid", "nodev"} <= mount_options(pool), mount_options(pool)
    assert mode(private) == 0o700
    make = "mkdir -p /opt && cp /usr/bin/id /opt/id && chmod 4755 /opt/id"
    rc, _, err = node.cpt("ve", "exec", "311", "--", "/bin/sh", "-c", make)
    assert rc == 0, err
    prog = private / "311" / "opt" / "id"
    assert prog.stat().st_mode & stat.S_ISUID and prog.stat().st_uid == 0
    inside = ["setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups", "/opt/id", "-u"]
    rc, out, err = node.cpt("ve", "exec", "311", "--", *inside)
    assert (rc, out.strip()) == (0, "0"), ("set-uid works inside the VE", rc, out, err)
    rc, out, err = node.cpt("ve", "exec", "311", "--", "/bin/cat", "/proc/self/mountinfo")
    assert rc == 0, err
    root_opts = next(set(f[5].split(",")) for f in map(str.split, out.splitlines()) if f[4] == "/")
    assert "noatime" in root_opts and not {"nosuid", "nodev"} & root_opts, root_opts

    # A host user who reaches the program (the test's directories are root's, so it is
    # handed over as an fd, as if every directory above it were open) runs it as itself:
    # the pool is nosuid on the host side.
    fd = os.open(prog, os.O_PATH | os.O_CLOEXEC)
    try:
        got = subprocess.run(
            [f"/proc/self/fd/{fd}", "-u"], pass_fds=[fd], user=65534, group=65534,
            extra_groups=[], capture_output=True, text=True, timeout=10, cwd="/",
        )  # fmt: skip
    finally:
        os.close(fd)
    assert (got.returncode, got.stdout.strip()) == (0, "65534"), got
    assert node.cpt("ve", "stop", "311", "--timeout", "2")[0] == 0


# --------------------------------------------------------------------------- planted files


def _plant_other_owner(path: Path) -> None:
    shutil.copy(GOLDEN, path)
    os.chown(path, 1001, 1001)


def _plant_world_writable(path: Path) -> None:
    shutil.copy(GOLDEN, path)
    path.chmod(0o666)


def _plant_symlink(path: Path) -> None:
    path.symlink_to(GOLDEN)


def _plant_fifo(path: Path) -> None:
    os.mkfifo(path, 0o600)


@pytest.mark.parametrize(
    ("plant", "code", "message"),
    [
        (_plant_other_owner, 17, "is owned by uid 1001"),
        (_plant_world_writable, 17, "(uid 0 (root), mode 0666) is writable by its group or others"),
        # no image file at all (40, as for a tree's and for every image tool)
        (_plant_symlink, 40, "is a symbolic link"),
        (_plant_fifo, 40, "not a regular file but a FIFO"),
    ],
    ids=["other-owner", "mode-0666", "symlink", "fifo"],
)
def test_a_planted_dump_file_neither_suspends_nor_starts_a_ve(
    node: Node, plant: Callable[[Path], None], code: int, message: str
) -> None:
    """A file a user put at the VE's default dump path: the stopped VE still shows as
    stopped, and `ve start` refuses to restore it (17 naming its owner and mode, or 40
    for a symlink or a FIFO) rather than run it."""
    node.create("312", "--ip", "198.18.42.2/24", "--", "/bin/sh", "-c", LOOP)
    dump = node.root / "dump" / "Dump.312"
    dump.parent.mkdir(mode=0o700, exist_ok=True)
    plant(dump)
    try:
        assert status(node, "312") == "stopped"
        rc, _, err = node.cpt("ve", "start", "312", timeout=30)
        assert rc == code and message in err and str(dump) in err, (rc, err)
        assert status(node, "312") == "stopped"
        rc, _, err = node.cpt("restore", "312", timeout=30)
        assert rc == code and message in err, (rc, err)
    finally:
        dump.unlink()
    assert node.cpt("ve", "destroy", "312")[0] == 0
    node.created.remove("312")


# --------------------------------------------------------------------------- VE images


def _fssnap(doc: Doc) -> list[dict[str, Any]]:
    return next(s for s in doc["sections"] if s["type"] == "FSSNAP")["records"]


def _mounts(doc: Doc) -> list[dict[str, Any]]:
    ns = next(s for s in doc["sections"] if s["type"] == "NAMESPACES")["records"]
    return [r for r in ns if r["record"] == "Mount"]


def _no_fssnap(doc: Doc, node: Node) -> None:
    _fssnap(doc).clear()


def _fssnap_of_another_area(doc: Doc, node: Node) -> None:
    _fssnap(doc)[0]["subvolume"] = str(node.root)


def _snapshot_outside_the_pool(doc: Doc, node: Node) -> None:
    _fssnap(doc)[0]["snapshot_path"] = "/"


def _snapshot_of_the_pool_elsewhere(doc: Doc, node: Node) -> None:
    _fssnap(doc)[0]["snapshot_path"] = str(node.root / "pool" / "private" / "313")


def _root_elsewhere(doc: Doc, node: Node) -> None:
    _mounts(doc)[0]["source"] = "/tmp"


CRAFTED = [
    (_no_fssnap, "carries no filesystem snapshot (FsSnapshot)"),
    (_fssnap_of_another_area, "the image's filesystem snapshot is of"),
    (_snapshot_outside_the_pool, "the image's filesystem snapshot / is not one of VE 313's"),
    (_snapshot_of_the_pool_elsewhere, "is not one of VE 313's snapshots in the node's pool"),
    (_root_elsewhere, "the image's root mount is /tmp, not the private area"),
]


def test_a_ve_image_must_stand_on_the_ve_private_area(node: Node) -> None:
    """The image of a VE, edited as root could (a file that passes the ownership check):
    without its filesystem proof, with a proof of another area or a snapshot outside the
    VE's snapshots in the pool, or with its root mount elsewhere, it is refused (17) and
    nothing runs; the unedited image restores, once the operator vouches for it when it
    is another user's file (`ve start --trust`).  The dump directory and the snapshots
    directory are root's alone."""
    node.create("313", "--ip", "198.18.43.2/24", "--", "/bin/sh", "-c", LOOP)
    assert node.cpt("ve", "start", "313")[0] == 0
    (node.root / "dump").mkdir(exist_ok=True)
    (node.root / "dump").chmod(0o755)  # as an older cpt made it
    rc, _, err = node.cpt("chkpnt", "313")
    assert rc == 0, err
    dump = node.root / "dump" / "Dump.313"
    assert mode(dump.parent) == 0o700 and mode(dump) == 0o600
    assert mode(node.root / "pool" / "snapshots") == 0o700
    original = dump.read_bytes()
    doc = jsonio.decode(dump)
    for edit, message in CRAFTED:
        bad = copy.deepcopy(doc)
        edit(bad, node)
        with open(dump, "wb") as f:
            jsonio.encode(bad, f)
        dump.chmod(0o600)
        rc, _, err = node.cpt("restore", "313", timeout=60)
        assert rc == 17 and message in err, (edit.__name__, rc, err)
        assert status(node, "313") == "suspended", "nothing runs; the dump file waits"
    dump.write_bytes(original)
    dump.chmod(0o600)
    os.chown(dump, 1001, 1001)  # the right image, but another user's file
    assert status(node, "313") == "stopped", "not a dump file a restore would read"
    rc, _, err = node.cpt("ve", "start", "313", timeout=60)
    assert rc == 17 and "is owned by uid 1001" in err and "--trust" in err, (rc, err)
    rc, _, err = node.cpt("ve", "start", "313", "--trust", timeout=60)
    assert rc == 0, err
    assert status(node, "313") == "running" and not dump.exists()
    assert node.cpt("ve", "stop", "313", "--timeout", "2")[0] == 0


def test_a_file_a_ve_root_may_not_open_is_refused_at_restore(node: Node) -> None:
    """A VE that contains its root: its shell holds /root/mine (its root's file); the
    image is edited to name /root/secret instead (a file of the host's root, 0600, in the
    same area: nobody's inside, which the VE's root may not open), with its inode, size
    and mtime.  The restore opens files in the VE's user namespace, as the process would:
    refused (17, Permission denied), nothing runs, the file is never opened for writing;
    the unedited image restores."""
    node.create(
        "314", "--ip", "198.18.44.2/24", "--", "/bin/sh", "-c", "exec 3<>/root/mine; " + LOOP
    )
    base = tomllib.loads((node.root / "ve" / "314.toml").read_text())["id_base"]
    area = node.root / "pool" / "private" / "314" / "root"
    mine, secret = area / "mine", area / "secret"
    mine.write_text("the VE's root's\n")
    os.chown(mine, base, base)
    secret.write_text("the host root's secret\n")
    secret.chmod(0o600)
    os.chown(secret, 0, 0)
    assert node.cpt("ve", "start", "314")[0] == 0
    # the premise, from inside: the kernel refuses the VE's root
    rc, _, err = node.cpt("ve", "exec", "314", "/bin/sh", "-c", "exec 4<>/root/secret")
    assert rc != 0 and "Permission denied" in err, (rc, err)
    rc, _, err = node.cpt("chkpnt", "314")
    assert rc == 0, err
    dump = node.root / "dump" / "Dump.314"
    original = dump.read_bytes()
    doc = jsonio.decode(dump)
    paths = [r for s in doc["sections"] for r in s.get("records", [])
             if r["record"] == "PathObj" and r["path"] == "/root/mine"]  # fmt: skip
    assert len(paths) == 1, paths
    st = secret.stat()
    paths[0].update(path="/root/secret", mode=st.st_mode, uid=st.st_uid, gid=st.st_gid,
                    size=st.st_size, mtime_ns=st.st_mtime_ns, ino=st.st_ino, dev=st.st_dev)  # fmt: skip
    with open(dump, "wb") as f:
        jsonio.encode(doc, f)
    dump.chmod(0o600)
    rc, _, err = node.cpt("restore", "314", timeout=60)
    assert rc == 17 and "/root/secret" in err and "Permission denied" in err, (rc, err)
    assert status(node, "314") == "suspended", "nothing runs; the dump file waits"
    assert secret.read_text() == "the host root's secret\n"
    dump.write_bytes(original)
    dump.chmod(0o600)
    rc, _, err = node.cpt("restore", "314", timeout=60)
    assert rc == 0, err
    assert status(node, "314") == "running"
    assert node.cpt("ve", "stop", "314", "--timeout", "2")[0] == 0
