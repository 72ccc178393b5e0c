"""The btrfs send stream, read to learn what differs between two read-only snapshots.

`btrfs send --no-data -p OLDER NEWER` writes the operations that turn OLDER into NEWER:

    stream  := "btrfs-stream\\0"  le32 version  command*
    command := le32 len  le16 cmd  le32 crc32c  tlv*            (len: of the tlvs)
    tlv     := le16 type  le16 len  bytes[len]                   (v2: DATA has no len)

Paths are bytes relative to the subvolume root ("" is the root) and always name the object
as it is at that point of the replay: new inodes appear under orphan names ("o261-7-0") and
are renamed into place, a removed directory is renamed to an orphan before its rmdir, and a
renamed file may come as `link NEW -> OLD` then `unlink OLD`.

We parse the binary stream rather than `btrfs receive --dump`: the dump prints xattr values
raw, so a value holding a newline forges a line (a file inside a VE could fake or hide a
change), and progs versions differ in escaping the rename and link destinations. The CRC is
not checked: the stream comes from the local kernel through a pipe.

Replay keeps a tree of the nodes the stream touched, each with its path in OLDER (its
*origin*, None when the stream created it); untouched entries below a node are implied by
the node's origin. The report then compares the final tree with the two snapshots on disk.
"""

from __future__ import annotations

import enum
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from storage.base import ROOT, Changes, drop_time_echoes
from storage.errors import FsError
from storage.tree import entry_at, file_digest

MAGIC = b"btrfs-stream\0"
_HEADER = struct.Struct("<13sI")
_CMD = struct.Struct("<IHI")
_TLV = struct.Struct("<HH")


class Cmd(enum.IntEnum):
    SUBVOL = 1
    SNAPSHOT = 2
    MKFILE = 3
    MKDIR = 4
    MKNOD = 5
    MKFIFO = 6
    MKSOCK = 7
    SYMLINK = 8
    RENAME = 9
    LINK = 10
    UNLINK = 11
    RMDIR = 12
    SET_XATTR = 13
    REMOVE_XATTR = 14
    WRITE = 15
    CLONE = 16
    TRUNCATE = 17
    CHMOD = 18
    CHOWN = 19
    UTIMES = 20
    END = 21
    UPDATE_EXTENT = 22
    FALLOCATE = 23
    SETFLAGS = 24
    ENCODED_WRITE = 25


class Attr(enum.IntEnum):
    PATH = 15
    PATH_TO = 16
    PATH_LINK = 17
    DATA = 19


CREATE = {Cmd.MKFILE, Cmd.MKDIR, Cmd.MKNOD, Cmd.MKFIFO, Cmd.MKSOCK, Cmd.SYMLINK, Cmd.LINK}
REMOVE = {Cmd.UNLINK, Cmd.RMDIR}
MODIFY = {
    Cmd.SET_XATTR,
    Cmd.REMOVE_XATTR,
    Cmd.WRITE,
    Cmd.CLONE,
    Cmd.TRUNCATE,
    Cmd.CHMOD,
    Cmd.CHOWN,
    Cmd.UPDATE_EXTENT,
    Cmd.FALLOCATE,
    Cmd.SETFLAGS,
    Cmd.ENCODED_WRITE,
}


@dataclass(frozen=True)
class Command:
    cmd: int
    path: str = ""
    to: str = ""  # rename: the new path
    link: str = ""  # link: the existing path; symlink: the target


def parse(data: bytes) -> Iterator[Command]:
    """The commands of a send stream, in order; FsError on a malformed stream."""
    if len(data) < _HEADER.size:
        raise FsError("btrfs send stream: truncated header")
    magic, version = _HEADER.unpack_from(data)
    if magic != MAGIC or version not in (1, 2):
        raise FsError(f"btrfs send stream: bad magic or version {version}")
    pos = _HEADER.size
    while pos < len(data):
        if pos + _CMD.size > len(data):
            raise FsError(f"btrfs send stream: truncated command header at {pos}")
        length, cmd, _crc = _CMD.unpack_from(data, pos)
        body = pos + _CMD.size
        if body + length > len(data):
            raise FsError(f"btrfs send stream: command {cmd} at {pos} overruns the stream")
        attrs = _attrs(data, body, body + length, version)
        pos = body + length
        if cmd == Cmd.END:
            return
        yield Command(
            cmd,
            attrs.get(Attr.PATH, ""),
            attrs.get(Attr.PATH_TO, ""),
            attrs.get(Attr.PATH_LINK, ""),
        )


def _attrs(data: bytes, pos: int, end: int, version: int) -> dict[int, str]:
    """The path attributes of one command (the others are skipped)."""
    attrs: dict[int, str] = {}
    while pos < end:
        kind, length = _TLV.unpack_from(data, pos)
        if kind == Attr.DATA and version >= 2:
            # v2: DATA is the rest of the command and its header has no length.
            return attrs
        pos += _TLV.size
        if kind in (Attr.PATH, Attr.PATH_TO, Attr.PATH_LINK):
            attrs[kind] = os.fsdecode(data[pos : pos + length])
        pos += length
    return attrs


@dataclass(eq=False)
class _Node:
    origin: str | None  # the path in the older tree; None when the stream created it
    children: dict[str, _Node | None] = field(default_factory=dict)  # None: removed
    modified: bool = False  # content, mode, owner, xattrs or flags
    times: bool = False  # utimes


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


