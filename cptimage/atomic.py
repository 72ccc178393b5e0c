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
import os
import secrets
import sys
from collections.abc import Iterator
from typing import BinaryIO

STDOUT = "-"


def _create_temp(directory: str, base: str, mode: int) -> tuple[str, int]:
    for _ in range(100):
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
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


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], mode: int = 0o600) -> Iterator[BinaryIO]:
    """A binary file that appears at ``path`` only once it is complete and durable."""
    target = os.fspath(path)
    if target == STDOUT:
        out = sys.stdout.buffer
        yield out
        out.flush()
        return
    directory = os.path.dirname(os.path.abspath(target))
    tmp, fd = _create_temp(directory, os.path.basename(target), 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if mode != 0o600:
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.rename(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


__all__ = ["STDOUT", "atomic_output"]
