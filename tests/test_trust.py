"""Hostile inputs to a restore of a process tree (issue 11, "a dump file is code that root
will run"): planted dump files, crafted credentials, crafted paths, a symlinked pidfile.

A real tree of another user (uid 1001: `sleep` in a session of its own, cwd /, stdio
/dev/null) is checkpointed once; each test restores it, or an edit of its image made the
way an attacker would (decode to JSON, edit, encode).  Every refusal is exit 17 with its
message, and leaves no process of the tree alive and nothing created.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cptcli import CptRunner
from workloads import kill_tree, make_subreaper

from cptimage import jsonio
from cptimage.records import PathFlags

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="checkpoint/restore needs root (ptrace, clone3 set_tid)"
    ),
]

UID = 1001
Doc = dict[str, Any]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def ids(pid: int) -> tuple[list[int], list[int], int]:
    """(uids, gids, CapEff) of a live process."""
    lines = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return (
        [int(x) for x in lines["Uid"].split()],
        [int(x) for x in lines["Gid"].split()],
        int(lines["CapEff"], 16),
    )


def start_user_sleep(*argv: str, uid: int = UID) -> subprocess.Popen[bytes]:
    make_subreaper()
    return subprocess.Popen(
        list(argv) or ["/bin/sleep", "1000"],
        user=uid, group=uid, extra_groups=[], cwd="/", stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        close_fds=True,
    )  # fmt: skip


def checkpoint(cpt: CptRunner, p: subprocess.Popen[bytes], img: Path) -> None:
    """`cpt chkpnt --pid` of our child `p`, reaped as soon as the chkpnt kills it (a
    chkpnt waits until the tree's PIDs are free; only we can reap our child)."""
    reaper = threading.Thread(target=p.wait, name="reaper", daemon=True)
    reaper.start()
    rc, _, err = cpt("chkpnt", "--pid", p.pid, "--dumpfile", img)
    assert rc == 0, err
    reaper.join(timeout=10)


@pytest.fixture(scope="module")
def dumped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Doc]]:
    """A uid-1001 tree, checkpointed (killed): its root PID and its image as JSON."""
    d = tmp_path_factory.mktemp("trust")
    cpt = CptRunner(d / "run")
    p = start_user_sleep()
    time.sleep(0.2)
    img = d / "user.img"
    checkpoint(cpt, p, img)
    yield p.pid, jsonio.decode(img)


def records(doc: Doc, name: str) -> list[dict[str, Any]]:
    return [r for s in doc["sections"] for r in s.get("records", []) if r["record"] == name]


def section(doc: Doc, stype: str) -> list[dict[str, Any]]:
    return next(s for s in doc["sections"] if s["type"] == stype)["records"]


def write_image(doc: Doc, path: Path) -> Path:
    """The image of `doc` at `path`, as root would write it (0600): a file that passes the
    ownership check, so that what is checked next is its contents."""
    with open(path, "wb") as f:
        jsonio.encode(doc, f)
    os.chmod(path, 0o600)
    return path


def crafted(dumped: tuple[int, Doc], path: Path, edit: Callable[[Doc, int], None]) -> Path:
    pid, doc = dumped
    doc = copy.deepcopy(doc)
    edit(doc, pid)
    return write_image(doc, path)


def restored(cpt: CptRunner, img: Path, pid: int, *extra: object) -> None:
    """Restore must succeed; the tree is then killed."""
    rc, _, err = cpt("restore", "--dumpfile", img, *extra, timeout=60)
    try:
        assert rc == 0, err
        assert alive(pid)
    finally:
        kill_tree(pid)


def refused(cpt: CptRunner, img: Path, pid: int, *extra: object, code: int = 17) -> str:
    """Restore must fail with exit `code` and leave nothing of the tree alive; its
    message."""
    rc, out, err = cpt("restore", "--dumpfile", img, *extra, timeout=60)
    if alive(pid):
        kill_tree(pid)
        pytest.fail(f"the tree is alive after a refused restore: {rc} {err}")
    assert rc == code, (rc, out, err)
    assert err.startswith("cpt: ") and err.count("\n") == 1, err
    return err


