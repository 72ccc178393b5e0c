"""What `cpt image show` displays, as plain data (the CLI renders it).

summary(reader)     header, process tree, per-section counts and sizes
maps(reader, pid)   rows like /proc/PID/maps
fds(reader, pid)    rows like ls -l /proc/PID/fd
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

from .container import ImageReader
from .jsonio import record_to_json
from .records import (
    Epoll,
    EventFd,
    Fd,
    Fifo,
    InetSocket,
    Inotify,
    MemfdFile,
    Mount,
    NetAddr,
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


def integrity(reader: ImageReader) -> dict[str, Any]:
    """Whether every byte of the file is as written: ``{"ok": bool, "problems": [...]}``
    (the file digest and every section checksum, page data included)."""
    problems = reader.integrity()
    return dict(ok=not problems, problems=problems)


def summary(reader: ImageReader, checked: dict[str, Any] | None = None) -> dict[str, Any]:
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
        sections=sections(reader),
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
    "fds",
    "format_fd_line",
    "format_maps_line",
    "integrity",
    "maps",
    "process_tree",
    "sections",
    "summary",
]
