"""VE lifecycle: create, set, start, exec, stop, status, list, destroy.

Every command takes the VE's lock (a second concurrent one fails with exit 9).  A running
VE is an init process (PID 1 of its namespaces), its freezer cgroup and a host veth; its
runtime facts are runtime.py's.  `start` restores the VE when a dump file of it waits
(stages.py), as vzctl does; `destroy` tells the snapshot hooks (hooks.py) first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import signal
import time
from collections.abc import Iterator
from typing import Any

from cpt.errors import AlreadyRunning, CptError, InvalidValue, NotRunning, SystemError_
from cpt.restore.trust import waiting
from cpt.stages.stage import Stage
from cpt.sys.cgroup import Freezer
from cpt.sys.ns import VE_NAMESPACES, join, unshare
from storage import backend_for

from . import net, rootfs
from .boot import ENV, boot
from .config import VEConfig, check_veid
from .hooks import SnapshotHooks
from .node import Node
from .runtime import RunState, Runtime
from .stages import VeStages

BOOT_TIMEOUT = 30.0


class VEManager:
    """The VEs of `node`; `snapshots` keeps the filesystem snapshots their dumps take
    (snapshot.hooks.ve_manager builds one with the snapshot catalog)."""

    def __init__(self, snapshots: SnapshotHooks, node: Node | None = None) -> None:
        self.node = node or Node()
        self.snapshots = snapshots

    # -- configuration

    def config(self, veid: str) -> VEConfig:
        return self.node.config(veid)

    @contextlib.contextmanager
    def locked(self, veid: str) -> Iterator[None]:
        with RunState(veid).locked():
            yield

    def create(
        self,
        veid: str,
        *,
        hostname: str = "",
        ip: str = "",
        template: str = "host",
        command: list[str] | None = None,
    ) -> VEConfig:
        check_veid(veid)
        with self.locked(veid):
            path = self.node.config_path(veid)
            if os.path.exists(path):
                raise InvalidValue(f"VE {veid} already exists ({path})")
            private = os.path.join(self.node.private_dir(), veid)
            cfg = VEConfig(
                veid=veid, private=private, hostname=hostname, ip=ip, template=template,
                command=list(command or []),
            )  # fmt: skip
            backend = backend_for(os.path.dirname(private))
            backend.create_area(private)
            try:
                rootfs.populate(private, cfg.template, cfg.hostname, cfg.address)
                os.makedirs(self.node.ve_dir, exist_ok=True)
                cfg.save(path)
            except BaseException:
                backend.delete_area(private)
                raise
            net.blackhole(cfg.ip)  # stopped: its address is held on this host
            return cfg

    def set(self, veid: str, **changes: Any) -> VEConfig:
        with self.locked(veid):
            cfg = self.config(veid)
            if self.status(veid) != "stopped" and set(changes) & {"ip", "template"}:
                raise AlreadyRunning(f"VE {veid} is running: stop it to change its ip or template")
            old_ip = cfg.ip
            new = dataclasses.replace(cfg, **{k: v for k, v in changes.items() if v is not None})
            new.save(self.node.config_path(veid))
            if new.ip != old_ip:
                net.release(veid, old_ip)
                net.blackhole(new.ip)
            return new

    def stages(self, veid: str) -> VeStages:
        """The chkpnt and restore stages of the VE."""
        return VeStages(veid, self.snapshots, self.node)

    # -- state

    def runtime(self, veid: str) -> Runtime | None:
        return RunState(veid).runtime()

    def freezer(self, veid: str) -> Freezer:
        return RunState(veid).freezer()

    def status(self, veid: str) -> str:
        """running, suspended (frozen, or a dump file waits: as vzctl says) or stopped.
        A dump file waits only if a restore would read it (cpt.restore.trust): a file
        planted by a user at the default path does not make a stopped VE suspended."""
        self.config(veid)
        rt = self.runtime(veid)
        if rt is not None:
            fz = self.freezer(veid)
            return "suspended" if fz.exists() and fz.freeze_requested() else "running"
        return "suspended" if waiting(self.node.default_dumpfile(veid)) else "stopped"

    def list_ves(self) -> list[dict[str, Any]]:
        out = []
        for veid in self.node.veids():
            cfg = self.config(veid)
            rt = self.runtime(veid)
            out.append(
                dict(
                    veid=veid, status=self.status(veid), ip=cfg.ip, hostname=cfg.hostname,
                    template=cfg.template, init_pid=rt.init_pid if rt else None,
                )
            )  # fmt: skip
        return out

    # -- start and stop

    def start(self, veid: str, *, trust: bool = False) -> Runtime:
        """Boot the VE, or restore it when a dump file of it waits (as vzctl start);
        `trust`: the operator vouches for that dump file (cpt.restore.trust)."""
        with self.locked(veid):
            return self.start_locked(veid, trust=trust)

    def start_locked(self, veid: str, *, boot: bool = False, trust: bool = False) -> Runtime:
        """start() with the VE's lock held; `boot`: boot even if a dump file waits.  Any
        file at the default dump path means a restore, which refuses one a user could
        have planted (exit 17) rather than boot past it."""
        cfg = self.config(veid)
        run = RunState(veid)
        if run.runtime() is not None:
            raise AlreadyRunning(f"VE {veid} is already running")
        run.forget_ended()
        if not boot and os.path.lexists(self.node.default_dumpfile(veid)):
            self.stages(veid).restore_locked(Stage.RESTORE, trust=trust)
            rt = self.runtime(veid)
            assert rt is not None
            return rt
        return self._boot(cfg)

    def _boot(self, cfg: VEConfig) -> Runtime:
        go_r, go_w = os.pipe()
        st_r, st_w = os.pipe2(os.O_CLOEXEC)
        pid_r, pid_w = os.pipe()
        mid = os.fork()
        if mid == 0:  # in the middle: new namespaces, then their PID 1
            try:
                os.close(go_w)
                os.close(st_r)
                os.close(pid_r)
                unshare(VE_NAMESPACES)
                g = os.fork()
                if g == 0:
                    boot(cfg, go_r, st_w)
                os.write(pid_w, str(g).encode())
            finally:
                os._exit(0)
        for fd in (go_r, st_w, pid_w):
            os.close(fd)
        os.waitpid(mid, 0)
        got = os.read(pid_r, 32)
        os.close(pid_r)
        if not got:
            os.close(go_w)
            os.close(st_r)
            raise SystemError_(f"VE {cfg.veid}: could not create its namespaces")
        init = int(got)
        run = RunState(cfg.veid)
        fz = run.freezer()
        try:
            fz.create()
            fz.add([init])
            host_if = net.setup_host(cfg.veid, cfg.ip, init)
            os.write(go_w, b"go")
            os.close(go_w)
            status = _read_all(st_r, BOOT_TIMEOUT)
            if status != b"ok":
                raise SystemError_(
                    f"VE {cfg.veid} failed to start: {status.decode(errors='replace') or 'no answer'}"
                )
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(go_w)
            run.kill_all()
            net.blackhole(cfg.ip)
            raise
        finally:
            os.close(st_r)
        return run.record(init, host_if)

    def stop(self, veid: str, timeout: float = 10.0) -> None:
        """SIGTERM every process but the init (which exits once they are gone), then
        SIGKILL what is left after `timeout` seconds."""
        with self.locked(veid):
            self.stop_locked(veid, timeout)

    def stop_locked(self, veid: str, timeout: float = 10.0) -> None:
        """stop() with the VE's lock held."""
        cfg = self.config(veid)
        run = RunState(veid)
        rt = run.runtime()
        if rt is None:
            run.forget_ended()
            raise NotRunning(f"VE {veid} is not running")
        fz = run.freezer()
        if fz.freeze_requested():
            fz.thaw()
        for pid in fz.procs():
            if pid != rt.init_pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while fz.procs() and time.monotonic() < deadline:
            time.sleep(0.02)
        run.kill_all()
        net.blackhole(cfg.ip)
        run.clear()  # runtime facts, and a suspended state's file

    def destroy(self, veid: str) -> None:
        run = RunState(veid)
        with run.locked():
            cfg = self.config(veid)
            if run.runtime() is not None:
                raise AlreadyRunning(f"VE {veid} is running: stop it before destroying it")
            run.forget_ended()
            self.snapshots.destroyed(veid)
            if os.path.exists(cfg.private):
                backend_for(cfg.private).delete_area(cfg.private)
            net.release(veid, cfg.ip)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.node.default_dumpfile(veid))
            os.unlink(self.node.config_path(veid))

    # -- exec

    def exec(self, veid: str, argv: list[str]) -> int:
        """Run a command inside the VE (all its namespaces, its root); stdio passes through;
        returns its exit code."""
        rt = self.runtime(veid)
        if rt is None:
            raise NotRunning(f"VE {veid} is not running")
        if self.freezer(veid).freeze_requested():
            raise NotRunning(f"VE {veid} is suspended")
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(go_w)
                _enter(rt.init_pid)
                child = os.fork()  # a PID namespace applies to children
                if child == 0:
                    os.read(go_r, 1)
                    os.execvpe(argv[0], argv, _ve_env())
                os.close(go_r)
                _, status = os.waitpid(child, 0)
                os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
            except FileNotFoundError:
                os._exit(127)
            except BaseException:
                os._exit(126)
        os.close(go_r)
        with contextlib.suppress(CptError):
            self.freezer(veid).add([pid])
        os.write(go_w, b"g")
        os.close(go_w)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)


def _enter(init: int) -> None:
    """Join the namespaces of the VE's init (the mount namespace last: it changes root)."""
    join(init, ("ipc", "uts", "net", "pid", "mnt"))
    os.chdir("/")


def _ve_env() -> dict[str, str]:
    env = dict(ENV)
    if "TERM" in os.environ:
        env["TERM"] = os.environ["TERM"]
    return env


def _read_all(fd: int, timeout: float) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return out
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return out
        chunk = os.read(fd, 4096)
        if not chunk:
            return out
        out += chunk
