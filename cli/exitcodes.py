"""Exit codes of every cpt command, and which error maps to which.

SPEC.md section 9 holds the same table (tests/test_spec.py keeps the two equal).  The
codes follow vzctl's where vzctl has one.  Only cli/main.py turns errors into codes.
"""

from __future__ import annotations

from cpt import errors as E
from cptimage.errors import ImageError, ImageVersionError

OK = 0
PROBLEMS = 1
SYSTEM = 3
LOCKED = 9
DUMP_FAILED = 16
RESTORE_FAILED = 17
USAGE = 20
INVALID_VALUE = 21
NOT_RUNNING = 31
RUNNING = 32
IMAGE = 40
IMAGE_VERSION = 41
INTERRUPTED = 130

# code -> meaning, exactly as SPEC.md section 9 words it
MEANINGS: dict[int, str] = {
    OK: "success",
    PROBLEMS: "`image verify` found problems; `image diff` found differences",
    SYSTEM: "system error (a system call failed unexpectedly)",
    LOCKED: "locked: another cpt command holds the VE or tree",
    DUMP_FAILED: "checkpoint failed; the workload was left running",
    RESTORE_FAILED: "restore failed; nothing of the tree was left alive",
    USAGE: "invalid syntax (unknown option, missing argument, conflicting stages)",
    INVALID_VALUE: "invalid value",
    NOT_RUNNING: "VE or tree not running",
    RUNNING: "VE or tree running",
    IMAGE: "the image cannot be read: not an image, corrupted, truncated, cannot open",
    IMAGE_VERSION: "the image's format version is newer than this cpt reads",
    INTERRUPTED: "interrupted (Ctrl-C)",
}

# error class -> code; the first class an error is an instance of wins (subclasses first)
ERRORS: tuple[tuple[type[BaseException], int], ...] = (
    (ImageVersionError, IMAGE_VERSION),
    (ImageError, IMAGE),
    (E.UsageError, USAGE),
    (E.InvalidValue, INVALID_VALUE),
    (E.SystemError_, SYSTEM),
    (E.LockedError, LOCKED),
    (E.DumpError, DUMP_FAILED),
    (E.RestoreError, RESTORE_FAILED),
    (E.NotRunning, NOT_RUNNING),
    (E.AlreadyRunning, RUNNING),
    (E.CptError, SYSTEM),  # NoSuchProcess, AccessDenied, ...: no code of their own yet
    (KeyboardInterrupt, INTERRUPTED),
    (OSError, SYSTEM),
)


def code_for(exc: BaseException) -> int | None:
    """The documented exit code of an error, or None if it is not a known error (a bug)."""
    if isinstance(exc, E.CodedError):
        return exc.code
    for cls, code in ERRORS:
        if isinstance(exc, cls):
            return code
    return None


__all__ = ["ERRORS", "MEANINGS", "code_for"]