def test_the_image_itself_restores_as_its_user(cpt: CptRunner, dumped, tmp_path: Path) -> None:
    """The baseline: the unedited image restores, with the tree's credentials."""
    pid, doc = dumped
    img = write_image(doc, tmp_path / "plain.img")
    rc, _, err = cpt("restore", "--dumpfile", img)
    try:
        assert rc == 0, err
        uids, gids, cap_eff = ids(pid)
        assert (uids, gids, cap_eff) == ([UID] * 4, [UID] * 4, 0)
    finally:
        kill_tree(pid)


# --------------------------------------------------------------------------- planted files


def _other_owner(img: Path) -> Path:
    os.chown(img, UID, UID)
    return img


def _world_writable(img: Path) -> Path:
    os.chmod(img, 0o666)
    return img


def _group_writable(img: Path) -> Path:
    os.chmod(img, 0o620)
    return img


def _symlink(img: Path) -> Path:
    link = img.with_suffix(".link")
    link.symlink_to(img)
    return link


def _fifo(img: Path) -> Path:
    fifo = img.with_suffix(".fifo")
    os.mkfifo(fifo, 0o600)
    return fifo


# kind -> (plant it, exit code, message): a file a user could have written is a restore
# refused (17); a symlink or a FIFO is no image file at all (40, as for every image tool)
PLANTED = {
    "other-owner": (_other_owner, 17, "is owned by uid 1001"),
    "mode-0666": (_world_writable, 17, "mode 0666) is writable by its group or others"),
    "mode-0620": (_group_writable, 17, "mode 0620) is writable by its group or others"),
    "symlink": (_symlink, 40, "is a symbolic link"),
    "fifo": (_fifo, 40, "not a regular file but a FIFO"),
}


@pytest.mark.parametrize("kind", list(PLANTED))
def test_planted_dump_file_is_refused(cpt: CptRunner, dumped, tmp_path: Path, kind: str) -> None:
    """A dump file another user could have written (or a symlink, a FIFO) is refused,
    naming its owner and mode; the FIFO does not make restore hang."""
    pid, doc = dumped
    plant, code, message = PLANTED[kind]
    img = plant(write_image(doc, tmp_path / "planted.img"))
    err = refused(cpt, img, pid, code=code)
    assert message in err and str(img) in err, err
    if code == 17:
        assert "--trust" in err, err
    for stage in ("--resume", "--kill"):  # the other readers of a dump file
        rc, _, err = cpt("restore", "--dumpfile", img, stage)
        assert rc == code and message in err, err


@pytest.mark.parametrize("kind", ["other-owner", "mode-0666"])
def test_trust_vouches_for_owner_and_mode(
    cpt: CptRunner, dumped, tmp_path: Path, kind: str
) -> None:
    pid, doc = dumped
    plant, _, _ = PLANTED[kind]
    restored(cpt, plant(write_image(doc, tmp_path / "vouched.img")), pid, "--trust")


def test_trust_does_not_follow_a_symlink(cpt: CptRunner, dumped, tmp_path: Path) -> None:
    pid, doc = dumped
    link = _symlink(write_image(doc, tmp_path / "x.img"))
    assert "is a symbolic link" in refused(cpt, link, pid, "--trust", code=40)


# --------------------------------------------------------------------------- credentials

# every capability the restorer itself has (here all but cap_sys_resource)
ALL_CAPS = int(
    next(
        x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("CapPrm")
    ).split()[1],
    16,
)


def _root_creds(doc: Doc, pid: int) -> None:
    for c in records(doc, "Creds"):
        c.update(uid=0, euid=0, suid=0, fsuid=0, gid=0, egid=0, sgid=0, fsgid=0, groups=[0])
        c.update(cap_prm=ALL_CAPS, cap_eff=ALL_CAPS, cap_inh=0, cap_bnd=ALL_CAPS)


