"""`cpt migrate [--online] HOST VEID`: move a VE to another node (vzmigrate's flow, see
REFERENCE.md), its destination side being ve/agent.py behind `ssh HOST cpt node serve
--stdio` (ve/proto.py).

    1  lock the VE here (a VE locked by another cpt command: exit 9, said to be the lock)
    2  pre-flight, before any freeze: the destination reachable and speaking our
       protocol (4), VEID free there (9), its addresses free there (9), its kernel and
       CPU (17, 18), room in its pool (6), the template and bound host directories (6);
       --dry-run stops here
    3  filesystem sync while the VE runs: btrfs send of a read-only snapshot group of
       the private area (nested subvolumes too), received into the destination's pool
    4  online (--noiter: stop-and-copy): suspend, dump (the area snapshotted in the same
       freeze), the snapshot sent incrementally (-p) and the image sent; the destination
       undumps and resumes; only after it acknowledged is the VE killed here.
       offline: the VE is stopped, the area sent incrementally, the VE started there
    5  clean up here: the private area and the VE's snapshots go (--remove-area no keeps
       them), the config is kept as VEID.toml.migrated

Any failure before the destination resumed undoes both sides: the destination undoes
what its journal lists (at once, or as the next session for the VE begins), and the VE
runs on here (resumed if it was suspended).  A failure after the restore request was sent
asks the destination (a new connection) whether the VE runs there before deciding which
copy lives.  Exit codes are vzmigrate's (SPEC.md section 12).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cpt import fault, interrupts
from cpt.dump.options import DumpOptions
from cpt.errors import CodedError, CptError, InvalidValue, UsageError
from cpt.stages.kill import kill
from cpt.stages.resume import resume
from cpt.stages.store import run_path
from cpt.stages.suspend import suspend
from cpt.sys import host as hostinfo
from cptimage.atomic import atomic_output
from storage import backend_for, transfer

from . import proto
from .agent import machine
from .config import VEConfig, check_veid
from .fssnap import FsCapture
from .lifecycle import VEManager
from .rootfs import HOST_DIRS
from .runtime import RunState
from .stages import ve_dump_options

# vzmigrate's exit codes
VE_STOPPED = 2
CONNECT = 4
COPY = 6
RESTORE = 7
CHECKPOINT = 8
EXISTS = 9
IMAGE_VERSION = 17
CPU = 18
CODES: dict[int, str] = {
    VE_STOPPED: "the VE is not running (an online migration needs it running)",
    CONNECT: "cannot connect to the destination, or it speaks another protocol version",
    COPY: "copying to the destination failed (its pool too small, a copy cut off, the VE's "
    "template or a bound host directory missing there)",
    RESTORE: "restore on the destination failed; the VE runs on here",
    CHECKPOINT: "checkpoint on the source failed; the VE runs on here",
    EXISTS: "the VE (its id, private area or address) exists on the destination, or the VE "
    "is locked here by another cpt command",
    IMAGE_VERSION: "the destination's kernel cannot restore the VE's image",
    CPU: "the destination's CPU lacks features the VE uses",
}
KIND_CODES = {
    "exists": EXISTS,
    "address": EXISTS,
    "kernel": IMAGE_VERSION,
    "cpu": CPU,
    "space": COPY,
    "missing": COPY,
    "copy": COPY,
    "restore": RESTORE,
}
HELLO_TIMEOUT = 30.0
STEP_TIMEOUT = 120.0  # the longest wait for one answer of the destination
RESTORE_TIMEOUT = 300.0
SETTLE_TIMEOUT = 150.0  # asking the destination after a cut (it waits for its old session)
MAX_PASSES = 30
PAGE = 4096
# The prediction of the frozen time (after each pre-copy pass) adds up: the pages left
# to send at the rate measured in the pass; the filesystem sync, as long as the one
# measured while the VE ran; the destination's writing of the VE's whole memory at the
# rate its agent measured at the pre-flight (mem.page_write_rate); and FIXED_S, the part
# no step of a run measures before the freeze: suspend, the final dump's non-memory
# state, the area made there, the restore's checks, processes and state, the round
# trips (bench/migrate_bench.py here, 256 MiB echo VE: suspend 42 ms, final dump 103,
# restore checks 78, processes 106, state 17: about 0.35 s).  RESTORE_BPS: the
# write rate of a destination that did not say (an older agent).
FIXED_S = 0.35
RESTORE_BPS = 1.0e9


class MigrateError(CodedError):
    """A migration failed: `code` is vzmigrate's exit code, `stage` where it failed."""

    def __init__(self, code: int, stage: str, msg: str, *, answered: bool = False) -> None:
        super().__init__(code, f"migrate: {stage}: {msg}")
        self.stage = stage
        self.answered = answered  # the destination answered (the error is its own)


