"""Checkpoint and restore of a process tree, staged like vzctl chkpnt and restore.

    suspend   move the tree into a cgroup v2 freezer of its own and freeze it
    dump      seize every thread (frozen tasks enter the ptrace stop at once), thaw the
              cgroup (the ptrace stops hold the tasks), write the image, then either
              refreeze and detach (staged), kill, or detach and release (leave running)
    kill      SIGKILL the frozen tree and wait until its PIDs are gone
    resume    thaw and move every process back to its original cgroup
    undump    restore from an image into a freezer cgroup, left frozen (restore --undump);
              resume and kill then work as above

Each stage may be its own command: the frozen state outlives the command in the freezer
cgroup, and a state file under the run directory remembers the tree (its processes'
original cgroups).  A per-tree lock serialises stages.

A VE (`ve_id`) is a tree whose root is the init of its own namespaces and whose cgroup
is the VE's: suspend freezes that cgroup in place (no process moves) and cuts the VE's
link to the host (`link.down()`: packets are dropped, never answered), resume thaws it
and brings the link back; the image records the VE's namespaces, and restore recreates
them (restore/ve.py).  Processes in the VE's cgroup that are not in the init's tree (a
`cpt ve exec` still running) are refused: they would be lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

from cptimage.atomic import atomic_output, check_target
from cptimage.container import ImageReader
from cptimage.errors import ImageError
from cptimage.verify import verify

from .dump.check import precheck
from .dump.dumper import Dumper, DumpStats, prepare_dump
from .dump.inet import silence
from .dump.options import DumpOptions
from .dump.output import ImageOutput
from .dump.tree import TaskInfo, collect_tree
from .errors import (
    AlreadyRunning,
    CptError,
    DumpError,
    LockedError,
    NoSuchProcess,
    NotRunning,
    RestoreError,
    SystemError_,
    UsageError,
)
from .freezer import Freezer
from .lock import locked, run_dir
from .procfs import Proc, pid_exists, root_path
from .restore.options import RestoreOptions
from .restore.restorer import Restorer, RestoreStats
from .sys.ns import entered
from .tracer import DEFAULT_OPTIONS, Tracee, detach_all, freeze_process, reap_traced
from .verify_host import check_host

F = TypeVar("F", bound=Callable[..., Any])
KILL_TIMEOUT = 30.0
_PASS_THROUGH = (DumpError, RestoreError, LockedError, NotRunning, AlreadyRunning, UsageError)


def _fails_as(cls: type[CptError], what: str) -> Callable[[F], F]:
    """Report any unexpected failure of a stage as `cls` (exit 16 or 17), naming the tree."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(self: Tree, *a: Any, **kw: Any) -> Any:
            try:
                return fn(self, *a, **kw)
            except _PASS_THROUGH:
                raise
            except Exception as e:
                if os.environ.get("CPT_DEBUG") and not isinstance(e, CptError):
                    raise
                msg = str(e) if isinstance(e, (CptError, OSError)) else f"{type(e).__name__}: {e}"
                raise cls(f"{what} of {self.label} failed: {msg}", pid=self.root) from e

        return wrapper  # type: ignore[return-value]

    return deco


def default_dumpfile(pid: int) -> str:
    return f"/var/tmp/Dump.pid-{pid}"


@dataclasses.dataclass
class TreeState:
    root: int
    state: str  # "suspended" (by chkpnt --suspend) or "undumped" (by restore --undump)
    origins: dict[int, str]  # pid -> original cgroup v2 path

    def to_json(self) -> str:
        return json.dumps({"root": self.root, "state": self.state, "origins": self.origins})

    @classmethod
    def from_json(cls, text: str) -> TreeState:
        d = json.loads(text)
        return cls(
            root=d["root"], state=d["state"], origins={int(k): v for k, v in d["origins"].items()}
        )


class Link(Protocol):
    """What connects a VE to the host: cut while the VE is frozen, back when it runs."""

    def down(self) -> None: ...

    def up(self) -> None: ...


class InFreeze(Protocol):
    """Work done inside a dump's frozen window whose records go into the image: a VE's
    filesystem snapshot (ve/fssnap.py)."""

    def prepare(self) -> None:
        """Before the freeze (write back the filesystem: the snapshot is then cheap)."""

    def take(self) -> list[Any]:
        """With the tree frozen, before its state is read; returns records."""

    def discard(self) -> None:
        """The dump failed: undo what take() made."""


