"""Self-checking workloads for the end-to-end tests: build, start, check, clean up.

The workloads live in fixtures/workloads/ and follow the protocol written at the top of
fixtures/workloads/README.md: started as `prog DIR [args]`, they write DIR/ready (their pid)
once set up, publish a counter in DIR/counter, and on SIGTERM check everything they set up
and write DIR/result ("PASS" or "FAIL: <reason>") before exiting 0.

Typical use in an end-to-end test (the `workloads` fixture kills whatever is left):

    def test_dump_restore(workloads):
        wl = workloads.start("threads")
        wl.wait_counter()                  # it runs
        with reaping(wl):                  # reap the killed tree while `cpt` waits for it
            run_cpt("dump", "--kill", wl.pid)
        run_cpt("restore", ...)
        wl.refresh()                       # the restored tree: same PIDs
        wl.wait_counter()                  # it runs again
        assert wl.finish() == "PASS"

This is test code: it may use ctypes (for prctl(PR_SET_CHILD_SUBREAPER)).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCES = REPO / "fixtures" / "workloads"
CACHE = Path(os.environ.get("CPT_WL_CACHE", "/tmp/cpt-workloads"))
CC = os.environ.get("CC", "gcc")
CFLAGS = ("-O1", "-g", "-pthread", "-Wall", "-Wextra")
PYTHON = sys.executable
PYTHON_FLAGS = ("-E", "-s", "-B")  # no PYTHON* env, no user site, no .pyc in the repo

C_WORKLOADS = ("counter", "tree", "threads", "memory", "files", "procstate", "restart", "sysvipc")
C_WORKLOADS += ("eventfds", "epoll", "inotify", "ptimers", "seccomp_tsync", "novdso")
C_WORKLOADS += ("pty", "ghost")  # locks, fdowner (--file-locks), ttyjob (a shell): own tests
C_WORKLOADS += ("scale", "taskstate", "memflags", "aio", "strict", "leaders", "shares", "removed")
PY_WORKLOADS = ("counter.py", "pyscript", "shmem.py", "unixzoo", "sigstate", "procfiles")
PY_WORKLOADS += ("sigign", "sockopts", "unixfid", "pktring")
ALL_WORKLOADS = C_WORKLOADS + PY_WORKLOADS
# credentials, login uid, SCHED_FIFO; raw sockets
NEEDS_ROOT = frozenset({"procstate", "taskstate", "sockopts", "pktring"})

SABOTAGE_ENV = "CPT_WL_SABOTAGE"
READY_TIMEOUT = 10.0
FINISH_TIMEOUT = 15.0
KILL_TIMEOUT = 5.0
_POLL = 0.005

_WALL = 0x40000000  # __WALL: wait for threads and ptrace tracees too (not in the os module)
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37


class WorkloadError(Exception):
    """A workload could not be built, never became ready, or did not finish cleanly."""


# --------------------------------------------------------------------------- sources, build


def source(name: str) -> Path:
    """The source file of a workload: "tree" -> tree.c, "pyscript" -> pyscript.py,
    "counter" -> counter.c, "counter.py" -> counter.py."""
    if name.endswith((".c", ".py")):
        path = SOURCES / name
    elif (SOURCES / f"{name}.c").exists():
        path = SOURCES / f"{name}.c"
    else:
        path = SOURCES / f"{name}.py"
    if not path.is_file() or path.name.startswith(("_", "wl.")):
        raise WorkloadError(f"no workload named {name!r} in {SOURCES}")
    return path


@functools.cache
def _gcc_version() -> bytes:
    try:
        return subprocess.run([CC, "--version"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise WorkloadError(f"cannot run the C compiler {CC!r}: {e}") from e


def build(name: str) -> Path:
    """Compile a C workload (cached by the hash of its source, wl.h, flags and compiler)."""
    src = source(name)
    if src.suffix != ".c":
        raise WorkloadError(f"{name} is not a C workload")
    h = hashlib.sha256()
    for part in (
        src.read_bytes(),
        (SOURCES / "wl.h").read_bytes(),
        " ".join(CFLAGS).encode(),
        _gcc_version(),
    ):
        h.update(hashlib.sha256(part).digest())
    binary = CACHE / f"{src.stem}-{h.hexdigest()[:16]}"
    if binary.exists():
        return binary
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_name(f"{binary.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    proc = subprocess.run([CC, *CFLAGS, "-o", str(tmp), str(src)], capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise WorkloadError(f"building {src.name} failed:\n{proc.stderr}")
    os.replace(tmp, binary)  # atomic: parallel builders race harmlessly
    return binary


def command(name: str, directory: Path, *args: str) -> list[str]:
    """The argv that starts workload `name` on `directory`."""
    src = source(name)
    if src.suffix == ".py":
        return [PYTHON, *PYTHON_FLAGS, str(src), str(directory), *args]
    return [str(build(name)), str(directory), *args]


# --------------------------------------------------------------------------- /proc helpers


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    state: str  # R, S, D, Z, T, t, X...
    comm: str


def proc_info(pid: int) -> ProcInfo | None:
    """/proc/PID/stat, or None when the process does not exist."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may hold spaces and parentheses: split on the LAST ')'
    close = data.rfind(b")")
    fields = data[close + 2 :].split()
    comm = data[data.find(b"(") + 1 : close].decode(errors="replace")
    return ProcInfo(pid, int(fields[1]), fields[0].decode(), comm)


