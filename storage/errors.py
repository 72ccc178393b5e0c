"""Errors of the storage layer: filesystems, backends, the pool.

All are system errors for the CLI (exit 3): the storage under a VE failed, not the user's
input. Each names the path or command involved.
"""

from __future__ import annotations

from cpt.errors import SystemError_


class FsError(SystemError_):
    """A filesystem or snapshot operation failed; `path` is the area or snapshot involved."""

    def __init__(self, msg: str, *, path: object = None) -> None:
        super().__init__(msg)
        self.path = path


class UnsupportedFs(FsError):
    """The backend cannot do this on this path (not a subvolume, not an LV, no reflinks...)."""


class PoolError(FsError):
    """The embedded storage pool of the node cannot be created, found or mounted."""