def test_creds_edited_to_root_are_refused(cpt: CptRunner, dumped, tmp_path: Path) -> None:
    """The image of a uid-1001 process edited to uid 0 with every capability: refused,
    naming the process and what it would gain over its tree's owner."""
    pid, _ = dumped
    img = crafted(dumped, tmp_path / "root.img", _root_creds)
    err = refused(cpt, img, pid)
    assert f"process {pid} (sleep) holds uid 0" in err, err
    assert "capabilities cap_chown," in err and "beyond its tree's owner (uid 1001" in err, err


def test_trust_restores_creds_above_the_owner(cpt: CptRunner, dumped, tmp_path: Path) -> None:
    """--trust: the operator vouches for the image, which restores as it says."""
    pid, _ = dumped
    img = crafted(dumped, tmp_path / "root.img", _root_creds)
    rc, _, err = cpt("restore", "--dumpfile", img, "--trust")
    try:
        assert rc == 0, err
        assert ids(pid)[0] == [0, 0, 0, 0]
    finally:
        kill_tree(pid)


def _one_capability(doc: Doc, pid: int) -> None:
    for c in records(doc, "Creds"):
        c.update(cap_prm=1 << 21, cap_eff=1 << 21)  # cap_sys_admin


def _no_owner(doc: Doc, pid: int) -> None:
    sec = section(doc, "PROCESS")
    sec[:] = [r for r in sec if r["record"] != "Owner"]


def _no_creds(doc: Doc, pid: int) -> None:
    sec = section(doc, "PROCESS")
    sec[:] = [r for r in sec if r["record"] != "Creds"]


def _chroot(doc: Doc, pid: int) -> None:
    (ts,) = records(doc, "TaskState")
    root = {"record": "PathObj", **{k: v for k, v in records(doc, "PathObj")[0].items()}}
    st = os.stat("/tmp")
    root.update(id=999, kind="DIR", path="/tmp", mode=st.st_mode, ino=st.st_ino, dev=st.st_dev,
                uid=st.st_uid, gid=st.st_gid, size=st.st_size, mtime_ns=st.st_mtime_ns,
                nlink=st.st_nlink, flags=0, contents="")  # fmt: skip
    section(doc, "FILES").append(root)
    ts["root_id"] = 999


@pytest.mark.parametrize(
    ("edit", "code", "message"),
    [
        (_one_capability, 17, "holds capabilities cap_sys_admin, beyond its tree's owner"),
        (_no_owner, 17, "does not record its tree's owner"),
        # verify's invariants (SPEC.md section 11) catch it first: a damaged image (40)
        (_no_creds, 40, "has no Creds; refusing to restore"),
        (_chroot, 17, "root directory /tmp (chroot needs cap_sys_chroot)"),
    ],
    ids=["a-capability", "owner-removed", "creds-removed", "chroot"],
)
def test_crafted_credentials_are_refused(
    cpt: CptRunner,
    dumped,
    tmp_path: Path,
    edit: Callable[[Doc, int], None],
    code: int,
    message: str,
) -> None:
    pid, _ = dumped
    err = refused(cpt, crafted(dumped, tmp_path / "c.img", edit), pid, code=code)
    assert message in err, err


# --------------------------------------------------------------------------- paths


@pytest.fixture
def secret() -> Iterator[Path]:
    """A root-only file (0600) in a directory anyone may search."""
    d = Path(tempfile.mkdtemp(prefix="cpt-trust-", dir="/tmp"))
    d.chmod(0o755)
    f = d / "secret"
    f.write_text("root's secret\n")
    f.chmod(0o600)
    try:
        yield f
    finally:
        f.unlink(missing_ok=True)
        for p in d.iterdir():
            p.unlink()
        d.rmdir()