def process_table() -> dict[int, ProcInfo]:
    """Every process (thread group) on the system."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := proc_info(int(entry))) is not None:
            table[info.pid] = info
    return table


def descendants(pids: int | Iterable[int], table: dict[int, ProcInfo] | None = None) -> set[int]:
    """All descendants of pid(s) (children, grandchildren...), zombies included.

    /proc/PID/task/TID/children does not exist on this kernel (no CONFIG_PROC_CHILDREN), so
    this walks the ppid links of the whole process table."""
    table = process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for info in table.values():
        children.setdefault(info.ppid, []).append(info.pid)
    found: set[int] = set()
    todo = [pids] if isinstance(pids, int) else list(pids)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def describe(pids: Iterable[int]) -> str:
    """One line per process and thread: state, wchan, syscall (for timeout reports)."""
    lines = []
    for pid in sorted(pids):
        info = proc_info(pid)
        if info is None:
            lines.append(f"  {pid}: gone")
            continue
        lines.append(f"  {pid} ({info.comm}) ppid {info.ppid} state {info.state}")
        try:
            tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
        except OSError:
            tids = []
        for tid in tids:
            base = f"/proc/{pid}/task/{tid}"
            parts = []
            for what in ("wchan", "syscall"):
                try:
                    parts.append(f"{what} {Path(f'{base}/{what}').read_text().split()[0:1]}")
                except (OSError, IndexError):
                    pass
            lines.append(f"    tid {tid}: {', '.join(parts)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- reaping, killing

_subreaper_lock = threading.Lock()
_subreaper_done = False


def make_subreaper() -> None:
    """Make this process a child subreaper (once): orphans of a killed workload tree come to
    us, not to PID 1, which reaps them ~1.5 s late and meanwhile holds their PIDs (a same-PID
    restore would fail with EEXIST). We reap them in kill_tree() / Workload.reap()."""
    global _subreaper_done
    with _subreaper_lock:
        if _subreaper_done:
            return
        libc = ctypes.CDLL(None, use_errno=True)
        is_set = ctypes.c_int(0)
        libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(is_set), 0, 0, 0)
        if not is_set.value and libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")
        _subreaper_done = True


def _reap_if_zombie_child(pid: int) -> int | None:
    """waitpid(pid) if pid is a zombie child of ours; returns its wait status, else None.

    Only zombies are waited for, never live processes: a live tracee of an in-process engine
    would otherwise hand its ptrace stops to us instead of to the engine."""
    info = proc_info(pid)
    if info is None or info.state not in "ZX" or info.ppid != os.getpid():
        return None
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None  # someone else reaped it first
    return status if got == pid else None


def _reap_our_tracees(pid: int) -> None:
    """Collect the exit of every thread of pid that WE trace (an in-process engine that
    failed half-way may still hold them): a killed tracee stays a zombie until its tracer
    waits for it, and a group leader cannot be reaped before its threads. Only for killed
    processes: on a live tracee this would swallow the engine's ptrace stops."""
    me = os.getpid()
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return
    for tid in tids:
        try:
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:
            continue
        tracer = next(
            (line.split()[1] for line in status.splitlines() if line.startswith("TracerPid:")), "0"
        )
        if int(tracer) == me:
            try:
                os.waitpid(tid, os.WNOHANG | _WALL)
            except ChildProcessError:
                pass


