"""The one libc handle of the engine and the raw syscall entry point.

Every wrapper in cpt/sys calls the kernel through `raw_syscall` (glibc's `syscall(3)`, which
is plain assembly: no va_list, so a fixed 7-argument ctypes prototype is safe) and turns a
failure into an exception with `errno_error`, which names the pid and maps ESRCH on a dead
process to NoSuchProcess.
"""

from __future__ import annotations

import ctypes
import errno
import os

from cpt.errors import NoSuchProcess, ZombieProcess

libc = ctypes.CDLL(None, use_errno=True)

_syscall = libc.syscall
_syscall.restype = ctypes.c_long
# c_long wraps Python ints modulo 2**64 silently, so u64 addresses and -1 both pass through.
_syscall.argtypes = [ctypes.c_long] * 7

get_errno = ctypes.get_errno


def raw_syscall(
    nr: int, a1: int = 0, a2: int = 0, a3: int = 0, a4: int = 0, a5: int = 0, a6: int = 0
) -> int:
    """Call syscall `nr` in THIS process; returns the kernel result, -1 with errno on failure."""
    return int(_syscall(nr, a1, a2, a3, a4, a5, a6))


def errno_error(err: int, what: str, pid: int | None = None) -> Exception:
    """An exception for a failed call `what` on `pid`.

    ESRCH on a task that no longer exists (or is a zombie) becomes NoSuchProcess/ZombieProcess;
    ptrace's ESRCH on a live task means "not a stopped tracee of this thread" and stays OSError;
    any other call's ESRCH on a task still listed means it is exiting (its mm is gone, as
    process_vm_readv finds it before /proc does): NoSuchProcess.
    """
    if err == errno.ESRCH and pid is not None:
        from cpt.procfs import Proc  # here: every system call module imports this one

        state = Proc().state(pid)
        if state is None or state == "X":
            return NoSuchProcess(pid, f"{what}: process {pid} does not exist")
        if state == "Z":
            return ZombieProcess(pid, f"{what}: process {pid} is a zombie")
        if not what.startswith("ptrace"):
            # its memory (or the rest of it) went before its /proc entry: it is exiting
            return NoSuchProcess(pid, f"{what}: process {pid} is exiting")
        return OSError(
            err, f"{what}: pid {pid} is not a stopped tracee of this thread ({os.strerror(err)})"
        )
    where = f" pid {pid}" if pid is not None else ""
    return OSError(err, f"{what}{where}: {os.strerror(err)}")


def check(ret: int, what: str, pid: int | None = None) -> int:
    """Return `ret`, or raise for the errno of a -1 result."""
    if ret == -1:
        raise errno_error(get_errno(), what, pid)
    return ret


def checked_syscall(what: str, pid: int | None, nr: int, *args: int) -> int:
    """raw_syscall + check in one call."""
    ret = int(_syscall(nr, *args, *([0] * (6 - len(args)))))
    if ret == -1:
        raise errno_error(get_errno(), what, pid)
    return ret


class PinnedBuffer:
    """The address and length of any contiguous Python buffer, held for the `with` block.

    Writable buffers (bytearray, mmap, writable memoryview) go through ctypes.from_buffer;
    read-only ones (bytes, read-only memoryview, read-only mmap) through PyObject_GetBuffer,
    so no copy is made either way.
    """

    __slots__ = ("_obj", "_view", "address", "length")

    def __init__(self, obj: object, writable: bool) -> None:
        self._obj = obj
        self._view: _PyBuffer | None = None
        mv = memoryview(obj)  # type: ignore[arg-type]
        if not mv.contiguous:
            raise ValueError("buffer must be contiguous")
        self.length = mv.nbytes
        mv.release()
        if self.length == 0:
            self.address = 0
            return
        view = _PyBuffer()
        flags = _PyBUF_WRITABLE if writable else _PyBUF_SIMPLE
        if _PyObject_GetBuffer(ctypes.py_object(obj), ctypes.byref(view), flags) != 0:
            raise BufferError("cannot get buffer")
        self._view = view
        self.address = int(view.buf or 0)

    def release(self) -> None:
        if self._view is not None:
            _PyBuffer_Release(ctypes.byref(self._view))
            self._view = None

    def __enter__(self) -> PinnedBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


class _PyBuffer(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_PyBUF_SIMPLE = 0
_PyBUF_WRITABLE = 1
_PyObject_GetBuffer = ctypes.pythonapi.PyObject_GetBuffer
_PyObject_GetBuffer.argtypes = [ctypes.py_object, ctypes.c_void_p, ctypes.c_int]
_PyObject_GetBuffer.restype = ctypes.c_int
_PyBuffer_Release = ctypes.pythonapi.PyBuffer_Release
_PyBuffer_Release.argtypes = [ctypes.c_void_p]
_PyBuffer_Release.restype = None
