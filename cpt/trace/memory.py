"""A traced thread's memory, read and written through /proc/TID/mem.

The kernel accesses /proc/TID/mem with FOLL_FORCE: reads work on PROT_NONE pages and
writes go into read-only ones (code, a scratch area's instruction), which
process_vm_readv/writev refuse.  The file is opened once, on first use, and kept until
close().
"""

from __future__ import annotations

import errno
import os

from cpt.procfs import open_mem


class ThreadMemory:
    """The memory of thread `tid` (any thread of a process sees the same memory)."""

    def __init__(self, tid: int) -> None:
        self.tid = tid
        self._fd: int | None = None

    def _file(self) -> int:
        if self._fd is None:
            self._fd = open_mem(self.tid, os.O_RDWR)
        return self._fd

    def read(self, addr: int, size: int) -> bytes:
        fd = self._file()
        out = bytearray()
        while len(out) < size:
            try:
                chunk = os.pread(fd, size - len(out), addr + len(out))
            except OSError as e:
                raise OSError(
                    e.errno,
                    f"read {size} bytes at {addr + len(out):#x} of pid {self.tid}: {e.strerror}",
                ) from None
            if not chunk:
                raise OSError(
                    errno.EIO, f"read at {addr + len(out):#x} of pid {self.tid}: unmapped address"
                )
            out += chunk
        return bytes(out)

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        fd = self._file()
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            try:
                n = os.pwrite(fd, view[done:], addr + done)
            except OSError as e:
                raise OSError(
                    e.errno,
                    f"write {len(view)} bytes at {addr + done:#x} of pid {self.tid}: {e.strerror}",
                ) from None
            if n <= 0:
                raise OSError(
                    errno.EIO, f"write at {addr + done:#x} of pid {self.tid}: unmapped address"
                )
            done += n

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
