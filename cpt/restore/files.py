"""Files opened by path: regular files, directories, simple character devices; opened
with the credentials of a process that holds them (creds.py)."""

from __future__ import annotations

import os
from typing import Any

from cptimage.records import RegFile

from ..errors import RestoreError
from .creds import open_held
from .fdbase import OPEN_IGNORE
from .model import ImageModel
from .pstree import Task


class Files:
    records = (RegFile,)

    def open(self, model: ImageModel, desc: Any) -> int:
        p = model.path(desc.path_id)
        path = p.path
        flags = (desc.flags & ~OPEN_IGNORE) | os.O_CLOEXEC
        what = f"cannot open {path}"
        try:
            fd = open_held(model, model.holders_of_file(desc.id), p, flags, what)
        except OSError as e:
            raise RestoreError(f"{what}: {e.strerror}") from None
        try:
            os.lseek(fd, desc.pos, os.SEEK_SET)
        except OSError:
            pass  # not seekable (a character device): nothing to restore
        return fd

    def after_install(self, model: ImageModel, task: Task, local: dict[int, int]) -> None:
        pass

    def close(self) -> None:
        pass