@dataclasses.dataclass
class MigrateOptions:
    online: bool = False
    noiter: bool = False  # stop-and-copy
    dry_run: bool = False
    remove_area: bool = True
    keep_dst: bool = False
    ssh_opts: str = ""
    max_downtime_ms: int = 300
    force: bool = False  # switch over when pre-copy does not converge (as stop-and-copy)


@dataclasses.dataclass
class Report:
    """What a migration did and how long each step took (seconds)."""

    veid: str
    host: str
    mode: str = ""
    steps: dict[str, float] = dataclasses.field(default_factory=dict)
    bytes_fs: int = 0
    bytes_image: int = 0
    frozen_s: float = 0.0
    restore_s: float = 0.0
    restore_detail: dict[str, float] = dataclasses.field(default_factory=dict)  # its parts
    init_pid: int = 0
    passes: list[dict[str, float]] = dataclasses.field(default_factory=list)
    predicted_s: float = 0.0  # the frozen time predicted before the switch-over
    prediction: dict[str, float] = dataclasses.field(default_factory=dict)  # its terms
    write_bps: float = 0.0  # the destination's memory write rate (its pre-flight)
    bytes_final: int = 0  # of them, the final dump's (sent frozen)
    memory: int = 0  # the VE's resident memory at the start

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- the transport


def split_host(host: str) -> tuple[str, str]:
    """[user@]host[:port] -> (destination, port or "")."""
    if not host or host.startswith("-") or any(c.isspace() for c in host):
        raise InvalidValue(f"HOST {host!r}: use [user@]host[:port]")
    name, port = host, ""
    if host.count(":") == 1:
        name, port = host.split(":")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidValue(f"HOST {host!r}: the port is 1-65535")
    return name, port


def command(host: str, ssh_opts: str) -> tuple[list[str], dict[str, str]]:
    """The command that reaches the destination's agent, and its environment.  Tests may
    set CPT_MIGRATE_TRANSPORT=local: HOST is then another node root of this machine."""
    if os.environ.get("CPT_MIGRATE_TRANSPORT") == "local":
        env = dict(os.environ, CPT_ROOT=os.path.abspath(host))
        env.pop("CPT_MIGRATE_TRANSPORT")
        env.pop("CPT_RUN_DIR", None)  # the run directory of the node root given
        env.pop("CPT_FAULT", None)  # the source's; the destination's is CPT_MIGRATE_DST_FAULT
        if os.environ.get("CPT_MIGRATE_DST_FAULT"):
            env["CPT_FAULT"] = os.environ["CPT_MIGRATE_DST_FAULT"]
        return [sys.executable, "-m", "cli.main", "node", "serve", "--stdio"], env
    name, port = split_host(host)
    try:
        opts = shlex.split(ssh_opts)
    except ValueError as e:
        raise InvalidValue(f"--ssh-opts {ssh_opts!r}: {e}") from None
    # a cut connection is noticed within 15 s (ssh's keepalives), never waited on forever
    argv = [
        "ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5",
        "-o", "ServerAliveCountMax=3", *opts,
    ]  # fmt: skip
    if port:
        argv += ["-p", port]
    return [*argv, "--", name, "cpt", "node", "serve", "--stdio"], dict(os.environ)


