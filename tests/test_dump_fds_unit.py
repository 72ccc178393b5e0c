"""The fd table's sharing of open-file descriptions (cpt/dump/fds.py), on this process's own
fds: one record per description, whatever number of fds refer to it, found by a binary
search in kcmp order (a few comparisons per fd, not one per description of the file)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cpt.dump import fds as fds_mod
from cpt.dump.fds import FdTable
from cpt.dump.options import DumpOptions
from cpt.dump.paths import PathTable
from cpt.procfs import Proc


def test_descriptions_of_one_file_are_found_by_binary_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 400
    path = tmp_path / "f"
    path.write_bytes(b"x" * n)
    opened = [os.open(path, os.O_RDONLY | os.O_CLOEXEC) for _ in range(n)]
    dups = [os.dup(fd) for fd in opened[::10]]  # one more fd for every 10th description
    calls = 0
    real = fds_mod.kcmp

    def counting(*args: int) -> int:
        nonlocal calls
        calls += 1
        return real(*args)

    monkeypatch.setattr(fds_mod, "kcmp", counting)
    try:
        for i, fd in enumerate(opened):
            os.lseek(fd, i, os.SEEK_SET)
        pid, proc = os.getpid(), Proc()
        table = FdTable(PathTable(), DumpOptions())
        targets, infos = proc.fd_targets(pid), proc.fdinfos(pid)
        ids = {fd: table.dump_fd(pid, fd, targets[fd], infos[fd]).file_id for fd in opened + dups}
    finally:
        for fd in opened + dups:
            os.close(fd)
    assert len({ids[fd] for fd in opened}) == n, "each open() is a description of its own"
    assert all(ids[d] == ids[o] for d, o in zip(dups, opened[::10], strict=True)), "a dup shares"
    assert sorted(r.pos for r in table.descriptions) == list(range(n)), "each its own offset"
    # a binary search among up to n descriptions: at most ~log2(n) + 1 = 10 per fd
    assert calls <= (n + len(dups)) * 10, calls