def cmdline(pid: int) -> bytes:
    """/proc/PID/cmdline (b"" for a zombie or a vanished process)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def kill_tree(roots: int | Iterable[int], timeout: float = KILL_TIMEOUT) -> dict[int, int]:
    """SIGKILL the roots and all their descendants, reap those that are (or become, as
    orphans) our children, and wait until none is left. The processes are frozen with SIGSTOP
    first, scanning again until no new one appears, so a fork racing with the kill cannot
    leave a survivor. Returns the wait statuses we collected. Raises WorkloadError if a
    process survives `timeout`. The caller vouches that every root is its to kill."""
    me = os.getpid()
    roots = {roots} if isinstance(roots, int) else set(roots)
    victims: set[int] = set()
    for _ in range(100):
        table = process_table()
        tree = {p for p in roots if p in table}
        tree |= descendants(tree | victims, table)
        tree -= {0, 1, me}
        new = tree - victims
        if not new:
            break
        for p in new:
            try:
                os.kill(p, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        victims |= new
    for p in victims:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    left = set(victims)
    while left:
        for p in list(left):
            _reap_our_tracees(p)
            status = _reap_if_zombie_child(p)
            if status is not None:
                statuses[p] = status
            if status is not None or proc_info(p) is None:
                left.discard(p)
        if not left:
            break
        if time.monotonic() > deadline:
            raise WorkloadError(f"processes survived kill_tree({sorted(roots)}):\n{describe(left)}")
        time.sleep(_POLL)
    return statuses


# --------------------------------------------------------------------------- workloads


class Workload:
    """A started workload. Everything works by PID, so it keeps working after the engine
    has killed and restored the tree (the restored root need not be our child)."""

    def __init__(
        self, name: str, directory: Path, argv: list[str], popen: subprocess.Popen[bytes]
    ) -> None:
        self.name = name
        self.dir = directory
        self.argv = argv
        self.pid = popen.pid
        self.log_path = directory / "log"
        self.pids: set[int] = {self.pid}  # the tree as recorded by refresh()
        self.statuses: dict[int, int] = {}  # wait statuses we collected, by PID
        self._popen = popen
        self._lock = threading.Lock()
        self._cmdline = b"".join(os.fsencode(a) + b"\0" for a in argv)

    def __repr__(self) -> str:
        return f"<Workload {self.name} pid {self.pid} dir {self.dir}>"

    def __enter__(self) -> Workload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill_tree()

    # -- observing

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tree(self) -> set[int]:
        """The root and its current descendants."""
        table = process_table()
        return ({self.pid} | descendants(self.pid, table)) if self.pid in table else set()

    def refresh(self) -> set[int]:
        """Record the current tree (after ready, and after a restore) and return it."""
        tree = self.tree()
        with self._lock:
            if tree and self.alive():
                self.statuses.pop(self.pid, None)  # restored under the same PID
            self.pids = tree or {self.pid}
            return set(self.pids)

    def alive(self) -> bool:
        """Is the root running (not gone, not a zombie)?"""
        info = proc_info(self.pid)
        return info is not None and info.state not in "ZX"

    def counter(self) -> int:
        """The value in DIR/counter (a fixed-width decimal rewritten in place)."""
        path = self.dir / "counter"
        for _ in range(50):
            try:
                return int(path.read_bytes())
            except ValueError:  # empty or caught mid-pwrite: read again
                time.sleep(0.001)
            except FileNotFoundError as e:
                raise WorkloadError(f"{self.name}: no DIR/counter\n{self._report()}") from e
        raise WorkloadError(f"{self.name}: unreadable counter {path.read_bytes()!r}")

    def wait_counter(self, above: int | None = None, by: int = 1, timeout: float = 5.0) -> int:
        """Wait until the counter reaches `above + by` (above: the current value)."""
        start = self.counter() if above is None else above
        deadline = time.monotonic() + timeout
        while (value := self.counter()) < start + by:
            if not self.alive():
                raise WorkloadError(f"{self.name} died at counter {value}\n{self._report()}")
            if time.monotonic() > deadline:
                raise WorkloadError(
                    f"{self.name}: counter stuck at {value} (waited for {start + by})\n"
                    f"{self._report()}"
                )
            time.sleep(_POLL)
        return value

    # -- reaping and ending

    def reap(self) -> None:
        """Reap the tree's processes that are zombie children of ours (non-blocking)."""
        with self._lock:
            pids = set(self.pids)
        for pid in pids:
            status = _reap_if_zombie_child(pid)
            if status is not None:
                self._record(pid, status)

    def _record(self, pid: int, status: int) -> None:
        with self._lock:
            self.statuses[pid] = status
        if pid == self.pid and self._popen.returncode is None:
            # we reaped it behind Popen's back: tell Popen, or its __del__ would keep the
            # PID on subprocess's list and waitpid() it later (a restored workload, maybe)
            self._popen.returncode = os.waitstatus_to_exitcode(status)

    def _root_done(self) -> bool:
        if self.pid in self.statuses:
            return True
        status = _reap_if_zombie_child(self.pid)
        if status is not None:
            self._record(self.pid, status)
            return True
        return not self.alive()

    def finish(self, timeout: float = FINISH_TIMEOUT) -> str:
        """SIGTERM the root, wait for DIR/result and for the whole tree to exit; return the
        verdict ("PASS" or "FAIL: reason"). Raises WorkloadError (after killing the tree) if
        there is no verdict in time, or the workload exits badly or leaves processes behind."""
        result = self.dir / "result"
        if result.exists():
            raise WorkloadError(f"{self.name}: {result} exists before SIGTERM")
        if self.alive():
            self.refresh()
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError as e:
            raise WorkloadError(f"{self.name} is not running\n{self._report()}") from e
        deadline = time.monotonic() + timeout
        while not result.exists():
            if self._root_done() and not result.exists():
                self._fail_and_kill(f"{self.name} exited without a verdict")
            if time.monotonic() > deadline:
                self._fail_and_kill(f"{self.name}: no verdict {timeout:.0f} s after SIGTERM")
            time.sleep(_POLL)
        verdict = result.read_text(errors="replace").strip()
        deadline = time.monotonic() + KILL_TIMEOUT
        while not self._root_done():
            if time.monotonic() > deadline:
                self._fail_and_kill(f"{self.name} wrote {verdict!r} but did not exit")
            time.sleep(_POLL)
        status = self.statuses.get(self.pid)
        if status is not None and os.waitstatus_to_exitcode(status) != 0:
            self._fail_and_kill(
                f"{self.name} wrote {verdict!r} but exited with {os.waitstatus_to_exitcode(status)}"
            )
        while left := {p for p in self.pids if proc_info(p) is not None}:
            self.reap()
            if time.monotonic() > deadline:
                self._fail_and_kill(f"{self.name} left processes behind:\n{describe(left)}")
            time.sleep(_POLL)
        return verdict

    def owns(self, pid: int) -> bool:
        """Is pid (still) one of this workload's processes? A recorded PID may have been
        reused by an unrelated process once ours exited, so: it runs our command line (a
        restored process does too: its memory holds the same argv), or it is a recorded
        process that is our child (a zombie has no command line left)."""
        info = proc_info(pid)
        if info is None or pid in (0, 1, os.getpid()):
            return False
        return cmdline(pid) == self._cmdline or (pid in self.pids and info.ppid == os.getpid())

    def kill_tree(self, timeout: float = KILL_TIMEOUT) -> None:
        """SIGKILL the root and every descendant (also orphans of the recorded tree that
        were re-parented to us) and reap them. Safe to call at any time, repeatedly."""
        with self._lock:
            candidates = self.pids | {self.pid}
        roots = {p for p in candidates if self.owns(p)}
        for pid, status in kill_tree(roots, timeout).items():
            self._record(pid, status)

    def _report(self) -> str:
        pids = self.tree() | {p for p in self.pids if proc_info(p) is not None}
        return (
            f"processes:\n{describe(pids) if pids else '  none'}\n"
            f"--- {self.log_path}:\n{self.log()}"
        )

    def _fail_and_kill(self, what: str) -> NoReturn:
        report = self._report()
        try:
            self.kill_tree()
        finally:
            raise WorkloadError(f"{what}\n{report}")


