"""Atomic output files: a reader never sees a half-written file under its final name.

    with atomic_output("dump.img") as f:
        write(f)

writes to a temporary file in the same directory (created with O_EXCL, mode 0600), and
on success flushes, fsyncs, renames it over the destination and fsyncs the directory.
On an exception the temporary file is removed and the destination is left untouched.

The path "-" means standard output: bytes go straight to it, with no atomicity (a
consumer of a pipe sees whatever was written before a failure).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from collections.abc import Iterator
from typing import BinaryIO

STDOUT = "-"


def _create_temp(directory: str, base: str, mode: int) -> tuple[str, int]:
    for _ in range(100):
        tmp = os.path.join(directory, f".{base}.{os.urandom(6).hex()}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file in {directory}")


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_target(target: str) -> None:
    """Refuse a path an atomic write must not replace: a rename would replace whatever it
    names (a device, a FIFO, a directory)."""
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise FileExistsError(
            errno.EEXIST, "exists and is not a regular file; refusing to replace it", target
        )


class AtomicFile:
    """A file written under a temporary name and published by ``commit()``.

    Split from ``atomic_output`` for writers that must do something between writing and
    the (slow) fsync: a checkpoint resumes the workload first.
    """

    def __init__(self, path: str | os.PathLike[str], mode: int = 0o600) -> None:
        self.target = os.fspath(path)
        check_target(self.target)
        self.mode = mode
        self.directory = os.path.dirname(os.path.abspath(self.target))
        self.tmp, fd = _create_temp(self.directory, os.path.basename(self.target), 0o600)
        self.file: BinaryIO = os.fdopen(fd, "wb")

    def commit(self) -> None:
        """flush, fsync, rename over the target, fsync the directory."""
        try:
            self.file.flush()
            if self.mode != 0o600:
                os.fchmod(self.file.fileno(), self.mode)
            os.fsync(self.file.fileno())
            self.file.close()
            os.rename(self.tmp, self.target)
        except BaseException:
            self.abort()
            raise
        _fsync_dir(self.directory)

    def abort(self) -> None:
        """Drop the temporary file; the target is left untouched."""
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], mode: int = 0o600) -> Iterator[BinaryIO]:
    """A binary file that appears at ``path`` only once it is complete and durable."""
    if os.fspath(path) == STDOUT:
        out = sys.stdout.buffer
        yield out
        out.flush()
        return
    af = AtomicFile(path, mode)
    try:
        yield af.file
    except BaseException:
        af.abort()
        raise
    af.commit()


__all__ = ["STDOUT", "AtomicFile", "atomic_output", "check_target"]
