"""What `cpt image show` displays, as plain data (the CLI renders it).

summary(reader)     header, process tree, per-section counts and sizes, what a restore
                    would grant: the credentials (credentials) and every path outside the
                    image it would open or create (external_paths), and the chain
maps(reader, pid)   rows like /proc/PID/maps
fds(reader, pid)    rows like ls -l /proc/PID/fd
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

from .container import ImageReader
from .errors import ImageError
from .jsonio import record_to_json
from .records import (
    Creds,
    Epoll,
    EventFd,
    Fd,
    Fifo,
    FsSnapshot,
    InetSocket,
    Inotify,
    InotifyWatch,
    MemfdFile,
    Mount,
    NetAddr,
    Owner,
    PathFlags,
    PathObj,
    Pipe,
    PosixMq,
    Process,
    ProcessState,
    RegFile,
    SectionType,
    ShmemObject,
    SignalFd,
    SourceKind,
    TaskState,
    Thread,
    TimerFd,
    Tty,
    TtyInfo,
    UnixSocket,
    Uts,
    Vma,
    VmaKind,
)

FD_CLOEXEC = 1
_SHARED_KINDS = (VmaKind.FILE_SHARED, VmaKind.SHMEM, VmaKind.SYSV_SHM)


def _enum_name(enum_cls: Any, v: int) -> str:
    return enum_cls(v).name if v in enum_cls._value2member_map_ else str(v)


def process_tree(reader: ImageReader) -> list[dict[str, Any]]:
    """ps-like rows in tree order (children under their parent), with their depth."""
    recs = reader.records(SectionType.PROCESS)
    procs = {r.pid: r for r in recs if isinstance(r, Process)}
    nthreads: dict[int, int] = defaultdict(int)
    for r in recs:
        if isinstance(r, Thread):
            nthreads[r.pid] += 1
    children: dict[int, list[int]] = defaultdict(list)
    for p in procs.values():
        children[p.ppid if p.ppid in procs else 0].append(p.pid)
    rows: list[dict[str, Any]] = []
    seen: set[int] = set()

    def visit(pid: int, depth: int) -> None:
        stack = [(pid, depth)]
        while stack:
            pid, depth = stack.pop()
            if pid in seen:
                continue  # a cycle: verify reports it
            seen.add(pid)
            p = procs[pid]
            rows.append(
                dict(
                    pid=p.pid,
                    ppid=p.ppid,
                    pgid=p.pgid,
                    sid=p.sid,
                    threads=nthreads.get(p.pid, 0),
                    vpid=p.nspid[-1] if p.nspid else p.pid,  # as its own namespace saw it
                    state=_enum_name(ProcessState, p.state),
                    comm=p.comm,
                    depth=depth,
                )
            )
            stack.extend((c, depth + 1) for c in sorted(children.get(pid, []), reverse=True))

    for root in sorted(children.get(0, [])):
        visit(root, 0)
    for pid in sorted(procs):  # processes only reachable through a cycle
        visit(pid, 0)
    return rows


def sections(reader: ImageReader) -> list[dict[str, Any]]:
    """Per section type: how many sections, records, stored and raw bytes."""
    acc: dict[str, dict[str, Any]] = {}
    for s in [*reader.sections, reader.index_info]:
        row = acc.setdefault(
            s.name, dict(type=s.name, sections=0, records=0, stored=0, raw=0, compressed=0)
        )
        row["sections"] += 1
        row["records"] += s.count
        row["stored"] += s.payload_len
        row["raw"] += s.raw_len
        row["compressed"] += 1 if s.compression else 0
    return list(acc.values())


def chain(reader: ImageReader, parent_dir: str | None = None) -> list[dict[str, Any]]:
    """The image and the parents below it, newest first (one row: an image on no parent).
    A link that cannot be followed ends the list with a row naming the file and why."""
    from .chain import MAX_DEPTH, kind, link_problem, locate_parent, open_image, parent_record

    rows: list[dict[str, Any]] = []
    r, path, opened = reader, reader.path or "-", []
    try:
        for _ in range(MAX_DEPTH):
            rows.append(
                dict(
                    path=path,
                    kind=kind(r.header),
                    uuid=r.header.uuid.hex(),
                    created_ns=r.header.created_ns,
                    size=r.size,
                    page_data=r.page_data_len,
                )
            )
            p = parent_record(r) if r.header.parent_uuid != bytes(16) else None
            if p is None:
                break
            where = locate_parent(r.path, p, parent_dir)
            try:
                nxt: ImageReader | None = open_image(where)
            except ImageError as e:
                nxt = None
                if os.path.exists(where):
                    rows.append(dict(path=where, problem=e.msg))
                    break
            why = link_problem(p, where, nxt)
            if why or nxt is None:
                rows.append(dict(path=where, problem=why))
                if nxt is not None:
                    nxt.close()
                break
            opened.append(nxt)
            r, path = nxt, where
    finally:
        for o in opened:
            o.close()
    return rows


def integrity(reader: ImageReader) -> dict[str, Any]:
    """Whether every byte of the file is as written: ``{"ok": bool, "problems": [...]}``
    (the file digest and every section checksum, page data included)."""
    problems = reader.integrity()
    return dict(ok=not problems, problems=problems)


def summary(
    reader: ImageReader, checked: dict[str, Any] | None = None, parent_dir: str | None = None
) -> dict[str, Any]:
    """``checked``: what ``integrity(reader)`` gave, if the caller has it already."""
    header = record_to_json(reader.header)
    header.pop("record")
    return dict(
        path=reader.path,
        integrity=checked if checked is not None else integrity(reader),
        version=f"{reader.major}.{reader.minor}",
        size=reader.size,
        page_data=reader.page_data_len,
        header=header,
        processes=process_tree(reader),
        ve=ve_summary(reader),
        credentials=credentials(reader),
        paths=external_paths(reader),
        sections=sections(reader),
        chain=chain(reader, parent_dir),
        warnings=list(reader.warnings),
    )


def _address(r: NetAddr) -> str:
    """ADDR/PREFIX of an address record; its raw bytes in hex when they are no address
    of its family (verify reports it)."""
    import socket  # here: a VE's image only (3 ms at the start of every image show)

    size = {int(socket.AF_INET): 4, int(socket.AF_INET6): 16}.get(r.family, -1)
    if len(r.address) != size:
        return f"(family {r.family}) {r.address.hex()}/{r.prefixlen}"
    return f"{socket.inet_ntop(r.family, r.address)}/{r.prefixlen}"


def ve_summary(reader: ImageReader) -> dict[str, Any] | None:
    """A VE image's namespaces in brief: hostname, mounts, addresses (None for a tree)."""
    if reader.header.source_kind != SourceKind.VE:
        return None
    recs = reader.records(SectionType.NAMESPACES)
    uts = next((r for r in recs if isinstance(r, Uts)), None)
    mounts = [
        dict(
            mountpoint=r.mountpoint,
            fstype=r.fstype,
            source=r.source if r.external else "(in the image)" if r.fstype == "tmpfs" else "",
            external=bool(r.external),
        )
        for r in recs
        if isinstance(r, Mount)
    ]
    addrs = [_address(r) for r in recs if isinstance(r, NetAddr)]
    return dict(
        id=reader.header.source_id,
        hostname=uts.hostname if uts else "",
        mounts=mounts,
        addresses=addrs,
    )