def start(
    name: str,
    directory: str | os.PathLike[str],
    *args: str,
    sabotage: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = READY_TIMEOUT,
) -> Workload:
    """Start workload `name` on `directory` (created if missing; must not hold a previous
    run's ready/result) and wait until it is ready. stdin is /dev/null, stdout and stderr go
    to DIR/log; the workload is a session and group leader with a minimal environment.
    `sabotage` sets CPT_WL_SABOTAGE (an item name, or "1" for the workload's default).
    Raises WorkloadError, with the log, if it is not ready within `timeout`."""
    make_subreaper()
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    d = d.resolve()
    for stale in ("ready", "result"):
        if (d / stale).exists():
            raise WorkloadError(f"{d / stale} exists: use a fresh directory")
    argv = command(name, d, *args)
    child_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
    if sabotage is not None:
        child_env[SABOTAGE_ENV] = sabotage
    child_env.update(env or {})
    with open(d / "log", "wb") as log:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=d,
            env=child_env,
            close_fds=True,
            start_new_session=True,
        )
    wl = Workload(name, d, argv, popen)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                text = (d / "ready").read_text()
            except FileNotFoundError:
                text = ""
            if text:
                if text.strip() != str(wl.pid):
                    raise WorkloadError(
                        f"{name}: DIR/ready says {text.strip()!r}, the workload is pid {wl.pid}"
                    )
                break
            if wl._root_done():
                raise WorkloadError(
                    f"{name} exited (status {wl.statuses.get(wl.pid)}) before it was ready"
                )
            if time.monotonic() > deadline:
                raise WorkloadError(f"{name} not ready within {timeout:.0f} s")
            time.sleep(_POLL)
        wl.refresh()
    except WorkloadError as e:
        report = wl._report()
        wl.kill_tree()
        raise WorkloadError(f"{e}\n{report}") from None
    except BaseException:
        wl.kill_tree()
        raise
    return wl


