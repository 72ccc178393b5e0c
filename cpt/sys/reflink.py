"""The two file-system calls the snapshot layer needs and the os module lacks: FICLONE (share
a file's extents with another file: a reflink copy) and syncfs(2)."""

from __future__ import annotations

from cpt.sys._libc import checked_syscall
from cpt.sys.syscalls import NR

# _IOW(0x94, 9, int) from linux/fs.h.
FICLONE = 0x40049409


def ficlone(src_fd: int, dst_fd: int) -> None:
    """Make `dst_fd` share every extent of `src_fd` (same filesystem only). Raises OSError:
    EOPNOTSUPP where the filesystem has no reflinks (ext4, tmpfs), EXDEV across filesystems."""
    checked_syscall(
        f"ioctl(FICLONE, fd {src_fd} -> fd {dst_fd})", None, NR.ioctl, dst_fd, FICLONE, src_fd
    )


def syncfs(fd: int) -> None:
    """syncfs(2): write back the whole filesystem that holds `fd`, and wait for it."""
    checked_syscall(f"syncfs(fd {fd})", None, NR.syncfs, fd)
