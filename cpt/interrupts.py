"""The signals that ask a command to stop: SIGINT (Ctrl-C), SIGTERM (what `kill`,
`timeout` and systemd send) and SIGHUP (a closed terminal).

`install()` makes each of them raise `Interrupted` (a KeyboardInterrupt, so that no
`except Exception` swallows it) in the main thread, once: the unwinding it starts (resume
the tree, remove the temporary dump file, thaw the freezer, bring a VE's link up, release
the lock) then runs to its end, and signals arriving meanwhile are only remembered.

Two things keep a signal from cutting a step in the middle:

    deferred()      an injected syscall and its session, a journalled change: a signal
                    arriving inside is raised as soon as the block is left
    no_return()     the point of no return is passed (the dump is committed, so the tree
                    is killed; the restored tree is released; a kill stage began): from
                    there on no signal is raised; the command completes, and `late()`
                    tells the CLI to say that the signal came too late to stop it

Without `install()` (a library user's program) the process keeps its own handlers:
SIGINT raises KeyboardInterrupt anywhere, and deferred()/no_return() only count.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A command was asked to stop by a signal (SIGINT, SIGTERM, SIGHUP)."""

    def __init__(self, signo: int) -> None:
        self.signo = signo
        self.signame = signal.Signals(signo).name
        super().__init__(f"interrupted by {self.signame}")


_depth = 0  # deferred() blocks entered
_committed = False  # past the point of no return
_pending: int | None = None  # a signal not raised yet
_raised = False  # one Interrupted was raised: the command is unwinding
_received: int | None = None  # the first signal received, raised or not


def install() -> dict[int, Any]:
    """SIGINT, SIGTERM and SIGHUP raise Interrupted from now on (main thread only), with
    every signal received so far forgotten; returns the handlers they had (uninstall())."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("interrupts.install() must run in the main thread")
    reset()
    return {int(s): signal.signal(s, _handler) for s in SIGNALS}


def uninstall(old: dict[int, Any]) -> None:
    """Give the signals back the handlers install() returned."""
    for s, h in old.items():
        signal.signal(s, h)


def reset() -> None:
    """Forget every signal received (a process that runs several commands, tests)."""
    global _depth, _committed, _pending, _raised, _received
    _depth = 0
    _pending = _received = None
    _raised = _committed = False


def received() -> int | None:
    """The first stopping signal this command received (raised or held), or None."""
    return _received


def late() -> int | None:
    """The signal that came once the point of no return was passed (the command went on
    to its end), or None."""
    return _received if _committed and not _raised else None


def unwinding() -> bool:
    """Has an Interrupted been raised (the command is undoing what it did)?"""
    return _raised


def _handler(signo: int, frame: FrameType | None) -> None:
    global _pending, _received
    if _received is None:
        _received = signo
    if _raised or _committed:
        return  # unwinding already, or past the point of no return: finish
    _pending = signo
    if not _depth:
        _raise()


def _raise() -> None:
    global _pending, _raised
    signo = _pending
    assert signo is not None
    _pending = None
    _raised = True
    raise Interrupted(signo)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A step that must not be cut in the middle: a signal arriving inside is raised as
    soon as the block is left (unless it raised an exception of its own)."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    if not _depth and _pending is not None and not _raised and not _committed:
        _raise()


def no_return() -> None:
    """The point of no return is passed: from now on a signal (or one pending in a
    deferred block) is not raised; the command completes, and late() names it."""
    global _committed, _pending
    _committed = True
    _pending = None


__all__ = [
    "Interrupted",
    "deferred",
    "install",
    "late",
    "no_return",
    "received",
    "reset",
    "uninstall",
    "unwinding",
]
