"""The destination of a migration: `cpt node serve --stdio` (ve/proto.py on stdin and
stdout), run by `ssh HOST cpt node serve --stdio`.

It executes only the protocol's operations, on the one VE the pre-flight named, under
this node's root (CPT_ROOT, else the default): no path or command comes from the source.

    hello        the protocol version, this node's root and machine
    preflight    VEID free here (exists), its addresses free (address), this kernel and
                 CPU take its image (kernel, cpu), room in the pool (space), its
                 template and bound host directories here (missing); takes the VE's
                 lock for the session
    recv_fs      a btrfs send stream (DATA frames) received into the pool
    area         the config written, the private area made of what was received
    recv_image   the dump file (DATA frames)
    restore      undump and resume the VE; replies once it runs
    start        boot it (an offline migration of a running VE)
    commit       the source let it go: the journal goes, the migration is over
    abort        everything this session did is undone
    settle       after a cut, in a new session: once the old one ended, what it left is
                 said ("resumed": the VE runs here) or undone

Everything done is journalled (<run>/migrate-<VEID>.json) before it is done, with its
undo.  A session that ends (the pipe closed, the agent killed) before `restore` replied
is undone: at once, or by the next session for the VE (its pre-flight, or `abort`).
Once the VE was resumed here it stays (the source may already have killed its copy):
the journal says "resumed" until the source commits.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

from cpt import fault
from cpt.errors import CptError, LockedError
from cpt.stages.store import run_path
from cptimage.atomic import atomic_output
from storage import transfer

from . import net, proto
from .config import VEConfig, check_veid
from .idmap import ID_COUNT, IdRegistry, range_text
from .lifecycle import VEManager
from .node import Node
from .runtime import RunState

RECV_TIMEOUT = 120.0  # the longest wait for the source's next frame
RUN_TIMEOUT = 600.0  # an idle session ends
SETTLE_TIMEOUT = 120.0
IMAGE_NAME = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9-]{0,63}"
)  # how long `settle` waits for an earlier session to end


def machine() -> str:
    """This machine (its boot): two node roots of one machine share ids and a kernel."""
    from cpt.procfs import read_sysctl  # the engine's /proc layer

    try:
        return read_sysctl("kernel.random.boot_id").strip()
    except OSError:
        return ""


class Refused(CptError):
    """An operation refused: `kind` is one of proto.ERROR_KINDS."""

    def __init__(self, kind: str, msg: str) -> None:
        super().__init__(msg)
        self.kind = kind


class Journal:
    """What a migration did on this node, with its undo, in <run>/migrate-<VEID>.json."""

    def __init__(self, veid: str) -> None:
        self.veid = veid
        self.path = run_path(f"migrate-{veid}", ".json")
        self.state = "receiving"
        self.mid = ""
        self.source = ""
        self.undo: list[list[Any]] = []

    def load(self) -> bool:
        try:
            with open(self.path) as f:
                doc = json.load(f)
        except FileNotFoundError:
            return False
        except ValueError:
            doc = {}
        self.state = str(doc.get("state", "receiving"))
        self.mid = str(doc.get("mid", ""))
        self.source = str(doc.get("source", ""))
        self.undo = list(doc.get("undo", []))
        return True

    def save(self) -> None:
        doc = dict(state=self.state, mid=self.mid, source=self.source, undo=self.undo)
        with atomic_output(self.path, mode=0o600) as f:
            f.write(json.dumps(doc).encode())

    def add(self, kind: str, *args: Any) -> None:
        self.undo.append([kind, *args])
        self.save()

    def drop(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.undo = []


def undo(node: Node, j: Journal) -> list[str]:
    """Undo what the journal lists, newest first; returns what could not be undone."""
    failed = []
    for item in reversed(j.undo):
        kind, args = item[0], item[1:]
        try:
            _undo_one(node, j.veid, kind, args)
        except (CptError, OSError) as e:
            failed.append(f"{kind}: {e}")
    j.drop()
    return failed


def _undo_one(node: Node, veid: str, kind: str, args: list[Any]) -> None:
    if kind == "restoring":  # whatever of the VE runs here goes
        run = RunState(veid)
        fz = run.freezer()
        if fz.exists() and fz.freeze_requested():
            fz.thaw()
        run.kill_all()
        net.remove_host_link(veid)
        run.clear()
    elif kind == "subvolume":
        transfer.delete(Path(args[0]))
    elif kind == "subvolume-dir":
        with contextlib.suppress(OSError):
            os.rmdir(args[0])
    elif kind == "dir":
        shutil.rmtree(args[0], ignore_errors=True)
    elif kind == "file" or kind == "config":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args[0])
    elif kind == "address":
        net.release(veid, args[0])
    elif kind == "handover":  # the id range goes back to the source's node root
        IdRegistry().hand_over(veid, args[1], args[0])
    elif kind == "ids":
        IdRegistry().release(veid, node.root)


class Agent:
    """The destination's side of one session; `manager`: this node's VEs, with their
    snapshot hooks (snapshot.hooks.ve_manager)."""

    def __init__(self, chan: proto.Channel, manager: VEManager) -> None:
        self.chan = chan
        self.manager = manager
        self.node = manager.node
        self.veid = ""
        self.cfg: VEConfig | None = None
        self.journal: Journal | None = None
        self.lock: contextlib.ExitStack | None = None
        self.pieces: dict[str, Path] = {}  # path in the area -> received snapshot
        self.image = ""
        self.verified: dict[str, BinaryIO] = {}  # pre-dumps verified as they came, open
        self.keep = False  # --keep-dst: a session that ends unfinished is not undone

    # -- the session

    def serve(self) -> int:
        try:
            while True:
                try:
                    msg = self.chan.recv(RUN_TIMEOUT)
                except proto.ProtocolError:
                    return 0  # the source is gone (or idle too long): see finish()
                if msg.kind != proto.REQUEST:
                    self.chan.error("usage", f"a {msg.op} frame where a request was due")
                    continue
                handler = getattr(self, f"op_{msg.op}", None)
                if handler is None:
                    self.chan.error("usage", f"unknown operation {msg.op}")
                    continue
                try:
                    answer = handler(**msg.fields)
                except Refused as e:
                    self.chan.error(e.kind, str(e))
                    continue
                except TypeError as e:
                    self.chan.error("usage", f"{msg.op}: {e}")
                    continue
                except CptError as e:
                    self.chan.error("failed", f"{msg.op}: {e}")
                    continue
                except OSError as e:
                    self.chan.error("failed", f"{msg.op}: {e}")
                    continue
                self.chan.reply(msg.op, **(answer or {}))
                if msg.op in ("commit", "abort", "bye"):
                    return 0
        except proto.ProtocolError:
            return 0
        finally:
            self.finish()

    def finish(self) -> None:
        """The session ends: what it did is undone unless the VE was resumed here."""
        self._drop_verified()
        j = self.journal
        if j is not None and j.undo and j.state != "resumed" and not self.keep:
            undo(self.node, j)
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def _need(self, what: str = "preflight") -> Journal:
        if self.journal is None:
            raise Refused("usage", f"no VE named yet: {what} first")
        return self.journal

    # -- operations

    def op_hello(self, proto_version: int = 0, **_: Any) -> dict[str, Any]:
        return dict(proto=proto.PROTOCOL, root=self.node.root, machine=machine())

    def op_bye(self) -> None:
        return None

    def op_settle(self, veid: str, mid: str, keep: bool = False) -> dict[str, Any]:
        """A new session after the source lost the old one: wait (bounded) for that one to
        end (it holds the VE's lock), then say what migration `mid` left here: "resumed"
        (the VE runs here), else it is undone ("undone"; with `keep`, --keep-dst: left
        as it is, "kept") or there was nothing ("none")."""
        check_veid(veid)
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            try:
                with RunState(veid).locked():
                    j = Journal(veid)
                    if not j.load() or j.mid != mid:
                        return dict(state="none")
                    if j.state == "resumed" and RunState(veid).runtime() is not None:
                        return dict(state="resumed")
                    if keep:
                        return dict(state="kept")
                    return dict(state="undone", failed=undo(self.node, j))
            except LockedError:
                if time.monotonic() > deadline:
                    raise Refused(
                        "failed", f"VE {veid} stays locked on the destination by another session"
                    ) from None
                time.sleep(0.2)

    def op_preflight(
        self,
        veid: str,
        mid: str,
        config: dict[str, Any],
        need: int,
        platform: dict[str, Any],
        source_root: str,
        source_machine: str,
        binds: list[str],
        dry_run: bool = False,
        keep: bool = False,
    ) -> dict[str, Any]:
        if self.journal is not None:
            raise Refused("usage", "one VE per session")
        veid = check_veid(veid)
        self.lock = contextlib.ExitStack()
        try:
            self.lock.enter_context(RunState(veid).locked())
        except LockedError:
            self.lock = None
            raise Refused(
                "exists", f"VE {veid} is locked on the destination by a cpt command"
            ) from None
        j = Journal(veid)
        if j.load():  # what a dead session left
            if j.state == "resumed" and RunState(veid).runtime() is not None:
                raise Refused("exists", f"VE {veid} runs on the destination (migrated there)")
            undo(self.node, j)
        self.veid = veid
        cfg = self._check(veid, config, need, platform, source_root, source_machine, binds)
        if dry_run:
            return dict(area=cfg.private)
        self.cfg = cfg
        self.keep = keep
        j = Journal(veid)
        j.mid, j.source = mid, source_root
        j.save()
        self.journal = j
        return dict(area=cfg.private, write_bps=self._warm_up(veid))

    def _warm_up(self, veid: str) -> float:
        """Before any freeze: load the restore engine (not in the frozen time) and measure
        how fast this node writes restored memory (the source's prediction of the frozen
        time uses it)."""
        from cpt.sys.mem import page_write_rate  # the engine: here only

        self.manager.stages(veid)  # imports the restore (ve/stages.py)
        try:
            return max(page_write_rate() for _ in range(2))
        except OSError:
            return 0.0

    def _check(
        self,
        veid: str,
        config: dict[str, Any],
        need: int,
        platform: dict[str, Any],
        source_root: str,
        source_machine: str,
        binds: list[str],
    ) -> VEConfig:
        node = self.node
        if os.path.exists(node.config_path(veid)):
            raise Refused("exists", f"VE {veid} exists on the destination")
        try:
            private = os.path.join(node.private_dir(), veid)
            cfg = VEConfig(**{**config, "private": private})
        except (TypeError, CptError) as e:
            raise Refused("usage", f"the VE's configuration: {e}") from None
        if os.path.lexists(private):
            if os.path.exists(node.migrated_path(veid)):
                raise Refused(
                    "exists",
                    f"VE {veid}'s private area {private} was kept on the destination when the "
                    f"VE migrated away from it (--remove-area no): remove it there (btrfs "
                    f"subvolume delete -R {private}) to migrate the VE back",
                )
            raise Refused("exists", f"VE {veid}'s private area {private} exists on the destination")
        if cfg.ip:
            why = address_taken(node, veid, cfg.ip)
            if why:
                raise Refused("address", why)
        from cpt.host.verify import platform_problems  # the engine: here only

        problems = platform_problems(
            str(platform["arch"]), str(platform["release"]), str(platform["version"]),
            int(platform["vdso"]), list(platform["cpu_flags"]), int(platform["xcr0"]),
        )  # fmt: skip
        if fault.active("migrate:other-kernel"):
            problems = platform_problems(str(platform["arch"]), "0.0-simulated", "", 0, [], 0)
        for kind in ("kernel", "cpu"):
            found = [p.message for p in problems if p.record == kind]
            if found:
                raise Refused(kind, f"the destination cannot restore VE {veid}: {found[0]}")
        free = _pool_free(node)
        if need > free:
            raise Refused(
                "space",
                f"the destination's pool has {free >> 20} MiB free; VE {veid} needs {need >> 20} MiB",
            )
        missing = [b for b in binds if not os.path.isdir(b)]
        if missing:
            raise Refused("missing", f"host directory {missing[0]} bound into VE {veid} is missing")
        if cfg.template == "busybox" and not shutil.which("busybox"):
            raise Refused("missing", f"the template {cfg.template} of VE {veid} is missing")
        if not cfg.privileged:
            self._check_ids(cfg, source_root, source_machine)
        return cfg

    def _check_ids(self, cfg: VEConfig, source_root: str, source_machine: str) -> None:
        """The VE's id range must be free here; on the same machine the source's node root
        may hold it (the restore takes it over)."""
        reg = IdRegistry()
        holder = reg.holders().get(cfg.veid)
        same = source_machine == machine() and holder is not None
        if same and holder is not None and holder.root == os.path.abspath(source_root):
            if holder.base != cfg.id_base:
                raise Refused("exists", f"VE {cfg.veid} holds other ids on this machine")
            return
        why = reg.check(cfg.veid, self.node.root, cfg.id_base, ID_COUNT)
        if why:
            raise Refused(
                "exists", f"VE {cfg.veid}'s ids {range_text(cfg.id_base)} on the destination: {why}"
            )

    def op_recv_fs(self, part: str) -> dict[str, Any]:
        """Receive one subvolume of the area's snapshot group (DATA frames follow)."""
        j = self._need()
        top = Path(self.node.migrate_dir(j.veid))
        top.mkdir(parents=True, exist_ok=True)
        if not any(u[0] == "dir" and u[1] == str(top) for u in j.undo):
            j.add("dir", str(top))
        d = Path(_fresh_dir(top))
        j.add("subvolume-dir", str(d))
        rx = transfer.receiver(d)
        assert rx.stdin is not None
        broken = ""

        def sink(data: bytes) -> None:
            nonlocal broken
            if broken:
                return
            try:
                assert rx.stdin is not None
                rx.stdin.write(data)
            except (BrokenPipeError, OSError) as e:
                broken = str(e)

        try:
            self.chan.recv_stream(sink, RECV_TIMEOUT)
        finally:
            with contextlib.suppress(OSError):
                rx.stdin.close()
            try:
                rx.wait(60)
            except Exception:
                rx.kill()
                rx.wait()
        err = (rx.stderr.read() if rx.stderr else b"").decode(errors="replace").strip()
        if rx.returncode != 0 or broken:
            for name in os.listdir(d):
                with contextlib.suppress(CptError, OSError):
                    transfer.delete(d / name)
            why = err.splitlines()[-1] if err else broken or f"exit {rx.returncode}"
            raise Refused("copy", f"receiving the private area of VE {j.veid}: {why}")
        got = transfer.received(d)
        j.add("subvolume", str(got))
        self.pieces[part] = got
        return dict(path=str(got))

    def op_area(self) -> dict[str, Any]:
        """The config written, the area made of the received snapshots, the address held."""
        j = self._need()
        cfg = self.cfg
        assert cfg is not None
        if transfer.AREA not in self.pieces:
            raise Refused("usage", "no private area received")
        area = Path(cfg.private)
        if os.path.lexists(area):  # a second sync: made again of the newer snapshots
            transfer.delete(area)
        j.add("subvolume", str(area))
        transfer.build_area(area, self.pieces)
        path = self.node.config_path(j.veid)
        if not any(u[0] == "config" for u in j.undo):
            j.add("config", path)
            os.makedirs(self.node.ve_dir, exist_ok=True)
            cfg.save(path)
            j.add("address", cfg.ip)
            net.blackhole(cfg.ip)
        return {}

    def op_recv_image(self, name: str = "Dump") -> dict[str, Any]:
        """An image (DATA frames), kept under `name` (a plain file name: pre-dumps and
        the final dump keep their names, by which the final one's chain finds them)."""
        j = self._need()
        if not IMAGE_NAME.fullmatch(name):
            raise Refused("usage", f"image name {name!r}: letters, digits, '-' only")
        path = os.path.join(self.node.migrate_dir(j.veid), name)
        j.add("file", path)
        failed: list[OSError] = []
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)

        def sink(data: bytes) -> None:
            view = memoryview(data)
            while view and not failed:  # after a failure the stream is read to its end
                try:
                    view = view[os.write(fd, view) :]
                except OSError as e:
                    failed.append(e)

        try:
            n = self.chan.recv_stream(sink, RECV_TIMEOUT)
        finally:
            os.close(fd)
        if failed:
            raise Refused(
                "copy", f"writing VE {j.veid}'s image on the destination: {failed[0].strerror}"
            )
        if self._predump(path):
            return dict(bytes=n)
        self.image = path
        return dict(bytes=n)

    def _predump(self, path: str) -> bool:
        """A pre-dump is verified as it arrives, while the VE still runs on the source
        (its bytes and structure), and kept open: the restore after the freeze checks only
        its link to the image written on it (UUID, size, digest).  False for another image
        (the final one, verified by the restore)."""
        from cpt.restore.trust import open_dumpfile  # the engine: here only
        from cptimage.container import ImageReader
        from cptimage.records import HeaderFlags
        from cptimage.verify import verify

        j = self._need()
        if fault.active("migrate:damaged-predump"):  # a byte of what came changed on disk
            with open(path, "r+b") as w:
                w.seek(os.path.getsize(path) // 2)
                b = w.read(1)
                w.seek(-1, os.SEEK_CUR)
                w.write(bytes([b[0] ^ 0xFF]))
        f = open_dumpfile(path)
        try:
            with ImageReader(f) as r:
                predump = bool(r.header.flags & HeaderFlags.PREDUMP)
            if not predump:
                f.close()
                return False
            f.seek(0)
            problems = verify(f)
        except CptError as e:
            f.close()
            raise Refused("copy", f"VE {j.veid}'s pre-dump {os.path.basename(path)}: {e}") from None
        except BaseException:
            f.close()
            raise
        if problems:
            f.close()
            raise Refused(
                "copy",
                f"VE {j.veid}'s pre-dump {os.path.basename(path)} came damaged: {problems[0]}",
            )
        self.verified[os.path.normpath(path)] = f
        return True

    def _drop_verified(self) -> None:
        for f in self.verified.values():
            f.close()
        self.verified.clear()

    def _ids(self) -> None:
        """The VE's id range is its own here: taken over from the source's node root on
        the same machine (ve/idmap.py take_over), else registered; journalled."""
        j = self._need()
        cfg = self.cfg
        assert cfg is not None
        if cfg.privileged or any(u[0] in ("handover", "ids") for u in j.undo):
            return
        came_from = IdRegistry().take_over(cfg.veid, self.node.root, cfg.id_base)
        if came_from:
            j.add("handover", came_from, self.node.root)
        else:
            j.add("ids")

    def op_restore(self) -> dict[str, Any]:
        j = self._need()
        if not self.image:
            raise Refused("usage", "no image received")
        self._ids()
        j.add("restoring")
        t0 = time.perf_counter()
        try:
            fault.point("migrate:restore")
            stages = self.manager.stages(j.veid)
            stats = stages.restore_received(
                self.image, str(self.pieces[transfer.AREA]), verified=self.verified
            )
        except CptError as e:
            raise Refused("restore", f"restore of VE {j.veid} on the destination: {e}") from None
        j.state = "resumed"
        j.save()
        took = time.perf_counter() - t0
        self._drop_verified()
        with contextlib.suppress(CptError, OSError):
            os.unlink(self.image)
        engine = stats.tasks_s + stats.memory_s
        detail = dict(
            checks_s=took - stats.total_s,  # opening and verifying the image, the VE's checks
            tasks_s=stats.tasks_s,
            memory_s=stats.memory_s,
            state_s=stats.total_s - engine,  # registers, files, release
        )
        return dict(
            init_pid=stats.host_pid, restore_s=took, pages_bytes=stats.pages_bytes, detail=detail
        )

    def op_start(self) -> dict[str, Any]:
        j = self._need()
        self._ids()
        j.add("restoring")
        try:
            rt = self.manager.start_locked(j.veid, boot=True)
        except CptError as e:
            raise Refused("restore", f"start of VE {j.veid} on the destination: {e}") from None
        j.state = "resumed"
        j.save()
        return dict(init_pid=rt.init_pid)

    def op_commit(self, veid: str = "", mid: str = "") -> dict[str, Any]:
        """The source let the VE go: the received snapshots go, the journal with them (of
        this session, or, in a new one, of migration `mid` of VE `veid`)."""
        j = self.journal
        if j is None:
            if not veid:
                raise Refused("usage", "commit of no migration")
            j = Journal(check_veid(veid))
            if not j.load() or j.mid != mid or j.state != "resumed":
                raise Refused("failed", f"no migration {mid} of VE {veid} resumed here")
        else:
            for part in self.pieces.values():
                with contextlib.suppress(CptError, OSError):
                    transfer.delete(part)
        top = Path(self.node.migrate_dir(j.veid))
        if top.is_dir():
            for d in sorted(top.iterdir()):
                for sub in d.iterdir() if d.is_dir() else ():
                    with contextlib.suppress(CptError, OSError):
                        transfer.delete(sub)
        shutil.rmtree(top, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.node.migrated_path(j.veid))  # it left here once
        j.drop()
        self.journal = None
        return {}

    def op_abort(self) -> dict[str, Any]:
        """Undo what this session did, unless the VE was resumed here."""
        j = self.journal
        if j is None:
            return dict(state="none")
        if j.state == "resumed":
            return dict(state="resumed")
        failed = undo(self.node, j)
        self.journal = None
        return dict(state="undone", failed=failed)


def _fresh_dir(top: Path) -> str:
    for i in range(1000):
        d = top / f"r{i}"
        try:
            d.mkdir()
            return str(d)
        except FileExistsError:
            continue
    raise Refused("copy", f"{top}: no free slot for a received snapshot")


def _pool_free(node: Node) -> int:
    st = os.statvfs(node.private_dir())
    return st.f_bavail * st.f_frsize


def address_taken(node: Node, veid: str, ip: str) -> str:
    """Who holds the address of `ip` on this node (another VE's config, an interface),
    or ""."""
    addr = ipaddress.ip_interface(ip).ip
    for other in node.veids():
        if other == veid:
            continue
        with contextlib.suppress(CptError):
            cfg = node.config(other)
            if cfg.ip and ipaddress.ip_interface(cfg.ip).ip == addr:
                return f"{addr} is VE {other}'s on the destination"
    for name, held in _addresses():
        if ipaddress.ip_address(held) == addr:
            return f"{addr} is held by interface {name} of the destination"
    for name in net.answers(ip):
        return f"{addr} is answered for (proxy ARP) by interface {name} of the destination"
    return ""


def _addresses() -> list[tuple[str, str]]:
    """(interface, address) of every address of this network namespace."""
    from pyroute2 import IPRoute

    from cpt import interrupts

    out = []
    with interrupts.deferred(), IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for a in ipr.get_addr():
            out.append((str(names.get(a["index"], a["index"])), str(a.get_attr("IFA_ADDRESS"))))
    return out


def serve_stdio(manager: VEManager) -> int:
    """`cpt node serve --stdio`: the protocol on fds 0 and 1; what the engine prints goes
    to stderr (the ssh session shows it), never into the protocol."""
    rfd = os.dup(0)
    wfd = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # a stray print of the engine cannot corrupt the protocol
    os.close(devnull)
    sys.stdout = sys.stderr
    return Agent(proto.Channel(rfd, wfd), manager).serve()
