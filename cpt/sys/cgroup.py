"""The cgroup v2 freezer: it holds a tree stopped between cpt invocations, and a VE's
processes all their life.

cpt creates one cgroup per frozen tree or VE, ``<cgroup2 mount>/cpt/<name>``, moves the
processes into it, and writes ``cgroup.freeze``.  The v1 freezer is never used: a task
frozen by v1 neither enters a ptrace stop nor dies of SIGKILL until thawed, so a dump or
kill stage built on it hangs.  Under v2 a frozen task enters the ptrace interrupt stop at
once and SIGKILL kills it at once (ENGINE-NOTES).

`release` moves the processes of a tree back to the cgroups they came from (which the
stages remember in their state file, cpt/stages/store.py) and removes the freezer.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterable

from cpt.errors import SystemError_
from cpt.procfs import Proc

CPT_CGROUP = "cpt"


def cgroup2_mount(proc: Proc | None = None) -> str:
    """Where cgroup2 is mounted: /sys/fs/cgroup on pure v2 hosts, .../unified on hybrid ones."""
    proc = proc or Proc()
    for m in proc.mountinfo(os.getpid()):
        if m.fstype == "cgroup2":
            return m.mount_point
    raise SystemError_("no cgroup2 hierarchy is mounted; cpt needs the cgroup v2 freezer")


def frozen_cgroup(rel: str, mount: str | None = None) -> str | None:
    """The cgroup that holds cgroup `rel` (a v2 path, as /proc/PID/cgroup gives it)
    frozen: `rel` itself or the ancestor whose cgroup.freeze is 1; None when it runs."""
    mount = mount or cgroup2_mount()
    parts = [p for p in rel.split("/") if p]
    for i in range(len(parts) + 1):  # the top-most freezer wins: it must be thawed
        path = "/" + "/".join(parts[:i])
        try:
            with open(os.path.join(mount + path, "cgroup.freeze")) as f:
                if f.read().strip() == "1":
                    return path
        except (FileNotFoundError, NotADirectoryError):
            continue  # the root has no cgroup.freeze; a cgroup may vanish meanwhile
    return None


def cpt_freezers(mount: str | None = None) -> list[str]:
    """The names of every freezer cgroup cpt made (<cgroup2>/cpt/<name>)."""
    mount = mount or cgroup2_mount()
    try:
        return sorted(e.name for e in os.scandir(os.path.join(mount, CPT_CGROUP)) if e.is_dir())
    except FileNotFoundError:
        return []


class Freezer:
    def __init__(self, name: str, *, mount: str | None = None) -> None:
        self.mount = mount or cgroup2_mount()
        self.name = name
        self.rel = f"/{CPT_CGROUP}/{name}"
        self.path = self.mount + self.rel

    # -- lifecycle

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def create(self) -> None:
        os.makedirs(self.path, exist_ok=True)

    def add(self, pids: Iterable[int]) -> list[int]:
        """Move processes into the freezer; returns the pids that vanished meanwhile."""
        gone = []
        for pid in pids:
            try:
                self._write("cgroup.procs", str(pid))
            except OSError as e:
                if e.errno == errno.ESRCH:
                    gone.append(pid)
                    continue
                raise SystemError_(
                    f"cannot move process {pid} into {self.path}: {e.strerror}", pid=pid
                ) from e
        return gone

    def procs(self) -> list[int]:
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                return [int(x) for x in f.read().split()]
        except FileNotFoundError:
            return []

    def freeze(self, timeout: float = 5.0) -> None:
        self.freeze_request()
        self.wait_frozen(timeout)

    def freeze_request(self) -> None:
        """Ask for the freeze without waiting (tasks in ptrace stops freeze once detached)."""
        self._write("cgroup.freeze", "1")

    def wait_frozen(self, timeout: float = 5.0) -> None:
        self._wait_frozen(True, timeout)

    def thaw(self, timeout: float = 5.0) -> None:
        self._write("cgroup.freeze", "0")
        self._wait_frozen(False, timeout)

    def frozen(self) -> bool:
        return self._events().get("frozen") == "1"

    def freeze_requested(self) -> bool:
        try:
            with open(os.path.join(self.path, "cgroup.freeze")) as f:
                return f.read().strip() == "1"
        except FileNotFoundError:
            return False

    def kill_all(self, timeout: float = 10.0) -> None:
        """SIGKILL every process in the cgroup (cgroup.kill) and wait until it is empty."""
        self._write("cgroup.kill", "1")
        deadline = time.monotonic() + timeout
        while self._events().get("populated") == "1":
            if time.monotonic() > deadline:
                raise SystemError_(f"processes of {self.path} survived SIGKILL for {timeout:.0f} s")
            time.sleep(0.005)

    def release(self, origins: dict[int, str]) -> None:
        """Move every process back to its original cgroup, then remove the freezer."""
        for pid in self.procs():
            dest = self.mount + origins.get(pid, "/")
            try:
                with open(os.path.join(dest, "cgroup.procs"), "w") as f:
                    f.write(str(pid))
            except OSError as e:
                if e.errno == errno.ESRCH:
                    continue
                # the original cgroup vanished: fall back to the hierarchy root
                with open(os.path.join(self.mount, "cgroup.procs"), "w") as f:
                    f.write(str(pid))
        self.remove()

    def remove(self, timeout: float = 5.0) -> None:
        """rmdir the cgroup; waits for exiting tasks (EBUSY while zombies linger in it)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise SystemError_(
                        f"cannot remove freezer cgroup {self.path}: {e.strerror}"
                    ) from e
                time.sleep(0.01)

    # -- internals

    def _write(self, fname: str, value: str) -> None:
        with open(os.path.join(self.path, fname), "w") as f:
            f.write(value)

    def _events(self) -> dict[str, str]:
        try:
            with open(os.path.join(self.path, "cgroup.events")) as f:
                return dict(line.split(None, 1) for line in f.read().splitlines() if " " in line)
        except FileNotFoundError:
            return {}

    def _wait_frozen(self, want: bool, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.0002
        while (self._events().get("frozen") == "1") != want:
            if time.monotonic() > deadline:
                state = "freeze" if want else "thaw"
                raise SystemError_(f"cgroup {self.path} did not {state} within {timeout:.0f} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.01)
