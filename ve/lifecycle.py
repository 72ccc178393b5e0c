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
from typing import TYPE_CHECKING, Any

from cpt.errors import AlreadyRunning, CptError, InvalidValue, NotRunning, SystemError_
from cpt.procfs import IdMapping, format_id_map, write_id_maps
from cpt.stages.stage import Stage
from cpt.sys.cgroup import Freezer
from cpt.sys.clone import fork_into_cgroup
from cpt.sys.ns import VE_NAMESPACES, entered, join, unshare
from storage import backend_for

from . import net, rootfs, seccomp
from .boot import ENV, boot, contain
from .config import VEConfig, check_veid
from .hooks import SnapshotHooks
from .idmap import ID_COUNT, IdRegistry, range_text
from .node import Node
from .runtime import RunState, Runtime

if TYPE_CHECKING:  # the engine's stages: imported by the commands that run them
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
            if os.path.exists(self.node.config_path(veid)):  # not a VE being created
                self.stages(veid).repair_locked(self.config(veid))
            yield

    def create(
        self,
        veid: str,
        *,
        hostname: str = "",
        ip: str = "",
        template: str = "host",
        command: list[str] | None = None,
        privileged: bool = False,
    ) -> VEConfig:
        """A new VE.  It contains its root (a user namespace whose ids 0..65535 are a range
        of host ids taken for it machine-wide, a seccomp filter) unless `privileged`: then
        its root is the host's root, as every VE was before user namespaces."""
        check_veid(veid)
        # every value is checked before anything is made (the node's pool, first of all)
        VEConfig(veid=veid, private="/", hostname=hostname, ip=ip, template=template,
                 command=list(command or []))  # fmt: skip
        with self.locked(veid):
            path = self.node.config_path(veid)
            if os.path.exists(path):
                raise InvalidValue(f"VE {veid} already exists ({path})")
            private = os.path.join(self.node.private_dir(), veid)
            VEConfig(veid=veid, private=private, ip=ip, template=template)  # bad input: now
            ids = None if privileged else IdRegistry()
            base = ids.allocate(veid, self.node.root) if ids else 0
            try:
                cfg = VEConfig(
                    veid=veid, private=private, hostname=hostname, ip=ip, template=template,
                    command=list(command or []), privileged=privileged, id_base=base,
                )  # fmt: skip
                backend = backend_for(os.path.dirname(private))
                backend.create_area(private)
                try:
                    rootfs.populate(private, cfg.template, cfg.hostname, cfg.address)
                    if not privileged:
                        rootfs.shift_ids(private, 0, base, ID_COUNT)
                    os.makedirs(self.node.ve_dir, exist_ok=True)
                    cfg.save(path)
                except BaseException:
                    backend.delete_area(private)
                    raise
            except BaseException:
                if ids is not None:
                    ids.release(veid, self.node.root)
                raise
            if ids is not None:
                ids.commit(veid, self.node.root)
            net.blackhole(cfg.ip)  # stopped: its address is held on this host
            return cfg

    def set(self, veid: str, **changes: Any) -> VEConfig:
        """Change settings; `privileged` converts a stopped VE (the ownership of its
        private area moves to its new id range, or back to the host's ids)."""
        with self.locked(veid):
            cfg = self.config(veid)
            changes = {k: v for k, v in changes.items() if v is not None}
            if self.status(veid) != "stopped" and set(changes) & {"ip", "template", "privileged"}:
                if self.runtime(veid) is None:
                    raise AlreadyRunning(
                        f"VE {veid} has a dump file waiting ({self.node.default_dumpfile(veid)}): "
                        f"restore it, or remove the dump, before changing its ip, template or "
                        f"privileged"
                    )
                raise AlreadyRunning(
                    f"VE {veid} is running: stop it to change its ip, template or privileged"
                )
            privileged = changes.pop("privileged", cfg.privileged)
            old_ip = cfg.ip
            new = dataclasses.replace(cfg, **changes)
            if privileged != cfg.privileged:
                new = self._convert(new, privileged)
            new.save(self.node.config_path(veid))
            if new.ip != old_ip:
                net.release(veid, old_ip)
                net.blackhole(new.ip)
            return new

    def _convert(self, cfg: VEConfig, privileged: bool) -> VEConfig:
        """A stopped VE becomes privileged, or contains its root: the private area's
        owners move between the host's ids 0.. and the VE's range."""
        ids = IdRegistry()
        if privileged:
            rootfs.shift_ids(cfg.private, cfg.id_base, 0, ID_COUNT)
            ids.release(cfg.veid, self.node.root)
            return dataclasses.replace(cfg, privileged=True, id_base=0)
        base = ids.allocate(cfg.veid, self.node.root)
        try:
            rootfs.shift_ids(cfg.private, 0, base, ID_COUNT)
            new = dataclasses.replace(cfg, privileged=False, id_base=base)
            new.save(self.node.config_path(cfg.veid))
        except BaseException:
            rootfs.shift_ids(cfg.private, base, 0, ID_COUNT)
            ids.release(cfg.veid, self.node.root)
            raise
        ids.commit(cfg.veid, self.node.root)
        return new

    def stages(self, veid: str) -> VeStages:
        """The chkpnt and restore stages of the VE."""
        from .stages import VeStages

        return VeStages(veid, self.snapshots, self.node)

    # -- state

    def runtime(self, veid: str) -> Runtime | None:
        return RunState(veid).runtime()

    def freezer(self, veid: str) -> Freezer:
        return RunState(veid).freezer()

    def status(self, veid: str) -> str:
        """running, suspended (frozen, or a dump file waits: as vzctl says) or stopped;
        what a killed cpt command left is said after it (frozen or cut off without a
        stage state, a stage half-done), with the command that repairs it.  A dump file
        waits only if a restore would read it (cpt.restore.trust): a file planted by a
        user at the default path does not make a stopped VE suspended.  A VE that
        migrated to another node (its config kept as VEID.toml.migrated) is "migrated"."""
        if self.migrated(veid):
            return "migrated"
        self.config(veid)
        rt = self.runtime(veid)
        if rt is not None:
            run = RunState(veid)
            fz = run.freezer()
            frozen = fz.exists() and fz.freeze_requested()
            try:
                st = run.stage_state().load()
            except (ValueError, KeyError, TypeError):
                st = None
            fix = f"`cpt chkpnt {veid} --resume` repairs it"
            if st is not None and not st.stable:
                if st.state in ("killing", "restoring"):
                    fix = f"`cpt ve stop {veid}` finishes it"
                base = "suspended" if frozen else "running"
                return f"{base}, a cpt command was killed while {st.state} ({fix})"
            if frozen:
                return (
                    "suspended" if st is not None else f"suspended, without a stage state ({fix})"
                )
            if net.host_link_up(veid) is False:
                return f"running, link down ({fix})"
            return "running"
        from cpt.restore.trust import waiting  # the image and creds modules: here only

        return "suspended" if waiting(self.node.default_dumpfile(veid)) else "stopped"

    def migrated(self, veid: str) -> bool:
        """Did the VE migrate away from this node (only its .migrated config is left)?"""
        check_veid(veid)
        return not os.path.exists(self.node.config_path(veid)) and os.path.exists(
            self.node.migrated_path(veid)
        )

    def info(self, veid: str) -> dict[str, Any]:
        """What `ve status --json` and `ve list --json` say of a VE."""
        if self.migrated(veid):
            cfg = VEConfig.load(self.node.migrated_path(veid))
            return dict(
                veid=veid, status="migrated", ip=cfg.ip, hostname=cfg.hostname,
                template=cfg.template, init_pid=None, privileged=cfg.privileged,
                ids=None if cfg.privileged else range_text(cfg.id_base, ID_COUNT),
            )  # fmt: skip
        cfg = self.config(veid)
        rt = self.runtime(veid)
        return dict(
            veid=veid, status=self.status(veid), ip=cfg.ip, hostname=cfg.hostname,
            template=cfg.template, init_pid=rt.init_pid if rt else None,
            privileged=cfg.privileged,
            ids=None if cfg.privileged else range_text(cfg.id_base, ID_COUNT),
        )  # fmt: skip

    def list_ves(self) -> list[dict[str, Any]]:
        ids = sorted({*self.node.veids(), *self.node.migrated_veids()})
        return [self.info(veid) for veid in ids]

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
        run.forget_ended(cfg.ip)
        if not boot and os.path.lexists(self.node.default_dumpfile(veid)):
            self.stages(veid).restore_locked(Stage.RESTORE, trust=trust)
            rt = self.runtime(veid)
            assert rt is not None
            return rt
        return self._boot(cfg)

    def _boot(self, cfg: VEConfig) -> Runtime:
        """Fork the VE's init in its new namespaces (through a middle process that makes
        them: boot.contain for a VE that contains its root), set up the host's side, let
        it boot, wait for its word."""
        if not cfg.privileged:
            IdRegistry().ensure(cfg.veid, self.node.root, cfg.id_base)  # its own, here
        run = RunState(cfg.veid)
        fz = run.freezer()
        go_r, go_w = os.pipe()
        st_r, st_w = os.pipe2(os.O_CLOEXEC)
        pid_r, pid_w = os.pipe()
        ask_r, ask_w = os.pipe()  # middle -> host: the user namespace exists
        ans_r, ans_w = os.pipe()  # host -> middle: its maps are written
        fz.create()  # the middle starts in it (contained: before its cgroup namespace)
        if not cfg.privileged:
            seccomp.program()  # computed once, here: the middle and the init inherit it
        mid = fork_into_cgroup(fz.path)
        moved = mid is not None  # else the host moves it (_map_ids) or the init (below)
        if mid is None:
            mid = os.fork()
        if mid == 0:  # in the middle: new namespaces, then their PID 1
            try:
                for fd in (go_w, st_r, pid_r, ask_r, ans_w):
                    os.close(fd)

                def ask_host() -> None:
                    os.write(ask_w, b"u")
                    if os.read(ans_r, 1) != b"g":
                        raise SystemError_("the host did not map the user namespace")

                if cfg.privileged:
                    unshare(VE_NAMESPACES)
                else:
                    contain(cfg, ask_host)
                g = os.fork()
                if g == 0:
                    boot(cfg, go_r, st_w)
                os.write(pid_w, str(g).encode())
            except BaseException as e:
                with contextlib.suppress(OSError):
                    os.write(pid_w, f"E{type(e).__name__}: {e}".encode()[:4000])
            finally:
                os._exit(0)
        for fd in (go_r, st_w, pid_w, ask_w, ans_r):
            os.close(fd)
        try:
            if not cfg.privileged:
                self._map_ids(cfg, mid, ask_r, ans_w, None if moved else fz)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.kill(mid, signal.SIGKILL)
            run.kill_all()
            raise
        finally:
            os.close(ask_r)
            os.close(ans_w)
            os.waitpid(mid, 0)
            # one message (the init's pid, or E and the error), then the middle is gone;
            # the init keeps a copy of the pipe until it execs: no waiting for EOF
            got = _read_all(pid_r, BOOT_TIMEOUT, 4000, once=True)
            os.close(pid_r)
        if not got or got.startswith(b"E"):
            os.close(go_w)
            os.close(st_r)
            run.kill_all()
            why = got[1:].decode(errors="replace") if got else "no answer"
            raise SystemError_(f"VE {cfg.veid}: could not create its namespaces: {why}")
        init = int(got)
        try:
            if not moved and cfg.privileged:  # a contained VE's middle was moved: its init too
                fz.add([init])
            host = net.setup_host(cfg.veid, cfg.ip, init)
            with entered(init, ("net",)):  # this thread, in the VE's network namespace
                net.setup_inside(cfg.ip, host.gateway)
            with contextlib.suppress(BrokenPipeError):  # it failed: its word says why
                os.write(go_w, b"go")
            os.close(go_w)
            status = _read_all(st_r, BOOT_TIMEOUT)
            if status != b"ok":
                raise SystemError_(
                    f"VE {cfg.veid} failed to start: {status.decode(errors='replace') or 'no answer'}"
                )
            if host.uplink is not None:  # its LAN learns it is here
                net.announce_soon(cfg.ip, host.uplink)
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.close(go_w)
            run.kill_all()
            net.blackhole(cfg.ip)
            # the init works on its side meanwhile: if it failed first, say why (after
            # its own word was read, nothing is left to read)
            said = _read_all(st_r, 1.0) if isinstance(e, Exception) else b""
            if said:
                raise SystemError_(
                    f"VE {cfg.veid} failed to start: {said.decode(errors='replace')}"
                ) from e
            raise
        finally:
            os.close(st_r)
        return run.record(init, host.ifname)

    def _map_ids(self, cfg: VEConfig, mid: int, ask_r: int, ans_w: int, fz: Freezer | None) -> None:
        """The middle process made its user namespace: put it in the VE's cgroup `fz`
        unless it started there (before it makes the cgroup namespace, which is rooted
        where it is), write the maps."""
        if _read_all(ask_r, BOOT_TIMEOUT, 1) != b"u":
            return  # it failed before: its error comes on the pid pipe
        if fz is not None:
            fz.add([mid])
        idmap = format_id_map([IdMapping(0, cfg.id_base, ID_COUNT)])
        write_id_maps(mid, idmap, idmap, "allow")
        os.write(ans_w, b"g")

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
            run.forget_ended(cfg.ip)
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
            run.forget_ended(cfg.ip)
            self.snapshots.destroyed(veid)
            if os.path.exists(cfg.private):
                backend_for(cfg.private).delete_area(cfg.private)
            net.release(veid, cfg.ip)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.node.default_dumpfile(veid))
            os.unlink(self.node.config_path(veid))
            if not cfg.privileged:
                IdRegistry().release(veid, self.node.root)

    # -- exec

    def exec(self, veid: str, argv: list[str]) -> int:
        """Run a command inside the VE (all its namespaces, its root); stdio passes through;
        returns its exit code."""
        cfg = self.config(veid)
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
                os.read(go_r, 1)  # in the VE's cgroup now: what it forks is too
                _enter(rt.init_pid, contained=not cfg.privileged)
                child = os.fork()  # a PID namespace applies to children
                if child == 0:
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