# --------------------------------------------------------------------------- trust


def _creds_row(c: Creds | Owner) -> dict[str, Any]:
    return dict(
        uid=[c.uid, c.euid, c.suid, c.fsuid],
        gid=[c.gid, c.egid, c.sgid, c.fsgid],
        groups=list(c.groups),
        cap_eff=f"{c.cap_eff:#x}",
        cap_prm=f"{c.cap_prm:#x}",
        cap_inh=f"{c.cap_inh:#x}",
        cap_bnd=f"{c.cap_bnd:#x}",
        cap_amb=f"{c.cap_amb:#x}",
        no_new_privs=bool(c.no_new_privs),
    )


def credentials(reader: ImageReader) -> dict[str, Any]:
    """What a restore would make each process: its ids (real, effective, saved, fs),
    groups and capability sets; and the tree's owner (format 1.2; None for a VE or an
    older image), whom a restore holds them to."""
    recs = reader.records(SectionType.PROCESS)
    comm = {r.pid: r.comm for r in recs if isinstance(r, Process)}
    owner = next((r for r in recs if isinstance(r, Owner)), None)
    rows = [
        dict(pid=r.pid, comm=comm.get(r.pid, ""), **_creds_row(r))
        for r in sorted((r for r in recs if isinstance(r, Creds)), key=lambda r: r.pid)
    ]
    return dict(
        owner=dict(pid=owner.pid, **_creds_row(owner)) if owner else None,
        processes=rows,
    )


