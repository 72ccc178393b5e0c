"""Restore a tree from an image: all of it, or nothing left alive.

1. open every file description the tree holds (in this process), so a missing file
   fails before any process exists;
2. build the tree as stubs with the dumped PIDs, sessions, groups and zombies;
3. per process: address space, pages, mm fields, fds, task state, signal dispositions,
   rlimits, threads, per-thread state and credentials, pending signals;
4. registers of every thread, the pidfile (before the tree is released: a failure kills
   it), then detach (or freeze in the cgroup, then detach).

Any failure kills every task created so far (they are traced with PTRACE_O_EXITKILL too).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
import signal
import time
from collections.abc import Callable, Iterator

from cptimage.atomic import atomic_output
from cptimage.container import ImageReader

from .. import fault
from ..errors import CptError, NoSuchProcess, RestoreError, os_error_text
from ..procfs import Proc, pid_exists
from ..sys.ns import entered, unshared
from ..sys.syscalls import NR, syscall_name
from ..sys.task import PR_SET_DUMPABLE, SIGACTION, pidfd_open
from ..trace.seize import reap_traced
from ..trace.tracee import Tracee
from .fds import FileRestorer, max_fd
from .ghost import Ghosts
from .ipc import IpcObjects
from .mm import finish_vmas, map_vmas, set_mm, take_over, write_pages
from .model import ImageModel
from .options import RestoreOptions
from .pages import PageSource
from .pidns import PidNamespace
from .pstree import Task, TreeBuilder
from .shmem import close_objects, create_objects
from .signals import ignored_sigtrap, restore_pending, restore_sigactions
from .task import queue_stop, restore_outside, restore_sched, restore_task_state, stop_signal
from .threads import create_threads, set_registers, setup_thread
from .timers import restore_timers
from .tty import prepare as prepare_ttys
from .userns import Donor
from .ve import spawn_init


@dataclasses.dataclass
class RestoreStats:
    processes: int = 0
    threads: int = 0
    pages_bytes: int = 0
    tasks_s: float = 0.0  # stubs, sessions, groups, zombies
    memory_s: float = 0.0  # address spaces and pages
    total_s: float = 0.0
    root_pid: int = 0  # as the image (and the tree itself) knows it
    host_pid: int = 0  # as this host knows it: differs under --pidns
    pidns_init: int = 0  # --pidns: the namespace's init, as this host sees it
    warnings: list[str] = dataclasses.field(default_factory=list)


class Restorer:
    def __init__(
        self, reader: ImageReader, opts: RestoreOptions | None = None, proc: Proc | None = None
    ) -> None:
        self.reader = reader
        self.opts = opts or RestoreOptions()
        self.proc = proc or Proc()
        self.model = ImageModel(reader)
        self.model.tcp_close = self.opts.tcp_close
        self.model.trust = self.opts.trust
        # a tree that had its own IPC namespace gets a new one, as any with --ipcns
        self.new_ipc_ns = self.opts.ipcns or self.model.ipc_own
        self.tasks: dict[int, Task] = {}
        self._ve_init: Tracee | None = None
        self.stats = RestoreStats(root_pid=self.model.root)

    def run(
        self,
        on_spawn: Callable[[int], None] | None = None,
        freeze: Callable[[], None] | None = None,
    ) -> RestoreStats:
        """Restore; `on_spawn(pid)` sees the root stub first (to put it in a cgroup),
        `freeze()` is called before detaching to leave the tree frozen (undump)."""
        t0 = time.perf_counter()
        files = FileRestorer(self.model)
        ghosts = Ghosts(self.model)
        pages = PageSource(self.reader, self.model.image_pids)
        ns: PidNamespace | None = None
        ve_init: Tracee | None = None
        donor: Donor | None = None
        try:
            slot = _free_slot(max_fd(self.model) + 1)
            with _inherited_pidfd(slot):
                inside: contextlib.AbstractContextManager[None]
                if self.model.ve:
                    # the VE's init first: its namespaces and root hold everything else
                    ve_init, donor = spawn_init(self.model, on_spawn, self.opts.ve_links, slot)
                    self.model.ns_opener = donor  # its files, opened in its user namespace
                    self._ve_init = ve_init
                    inside = entered(ve_init.pid, ("ipc", "net"))
                elif self.new_ipc_ns:
                    inside = unshared("ipc")
                else:
                    inside = contextlib.nullcontext()
                # IPC objects, sockets, the queues' descriptions and the stubs, in the
                # tree's namespaces
                with inside:
                    ghosts.create()
                    on_session = prepare_ttys(self.model, self.opts, files.openers)
                    pages.map()
                    create_objects(self.model, pages)
                    ipc = IpcObjects(self.model, pages)
                    ipc.create()
                    files.open_all()
                    if self.opts.pidns and ve_init is None:
                        ns = PidNamespace()
                        self.stats.pidns_init = ns.init_pid
                    parent = (ns.init, ns.scratch.addr) if ns else None
                    builder = TreeBuilder(
                        self.model,
                        on_spawn=on_spawn,
                        parent=parent,
                        on_session=on_session,
                        root=ve_init,
                    )
                    self.tasks = builder.tasks
                    builder.build()
                    files.open_own_proc({p: t.host_pid for p, t in self.tasks.items()})
                    # queued messages name the tree's processes: they exist now
                    files.after_build(self._host_pid)
            if builder.external_session:
                self.stats.warnings.append(
                    f"the root's process group {self.model.procs[self.model.root].proc.pgid} "
                    f"was outside the tree: the restored tree joined this command's group"
                )
            self.stats.host_pid = self.tasks[self.model.root].host_pid
            t1 = time.perf_counter()
            live = [self.tasks[p] for p in self.model.order if not self.tasks[p].img.zombie]
            if donor is not None:  # the stubs take their files from it (userns.py)
                donor.mirror(
                    [*files.local.values(), *self.model.shmem_fds.values(),
                     *self.model.ghost_fds.values()]
                )  # fmt: skip
            for task in live:
                self._process(task, files, slot, pages, donor)
            if donor is not None:
                self.model.ns_opener = None
                donor.close()
                donor = None
            ipc.release()
            t2 = time.perf_counter()
            fault.point("restore:memory")
            for task in live:
                for th in task.img.threads:
                    set_registers(th, task.threads[th.tid])
            for task in live:
                restore_sched(task)
            if self.opts.pidfile:  # before the tree is released: a failure kills it
                write_pidfile(self.opts.pidfile, self.stats.host_pid)
            fault.point("restore:detach")
            for task in live:
                if sig := stop_signal(task, self.model):
                    queue_stop(task, sig)
            if freeze is not None:
                freeze()
            files.finish()  # before the tree runs: TCP connections leave repair mode
            for task in live:
                for tr in task.tracees():
                    tr.detach()
                    tr.close()
            if ns is not None:
                ns.start_reaping()
        except BaseException as e:
            self._kill_all()
            if ns is not None:
                ns.destroy()
            if donor is not None:
                self.model.ns_opener = None
                donor.close()
            if isinstance(e, CptError) or not isinstance(e, OSError) or os.environ.get("CPT_DEBUG"):
                raise
            raise RestoreError(f"restore failed: {os_error_text(e)}") from e
        finally:
            files.close()
            ghosts.close()
            close_objects(self.model)
            self.model.close()
            pages.close()
        st = self.stats
        st.processes = len(self.model.procs)
        st.threads = sum(len(p.threads) for p in self.model.procs.values())
        st.tasks_s, st.memory_s, st.total_s = t1 - t0, t2 - t1, time.perf_counter() - t0
        return st

    def _host_pid(self, pid: int) -> int:
        """A pid of the image as this host sees it (differs under --pidns)."""
        task = self.tasks.get(pid)
        return task.host_pid if task is not None else pid

    def _process(
        self,
        task: Task,
        files: FileRestorer,
        slot: int,
        pages: PageSource,
        donor: Donor | None = None,
    ) -> None:
        t = task.leader
        # the stub pulls what is opened for it now (its mappings, its executable) through
        # the pidfd at `slot`: the donor's, for a VE that contains its root, which must be
        # handed each such file first
        share = donor.mirror if donor is not None else None
        with t.session(restore=False):
            take_over(task, self.proc)
            written = map_vmas(task, self.model, slot, share, files.local)
            self.stats.pages_bytes += write_pages(task, pages)
            finish_vmas(task, written)
            set_mm(task, self.model, slot, share)
            files.install(task, slot)
            restore_task_state(task, self.model)
            restore_sigactions(task)
            restore_outside(task)
            create_threads(task)
            files.install_late(task, slot, self._host_pid)  # pidfds of its threads
            restore_timers(task)  # SIGEV_THREAD_ID names a thread; before creds drop
            for th in task.img.threads:
                setup_thread(task, th, task.threads[th.tid])
            restore_pending(task)
            if task.img.task is not None:
                t.syscall_checked(NR.prctl, PR_SET_DUMPABLE, task.img.task.dumpable, 0, 0, 0)
            sc = task.scratch
            assert sc is not None
            # the last injection unmaps the page it runs from: the step stops at syscall exit
            if (trap := ignored_sigtrap(task)) is not None:
                # every injection's forced trap reset the ignored SIGTRAP to SIG_DFL: the
                # last two give it back and unmap through syscall stops, without a trap
                act = sc.push(SIGACTION.pack(trap.handler, trap.flags, trap.restorer, trap.mask))
                for nr, args in ((NR.rt_sigaction, (signal.SIGTRAP, act, 0, 8)),
                                 (NR.munmap, (sc.addr, sc.size))):  # fmt: skip
                    if (err := t.syscall_without_trap(nr, *args)) < 0:
                        raise RestoreError(
                            f"process {task.pid}: injected {syscall_name(nr)} failed "
                            f"({os.strerror(-err)})",
                            pid=task.pid,
                        )
            else:
                t.syscall_checked(NR.munmap, sc.addr, sc.size)
            task.scratch = None

    def _kill_all(self) -> None:
        tracees = [tr for task in self.tasks.values() for tr in task.threads.values()]
        pids = [task.host_pid for task in self.tasks.values()]
        root = self.tasks.get(self.model.root)
        if self._ve_init is not None and root is None:  # the VE's init, before the tree
            tracees.append(self._ve_init)
            pids.append(self._ve_init.pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        reap_traced(tracees, timeout=2.0)
        first = root.host_pid if root is not None else self._ve_init.pid if self._ve_init else 0
        if first:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(first, 0)  # the root stub is this process's child


def write_pidfile(path: str, pid: int) -> None:
    """`pid` into `path`, atomically (a temporary file renamed over it: a symlink there is
    replaced, never followed), mode 0644; RestoreError when it cannot be written."""
    try:
        with atomic_output(path, mode=0o644) as f:
            f.write(f"{pid}\n".encode())
    except OSError as e:
        raise RestoreError(
            f"cannot write the pidfile {path}: {e.strerror or e}; the restored tree was killed"
        ) from None


def _free_slot(lowest: int) -> int:
    """The first fd number >= lowest that this process does not use either."""
    slot = max(lowest, 3)
    while True:
        try:
            os.fstat(slot)
        except OSError:
            return slot
        slot += 1


@contextlib.contextmanager
def _inherited_pidfd(slot: int) -> Iterator[None]:
    """A pidfd of this process at fd `slot`, inheritable: every stub gets it at birth."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if slot >= soft:
        if slot >= hard:
            raise RestoreError(
                f"the image uses fd {slot - 1}, above this restorer's RLIMIT_NOFILE hard limit "
                f"{hard}"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    pfd = pidfd_open(os.getpid())
    if pfd == slot:  # the slot was the lowest free fd: pidfd_open took it
        os.set_inheritable(slot, True)
    else:
        try:
            os.dup2(pfd, slot, inheritable=True)
        finally:
            os.close(pfd)
    try:
        yield
    finally:
        os.close(slot)


def pids_in_use(model: ImageModel, wait: float = 2.0) -> list[tuple[int, str]]:
    """PIDs and TIDs of the image that exist on this host, after waiting briefly for zombies
    (PID 1 reaps orphans about 1.5 s late here)."""
    deadline = time.monotonic() + wait
    proc = Proc()
    while True:
        busy = [p for p in model.all_ids() if pid_exists(p)]
        if not busy:
            return []
        zombies = []
        for p in busy:
            try:
                st = proc.stat(p)
            except (NoSuchProcess, CptError):
                continue
            zombies.append((p, st))
        if time.monotonic() > deadline or any(st.state != "Z" for _, st in zombies):
            out = []
            for p, st in zombies:
                what = (
                    f"a zombie of process {st.ppid}" if st.state == "Z" else f"used by {st.comm!r}"
                )
                out.append((p, what))
            return out
        time.sleep(0.05)
