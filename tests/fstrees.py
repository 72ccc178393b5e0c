"""The trees the storage tests write into an area, change and compare: every kind of
entry, attribute and change a snapshot backend must see (storage/base.py says what counts
as a change)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from storage.base import Changes


def tree(root: Path, *, times: bool = True) -> dict[str, tuple[Any, ...]]:
    """path -> every attribute a snapshot must keep: type and mode, owner, mtime (unless
    not `times`), content (or link target, or device number), xattrs, and which paths
    share an inode."""
    out: dict[str, tuple[Any, ...]] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                value: Any = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                value = p.read_bytes()
            else:
                value = st.st_rdev
            xattrs = {n: os.getxattr(p, n, follow_symlinks=False)
                      for n in os.listxattr(p, follow_symlinks=False)}  # fmt: skip
            link = inodes.setdefault(st.st_ino, rel) if st.st_nlink > 1 and not p.is_dir() else ""
            mtime = st.st_mtime_ns if times else None
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, mtime, value, xattrs, link)
    return out


def populate(area: Path) -> None:
    for name in ("mod", "same", "gone", "old", "perm", "xa", "keep"):
        (area / name).write_bytes(name.encode() * 100)
    for d in ("tree/sub", "d", "d2", "big"):
        (area / d).mkdir(parents=True)
    (area / "tree/x").write_text("x")
    (area / "tree/sub/y").write_text("y")
    (area / "d/in").write_text("in")
    (area / "big/1").write_text("1")
    (area / "big/2").write_text("2")


def mutate(area: Path) -> Changes:
    """One change of every kind (on a tree `populate` wrote); returns what a report must
    say about it."""
    with open(area / "mod", "ab") as f:
        f.write(b"more")
    # Same size, same mtime: only the content tells.
    st = (area / "same").stat()
    with open(area / "same", "r+b") as f:
        f.write(b"SAME")
    os.utime(area / "same", ns=(st.st_atime_ns, st.st_mtime_ns))
    (area / "new").write_text("new")
    (area / "gone").unlink()
    (area / "old").rename(area / "renamed")
    (area / "tree").rename(area / "tree2")
    (area / "perm").chmod(0o600)
    os.setxattr(area / "xa", "user.cpt", b"1")
    (area / "d/z").write_text("z")  # d's mtime moves too: an echo, not reported
    os.utime(area / "d2", ns=(1, 1))  # a directory whose only change is its times
    for name in ("1", "2"):
        (area / "big" / name).unlink()
    (area / "big").rmdir()
    (area / "lnk").symlink_to("keep")
    (area / "keep").read_bytes()  # a read is no change (noatime)
    return Changes(
        added=["d/z", "lnk", "new", "renamed", "tree2", "tree2/sub", "tree2/sub/y", "tree2/x"],
        removed=["big", "big/1", "big/2", "gone", "old", "tree", "tree/sub", "tree/sub/y",
                 "tree/x"],
        changed=["d2", "mod", "perm", "same", "xa"],
    )  # fmt: skip


def special(area: Path) -> None:
    """Every kind of entry and attribute a rollback must bring back."""
    (area / "suid").write_bytes(b"#!/bin/sh\n")
    (area / "suid").chmod(0o4755)
    (area / "owned").write_text("owned")
    os.chown(area / "owned", 1234, 5678)
    (area / "private").write_text("private")
    (area / "private").chmod(0o600)
    (area / "hard1").write_text("shared inode")
    os.link(area / "hard1", area / "hard2")
    (area / "sym").symlink_to("owned")
    os.mkfifo(area / "fifo")
    os.mknod(area / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.setxattr(area / "owned", "user.note", b"\x00binary\nvalue")
    (area / "sticky").mkdir()
    (area / "sticky").chmod(0o1777)
    os.utime(area / "private", ns=(1_000_000_123, 2_000_000_456))