def external_paths(reader: ImageReader) -> list[dict[str, Any]]:
    """Every path outside the image a restore opens, maps, creates, binds, connects to,
    watches, mounts or rolls back, with how and for which processes (a VE's paths are
    inside its root, `in_ve`).  Rows sorted by path."""
    files = reader.records(SectionType.FILES)
    paths = {r.id: r for r in files if isinstance(r, PathObj)}
    fds = [r for r in reader.records(SectionType.FDS) if isinstance(r, Fd)]
    holders: dict[int, set[int]] = defaultdict(set)
    for fd in fds:
        holders[fd.file_id].add(fd.pid)
    ve = reader.header.source_kind == SourceKind.VE
    rows: dict[tuple[str, str], set[int]] = defaultdict(set)

    def add(path: str, how: str, pids: set[int] | list[int]) -> None:
        rows[(path, how)].update(pids)

    def path_of(ident: int) -> PathObj | None:
        return paths.get(ident) if ident else None

    for r in files:
        if isinstance(r, (RegFile, Fifo, Tty)):
            p = path_of(r.path_id)
            if p is not None and not p.flags & PathFlags.GHOST:
                mode = ("read", "write", "read-write", "?")[r.flags & 3]
                kind = {RegFile: "open", Fifo: "open FIFO", Tty: "open terminal"}[type(r)]
                add(p.path, f"{kind} {mode}", holders.get(r.id, set()))
        elif isinstance(r, UnixSocket):
            if r.name and r.name[:1] != b"\0":
                add(r.name.decode(errors="replace"), "bind unix socket", holders.get(r.id, set()))
            if r.peer_name and r.peer_name[:1] != b"\0":
                add(
                    r.peer_name.decode(errors="replace"),
                    "connect to unix socket",
                    holders.get(r.id, set()),
                )
        elif isinstance(r, InotifyWatch):
            add(r.path, "watch (inotify)", holders.get(r.inotify_id, set()))
    for r in reader.records(SectionType.MM):
        if isinstance(r, Vma) and r.file_id:
            p = path_of(r.file_id)
            if p is not None and not p.flags & PathFlags.GHOST:
                shared = r.kind == VmaKind.FILE_SHARED and r.prot & 2
                add(p.path, "map read-write shared" if shared else "map", [r.pid])
        elif getattr(r, "exe_id", 0):
            p = path_of(r.exe_id)
            if p is not None and not p.flags & PathFlags.GHOST:
                add(p.path, "executable", [r.pid])
    for r in reader.records(SectionType.PROCESS):
        if isinstance(r, TaskState):
            for ident, how in ((r.cwd_id, "cwd"), (r.root_id, "root directory")):
                p = path_of(ident)
                if p is not None and (how == "cwd" or p.path != "/"):
                    add(p.path, how, [r.pid])
    for p in paths.values():
        if p.flags & PathFlags.GHOST:
            add(p.path, "create (a deleted file, from the image)", [])
    for r in reader.records(SectionType.IPC):
        if isinstance(r, PosixMq):
            add(f"/{r.name}", "open POSIX message queue", holders.get(r.id, set()))
    out = [
        dict(path=path, how=how, pids=sorted(pids), in_ve=ve) for (path, how), pids in rows.items()
    ]
    for r in reader.records(SectionType.NAMESPACES):
        if isinstance(r, Mount) and r.external:
            out.append(
                dict(path=r.source, how=f"bind-mount at {r.mountpoint}", pids=[], in_ve=False)
            )
    for r in reader.records(SectionType.FSSNAP):
        if isinstance(r, FsSnapshot):
            out.append(
                dict(
                    path=r.subvolume, how="private area (proven, rolled back)", pids=[], in_ve=False
                )
            )
            out.append(dict(path=r.snapshot_path, how="filesystem snapshot", pids=[], in_ve=False))
    return sorted(out, key=lambda x: (x["path"], x["how"]))


# --------------------------------------------------------------------------- maps


def _paths(reader: ImageReader) -> dict[int, PathObj]:
    return {r.id: r for r in reader.records(SectionType.FILES) if isinstance(r, PathObj)}


def _path_text(p: PathObj | None) -> str:
    if p is None:
        return ""
    return p.path + (" (deleted)" if p.flags & PathFlags.DELETED else "")


def _perms(v: Vma) -> str:
    return (
        ("r" if v.prot & 1 else "-")
        + ("w" if v.prot & 2 else "-")
        + ("x" if v.prot & 4 else "-")
        + ("s" if v.kind in _SHARED_KINDS else "p")
    )


def maps(reader: ImageReader, pid: int) -> list[dict[str, Any]]:
    """The VMAs of ``pid`` like /proc/PID/maps: start, end, perms, offset, dev, inode, path."""
    vmas = sorted(
        (v for v in reader.records(SectionType.MM) if isinstance(v, Vma) and v.pid == pid),
        key=lambda v: v.start,
    )
    paths = _paths(reader) if any(v.file_id for v in vmas) else {}
    shmem = {r.id: r for r in reader.records(SectionType.MM) if isinstance(r, ShmemObject)}
    rows = []
    for v in vmas:
        ring = v.kind == VmaKind.PACKET_RING  # file_id: the packet socket's description
        p = paths.get(v.file_id) if v.file_id and not ring else None
        obj = shmem.get(v.shmem_id) if v.shmem_id else None
        dev = p.dev if p else 0
        rows.append(
            dict(
                start=v.start,
                end=v.end,
                perms=_perms(v),
                offset=v.pgoff,
                dev=f"{os.major(dev):02x}:{os.minor(dev):02x}",
                inode=p.ino if p else (obj.ino if obj else 0),
                path=_path_text(p)
                or v.name
                or (obj.name if obj else "")
                or (f"<packet socket {v.file_id}>" if ring else ""),
                kind=_enum_name(VmaKind, v.kind),
            )
        )
    return rows