@contextmanager
def reaping(*workloads: Workload, interval: float = 0.01) -> Iterator[None]:
    """Reap the workloads' zombie processes in the background while the block runs: use it
    around a `cpt` command that kills the tree and waits for its PIDs to disappear (the
    killed root is OUR child: only we can reap it)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            for wl in workloads:
                wl.reap()

    thread = threading.Thread(target=loop, name="workload-reaper", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        for wl in workloads:
            wl.reap()


# --------------------------------------------------------------------------- pytest fixture


class Workloads:
    """What the `workloads` fixture yields: starts workloads in fresh directories and kills
    every one of them (with all descendants) at teardown, passed or failed."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp = tmp_path_factory
        self.started: list[Workload] = []

    def start(
        self,
        name: str,
        *args: str,
        sabotage: str | None = None,
        env: dict[str, str] | None = None,
        directory: Path | None = None,
        timeout: float = READY_TIMEOUT,
    ) -> Workload:
        d = directory or self._tmp.mktemp(f"wl-{name.replace('.', '-')}")
        wl = start(name, d, *args, sabotage=sabotage, env=env, timeout=timeout)
        self.started.append(wl)
        return wl

    def cleanup(self) -> None:
        errors = []
        for wl in self.started:
            try:
                wl.kill_tree()
            except WorkloadError as e:
                errors.append(str(e))
        self.started.clear()
        if errors:
            raise WorkloadError("\n".join(errors))


@pytest.fixture(name="workloads")
def workloads_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workloads]:
    """Start workloads with `workloads.start(name, *args)`; all are killed at teardown."""
    pool = Workloads(tmp_path_factory)
    try:
        yield pool
    finally:
        pool.cleanup()


def checkpoint(cpt, wl: Workload, img: Path, *extra: object) -> None:  # type: ignore[no-untyped-def]
    """`cpt chkpnt --pid` of the workload into `img` (the real command); it must succeed."""
    with reaping(wl):
        rc, _, err = cpt("chkpnt", "--pid", wl.pid, "--dumpfile", img, *extra)
    assert rc == 0, err


def restore(cpt, wl: Workload, img: Path) -> None:  # type: ignore[no-untyped-def]
    """`cpt restore --dumpfile img` of the workload; it must succeed."""
    rc, _, err = cpt("restore", "--dumpfile", img)
    assert rc == 0, err
    wl.refresh()


def image_records(img: Path, section: int, cls: type) -> list:  # type: ignore[type-arg]
    """The records of type `cls` in section `section` of image `img`."""
    from cptimage.container import ImageReader

    with ImageReader(str(img)) as r:
        return [x for x in r.records(section) if isinstance(x, cls)]


def verdict_after_restore(  # type: ignore[no-untyped-def]
    workloads, cpt, tmp_path: Path, name: str, item: str, *extra: object
) -> str:
    """Workload `name` started with its check `item` sabotaged, checkpointed (with `extra`
    options), restored: its verdict, which must be a FAIL naming the check (the checks
    still bite on a restored tree)."""
    wl = workloads.start(name, sabotage=item)
    wl.wait_counter()
    img = tmp_path / f"{name}.img"
    checkpoint(cpt, wl, img, *extra)
    restore(cpt, wl, img)
    wl.wait_counter()
    with reaping(wl):
        return wl.finish()


__all__ = [
    "ALL_WORKLOADS",
    "C_WORKLOADS",
    "NEEDS_ROOT",
    "PY_WORKLOADS",
    "ProcInfo",
    "Workload",
    "WorkloadError",
    "Workloads",
    "build",
    "checkpoint",
    "cmdline",
    "command",
    "descendants",
    "describe",
    "image_records",
    "kill_tree",
    "make_subreaper",
    "proc_info",
    "process_table",
    "reaping",
    "restore",
    "source",
    "start",
    "verdict_after_restore",
    "workloads_fixture",
]
