"""Dirty-page tracking of a live tree: userfaultfd asynchronous write-protect + PAGEMAP_SCAN.

ENGINE-NOTES ("Incremental / pre-copy") has the recipe; this kernel has no soft-dirty bit.

Start (per process, `Tracker.track`): seize and stop its threads, inject
userfaultfd(O_CLOEXEC|O_NONBLOCK|UFFD_USER_MODE_ONLY), take the fd with pidfd_getfd,
inject close(fd), detach: the process is stopped about a millisecond and its fd table is
unchanged.  The fd acts on the process's mm from here; UFFDIO_API asks for WP_ASYNC only,
so a write to a protected page is resolved by the kernel (the process never blocks) and
the page counts as written.

A round (`Tracker.round`), per process, the process running or stopped:
  1. /proc/PID/maps: the private mappings (anonymous, private file and private shmem
     mappings, whatever their protection: PROT_NONE reservations and read-only ones can be
     made writable between two rounds) grouped into spans of neighbours; shared memory
     mappings are reported apart (the dump copies shared objects whole every time:
     another process, or a write(2) to a memfd, changes them without touching this
     process's page tables).
  2. Probe: a PAGEMAP_SCAN for pages and holes of mappings that are NOT registered
     (category WPALLOWED inverted; registered mappings are skipped whole by the kernel).
     A mapping created, moved (mremap drops the registration) or grown since the last
     round, and every mapping after an exec (a new mm), shows up here: it is registered
     and counts as fully dirty.  Registering with a dead mm fails (uffd_mm_alive tells
     it from an unmapped range): the process exec'd (its tracking restarts with a new
     fd, and it counts as fully dirty) or exited.
     A mapping that refuses registration is copied whole every round (said once).
  3. PAGEMAP_SCAN with PM_SCAN_WP_MATCHING over each span: the private pages the dump
     takes (present or swapped, neither page cache nor the zero page), each flagged
     written or not; the written ones are protected again in the same walk, atomically.
     Never-touched reservations are not walked into (no page tables are allocated):
     a page appearing later is unprotected, hence reported written.
The round's answer per process (ProcessRound): the present pages, the dirty ones, the
shared mappings, and `whole` (a reason) when every page counts as dirty.  Copy the pages
only AFTER the round returns: a write after the scan is the next round's.

A page discarded (MADV_DONTNEED) is simply no longer present; a page whose present copy
in an image is older than its last write is always dirty.  A process that appears (fork)
is tracked from the round that first sees it, and is whole in that round.

The userfaultfd must stay open for tracking to last: the tracker holds it during one
command; across commands the holder (holder.py) does.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from collections.abc import Callable

from .. import fault
from .. import procfs as P
from ..errors import CptError, InjectionError, NoSuchProcess
from ..procfs import Proc
from ..sys.anonfd import UFFD_USER_MODE_ONLY
from ..sys.mem import (
    PAGE_IS_FILE,
    PAGE_IS_PFNZERO,
    PAGE_IS_PRESENT,
    PAGE_IS_SWAPPED,
    PAGE_IS_WPALLOWED,
    PAGE_IS_WRITTEN,
    PM_SCAN_WP_MATCHING,
    guard_category,
    pagemap_scan,
)
from ..sys.syscalls import NR
from ..sys.task import pidfd_getfd, pidfd_open
from ..sys.uffd import TRACK_FEATURES, uffd_api, uffd_mm_alive, uffd_register_wp
from ..trace.seize import detach_all, freeze_process
from ..trace.tracee import Tracee
from .pstree import TaskInfo, collect_tree
from .ranges import Range, intersect, normalize, union

_NO_DATA = PAGE_IS_FILE | PAGE_IS_PFNZERO  # pages with nothing to save (and guard pages)
_WANT = PAGE_IS_PRESENT | PAGE_IS_SWAPPED
_ANON_KINDS = frozenset({P.VmaKind.ANON, P.VmaKind.ANON_NAMED, P.VmaKind.HEAP, P.VmaKind.STACK})
_PRIVATE_KINDS = _ANON_KINDS | {P.VmaKind.FILE}
# A span: (start, end, the categories its scan skips).  Anonymous mappings hold no
# page-cache pages: their scan skips only the zero page.  Asking for PAGE_IS_FILE makes the
# kernel look at every present page's struct page (vm_normal_page), three times the cost
# of the walk itself (1 GiB: 9 ms instead of 3): it is asked only where it can be.
Span = tuple[int, int, int]
_SHMEM_KINDS = frozenset({P.VmaKind.SHMEM, P.VmaKind.MEMFD, P.VmaKind.SYSV})
_O_CLOEXEC, _O_NONBLOCK = 0o2000000, 0o4000


class TrackingError(CptError):
    """A process cannot be tracked (the kernel lacks the feature, the injection failed):
    its pages are copied whole."""


def tracked_vma(v: P.Vma) -> bool:
    """A mapping whose pages only this process has: private anonymous memory, private
    mappings of files and of shared memory objects (their COW'd pages)."""
    if v.shared:
        return False
    if v.kind in _PRIVATE_KINDS:
        return not (v.kind is P.VmaKind.FILE and v.path.startswith("/dev/"))
    return v.kind in (P.VmaKind.SHMEM, P.VmaKind.MEMFD)


def shared_vma(v: P.Vma) -> bool:
    """A mapping of a shared memory object (copied whole by every dump)."""
    return v.shared and v.kind in _SHMEM_KINDS


@dataclasses.dataclass
class ProcessRound:
    """What one round found in one process: page ranges, sorted and merged."""

    pid: int
    present: list[Range]  # the private pages the dump takes
    dirty: list[Range]  # of those, the ones written since the last round (or all: whole)
    shared: list[Range]  # shared memory mappings: always dirty (their objects go whole)
    whole: str = ""  # why every page counts as dirty: "new process", "exec", ...

    @property
    def clean(self) -> list[Range]:
        from .ranges import subtract

        return subtract(self.present, self.dirty)


@dataclasses.dataclass
class ProcessTrack:
    """The tracking of one process: its userfaultfd (in this process) and identity."""

    pid: int
    start: int  # starttime (/proc/PID/stat field 22): a reused PID is another process
    fd: int  # the userfaultfd, acting on the process's mm
    refused: dict[Range, str] = dataclasses.field(default_factory=dict)  # copied whole


class _MmGone(Exception):
    """The fd's mm is gone: the process exec'd or exited."""


class Tracker:
    """Tracks the writes of every process of the tree rooted at `root`.

    `notice(text)` receives the one-line notices (a process or mapping that cannot be
    tracked and is copied whole).  An object, not one function, so that a long-running
    caller (migration) can run as many rounds as it likes between start and stop.
    """

    def __init__(
        self, root: int, proc: Proc | None = None, notice: Callable[[str], None] | None = None
    ) -> None:
        self.root = root
        self.proc = proc or Proc()
        self.notice = notice or (lambda text: None)
        self.procs: dict[int, ProcessTrack] = {}
        self.rounds = 0
        # the UUID (hex) of the image the tracking is relative to: the pages written since
        # it was taken are the dirty ones ("" when that image is none to build on)
        self.relative_to = ""
        self.xstate = b""  # an NT_X86_XSTATE of a thread, read at an injection
        self._refused: set[int] = set()  # processes that could not be tracked (said once)

    # -- starting and stopping

    def track(self, pid: int, leader: Tracee | None = None) -> ProcessTrack:
        """Start tracking `pid` (live): a userfaultfd injected into it.  `leader`: one of
        its threads already in a ptrace-stop (the dump's); else its threads are seized and
        stopped for the injection only.  Nothing is registered yet: the next round finds
        every mapping unregistered, registers it and counts it fully dirty."""
        old = self.procs.pop(pid, None)
        if old is not None:
            os.close(old.fd)
        start = self.proc.stat(pid).starttime
        fd, xstate = inject_userfaultfd(pid, leader, xstate=not self.xstate)
        self.xstate = self.xstate or xstate
        pt = ProcessTrack(pid, start, fd)
        self.procs[pid] = pt
        return pt

    def start(self, tree: dict[int, TaskInfo] | None = None) -> None:
        """Start tracking every live process of the tree not tracked yet (each stopped
        about a millisecond); one that cannot be tracked is said (notice) and left out:
        the rounds count it whole.  Its mappings are registered, and count as written,
        at the next round."""
        if tree is None:
            tree = collect_tree(self.root, self.proc)
        for pid, info in sorted(tree.items()):
            if info.zombie or pid in self.procs:
                continue
            try:
                self._start(info, True, False)
            except NoSuchProcess:
                continue  # exited meanwhile

    def adopt(self, pid: int, start: int, fd: int) -> ProcessTrack:
        """Take over a userfaultfd made earlier (by another command: the holder kept it)."""
        old = self.procs.pop(pid, None)
        if old is not None and old.fd != fd:
            os.close(old.fd)
        pt = ProcessTrack(pid, start, fd)
        self.procs[pid] = pt
        return pt

    def untrack(self, pid: int) -> None:
        pt = self.procs.pop(pid, None)
        if pt is not None:
            os.close(pt.fd)

    def close(self) -> None:
        """Stop tracking here: the fds go (tracking ends unless a holder has them too)."""
        for pid in list(self.procs):
            self.untrack(pid)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- rounds

    def round(
        self,
        tree: dict[int, TaskInfo] | None = None,
        *,
        track_new: bool = True,
        frozen: bool = False,
    ) -> dict[int, ProcessRound]:
        """One round over the tree (`tree`: as collected; else read now).  Processes not
        tracked yet are tracked from now (`track_new`; in a frozen tree through the dump's
        tracees) and count as whole.  `frozen`: the tree is stopped, so the answer is exact
        (a process the tree gained since the start is in it whole)."""
        if tree is None:
            tree = collect_tree(self.root, self.proc)
        out: dict[int, ProcessRound] = {}
        live = {p for p, i in tree.items() if not i.zombie}
        for pid in [p for p in self.procs if p not in live]:
            self.untrack(pid)  # exited
        for pid in sorted(live):
            info = tree[pid]
            try:
                out[pid] = self._round_process(info, track_new, frozen)
            except NoSuchProcess:
                self.untrack(pid)  # exited meanwhile: nothing of it goes into an image
        self.rounds += 1
        fault.point("track:round")
        return out

    def _round_process(self, info: TaskInfo, track_new: bool, frozen: bool) -> ProcessRound:
        pid = info.pid
        pt = self.procs.get(pid)
        whole = ""
        if pt is not None and pt.start != self.proc.stat(pid).starttime:
            self.untrack(pid)  # the PID was reused by another process
            pt = None
        if pt is None:
            whole = "new process"
            pt = self._start(info, track_new, frozen)
        r = None
        if pt is not None:
            try:
                r = self._scan(pt)
            except _MmGone:  # exec'd (or exiting: tracking it again says which)
                whole = "exec"
                self.untrack(pid)
                pt = self._start(info, track_new, frozen)
                if pt is not None:
                    try:
                        r = self._scan(pt)
                    except _MmGone:  # pragma: no cover - exec'd again at once
                        self.untrack(pid)
        if r is None:
            r = scan_untracked(pid, self.proc)
            r.whole = whole or "untracked"
        elif whole:
            r.dirty = list(r.present)
            r.whole = whole
        return r

    def _start(self, info: TaskInfo, track_new: bool, frozen: bool) -> ProcessTrack | None:
        if not track_new:
            return None
        leader = info.tracees[0] if info.tracees else None
        if frozen and leader is None:
            return None
        try:
            return self.track(info.pid, leader)
        except (TrackingError, InjectionError, OSError) as e:
            if info.pid not in self._refused:
                self._refused.add(info.pid)
                self.notice(f"{e}: its pages are copied whole")
            return None

    def _scan(self, pt: ProcessTrack) -> ProcessRound | None:
        """Probe, register, scan one tracked process (its mm may be gone: _MmGone)."""
        pid = pt.pid
        maps = self.proc.maps(pid)
        spans, shared = _spans(maps)
        fd = self.proc.pagemap_fd(pid)
        try:
            fresh = self._register_new(pt, fd, maps, spans)
            present: list[Range] = []
            dirty: list[Range] = []
            for s, e, skip in spans:
                for rs, re_, cat in pagemap_scan(
                    fd,
                    s,
                    e,
                    flags=PM_SCAN_WP_MATCHING,
                    category_mask=skip,
                    category_inverted=skip,
                    category_anyof_mask=_WANT,
                    return_mask=PAGE_IS_WRITTEN,
                    pid=pid,
                ):
                    present.append((rs, re_))
                    if cat & PAGE_IS_WRITTEN:
                        dirty.append((rs, re_))
            refused = sorted(pt.refused)
            for s, e in refused:  # not registered: the WP walk skipped them
                regs = _present(fd, s, e, _NO_DATA | guard_category(), pid)
                present += regs
                dirty += regs
        finally:
            os.close(fd)
        present = normalize(present)
        dirty = union(normalize(dirty), intersect(present, normalize(fresh + refused)))
        return ProcessRound(pid, present, dirty, normalize(shared))

    def _register_new(
        self, pt: ProcessTrack, pagemap: int, maps: list[P.Vma], spans: list[Span]
    ) -> list[Range]:
        """Register every private mapping the probe finds unregistered; returns them."""
        pid = pt.pid
        holes: list[Range] = []
        for s, e, _skip in spans:
            holes += [
                (rs, re_)
                for rs, re_, _ in pagemap_scan(
                    pagemap,
                    s,
                    e,
                    category_mask=PAGE_IS_WPALLOWED,
                    category_inverted=PAGE_IS_WPALLOWED,
                    return_mask=PAGE_IS_WPALLOWED,
                    pid=pid,
                )
            ]
        if not holes:
            return []
        holes = normalize(holes)
        fresh: list[Range] = []
        for v in maps:
            if not tracked_vma(v) or not intersect([(v.start, v.end)], holes):
                continue
            key = (v.start, v.end)
            if key in pt.refused:
                continue
            try:
                uffd_register_wp(pt.fd, v.start, v.size, pid)
            except OSError as e:
                if not uffd_mm_alive(pt.fd, v.start):
                    raise _MmGone() from None
                if e.errno in (errno.ENOMEM, errno.EINVAL) and not _still_mapped(self.proc, pid, v):
                    continue  # unmapped meanwhile (a live process): the next round sees
                pt.refused[key] = os.strerror(e.errno or 0)
                self.notice(
                    f"process {pid} mapping {v.start:x}-{v.end:x} {v.path or '[anon]'} "
                    f"cannot be write-protected ({os.strerror(e.errno or 0)}): it is "
                    f"copied whole every time"
                )
                continue
            fresh.append(key)
        # a refused mapping that is gone or changed shape is tried again when seen
        now = {(v.start, v.end) for v in maps}
        for key in [k for k in pt.refused if k not in now]:
            del pt.refused[key]
        return fresh


def _spans(maps: list[P.Vma]) -> tuple[list[Span], list[Range]]:
    """Neighbouring private mappings of one class (anonymous or not: see Span) joined (the
    scan walks each span once; gaps between mappings cost nothing), and the shared memory
    mappings."""
    spans: list[Span] = []
    shared: list[Range] = []
    joined = False
    for v in maps:
        if tracked_vma(v):
            skip = (PAGE_IS_PFNZERO if v.kind in _ANON_KINDS else _NO_DATA) | guard_category()
            if joined and spans[-1][2] == skip:
                spans[-1] = (spans[-1][0], v.end, skip)
            else:
                spans.append((v.start, v.end, skip))
            joined = True
        else:
            joined = False
            if shared_vma(v):
                shared.append((v.start, v.end))
    return spans, shared


def _present(pagemap: int, start: int, end: int, skip: int, pid: int) -> list[Range]:
    return [
        (s, e)
        for s, e, _ in pagemap_scan(
            pagemap,
            start,
            end,
            category_mask=skip,
            category_inverted=skip,
            category_anyof_mask=_WANT,
            return_mask=_WANT,
            pid=pid,
        )
    ]


def _still_mapped(proc: Proc, pid: int, v: P.Vma) -> bool:
    return any(m.start == v.start and m.end == v.end for m in proc.maps(pid))


def scan_untracked(pid: int, proc: Proc) -> ProcessRound:
    """A process without tracking: every private page present is dirty."""
    maps = proc.maps(pid)
    spans, shared = _spans(maps)
    fd = proc.pagemap_fd(pid)
    try:
        present = normalize([r for s, e, k in spans for r in _present(fd, s, e, k, pid)])
    finally:
        os.close(fd)
    return ProcessRound(pid, present, list(present), normalize(shared), whole="untracked")


def inject_userfaultfd(
    pid: int, leader: Tracee | None = None, *, xstate: bool = False
) -> tuple[int, bytes]:
    """A tracking userfaultfd for the mm of `pid`, in THIS process (and with `xstate` the
    NT_X86_XSTATE of the thread that made it: a dump's header wants one).

    Made inside the target by an injected userfaultfd(2) (USER_MODE_ONLY: allowed to any
    process), pulled with pidfd_getfd, closed there again: its fd table ends as it was.
    `leader`: a thread of it already in a ptrace-stop; else every thread of it is seized
    and stopped for the few injected calls only.
    """
    own = leader is None
    tracees = freeze_process(pid) if own else []
    t = tracees[0] if own else leader
    assert t is not None
    local = -1
    state = b""
    try:
        pidfd = pidfd_open(pid)
        try:
            with t.session():
                fd = t.syscall(NR.userfaultfd, _O_CLOEXEC | _O_NONBLOCK | UFFD_USER_MODE_ONLY)
                if fd < 0:
                    raise TrackingError(
                        f"process {pid} cannot be tracked: userfaultfd() failed there "
                        f"({os.strerror(-fd)})",
                        pid=pid,
                    )
                try:
                    local = pidfd_getfd(pidfd, fd, pid)
                finally:
                    t.syscall(NR.close, fd)
                fault.point("track:inject")
            state = t.get_xstate() if xstate else b""
        finally:
            os.close(pidfd)
    except BaseException:
        if local >= 0:
            os.close(local)
        raise
    finally:
        if own:
            detach_all(tracees)
    try:
        uffd_api(local, TRACK_FEATURES)
    except OSError as e:
        os.close(local)
        raise TrackingError(
            f"process {pid} cannot be tracked: this kernel has no asynchronous "
            f"write-protect ({e.strerror})",
            pid=pid,
        ) from None
    return local, state


__all__ = [
    "ProcessRound",
    "ProcessTrack",
    "Tracker",
    "TrackingError",
    "inject_userfaultfd",
    "scan_untracked",
    "shared_vma",
    "tracked_vma",
]