def format_maps_line(row: dict[str, Any]) -> str:
    head = (
        f"{row['start']:08x}-{row['end']:08x} {row['perms']} {row['offset']:08x} "
        f"{row['dev']} {row['inode']}"
    )
    return f"{head:<72} {row['path']}".rstrip() if row["path"] else head


# --------------------------------------------------------------------------- fds


def _anon(name: str) -> tuple[str, str]:
    return "anon_inode", name


def _describe(
    desc: Any, paths: dict[int, PathObj], ttys: dict[int, TtyInfo], shmem: dict[int, str]
) -> tuple[str, str]:
    """(kind, target) of an open-file description, as ls -l /proc/PID/fd would show it."""
    if isinstance(desc, RegFile):
        return "file", _path_text(paths.get(desc.path_id)) or f"<path {desc.path_id}>"
    if isinstance(desc, Fifo):
        return "fifo", _path_text(paths.get(desc.path_id)) or f"<path {desc.path_id}>"
    if isinstance(desc, Pipe):
        return "pipe", f"[{desc.ino}]"
    if isinstance(desc, PosixMq):
        return "mqueue", f"/{desc.name}" + (" (deleted)" if desc.deleted else "")
    if isinstance(desc, MemfdFile):
        return "memfd", f"/memfd:{shmem.get(desc.shmem_id, '?')} (deleted)"
    if isinstance(desc, (UnixSocket, InetSocket)):
        return "socket", f"[{desc.ino}]"
    if isinstance(desc, Tty):
        info = ttys.get(desc.tty_id)
        p = paths.get(desc.path_id)
        return "tty", _path_text(p) or (f"/dev/pts/{info.index}" if info else "/dev/tty")
    names = {
        EventFd: "[eventfd]",
        SignalFd: "[signalfd]",
        TimerFd: "[timerfd]",
        Epoll: "[eventpoll]",
        Inotify: "inotify",
    }
    return _anon(names.get(type(desc), type(desc).__name__))


def fds(reader: ImageReader, pid: int) -> list[dict[str, Any]]:
    """The fd table of ``pid`` like ls -l /proc/PID/fd: fd -> kind:target, flags, cloexec."""
    table = sorted(
        (r for r in reader.records(SectionType.FDS) if isinstance(r, Fd) and r.pid == pid),
        key=lambda r: r.fd,
    )
    files = reader.records(SectionType.FILES)
    paths = {r.id: r for r in files if isinstance(r, PathObj)}
    ttys = {r.id: r for r in files if isinstance(r, TtyInfo)}
    descs = {r.id: r for r in files if hasattr(r, "id") and not isinstance(r, (PathObj, TtyInfo))}
    descs.update((r.id, r) for r in reader.records(SectionType.IPC) if isinstance(r, PosixMq))
    shmem = {r.id: r.name for r in reader.records(SectionType.MM) if isinstance(r, ShmemObject)}
    rows = []
    for fd in table:
        desc = descs.get(fd.file_id)
        kind, target = (
            _describe(desc, paths, ttys, shmem) if desc else ("missing", f"<{fd.file_id}>")
        )
        rows.append(
            dict(
                fd=fd.fd,
                kind=kind,
                target=target,
                flags=getattr(desc, "flags", 0),
                pos=getattr(desc, "pos", None),
                cloexec=bool(fd.flags & FD_CLOEXEC),
                file_id=fd.file_id,
            )
        )
    return rows


_PATH_KINDS = ("file", "fifo", "tty")


def format_fd_line(row: dict[str, Any]) -> str:
    """``3 -> pipe:[9001]; flags 00; cloexec`` (paths alone, as ls -l shows them)."""
    target = row["target"] if row["kind"] in _PATH_KINDS else f"{row['kind']}:{row['target']}"
    extra = "; cloexec" if row["cloexec"] else ""
    return f"{row['fd']} -> {target}; flags 0{row['flags']:o}{extra}"


__all__ = [
    "chain",
    "credentials",
    "external_paths",
    "fds",
    "format_fd_line",
    "format_maps_line",
    "integrity",
    "maps",
    "process_tree",
    "sections",
    "summary",
]