class Connection:
    """The pipe to the destination's agent (a child: ssh, or the local transport)."""

    def __init__(self, host: str, ssh_opts: str) -> None:
        argv, env = command(host, ssh_opts)
        self.host = host
        self.err = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, env=env,
                cwd=_repo_dir() if env.get("CPT_ROOT") and argv[0] == sys.executable else None,
            )  # fmt: skip
        except OSError as e:
            raise MigrateError(CONNECT, "connect", f"cannot run {argv[0]}: {e.strerror}") from None
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.chan = proto.Channel(self.proc.stdout.fileno(), self.proc.stdin.fileno())

    def why(self) -> str:
        """The last line the transport said on stderr (ssh's reason), if any."""
        self.err.seek(0)
        lines = [x for x in self.err.read().decode(errors="replace").splitlines() if x.strip()]
        return lines[-1].strip() if lines else ""

    def close(self, timeout: float = 10.0) -> None:
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if f is not None:
                    f.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.err.close()

    def cut(self) -> None:
        """End the transport at once (its agent sees the pipe close)."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.close()


def _repo_dir() -> str:
    return str(Path(__file__).resolve().parent.parent)


# -- the flow


class Migration:
    def __init__(
        self,
        manager: VEManager,
        host: str,
        veid: str,
        opts: MigrateOptions,
        say: Callable[[str], None] = lambda s: None,
    ) -> None:
        self.manager = manager
        self.node = manager.node
        self.host = host
        self.veid = check_veid(veid)
        self.opts = opts
        self.say = say
        self.mid = uuid.uuid4().hex
        self.report = Report(veid=veid, host=host)
        self.conn: Connection | None = None
        self.snaps: list[Path] = []  # sent snapshots, oldest first
        self.restore_sent = False
        self.in_doubt = False  # the destination could not be asked: touch nothing there
        self.outgoing = Outgoing(self.veid)
        self.images: list[str] = []  # pre-dumps written here
        self.fs_base: Path | None = None  # the newest snapshot the destination has
        self.fs_s = 0.0  # how long a filesystem sync took while the VE ran

    # -- helpers

    def _fail(self, code: int, stage: str, msg: str) -> MigrateError:
        return MigrateError(code, stage, msg)

    def _call(
        self, stage: str, op: str, timeout: float = STEP_TIMEOUT, **fields: Any
    ) -> dict[str, Any]:
        assert self.conn is not None
        try:
            return self.conn.chan.call(op, timeout, **fields)
        except proto.Remote as e:
            code = KIND_CODES.get(e.kind, COPY if stage == "copy" else CONNECT)
            raise MigrateError(code, stage, str(e), answered=True) from None
        except proto.ProtocolError as e:
            raise self._lost(stage, e) from None

    def _lost(self, stage: str, e: Exception) -> MigrateError:
        why = self.conn.why() if self.conn is not None else ""
        code = {"connect": CONNECT, "pre-flight": CONNECT, "restore": RESTORE}.get(stage, COPY)
        return self._fail(
            code, stage, f"the destination {self.host}: {e}" + (f" ({why})" if why else "")
        )

    def _step(self, name: str, t0: float) -> None:
        self.report.steps[name] = self.report.steps.get(name, 0.0) + time.perf_counter() - t0

    # -- run

    def run(self) -> Report:
        node = self.node
        run = RunState(self.veid)
        with run.locked():
            path = node.config_path(self.veid)
            if not os.path.exists(path):
                if os.path.exists(node.migrated_path(self.veid)):
                    raise InvalidValue(f"VE {self.veid} migrated away from this node")
                raise InvalidValue(f"VE {self.veid} does not exist (no {path})")
            cfg = node.config(self.veid)
            if self.outgoing.load():
                return self._settle_interrupted(cfg)
            self.manager.stages(self.veid).repair_locked(cfg)
            status = self.manager.status(self.veid)
            running = status == "running"
            if status not in ("running", "stopped"):
                raise self._fail(
                    VE_STOPPED, "pre-flight", f"VE {self.veid} is {status}: resume or stop it first"
                )
            if self.opts.online and not running:
                raise self._fail(
                    VE_STOPPED, "pre-flight",
                    f"VE {self.veid} is not running; migrate it offline (without --online)",
                )  # fmt: skip
            self.report.mode = (
                "offline" if not self.opts.online else "stop-and-copy" if self.opts.noiter
                else "pre-copy"
            )  # fmt: skip
            self._connect()
            try:
                self._preflight(cfg)
                if self.opts.dry_run:
                    self._bye()
                    return self.report
                self._flow(cfg, running)
            except BaseException:
                self._abort()
                raise
            finally:
                self._drop_snapshots()
                if self.conn is not None:
                    self.conn.close()
            self._cleanup(cfg)
        return self.report

    def _settle_interrupted(self, cfg: VEConfig) -> Report:
        """A migration killed after its restore request went out left the VE suspended
        here: ask the destination which copy lives, and finish or undo it."""
        host, mid = self.outgoing.host, self.outgoing.mid
        if host != self.host:
            raise self._fail(
                EXISTS, "pre-flight",
                f"VE {self.veid} is being migrated to {host}: run `cpt migrate {host} "
                f"{self.veid}` to settle that first",
            )  # fmt: skip
        self.mid = mid
        rt = RunState(self.veid).runtime()
        top = Path(self.node.migrate_dir(self.veid))
        self.snaps = sorted(
            p for p in top.iterdir() if p.is_dir() and not p.name.endswith(".nested")
        )
        state = self._ask("settle", veid=self.veid, mid=mid, keep=False)
        if state is None:
            raise self._fail(
                RESTORE, "settle",
                f"the destination {host} cannot be asked whether VE {self.veid} runs there; "
                f"the VE stays suspended here: retry",
            )  # fmt: skip
        self.report.mode = "settled"
        if state == "resumed":
            if rt is not None:
                self._let_go(cfg, rt.init_pid)
            self._drop_snapshots()
            self._cleanup(cfg)
            self.outgoing.drop()
            return self.report
        if rt is not None:
            self._resume_here(cfg, rt.init_pid)
        self._drop_snapshots()
        self.outgoing.drop()
        raise self._fail(
            RESTORE, "settle",
            f"the interrupted migration of VE {self.veid} to {host} did not resume it there; "
            f"undone there, the VE runs here",
        )  # fmt: skip

    def _connect(self) -> None:
        t0 = time.perf_counter()
        self.conn = Connection(self.host, self.opts.ssh_opts)
        try:
            got = self.conn.chan.call("hello", HELLO_TIMEOUT, proto_version=proto.PROTOCOL)
        except (proto.ProtocolError, proto.Remote) as e:
            why = self.conn.why()
            self.conn.cut()
            self.conn = None
            raise self._fail(
                CONNECT, "connect", f"cannot reach cpt on {self.host}: {why or e}"
            ) from None
        if got.get("proto") != proto.PROTOCOL:
            self._bye()
            raise self._fail(
                CONNECT, "connect",
                f"{self.host} speaks migration protocol {got.get('proto')}, this cpt "
                f"{proto.PROTOCOL}: install the same cpt there",
            )  # fmt: skip
        self.remote_root = str(got.get("root", ""))
        self._step("connect", t0)

    def _bye(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(proto.ProtocolError, proto.Remote):
                self.conn.chan.call("bye", 10.0)
            self.conn.close()
            self.conn = None

    def _preflight(self, cfg: VEConfig) -> None:
        t0 = time.perf_counter()
        from cpt.host.verify import host_xcr0  # the engine: here only

        arch, release, version = hostinfo.kernel()
        platform = dict(
            arch=arch, release=release, version=version, vdso=hostinfo.vdso_digest(),
            cpu_flags=hostinfo.isa_flags(), xcr0=host_xcr0(),
        )  # fmt: skip
        config = dataclasses.asdict(cfg)
        config.pop("private")
        try:
            need = backend_for(cfg.private).size(cfg.private)
        except (CptError, OSError):
            need = 0
        need += memory_of(self.veid)  # its image
        got = self._call(
            "pre-flight", "preflight", veid=self.veid, mid=self.mid, config=config, need=need,
            platform=platform, source_root=self.node.root, source_machine=machine(),
            binds=host_binds(cfg), dry_run=self.opts.dry_run, keep=self.opts.keep_dst,
        )  # fmt: skip
        self.report.write_bps = float(got.get("write_bps") or 0.0)
        self._step("preflight", t0)

    def _snapshot(self) -> Path:
        """A read-only snapshot group of the area (while it runs: sync #1)."""
        d = Path(self.node.migrate_dir(self.veid))
        d.mkdir(parents=True, exist_ok=True)
        dest = d / f"s{len(self.snaps)}-{self.mid[:8]}"
        backend = backend_for(self.manager.config(self.veid).private)
        backend.sync(self.manager.config(self.veid).private)
        backend.snapshot(self.manager.config(self.veid).private, dest)
        self.snaps.append(dest)
        return dest

    def _send_fs(self, snap: Path, parent: Path | None) -> None:
        assert self.conn is not None
        for part, sub, base in transfer.parts(snap, parent):
            tx = transfer.sender(sub, base)
            assert tx.stdout is not None
            try:
                n = self.conn.chan.send_stream("recv_fs", tx.stdout.fileno(), part=part)
            except proto.ProtocolError as e:
                tx.kill()
                tx.wait()
                raise self._lost("copy", e) from None
            err = tx.stderr.read().decode(errors="replace").strip() if tx.stderr else ""
            rc = tx.wait()
            self.report.bytes_fs += n
            if rc != 0:
                with contextlib.suppress(proto.ProtocolError, proto.Remote):
                    self.conn.chan.answer("recv_fs", STEP_TIMEOUT)
                raise self._fail(COPY, "copy", f"btrfs send of {sub}: {err or f'exit {rc}'}")
            try:
                self.conn.chan.answer("recv_fs", STEP_TIMEOUT)
            except proto.Remote as e:
                raise self._fail(KIND_CODES.get(e.kind, COPY), "copy", str(e)) from None
            except proto.ProtocolError as e:
                raise self._lost("copy", e) from None

    def _flow(self, cfg: VEConfig, running: bool) -> None:
        t0 = time.perf_counter()
        s1 = self._snapshot()
        self._send_fs(s1, None)
        self.fs_base = s1
        self._step("fs_sync", t0)
        if self.opts.online and not self.opts.noiter:
            try:
                parent = self._precopy(cfg)
            except BaseException:
                self._end_tracking(cfg)
                raise
            self._switch_over(cfg, self.fs_base, parent)
        elif self.opts.online:
            self._switch_over(cfg, s1)
        else:
            self._offline(cfg, s1, running)

    def _offline(self, cfg: VEConfig, s1: Path, running: bool) -> None:
        t0 = time.perf_counter()
        if running:
            self.manager.stop_locked(self.veid)
        self._step("stop", t0)
        t0 = time.perf_counter()
        s2 = self._snapshot()
        self._send_fs(s2, s1)
        self._call("copy", "area")
        self._step("fs_sync_2", t0)
        if running:
            t0 = time.perf_counter()
            self.restore_sent = True
            got = self._call("restore", "start", RESTORE_TIMEOUT)
            self.report.init_pid = int(got.get("init_pid", 0))
            self._step("start", t0)
        self._commit()

    def _send_image(self, path: str) -> int:
        """The image at `path` to the destination (kept there under its base name)."""
        assert self.conn is not None
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            n = self.conn.chan.send_stream("recv_image", fd, name=os.path.basename(path))
        except proto.ProtocolError as e:
            raise self._lost("copy", e) from None
        finally:
            os.close(fd)
        try:
            self.conn.chan.answer("recv_image", STEP_TIMEOUT)
        except proto.Remote as e:
            raise MigrateError(
                KIND_CODES.get(e.kind, COPY), "copy", str(e), answered=True
            ) from None
        except proto.ProtocolError as e:
            raise self._lost("copy", e) from None
        return n

    def _precopy(self, cfg: VEConfig) -> str:
        """Memory pre-copy while the VE runs (pre-dumps with write tracking, each sent):
        pass 1 everything, then what was written since.  After each pass the frozen time
        is predicted (the dirty rate over the transfer rate, plus the final step's fixed
        cost); returns the last pre-dump once it fits --max-downtime.  No progress in 3
        passes or 5 s without a fit, or 3x the VE's memory sent: MigrateError (8), the
        VE runs on here; with --force it switches over all the same."""
        from cpt.stages.incremental import predump  # the engine's pre-dumps: here only

        stages = self.manager.stages(self.veid)
        rt = RunState(self.veid).runtime()
        assert rt is not None
        opts = ve_dump_options(DumpOptions())
        d = Path(self.node.migrate_dir(self.veid))
        mem = self.report.memory = max(memory_of(self.veid), 1)
        budget = self.opts.max_downtime_ms / 1000.0
        parent = ""
        sent = 0
        best = None  # the smallest pass so far, and when
        prev_s = 0.0
        for k in range(1, MAX_PASSES + 1):
            path = str(d / f"P{k}-{self.mid[:8]}")
            t0 = time.perf_counter()
            try:
                stats = predump(stages.tree(cfg, rt.init_pid), path, opts, parent or None, None)
            except CptError as e:
                raise self._fail(CHECKPOINT, f"pre-copy pass {k}", str(e)) from None
            t1 = time.perf_counter()
            size = self._send_image(path)
            t2 = time.perf_counter()
            self.images.append(path)  # the final dump's chain: removed at the end
            self.report.bytes_image += size
            parent = path
            sent += size
            pass_s = t2 - t0
            rate = (t2 - t0) and size / max(t2 - t0, 1e-6)  # bytes/s through dump and send
            dirty = size / prev_s if prev_s else 0.0  # written per second in the last pass
            if k == 1:
                # the area synced again while the VE runs: the sync in the freeze sends
                # only what changed since, and this one says how long such a sync takes
                t3 = time.perf_counter()
                snap = self._snapshot()
                self._send_fs(snap, self.fs_base)
                self.fs_base = snap
                self.fs_s = time.perf_counter() - t3
                self._step("fs_sync", t3)
                pass_s += self.fs_s  # the next pass holds what was written meanwhile too
            # at the freeze, what was written during this pass is left, plus the fixed cost
            left = dirty * pass_s if k > 1 else size
            terms = dict(
                fixed_s=FIXED_S, fs_sync_s=self.fs_s,
                memory_s=mem / (self.report.write_bps or RESTORE_BPS),
                final_pages_s=left / max(rate, 1.0),
            )  # fmt: skip
            predicted = sum(terms.values())
            self.report.prediction = terms
            self.report.passes.append(dict(
                n=k, bytes=size, pages=stats.pages_bytes // PAGE, pass_s=pass_s,
                dump_s=t1 - t0, send_s=t2 - t1, dirty_bps=dirty, predicted_s=predicted,
            ))  # fmt: skip
            self.say(
                f"cpt: pre-copy pass {k}: {size >> 10} KiB in {pass_s * 1000:.0f} ms, "
                f"dirty {dirty / 1e6:.1f} MB/s, predicted frozen {predicted * 1000:.0f} ms"
            )
            prev_s = pass_s
            self.report.predicted_s = predicted
            if k > 1 and predicted <= budget:
                return parent
            if best is None or size < best[0] * 0.9:  # progress: the dirty set shrank
                best = (size, k, time.perf_counter())
            stalled = k - best[1] >= 3 or time.perf_counter() - best[2] > 5.0
            if stalled or sent + left > 3 * mem:
                if self.opts.force:
                    self.say("cpt: pre-copy did not converge; switching over (--force)")
                    return parent
                raise self._fail(
                    CHECKPOINT, "pre-copy",
                    f"VE {self.veid} writes its memory faster than it can be sent: predicted "
                    f"frozen time {predicted * 1000:.0f} ms > --max-downtime "
                    f"{self.opts.max_downtime_ms} ms after {k} passes ({sent >> 20} MiB "
                    f"sent); it runs on here (--force switches over all the same)",
                )  # fmt: skip
        return parent

    def _switch_over(self, cfg: VEConfig, s1: Path, parent: str = "") -> None:
        stages = self.manager.stages(self.veid)
        rt = RunState(self.veid).runtime()
        assert rt is not None
        opts = ve_dump_options(DumpOptions())
        if parent:
            opts = dataclasses.replace(opts, parent=parent)
        d = Path(self.node.migrate_dir(self.veid))
        s2 = d / f"s{len(self.snaps)}-{self.mid[:8]}"
        image = str(d / f"Dump-{self.mid[:8]}")
        frozen_at = time.perf_counter()
        try:
            suspend(stages.tree(cfg, rt.init_pid, FsCapture(self.veid, cfg.private, "")), opts)
        except CptError as e:
            raise self._fail(CHECKPOINT, "suspend", str(e)) from None
        self._step("suspend", frozen_at)
        try:
            t0 = time.perf_counter()
            try:
                stages.dump_with_fs(
                    cfg, rt.init_pid, image, opts, staged=True, dest=s2, keep=lambda c: None
                )
            except CptError as e:
                raise self._fail(CHECKPOINT, "dump", str(e)) from None
            self.snaps.append(s2)
            self._step("dump", t0)
            t0 = time.perf_counter()
            fault.point("migrate:send")
            self._send_fs(s2, s1)
            self._call("copy", "area")
            self._step("fs_sync_frozen", t0)
            t0 = time.perf_counter()
            try:
                final = self._send_image(image)
                self.report.bytes_image += final
                self.report.bytes_final = final
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(image)
            self._step("transfer", t0)
            t0 = time.perf_counter()
            self.outgoing.save(self.host, self.mid)  # from here the VE may run there
            self.restore_sent = True
            got = self._call("restore", "restore", RESTORE_TIMEOUT)
            self.report.init_pid = int(got.get("init_pid", 0))
            self.report.restore_s = float(got.get("restore_s", 0.0))
            self.report.restore_detail = {
                k: float(v) for k, v in dict(got.get("detail") or {}).items()
            }
            self._step("restore", t0)
        except BaseException as e:
            if not self._settled_there(e):
                self._resume_here(cfg, rt.init_pid)
                self.outgoing.drop()
                raise
            self.say(f"cpt: {e}; VE {self.veid} runs on {self.host} all the same")
        self.report.frozen_s = time.perf_counter() - frozen_at
        fault.point("migrate:resumed")
        self._let_go(cfg, rt.init_pid)

    def _let_go(self, cfg: VEConfig, init_pid: int) -> None:
        """The destination runs the VE: the copy here dies, silently (its peers are there
        now); the destination is told to commit."""
        stages = self.manager.stages(self.veid)
        interrupts.no_return()
        with interrupts.deferred():
            kill(stages.tree(cfg, init_pid))
            stages.stopped(cfg)
            self._end_tracking(cfg)
        self._commit()
        self.outgoing.drop()

    def _settled_there(self, e: BaseException) -> bool:
        """After a failure of the switch-over: does the VE run on the destination?  Only
        when the restore request went out and its answer did not come back is that in
        doubt: a new session asks the destination, which first waits for the old one to
        end, then says "resumed" or undoes what it left.  Unknown: MigrateError (7), the
        VE left suspended here."""
        if not self.restore_sent or (isinstance(e, MigrateError) and e.answered):
            return False
        if self.conn is not None:
            self.conn.cut()
            self.conn = None
        state = self._ask("settle", veid=self.veid, mid=self.mid, keep=self.opts.keep_dst)
        if state is None:
            self.in_doubt = True
            raise self._fail(
                RESTORE, "restore",
                f"the destination {self.host} cannot be asked whether VE {self.veid} runs "
                f"there; the VE is left suspended here: run `cpt migrate {self.host} "
                f"{self.veid}` again to settle it",
            ) from e  # fmt: skip
        return state == "resumed"

    def _ask(self, op: str, **fields: Any) -> str | None:
        """`op` on a new session (retried for SETTLE_TIMEOUT s): its answer's state."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while time.monotonic() < deadline:
            try:
                conn = Connection(self.host, self.opts.ssh_opts)
            except MigrateError:
                time.sleep(1.0)
                continue
            try:
                conn.chan.call("hello", HELLO_TIMEOUT, proto_version=proto.PROTOCOL)
                return str(conn.chan.call(op, SETTLE_TIMEOUT, **fields).get("state"))
            except proto.Remote:
                return None
            except proto.ProtocolError:
                time.sleep(1.0)
            finally:
                conn.close()
        return None

    def _resume_here(self, cfg: VEConfig, init_pid: int) -> None:
        stages = self.manager.stages(self.veid)
        with interrupts.deferred():
            resume(stages.tree(cfg, init_pid))
            self._end_tracking(cfg)

    def _end_tracking(self, cfg: VEConfig) -> None:
        """A pre-copy's write tracking of the VE ends (its holder goes)."""
        from cpt.stages.tracking import Tracking  # the engine: here only

        rt = RunState(self.veid).runtime()
        with contextlib.suppress(CptError, OSError):
            Tracking(self.manager.stages(self.veid).tree(cfg, rt.init_pid if rt else 0),
                     lambda s: None).end()  # fmt: skip

    def _commit(self) -> None:
        """The destination drops its journal (on this session, or a new one)."""
        if self.conn is not None:
            with contextlib.suppress(proto.ProtocolError, proto.Remote):
                self.conn.chan.call("commit", STEP_TIMEOUT)
                return
        self._ask("commit", veid=self.veid, mid=self.mid)

    def _abort(self) -> None:
        """Undo the destination's part (unless --keep-dst), on this session if it is
        still up, else on a new one (which waits for the old one to end)."""
        if self.in_doubt:
            return
        if self.conn is not None:
            try:
                if not self.opts.keep_dst:
                    self.conn.chan.call("abort", STEP_TIMEOUT)
                return
            except (proto.ProtocolError, proto.Remote):
                self.conn.cut()
                self.conn = None
        self._ask("settle", veid=self.veid, mid=self.mid, keep=self.opts.keep_dst)

    def _drop_snapshots(self) -> None:
        for path in self.images:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self.images = []
        for snap in reversed(self.snaps):
            with contextlib.suppress(CptError, OSError):
                backend_for(snap.parent).delete_snapshot(snap)
        self.snaps = []
        with contextlib.suppress(OSError):
            os.rmdir(self.node.migrate_dir(self.veid))

    def _cleanup(self, cfg: VEConfig) -> None:
        """The VE lives on the destination: here its config is kept as .migrated, its
        private area and snapshots go (unless --remove-area no)."""
        node = self.node
        with interrupts.deferred():
            if self.opts.remove_area:
                self.manager.snapshots.destroyed(self.veid)
                if os.path.exists(cfg.private):
                    backend_for(cfg.private).delete_area(cfg.private)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(node.default_dumpfile(self.veid))
            os.replace(node.config_path(self.veid), node.migrated_path(self.veid))


def host_binds(cfg: VEConfig) -> list[str]:
    """The host directories bound into the VE (a `host` VE: the host's /usr, /lib...):
    the destination must have them."""
    if cfg.template != "host":
        return []
    return [f"/{d}" for d in HOST_DIRS if os.path.isdir(f"/{d}") and not os.path.islink(f"/{d}")]


def memory_of(veid: str) -> int:
    """The resident memory of the VE's processes (what its image holds, about)."""
    from cpt.procfs import Proc

    proc, total = Proc(), 0
    for pid in RunState(veid).freezer().procs():
        with contextlib.suppress(CptError):
            total += proc.stat(pid).rss * os.sysconf("SC_PAGE_SIZE")
    return total


class Outgoing:
    """<run>/migrate-out-<VEID>.json: a migration of the VE whose restore request went
    out (its destination and id), until it is settled: a migration killed in between is
    settled by the next `cpt migrate` of the VE, never resumed here on a guess."""

    def __init__(self, veid: str) -> None:
        self.path = run_path(f"migrate-out-{veid}", ".json")
        self.host = ""
        self.mid = ""

    def load(self) -> bool:
        try:
            with open(self.path) as f:
                doc = json.load(f)
        except FileNotFoundError:
            return False
        except ValueError:
            doc = {}
        self.host, self.mid = str(doc.get("host", "")), str(doc.get("mid", ""))
        return True

    def save(self, host: str, mid: str) -> None:
        with atomic_output(self.path, mode=0o600) as f:
            f.write(json.dumps(dict(host=host, mid=mid)).encode())

    def drop(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def migrate(
    manager: VEManager, host: str, veid: str, opts: MigrateOptions,
    say: Callable[[str], None] = lambda s: None,
) -> Report:  # fmt: skip
    if opts.noiter and not opts.online:
        raise UsageError("--noiter is for --online migrations")
    split_host(host) if os.environ.get("CPT_MIGRATE_TRANSPORT") != "local" else None
    return Migration(manager, host, veid, opts, say).run()


__all__ = ["CODES", "MigrateError", "MigrateOptions", "Report", "migrate"]
