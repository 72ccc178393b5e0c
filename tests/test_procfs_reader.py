"""cpt/procfs/reader.py: the error translator, and the reader on the live /proc (root)."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_procfs import (
    NOT_A_PID,
    PG,
    PID,
    SRC,
    ZOO,
)

from cpt.errors import AccessDenied, NoSuchProcess, ZombieProcess
from cpt.procfs import (
    FdKind,
    Proc,
    VmaKind,
)

# ------------------------------------------------------------------------ error mapping


def test_nonexistent_pid_is_no_such_process(zoo: Proc) -> None:
    for call in (zoo.stat, zoo.status, zoo.maps, zoo.fds, zoo.exe, zoo.ns, zoo.limits, zoo.tasks):
        with pytest.raises(NoSuchProcess) as ei:
            call(NOT_A_PID)
        assert ei.value.pid == NOT_A_PID and not isinstance(ei.value, ZombieProcess)
    with pytest.raises(NoSuchProcess):
        zoo.fdinfo(NOT_A_PID, 0)


def test_zombie_is_zombie_process(zoo: Proc) -> None:
    z = ZOO["zombie"]
    for call in (zoo.exe, zoo.cwd, zoo.fds, zoo.maps, zoo.ns):
        with pytest.raises(ZombieProcess) as ei:
            call(z)
        assert ei.value.pid == z and isinstance(ei.value, NoSuchProcess)
    assert zoo.status(z).state == "Z"


def test_missing_file_of_a_live_process_is_not_no_such_process(zoo: Proc) -> None:
    # the sleeper's capture holds only stat: the process "lives", the file is what is missing
    with pytest.raises(FileNotFoundError):
        zoo.status(ZOO["sleeper"])
    with pytest.raises(FileNotFoundError):
        zoo.fdinfo(PID, 9999)


def test_access_denied_translation(zoo: Proc) -> None:
    for code in (errno.EACCES, errno.EPERM):
        path = f"{zoo.root}/{PID}/mem"
        err = zoo._translate(OSError(code, os.strerror(code), path), PID, path)
        assert isinstance(err, AccessDenied) and err.pid == PID and path in err.msg
    other = OSError(errno.EIO, "I/O error")
    assert zoo._translate(other, PID, "x") is other


# -------------------------------------------------------------------------- live (root)

root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture(scope="module")
def helpers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fixtures/proc/src/{manyvmas,leaderexit}.c, compiled."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    out = {}
    tmp = tmp_path_factory.mktemp("proc")
    for name in ("manyvmas", "leaderexit"):
        out[name] = tmp / name
        cmd = ["gcc", "-O2", "-pthread", "-o", str(out[name]), str(SRC / f"{name}.c")]
        subprocess.run(cmd, check=True)
    return out


def start(argv: list[str]) -> tuple[subprocess.Popen, dict]:
    """Start a helper; it prints one JSON line, then runs until stdin closes."""
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdout is not None
    line = p.stdout.readline()
    if not line:
        p.wait()
        pytest.fail(f"{argv[0]} exited {p.returncode}")
    return p, json.loads(line)


def stop(p: subprocess.Popen) -> None:
    try:
        os.kill(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


@pytest.mark.root
@root
def test_live_10k_vmas_and_10k_fds(helpers: dict[str, Path]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if min(soft, hard) < 10_100:
        pytest.skip(f"RLIMIT_NOFILE {soft}/{hard} < 10,100")
    p, info = start([str(helpers["manyvmas"]), "10000", "10000"])
    try:
        pid, base = info["pid"], info["base"]
        proc = Proc()
        maps = proc.maps(pid)
        mine = [v for v in maps if base <= v.start < base + 10_000 * PG]
        assert len(mine) == 10_000
        assert [v.perms for v in mine[:4]] == ["rw-p", "r--p", "rw-p", "r--p"]
        flags = proc.smaps_vmflags(pid)
        assert list(flags) == [(v.start, v.end) for v in maps]
        fds = proc.fds(pid)
        stdin = dict(fds)[0]
        dups = [fd for fd, t in fds if fd >= info["first_fd"]]
        assert len(dups) == 10_000 and all(dict(fds)[fd] == stdin for fd in dups)
        infos = proc.fdinfos(pid)
        assert len(infos) == len(fds) and infos[dups[-1]].ino == infos[0].ino
    finally:
        stop(p)


@pytest.mark.root
@root
def test_live_self() -> None:
    proc, me = Proc(), os.getpid()
    st = proc.stat(me)
    assert (st.pid, st.ppid, st.pgrp, st.session) == (me, os.getppid(), os.getpgrp(), os.getsid(0))
    s = proc.status(me)
    assert s.uid[:3] == os.getresuid() and s.gid[:3] == os.getresgid()
    assert s.threads == st.num_threads >= 1
    assert me in proc.tasks(me)
    lim = {r.resource: r for r in proc.limits(me)}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert (lim[resource.RLIMIT_NOFILE].soft, lim[resource.RLIMIT_NOFILE].hard) == (soft, hard)
    assert dict(proc.auxv(me))[6] == os.sysconf("SC_PAGE_SIZE")
    assert proc.exe(me) == os.path.realpath(sys.executable) or proc.exe(me).startswith("/")
    assert proc.cwd(me) == os.getcwd()
    assert proc.ns(me)["pid"] == os.stat(f"/proc/{me}/ns/pid").st_ino
    r, w = os.pipe()
    try:
        t = proc.fd_targets(me)
        assert t[r].kind is FdKind.PIPE and t[r].inode == t[w].inode == os.fstat(r).st_ino
        fi = proc.fdinfo(me, w)
        assert fi.flags & 0o3 == os.O_WRONLY and fi.ino == os.fstat(w).st_ino
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.root
@root
def test_live_zombie_and_vanished() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    proc = Proc()
    try:
        deadline = time.monotonic() + 5
        while proc.stat(pid).state != "Z":
            assert time.monotonic() < deadline, "child never became a zombie"
            time.sleep(0.001)
        st = proc.stat(pid)
        assert st.exit_code == 3 << 8 and st.ppid == os.getpid()
        with pytest.raises(ZombieProcess) as ei:
            proc.exe(pid)
        assert ei.value.pid == pid
        with pytest.raises(ZombieProcess):
            proc.cwd(pid)
        # a live zombie's fd/ lists as empty and its maps and auxv read as empty: still
        # ZombieProcess, not an empty answer a dump would take at face value
        for call in (proc.fds, proc.maps, proc.smaps_vmflags, proc.auxv):
            with pytest.raises(ZombieProcess):
                call(pid)
        assert proc.status(pid).state == "Z"
    finally:
        os.waitpid(pid, 0)
    with pytest.raises(NoSuchProcess) as ei2:
        proc.stat(pid)
    assert ei2.value.pid == pid and not isinstance(ei2.value, ZombieProcess)
    with pytest.raises(NoSuchProcess):
        Proc().stat(NOT_A_PID)


@pytest.mark.root
@root
def test_live_leader_exited_before_its_threads(helpers: dict[str, Path]) -> None:
    p, info = start([str(helpers["leaderexit"])])
    try:
        pid, tid = info["pid"], info["tid"]
        proc = Proc()
        deadline = time.monotonic() + 5
        while proc.stat(pid).state != "Z":
            assert time.monotonic() < deadline, "leader never showed Z"
            time.sleep(0.001)
        assert proc.stat(pid).num_threads == 2 and proc.tasks(pid) == [pid, tid]
        for call in (proc.maps, proc.exe, proc.fds):
            with pytest.raises(ZombieProcess) as ei:
                call(pid)
            assert "/task/<tid>/" in ei.value.msg
        maps = proc.maps(pid, tid)  # the live thread still shows the mm
        assert any(v.kind is VmaKind.STACK for v in maps)
        assert proc.smaps_vmflags(pid, tid).keys() == {(v.start, v.end) for v in maps}
        assert proc.stat(pid, tid).state in "SR"
    finally:
        stop(p)


@pytest.mark.root
@root
def test_live_access_denied_and_hidden_mm_fields() -> None:
    """As nobody, PID 1's exe is EACCES, and its stat hides the mm fields."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            result: dict[str, object] = {"hidden": Proc().stat(1).mm_hidden}
            try:
                Proc().exe(1)
                result["error"] = None
            except AccessDenied as e:
                result["error"] = [type(e).__name__, e.pid, e.msg]
            os.write(w, json.dumps(result).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            out = f.read()
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    got = json.loads(out)
    assert got["hidden"] is True
    name, epid, msg = got["error"]
    assert (name, epid) == ("AccessDenied", 1) and "/proc/1/exe" in msg