def _enter(init: int, *, contained: bool) -> None:
    """Join the namespaces of the VE's init (the mount namespace last: it changes root).
    In a VE that contains its root: its user namespace first (the others are its), then
    its root's ids there, its cgroup namespace, and its seccomp filter."""
    if not contained:
        join(init, ("ipc", "uts", "net", "pid", "mnt"))
        os.chdir("/")
        return
    join(init, ("user", "cgroup", "ipc", "uts", "net", "pid", "mnt"))
    os.setresgid(0, 0, 0)
    os.setgroups([0])
    os.setresuid(0, 0, 0)
    os.chdir("/")
    seccomp.apply()


def _ve_env() -> dict[str, str]:
    env = dict(ENV)
    if "TERM" in os.environ:
        env["TERM"] = os.environ["TERM"]
    return env


def _read_all(fd: int, timeout: float, want: int = 0, *, once: bool = False) -> bytes:
    """What `fd` gives until EOF (or `want` bytes, if given; or its first read, `once`),
    for at most `timeout` s."""
    out = b""
    deadline = time.monotonic() + timeout
    while not want or len(out) < want:
        left = deadline - time.monotonic()
        if left <= 0:
            return out
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return out
        chunk = os.read(fd, want - len(out) if want else 4096)
        if not chunk:
            return out
        out += chunk
        if once:
            break
    return out