class Replay:
    """The stream's commands applied to a tree of the nodes it touched."""

    def __init__(self) -> None:
        self.root = _Node("")
        self.origins: set[str] = set()  # every older path the stream materialised

    def apply(self, c: Command) -> None:
        if c.cmd in CREATE:
            parent, name = self._parent(c.path)
            parent.children[name] = _Node(None)
        elif c.cmd == Cmd.RENAME:
            parent, name = self._parent(c.path)
            node = self._child(parent, name)
            parent.children[name] = None
            parent, name = self._parent(c.to)
            self._child_or_none(parent, name)  # a replaced entry: record its origin
            parent.children[name] = node
        elif c.cmd in REMOVE:
            parent, name = self._parent(c.path)
            self._child(parent, name)
            parent.children[name] = None
        elif c.cmd in MODIFY:
            self._node(c.path).modified = True
        elif c.cmd == Cmd.UTIMES:
            self._node(c.path).times = True

    def _node(self, path: str) -> _Node:
        node = self.root
        for name in path.split("/") if path else ():
            node = self._child(node, name)
        return node

    def _parent(self, path: str) -> tuple[_Node, str]:
        head, _, name = path.rpartition("/")
        return self._node(head), name

    def _child_or_none(self, parent: _Node, name: str) -> _Node | None:
        if name in parent.children:
            return parent.children[name]
        origin = None if parent.origin is None else _join(parent.origin, name)
        child = _Node(origin)
        parent.children[name] = child
        if origin is not None:
            self.origins.add(origin)
        return child

    def _child(self, parent: _Node, name: str) -> _Node:
        child = self._child_or_none(parent, name)
        if child is None:
            raise FsError(f"btrfs send stream: {name!r} used after its removal")
        return child

    def live(self) -> Iterator[tuple[str, _Node]]:
        """(path in the newer tree, node) of every node that exists at the end."""
        todo = [("", self.root)]
        while todo:
            path, node = todo.pop()
            yield path, node
            todo.extend((_join(path, n), c) for n, c in node.children.items() if c is not None)

    def changes(self, older: Path, newer: Path, others: Iterable[str] = ()) -> Changes:
        """Classify every touched path by looking at both snapshots (see base.py).
        `others`: paths reported apart (in nested subvolumes), whose directories' time
        changes are echoes too."""
        out = _Report(older, newer)
        for path, node in self.live():
            if node.origin == path:
                if node.modified:
                    out.changed.add(path)
                elif node.times:
                    out.times(path)
            elif os.path.lexists(older / path):
                out.compare(path)
            else:
                out.add(path)
        for origin in self.origins:
            # An origin may name nothing: the orphan name a removed entry was renamed to.
            if os.path.lexists(older / origin) and not os.path.lexists(newer / origin):
                out.remove(origin)
        return out.result(others)


class _Report:
    """Added, removed and changed paths, found by looking at both snapshots."""

    def __init__(self, older: Path, newer: Path) -> None:
        self.older, self.newer = older, newer
        self.added: set[str] = set()
        self.removed: set[str] = set()
        self.changed: set[str] = set()
        self.times_only: set[str] = set()

    def add(self, rel: str) -> None:
        self.added.add(rel)
        self.added.update(descendants(self.newer, rel))

    def remove(self, rel: str) -> None:
        self.removed.add(rel)
        self.removed.update(descendants(self.older, rel))

    def times(self, rel: str) -> None:
        """utimes alone: a change if the mtime moved (a new link moves only the ctime)."""
        a, b = entry_at(self.older, rel), entry_at(self.newer, rel)
        if a.mtime_ns != b.mtime_ns:
            (self.times_only if b.kind == "d" else self.changed).add(rel)

    def compare(self, rel: str) -> None:
        """Another inode now stands at `rel`: compare what can be seen of both, like
        tree.compare does (directories entry by entry)."""
        a, b = entry_at(self.older, rel), entry_at(self.newer, rel)
        if a.kind != b.kind:
            self.changed.add(rel)
            self.removed.update(descendants(self.older, rel))
            self.added.update(descendants(self.newer, rel))
        elif a.kind == "d":
            if not a.same_metadata(b):
                self.changed.add(rel)
            elif a.mtime_ns != b.mtime_ns:
                self.times_only.add(rel)
            self._compare_entries(rel)
        elif (
            not a.same_metadata(b)
            or a.mtime_ns != b.mtime_ns
            or (a.kind == "f" and file_digest(self.older / rel) != file_digest(self.newer / rel))
        ):
            self.changed.add(rel)

    def _compare_entries(self, rel: str) -> None:
        names_a = set(os.listdir(self.older / rel))
        names_b = set(os.listdir(self.newer / rel))
        for name in names_a | names_b:
            child = _join(rel, name)
            if name not in names_b:
                self.remove(child)
            elif name not in names_a:
                self.add(child)
            else:
                self.compare(child)

    def result(self, others: Iterable[str] = ()) -> Changes:
        def rel(paths: set[str]) -> set[str]:
            return {p or ROOT for p in paths}

        a, r = rel(self.added), rel(self.removed)
        changed = drop_time_echoes(rel(self.changed), rel(self.times_only), a | r | set(others))
        return Changes(sorted(a), sorted(r), changed)


def descendants(root: Path, rel: str) -> list[str]:
    """Every path below directory root/rel, relative to root (none if not a directory)."""
    top = root / rel
    if top.is_symlink() or not top.is_dir():
        return []
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(top):
        base = os.path.relpath(dirpath, root)
        found.extend(_join("" if base == "." else base, n) for n in dirnames + filenames)
    return found


def changes(stream: bytes, older: Path, newer: Path, others: Iterable[str] = ()) -> Changes:
    """What differs from snapshot `older` to snapshot `newer`, given the send stream
    (`others`: see Replay.changes)."""
    replay = Replay()
    for command in parse(stream):
        replay.apply(command)
    return replay.changes(older, newer, others)
