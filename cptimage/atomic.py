"""Atomic output files: a reader never sees a half-written file under its final name,
and a writer that dies leaves nothing behind.

    with atomic_output("dump.img") as f:
        write(f)

writes to an unnamed file in the destination's directory (O_TMPFILE, mode 0600: it
vanishes with the process if the writer dies, SIGKILL included); on success it flushes,
fsyncs, gives the file a temporary name (a link), renames that over the destination and
fsyncs the directory.  On an exception the file is dropped and the destination is left
untouched.  Where the filesystem has no O_TMPFILE, the file is named from the start
(`.NAME.RANDOM.tmp`, O_EXCL); a writer holds an flock on it, so the next writer of the
same destination sweeps one whose writer is gone (`sweep`).

The destination may be a symbolic link: the rename replaces the link itself, never what
it points to.  A directory, device or FIFO there is refused (`check_target`).

The path "-" means standard output: bytes go straight to it, with no atomicity (a
consumer of a pipe sees whatever was written before a failure).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import sys
from collections.abc import Iterator
from typing import BinaryIO

STDOUT = "-"
# Where this process's fds are seen as links to their files: linkat(AT_SYMLINK_FOLLOW)
# of an O_TMPFILE fd's entry gives it a name without CAP_DAC_READ_SEARCH (AT_EMPTY_PATH).
_FD_DIR = "/dev/fd"
# errnos of open(O_TMPFILE) on a filesystem (or kernel) without it
_NO_TMPFILE = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOSYS})


def _temp_name(directory: str, base: str) -> str:
    return os.path.join(directory, f".{base}.{os.urandom(6).hex()}.tmp")


def _create_temp(directory: str, base: str, mode: int) -> tuple[str, int]:
    for _ in range(100):
        tmp = _temp_name(directory, base)
        try:
            # read-write: a dump maps its page data in place (container.PageArea)
            return tmp, os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file in {directory}")


def check_target(target: str) -> None:
    """Refuse a path an atomic write must not replace: a rename would replace whatever it
    names (a device, a FIFO, a directory).  A symbolic link is looked at itself (lstat),
    never followed: the rename replaces the link, whatever it points to."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        raise FileExistsError(
            errno.EEXIST, "exists and is not a regular file; refusing to replace it", target
        )


def sweep(target: str) -> list[str]:
    """Remove the temporary files of `target` (`.NAME.*.tmp` beside it) whose writers are
    gone (no flock held on them); returns their paths."""
    directory = os.path.dirname(os.path.abspath(target))
    prefix = f".{os.path.basename(target)}."
    gone: list[str] = []
    try:
        names = [n for n in os.listdir(directory) if n.startswith(prefix) and n.endswith(".tmp")]
    except OSError:
        return gone
    for name in names:
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its writer is at work
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(path).st_ino == os.fstat(fd).st_ino:
                    os.unlink(path)
                    gone.append(path)
        finally:
            os.close(fd)
    return gone


class AtomicFile:
    """A file written unnamed and published by ``commit()`` (``sync()``, then
    ``publish()``).

    Split from ``atomic_output`` for writers that must do something between writing and
    the (slow) fsync, or between the fsync and the rename: a checkpoint resumes the
    workload first, or kills it only once the file is durable and published.
    """

    def __init__(
        self, path: str | os.PathLike[str], mode: int = 0o600, *, durable: bool = True
    ) -> None:
        self.target = os.fspath(path)
        check_target(self.target)
        self.mode = mode
        self.durable = durable  # False: no fsync (a file that means nothing after a crash)
        self.directory = os.path.dirname(os.path.abspath(self.target))
        self.base = os.path.basename(self.target)
        sweep(self.target)
        # every name below is relative to the directory's fd: one directory throughout
        self._dir = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.tmp: str | None = None  # its temporary name in the directory, once it has one
        try:
            try:
                # read-write: a dump maps its page data in place (container.PageArea)
                flags = os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC
                fd = os.open(".", flags, 0o600, dir_fd=self._dir)
            except OSError as e:
                if e.errno not in _NO_TMPFILE:
                    raise
                tmp, fd = _create_temp(self.directory, self.base, 0o600)
                self.tmp = os.path.basename(tmp)
            fcntl.flock(fd, fcntl.LOCK_EX)  # ours while we live: sweep() leaves it alone
        except BaseException:
            os.close(self._dir)
            raise
        self.file: BinaryIO = os.fdopen(fd, "wb")

    def commit(self) -> None:
        """flush, fsync, rename over the target, fsync the directory."""
        self.sync()
        self.publish()

    def sync(self) -> None:
        """flush and fsync: the contents are durable (not yet under the target's name)."""
        try:
            self.file.flush()
            if self.mode != 0o600:
                os.fchmod(self.file.fileno(), self.mode)
            if self.durable:
                os.fsync(self.file.fileno())
        except BaseException:
            self.abort()
            raise

    def publish(self) -> None:
        """Give the synced file the target's name (rename over it: a symbolic link there
        is replaced, never followed), then fsync the directory."""
        try:
            tmp = self.tmp if self.tmp is not None else self._link()
            os.rename(tmp, self.base, src_dir_fd=self._dir, dst_dir_fd=self._dir)
            self.tmp = None
            self.file.close()
            if self.durable:
                os.fsync(self._dir)
        finally:
            self.abort()

    def _link(self) -> str:
        """A temporary name for the unnamed file (linkat AT_SYMLINK_FOLLOW of its fd), in
        `tmp`.  The name is kept before the link is made: a signal that interrupts the
        command as the link returns leaves no named file behind (abort unlinks it)."""
        src = f"{_FD_DIR}/{self.file.fileno()}"
        for _ in range(100):
            self.tmp = os.path.basename(_temp_name(self.directory, self.base))
            try:
                os.link(src, self.tmp, dst_dir_fd=self._dir, follow_symlinks=True)
                return self.tmp
            except FileExistsError:
                self.tmp = None  # another file's random name: never ours to unlink
                continue
        raise FileExistsError(f"cannot name a temporary file in {self.directory}")

    def abort(self) -> None:
        """Drop the temporary file (an unnamed one vanishes as it is closed); the target is
        left untouched.  After publish() there is nothing left to drop."""
        with contextlib.suppress(OSError):
            self.file.close()
        if self._dir < 0:
            return
        if self.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp, dir_fd=self._dir)
            self.tmp = None
        os.close(self._dir)
        self._dir = -1


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike[str], mode: int = 0o600, *, durable: bool = True
) -> Iterator[BinaryIO]:
    """A binary file that appears at ``path`` only once it is complete and durable
    (`durable` False: complete, not synced: for a file that describes running processes,
    which a crash makes stale anyway)."""
    if os.fspath(path) == STDOUT:
        out = sys.stdout.buffer
        yield out
        out.flush()
        return
    af = AtomicFile(path, mode, durable=durable)
    try:
        yield af.file
    except BaseException:
        af.abort()
        raise
    af.commit()


__all__ = ["STDOUT", "AtomicFile", "atomic_output", "check_target", "sweep"]
