"""Errors of the snapshot layer: filesystems, backends, the pool, the command runner.

All are system errors for the CLI (exit 3): the storage under a VE failed, not the user's
input. Each names the path or command involved.
"""

from __future__ import annotations

from collections.abc import Sequence

from cpt.errors import SystemError_


class FsError(SystemError_):
    """A filesystem or snapshot operation failed; `path` is the area or snapshot involved."""

    def __init__(self, msg: str, *, path: object = None) -> None:
        super().__init__(msg)
        self.path = path


class UnsupportedFs(FsError):
    """The backend cannot do this on this path (not a subvolume, not an LV, no reflinks...)."""


class CommandError(FsError):
    """An external tool failed: the command, its exit code and the last line it wrote to
    stderr. `returncode` is None when the tool could not be started or was killed."""

    def __init__(
        self, msg: str, *, argv: Sequence[str], returncode: int | None, stderr: str = ""
    ) -> None:
        super().__init__(msg)
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr


class CommandTimeout(CommandError):
    """An external tool ran longer than its timeout and was killed."""


class PoolError(FsError):
    """The embedded storage pool of the node cannot be created, found or mounted."""