def _path_record(doc: Doc, ident: int, path: Path, **kw: Any) -> dict[str, Any]:
    st = os.stat(path)
    rec = dict(records(doc, "PathObj")[0])
    rec.update(id=ident, kind="REG", flags=0, mode=st.st_mode, uid=st.st_uid, gid=st.st_gid,
               nlink=st.st_nlink, size=st.st_size, mtime_ns=st.st_mtime_ns, ino=st.st_ino,
               dev=st.st_dev, rdev=0, path=str(path), contents="")  # fmt: skip
    rec.update(kw)
    return rec


def _give_fd(doc: Doc, pid: int, desc: dict[str, Any], fd: int = 7) -> None:
    section(doc, "FILES").append(desc)
    section(doc, "FDS").append(
        {"record": "Fd", "pid": pid, "fd": fd, "file_id": desc["id"], "flags": 0}
    )


def test_a_file_record_pointing_to_a_root_only_file_is_refused(
    cpt: CptRunner, dumped, tmp_path: Path, secret: Path
) -> None:
    """An fd record naming a root-only 0600 file (inode, size, mtime from stat): refused,
    never opened (its contents stay)."""
    pid, _ = dumped

    def edit(doc: Doc, pid: int) -> None:
        section(doc, "FILES").append(_path_record(doc, 900, secret))
        _give_fd(doc, pid, {"record": "RegFile", "id": 900, "path_id": 900, "flags": os.O_RDWR,
                            "fown_pid": 0, "fown_signum": 0, "pos": 0})  # fmt: skip

    err = refused(cpt, crafted(dumped, tmp_path / "f.img", edit), pid)
    assert f"cannot open {secret} as uid 1001 (process {pid}): Permission denied" in err, err
    assert secret.read_text() == "root's secret\n"


def test_a_mapping_of_a_root_only_file_is_refused(
    cpt: CptRunner, dumped, tmp_path: Path, secret: Path
) -> None:
    """A shared writable mapping of a root-only file: refused, as the process would be."""
    pid, _ = dumped

    def edit(doc: Doc, pid: int) -> None:
        section(doc, "FILES").append(_path_record(doc, 901, secret))
        vmas = records(doc, "Vma")
        # a free GiB below the lowest mapping (the executable, at 0x55... or above)
        start = min(v["start"] for v in vmas if v["pid"] == pid) - (1 << 30)
        section(doc, "MM").append({**vmas[0], "pid": pid, "kind": "FILE_SHARED", "prot": 3,
                                   "flags": 1, "start": start, "end": start + 4096,
                                   "pgoff": 0, "vmflags": 0,
                                   "file_id": 901, "shmem_id": 0, "name": ""})  # fmt: skip
        section(doc, "MM").sort(
            key=lambda r: (r["record"] != "Vma", r.get("pid", 0), r.get("start", 0))
        )

    err = refused(cpt, crafted(dumped, tmp_path / "m.img", edit), pid)
    assert f"cannot open {secret} as uid 1001 (process {pid})" in err, err


def test_an_inotify_watch_on_a_root_only_file_is_refused(
    cpt: CptRunner, dumped, tmp_path: Path, secret: Path
) -> None:
    """A watch crafted on a file uid 1001 may not read: added as uid 1001, refused."""
    pid, _ = dumped
    st = secret.stat()

    def edit(doc: Doc, pid: int) -> None:
        _give_fd(doc, pid, {"record": "Inotify", "id": 904, "flags": os.O_NONBLOCK})
        section(doc, "FILES").append({"record": "InotifyWatch", "inotify_id": 904, "wd": 1,
                                      "mask": 2, "ignored_mask": 0, "ino": st.st_ino,
                                      "dev": st.st_dev, "path": str(secret)})  # fmt: skip

    err = refused(cpt, crafted(dumped, tmp_path / "i.img", edit), pid)
    assert f"inotify 904 watch 1 ({secret}) as uid 1001 (process {pid})" in err, err
    assert "Permission denied" in err, err