class Tree:
    """A process tree as the stage commands see it: its freezer, state file and lock."""

    def __init__(
        self,
        root: int,
        proc: Proc | None = None,
        *,
        name: str | None = None,
        ve_id: str = "",
        link: Link | None = None,
        in_freeze: InFreeze | None = None,
    ) -> None:
        self.root = root
        self.proc = proc or Proc()
        self.ve_id = ve_id
        self.link = link
        self.in_freeze = in_freeze
        self.name = name or (f"ve-{ve_id}" if ve_id else f"pid-{root}")
        self.label = f"VE {ve_id}" if ve_id else f"tree {root}"
        self.freezer = Freezer(self.name)
        self.state_path = os.path.join(run_dir(), self.name + ".json")
        self._frozen_at = 0.0  # when this command froze the tree (full checkpoints)

    # -- state and lock

    @contextlib.contextmanager
    def locked(self) -> Iterator[Tree]:
        """Hold the tree's lock (LockedError, exit 9, if another cpt command holds it)."""
        with locked(self.name, f"tree {self.root}"):
            yield self

    def load_state(self) -> TreeState | None:
        try:
            with open(self.state_path) as f:
                return TreeState.from_json(f.read())
        except FileNotFoundError:
            return None

    def save_state(self, st: TreeState) -> None:
        with atomic_output(self.state_path) as f:
            f.write(st.to_json().encode())

    def drop_state(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.state_path)

    def suspended(self) -> TreeState | None:
        st = self.load_state()
        if st is None or not self.freezer.exists():
            return None
        return st

    # -- stages

    def _dump_opts(self, opts: DumpOptions | None, **changes: Any) -> DumpOptions:
        """The dump options of this tree: a VE's image holds its namespaces, and its
        network is cut off while it is frozen."""
        opts = opts or DumpOptions()
        if self.ve_id:
            changes.update(ve_id=self.ve_id, net_isolated=True, root=root_path(self.root))
        return dataclasses.replace(opts, **changes)

    @_fails_as(DumpError, "suspend")
    def suspend(self, opts: DumpOptions | None = None) -> TreeState:
        """Freeze the live tree in its own cgroup (refusing unsupported resources first:
        what is supported depends on the dump options, e.g. --tcp-established)."""
        if self.suspended():
            raise DumpError(f"{self.label} is already suspended", pid=self.root)
        if self.ve_id:
            return self._suspend_ve(self._dump_opts(opts, staged=True))
        self._clear_stale()
        tree = self._live_tree()
        precheck(tree, self.root, self.proc, self._dump_opts(opts, staged=True))
        origins: dict[int, str] = {}
        self.freezer.create()
        try:
            for _ in range(1000):
                new = [p for p, i in tree.items() if not i.zombie and p not in origins]
                if not new:
                    break
                for pid in new:
                    with contextlib.suppress(NoSuchProcess):
                        origins[pid] = self.proc.cgroup2(pid)
                self.freezer.add(new)
                tree = collect_tree(self.root, self.proc)
            else:  # pragma: no cover - a fork bomb
                raise DumpError(f"tree {self.root} keeps forking; cannot freeze it", pid=self.root)
            self._frozen_at = time.perf_counter()
            self.freezer.freeze()
            st = TreeState(self.root, "suspended", origins)
            self.save_state(st)
            return st
        except BaseException:
            self._release(origins)
            raise

    def _suspend_ve(self, opts: DumpOptions) -> TreeState:
        """A VE's processes are in its cgroup already: freeze it in place, then cut the
        link (frozen first: nothing inside notices the link go down)."""
        if not self.freezer.exists():
            raise NotRunning(f"{self.label} has no cgroup {self.freezer.path}", pid=self.root)
        self._strangers(self._live_tree())
        with self._inside():
            precheck(self._live_tree(), self.root, self.proc, opts)
        if self.in_freeze is not None:
            self.in_freeze.prepare()
        self._frozen_at = time.perf_counter()
        self.freezer.freeze()
        try:
            self._strangers(collect_tree(self.root, self.proc))  # stable now
            if self.link is not None:
                self.link.down()
            st = TreeState(self.root, "suspended", {})
            self.save_state(st)
            return st
        except BaseException:
            self._release({})
            if self.link is not None:
                self.link.up()
            raise

    def _strangers(self, tree: dict[int, TaskInfo]) -> None:
        """Refuse processes in a VE's cgroup that are not in its init's tree."""
        extra = sorted(set(self.freezer.procs()) - set(tree))
        if extra:
            who = ", ".join(f"{p} ({_comm(p)})" for p in extra[:3])
            raise DumpError(
                f"{self.label}: process(es) {who} are in the VE but not descendants of its init "
                f"(a `cpt ve exec` still running?): let them finish, then checkpoint",
                pid=self.root,
            )

    @_fails_as(DumpError, "dump")
    def dump(self, dumpfile: str, opts: DumpOptions) -> DumpStats:
        """Dump the suspended tree; it stays suspended (`--dump`), also when this fails."""
        if self.suspended() is None:
            flag = f"{self.ve_id}" if self.ve_id else f"--pid {self.root}"
            raise DumpError(
                f"{self.label} is not suspended: run `cpt chkpnt {flag} --suspend` first",
                pid=self.root,
            )
        check_target(dumpfile)
        opts = self._dump_opts(opts, staged=True)
        out = self._output(dumpfile, collect_tree(self.root, self.proc), opts)
        return self._dump_frozen(out, opts, after="freeze")

    def _dump_frozen(self, out: ImageOutput, opts: DumpOptions, *, after: str) -> DumpStats:
        """Seize the frozen tree (frozen tasks enter their ptrace stops at once; the stops
        hold them then, and the cgroup is thawed for injected syscalls to run), dump it.
        What `in_freeze` makes in the frozen window goes into the image, or is undone."""
        try:
            extra = self.in_freeze.take() if self.in_freeze is not None else []
        except BaseException:
            out.abort()
            raise
        try:
            tree = collect_tree(self.root, self.proc)
            tracees: list[Tracee] = []
            try:
                for info in tree.values():
                    if not info.zombie:
                        info.tracees = freeze_process(info.pid, DEFAULT_OPTIONS)
                        tracees += info.tracees
            except BaseException:
                detach_all(tracees)
                out.abort()
                raise
            self.freezer.thaw()
            return self._dump_seized(tree, out, opts, after=after, extra=extra)
        except BaseException:
            if self.in_freeze is not None:
                self.in_freeze.discard()
            raise

    @_fails_as(DumpError, "checkpoint")
    def checkpoint(self, dumpfile: str, opts: DumpOptions) -> DumpStats:
        """Full chkpnt: suspend, dump, then kill (or resume with leave_running).

        One command needs no freezer cgroup: ptrace stops hold the tree (seized until no
        new process appears), which spares the cgroup moves (10-40 ms each here).  If the
        dump fails the tree is resumed and no dump file is left behind.  A VE is frozen
        in its cgroup and cut off first, as by `--suspend`.
        """
        if self.suspended():
            raise DumpError(
                f"{self.label} is suspended: dump it with --dump, or --resume it",
                pid=self.root,
            )
        check_target(dumpfile)  # before anything is frozen
        prepare_dump()  # one-time costs of a process's first dump, before the freeze
        after = "resume" if opts.leave_running else "kill"
        if self.ve_id:
            out = self._output(dumpfile, self._live_tree(), opts)
            try:
                self.suspend(opts)
            except BaseException:
                out.abort()
                raise
            try:
                stats = self._dump_frozen(out, self._dump_opts(opts), after=after)
            except BaseException:
                with contextlib.suppress(CptError):
                    self.resume()  # the dump failed: the VE runs on
                raise
            if after == "kill":
                self._forget_ve()
            else:
                self.resume()
            return stats
        live = self._live_tree()
        precheck(live, self.root, self.proc, opts)
        out = self._output(dumpfile, live, opts)
        try:
            self._frozen_at = time.perf_counter()
            tree = self._seize_tree()
        except BaseException:
            out.abort()
            raise
        return self._dump_seized(tree, out, opts, after=after)

    def _output(self, dumpfile: str, tree: dict[int, TaskInfo], opts: DumpOptions) -> ImageOutput:
        """The dump file, its page area sized for the tree's pages and faulted in: the
        frozen window then only copies (dump/output.py)."""
        out = ImageOutput(dumpfile)
        try:
            out.reserve([p for p, i in tree.items() if not i.zombie], opts, self.proc)
        except BaseException:
            out.abort()
            raise
        return out

    def _seize_tree(self) -> dict[int, TaskInfo]:
        """Stop every thread of the tree with ptrace, re-reading the tree until no process
        appears that is not stopped yet (a stopped process cannot fork)."""
        seized: dict[int, TaskInfo] = {}
        try:
            for _ in range(1000):
                tree = self._live_tree()
                new = [i for p, i in tree.items() if not i.zombie and p not in seized]
                if not new:
                    for p, info in tree.items():
                        if p in seized:
                            info.tracees = seized[p].tracees
                    return tree
                for info in new:
                    try:
                        info.tracees = freeze_process(info.pid, DEFAULT_OPTIONS)
                    except NoSuchProcess:
                        continue  # exited meanwhile: the next reading decides
                    seized[info.pid] = info
            raise DumpError(f"tree {self.root} keeps forking; cannot freeze it", pid=self.root)
        except BaseException:
            detach_all([t for i in seized.values() for t in i.tracees])
            raise

    def _dump_seized(
        self,
        tree: dict[int, TaskInfo],
        out: ImageOutput,
        opts: DumpOptions,
        *,
        after: str,
        extra: list[Any] | None = None,
    ) -> DumpStats:
        """Write the image of a tree whose threads are all in ptrace stops, then `after`:
        "kill", "resume" (detach) or "freeze" (refreeze the cgroup and detach).

        On failure the tree is resumed ("kill", "resume") or stays suspended ("freeze"),
        and no dump file is left.  The file is finished (records, checksums) and made
        durable before a kill, and after the tree is released otherwise, so that work and
        the final fsync stay out of the frozen window.
        """
        live = [i for i in tree.values() if not i.zombie]
        tracees = [t for i in live for t in i.tracees]
        ok = False
        try:
            with self._inside():
                dumper = Dumper(tree, self.root, opts, self.proc, extra)
        except BaseException:
            out.abort()
            detach_all(tracees)
            raise
        try:
            try:
                with self._inside():
                    stats = dumper.run(out)
                if after == "kill":
                    dumper.finish()
                    out.commit()  # durable before the workload dies
                ok = True
            finally:
                if ok and after == "kill":
                    try:
                        self._kill_traced(live)
                    finally:
                        dumper.release(killed=True)  # TCP sockets died in repair mode
                elif after == "freeze":
                    self.freezer.freeze_request()
                    try:
                        dumper.release(killed=False)
                    finally:
                        detach_all(tracees)
                    self.freezer.wait_frozen()
                else:  # resume, or a failed full checkpoint: the tree runs on
                    try:
                        dumper.release(killed=False)  # before the tree runs
                    finally:
                        detach_all(tracees)
            if self._frozen_at:
                stats.frozen_s = time.perf_counter() - self._frozen_at
            if after != "kill":
                dumper.finish()
                out.commit()
        except BaseException:
            out.abort()
            raise
        if after == "kill" and not self.ve_id:  # a VE's PIDs were its own namespace's
            self._wait_gone(tree)
        return stats

    def kill(self) -> None:
        """Kill the suspended (or undumped) tree and wait until its PIDs are gone (a VE:
        until its cgroup is empty; its PIDs were its own namespace's)."""
        st = self.suspended()
        if st is None:
            raise NotRunning(f"{self.label} is not suspended; nothing to kill", pid=self.root)
        if self.ve_id:
            # its connections die silently (their peers wait for the restore), then it
            held = silence(self.freezer.procs(), self.proc)
            try:
                self.freezer.kill_all()
            finally:
                for s in held:
                    s.close()
            self._forget_ve()
            return
        for pid in self.freezer.procs():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._wait_gone(st.origins)
        self.freezer.remove()
        self.drop_state()

    def resume(self) -> None:
        st = self.suspended()
        if st is None:
            raise NotRunning(f"{self.label} is not suspended; nothing to resume", pid=self.root)
        self.freezer.thaw()
        self._release(st.origins)
        if self.link is not None:
            self.link.up()
        self.drop_state()

    def _forget_ve(self) -> None:
        """A killed VE: its cgroup (empty once its init is gone) and its state go."""
        self.freezer.kill_all()  # what the kill left (nothing, normally): gone before rmdir
        self.freezer.remove(timeout=10.0)
        self.drop_state()

    @_fails_as(RestoreError, "restore")
    def restore(
        self, reader: ImageReader, opts: RestoreOptions | None = None, *, undump: bool = False
    ) -> RestoreStats:
        """Restore the tree the image holds; with `undump` leave it frozen (in a freezer
        cgroup, for the stages after), with `pidns` in a new PID namespace.  A full
        restore needs no cgroup: the tree is traced until the moment it is released.
        A VE always gets its cgroup, and its link comes up when it runs."""
        if self.suspended():
            raise RestoreError(
                f"{self.label} is already restored or suspended: resume or kill it first",
                pid=self.root,
            )
        opts = opts or RestoreOptions()
        if not undump and not self.ve_id:
            return Restorer(reader, opts, self.proc).run()
        here = self.proc.cgroup2(os.getpid())
        self._clear_stale()
        self.freezer.create()
        try:
            stats = Restorer(reader, opts, self.proc).run(
                on_spawn=self._freeze_later, freeze=self.freezer.freeze_request if undump else None
            )
        except BaseException:
            with contextlib.suppress(CptError):
                self.freezer.remove()
            raise
        if not undump:  # a VE, running
            if self.link is not None:
                self.link.up()
            return stats
        self.freezer.wait_frozen()
        origins = {} if self.ve_id else dict.fromkeys(self.freezer.procs(), here)
        self.save_state(TreeState(self.root, "undumped", origins))
        return stats

    # -- helpers

    def _inside(self) -> contextlib.AbstractContextManager[None]:
        """A VE's sockets are read with this thread in its network namespace (sock_diag
        answers for its own namespace only); the host side (links, nft) stays outside."""
        return entered(self.root, ("net",)) if self.ve_id else contextlib.nullcontext()

    def _live_tree(self) -> dict[int, TaskInfo]:
        try:
            return collect_tree(self.root, self.proc)
        except NoSuchProcess:
            raise NotRunning(f"process {self.root} does not exist", pid=self.root) from None

    def _release(self, origins: dict[int, str]) -> None:
        if self.freezer.exists():
            if self.freezer.freeze_requested():
                self.freezer.thaw()
            if not self.ve_id:  # a VE's cgroup is its own: it stays
                self.freezer.release(origins)

    def _kill_traced(self, live: list[TaskInfo]) -> None:
        """SIGKILL the tree while its threads sit in ptrace stops (they never run again),
        then collect the exit of every traced thread: until the tracer has, the real parent
        cannot reap the process and its PID stays in use."""
        for info in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(info.pid, signal.SIGKILL)
        reap_traced([t for info in live for t in info.tracees])

    def _wait_gone(self, pids: Iterable[int]) -> None:
        """Wait until every PID of the tree is gone (zombies reaped by their parents):
        a kill is not done while a restore of the same PIDs would fail."""
        pids = set(pids)
        deadline = time.monotonic() + KILL_TIMEOUT
        delay = 0.0005
        while True:
            left = [p for p in pids if _pid_used(p)]
            if not left:
                return
            if time.monotonic() > deadline:
                held = ", ".join(f"{p} ({_holder(p)})" for p in left[:5])
                raise SystemError_(
                    f"tree {self.root} was killed but PIDs are still in use: {held}",
                    pid=self.root,
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def _freeze_later(self, pid: int) -> None:
        """Put a restored tree's root stub in the freezer; its children follow it there."""
        self.freezer.add([pid])

    def _clear_stale(self) -> None:
        """Remove this tree's freezer left behind by a cpt that was killed: no state file
        names it and no process is in it."""
        if self.freezer.exists() and self.load_state() is None and not self.freezer.procs():
            with contextlib.suppress(CptError):
                self.freezer.remove(timeout=0.5)


def _comm(pid: int) -> str:
    try:
        return Proc().stat(pid).comm
    except CptError:
        return "gone"


def _pid_used(pid: int) -> bool:
    return pid_exists(pid)


def _holder(pid: int) -> str:
    try:
        st = Proc().stat(pid)
    except CptError:
        return "gone"
    if st.state == "Z":
        return f"a zombie not yet reaped by its parent {st.ppid}"
    return f"state {st.state}"


def open_for_restore(dumpfile: str, opts: RestoreOptions | None = None) -> ImageReader:
    """The image, after verify-before-restore: its checksums and structure, then this host.

    Refuses with the first problems, precisely, before any process is created.
    """
    problems = verify(dumpfile)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise RestoreError(f"{dumpfile}: {problems[0]}{more}; refusing to restore")
    try:
        reader = ImageReader(dumpfile)
    except ImageError as e:
        raise RestoreError(f"{e}; refusing to restore") from None
    opts = opts or RestoreOptions()
    host = check_host(reader, pids=not opts.pidns, ipcns=opts.ipcns)
    if host:
        reader.close()
        msgs = "; ".join(p.message for p in host[:3])
        more = f" (and {len(host) - 3} more)" if len(host) > 3 else ""
        raise RestoreError(f"{dumpfile}: {msgs}{more}; refusing to restore")
    return reader


def tree_of(dumpfile: str) -> Tree:
    """The tree a dump file concerns (its root PID, from the header)."""
    try:
        with ImageReader(dumpfile) as r:
            return Tree(r.header.root_pid)
    except ImageError as e:
        raise RestoreError(str(e)) from None