def test_a_fifo_of_root_only_is_refused(
    cpt: CptRunner, dumped, tmp_path: Path, secret: Path
) -> None:
    """A FIFO record naming a root-only FIFO (0600): opened as uid 1001, refused."""
    pid, _ = dumped
    fifo = secret.with_name("fifo")
    os.mkfifo(fifo, 0o600)
    st = fifo.stat()

    def edit(doc: Doc, pid: int) -> None:
        section(doc, "FILES").append(_path_record(doc, 905, fifo, kind="FIFO"))
        section(doc, "FILES").append({"record": "PipeData", "capacity": 65536,
                                      "ino": st.st_ino, "data": ""})  # fmt: skip
        _give_fd(doc, pid, {"record": "Fifo", "id": 906, "path_id": 905,
                            "flags": os.O_WRONLY, "ino": st.st_ino})  # fmt: skip

    err = refused(cpt, crafted(dumped, tmp_path / "fifo.img", edit), pid)
    assert f"cannot open FIFO {fifo} as uid 1001 (process {pid})" in err, err
    assert "Permission denied" in err, err


def test_a_unix_socket_in_etc_is_refused(cpt: CptRunner, dumped, tmp_path: Path) -> None:
    """A listening socket record named /etc/rel-planted.sock: the bind is made as uid 1001,
    which may not create files in /etc; nothing appears there."""
    pid, _ = dumped
    planted = Path("/etc/rel-planted.sock")
    planted.unlink(missing_ok=True)

    def edit(doc: Doc, pid: int) -> None:
        name = "L2V0Yy9yZWwtcGxhbnRlZC5zb2Nr"  # base64 of /etc/rel-planted.sock
        assert json.loads(json.dumps(name))
        _give_fd(doc, pid, {"record": "UnixSocket", "id": 902, "flags": 2, "type": 1,
                            "state": "LISTEN", "shutdown": 0, "backlog": 5, "sndbuf": 212992,
                            "rcvbuf": 212992, "opts": 0, "ino": 77777, "peer_ino": 0,
                            "name": name, "queue": [], "fmode": 0o140777, "fuid": 0,
                            "fgid": 0, "senders": [], "icons": [],
                            "peer_name": ""})  # fmt: skip

    err = refused(cpt, crafted(dumped, tmp_path / "s.img", edit), pid)
    assert "cannot bind a unix socket to /etc/rel-planted.sock as uid 1001" in err, err
    assert "Permission denied" in err, err
    assert not planted.exists()


def test_a_ghost_crafted_setuid_root_stays_the_process_own(
    cpt: CptRunner, dumped, tmp_path: Path
) -> None:
    """A deleted file carried in the image, edited to be a set-uid program of root: it is
    recreated by uid 1001, which cannot give it to root: the process gets a file of its
    own (a set-uid 1001 program is no gain)."""
    pid, _ = dumped
    d = Path(tempfile.mkdtemp(prefix="cpt-ghost-", dir="/tmp"))
    d.chmod(0o777)
    try:

        def edit(doc: Doc, pid: int) -> None:
            ghost = _path_record(doc, 903, "/bin/sleep")
            ghost.update(flags=int(PathFlags.DELETED | PathFlags.GHOST), path=str(d / "gone"), mode=0o104755, uid=0,
                         gid=0, nlink=0, size=4, contents="I2lkCg==", ino=1, dev=1)  # fmt: skip
            section(doc, "FILES").append(ghost)
            _give_fd(doc, pid, {"record": "RegFile", "id": 903, "path_id": 903,
                                "flags": os.O_RDONLY, "fown_pid": 0, "fown_signum": 0,
                                "pos": 0})  # fmt: skip

        rc, _, err = cpt("restore", "--dumpfile", crafted(dumped, tmp_path / "g.img", edit))
        try:
            assert rc == 0, err
            st = os.stat(f"/proc/{pid}/fd/7")
            assert (st.st_uid, st.st_gid) == (UID, UID), "not given away to root"
            assert not (st.st_uid == 0 and st.st_mode & stat.S_ISUID)
            assert list(d.iterdir()) == [], "recreated unlinked"
        finally:
            kill_tree(pid)
    finally:
        for p in d.iterdir():
            p.unlink()
        d.rmdir()


# --------------------------------------------------------------------------- pidfile


def test_pidfile_replaces_a_symlink_and_never_follows_it(
    cpt: CptRunner, dumped, tmp_path: Path
) -> None:
    pid, doc = dumped
    img = write_image(doc, tmp_path / "p.img")
    victim = tmp_path / "victim"
    victim.write_text("not yours\n")
    pidfile = tmp_path / "root.pid"
    pidfile.symlink_to(victim)
    rc, _, err = cpt("restore", "--dumpfile", img, "--pidfile", pidfile)
    try:
        assert rc == 0, err
        assert victim.read_text() == "not yours\n", "the symlink was followed"
        assert not pidfile.is_symlink() and pidfile.read_text() == f"{pid}\n"
        assert stat.S_IMODE(pidfile.stat().st_mode) == 0o644
    finally:
        kill_tree(pid)


def test_a_pidfile_that_cannot_be_written_kills_the_tree(
    cpt: CptRunner, dumped, tmp_path: Path
) -> None:
    """Written before the tree is released: if it cannot be, the restore fails (17) and
    nothing of the tree is left (a retry cannot make a duplicate)."""
    pid, doc = dumped
    img = write_image(doc, tmp_path / "p.img")
    err = refused(cpt, img, pid, "--pidfile", tmp_path / "no-such-dir" / "root.pid")
    assert "cannot write the pidfile" in err and "the restored tree was killed" in err, err
    (tmp_path / "adir").mkdir()
    err = refused(cpt, img, pid, "--pidfile", tmp_path / "adir")
    assert "cannot write the pidfile" in err, err


# --------------------------------------------------------------------------- privileges dropped


def test_a_file_opened_before_dropping_privileges_needs_trust(
    cpt: CptRunner, tmp_path: Path, secret: Path
) -> None:
    """A process that opened a root-only file as root, then became uid 1001, holds a file
    it could not open itself: its restore is refused, unless the operator vouches for the
    image (--trust), and then only the very file it held is opened."""
    make_subreaper()
    code = (
        "import os, signal, sys, time\n"
        f"fd = os.open({str(secret)!r}, os.O_RDONLY)\n"
        f"os.setgroups([]); os.setresgid({UID}, {UID}, {UID}); os.setresuid({UID}, {UID}, {UID})\n"
        "sys.stdout.write('ready'); sys.stdout.flush()\n"
        "while True: time.sleep(1)\n"
    )
    p = subprocess.Popen(
        ["/usr/bin/python3", "-S", "-c", code], cwd="/", stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        assert p.stdout is not None and p.stdout.read(5) == b"ready"
        img = tmp_path / "dropped.img"
        checkpoint(cpt, p, img)  # type: ignore[arg-type]
        err = refused(cpt, img, p.pid)
        assert f"cannot open {secret} as uid 1001" in err and "--trust" in err, err
        rc, _, err = cpt("restore", "--dumpfile", img, "--trust")
        assert rc == 0, err
        fds = {os.readlink(f"/proc/{p.pid}/fd/{n}") for n in os.listdir(f"/proc/{p.pid}/fd")}
        assert str(secret) in fds and ids(p.pid)[0] == [UID] * 4
    finally:
        if alive(p.pid):
            os.kill(p.pid, signal.SIGKILL)
        kill_tree(p.pid)
        if p.returncode is None:
            p.kill()
            p.wait(timeout=10)
