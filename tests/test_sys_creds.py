"""cpt/sys/creds.py: the calling thread's filesystem credentials, switched for a block and
put back; other threads keep theirs (what a restorer opening a process's files needs)."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cpt.sys.creds import acting_as, cap_names, capget, fsgid, fsuid, thread_groups

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching fsuid needs root")


@pytest.fixture
def private() -> Iterator[Path]:
    """A directory holding a root-only file (0600) and a directory of uid 1001's."""
    d = Path(tempfile.mkdtemp(prefix="cpt-creds-"))
    (d / "secret").write_text("root\n")
    (d / "secret").chmod(0o600)
    (d / "open").mkdir()
    os.chown(d / "open", 1001, 1001)
    d.chmod(0o755)
    yield d
    for p in sorted(d.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    d.rmdir()


def test_the_block_opens_as_the_user_and_everything_comes_back(private: Path) -> None:
    before = (fsuid(), fsgid(), thread_groups(), capget())
    with acting_as(1001, 1001, [1001], 0):
        assert (fsuid(), fsgid(), thread_groups()) == (1001, 1001, [1001])
        assert capget()[0] == 0
        with pytest.raises(PermissionError):
            os.open(private / "secret", os.O_RDONLY)
        fd = os.open(private / "open" / "mine", os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    st = os.stat(private / "open" / "mine")
    assert (st.st_uid, st.st_gid) == (1001, 1001), "created as the user"
    assert (fsuid(), fsgid(), thread_groups(), capget()) == before
    os.close(os.open(private / "secret", os.O_RDONLY))  # root again


def test_a_group_and_a_capability_count(private: Path) -> None:
    (private / "secret").chmod(0o640)
    os.chown(private / "secret", 0, 4242)
    with acting_as(1001, 1001, [4242], 0):
        os.close(os.open(private / "secret", os.O_RDONLY))  # by its group
    with acting_as(1001, 1001, [], 1 << 1):  # cap_dac_override
        os.close(os.open(private / "secret", os.O_RDWR))


def test_an_error_in_the_block_still_puts_everything_back() -> None:
    before = (fsuid(), fsgid(), thread_groups(), capget())
    with pytest.raises(RuntimeError), acting_as(1001, 1001, [], 0):
        raise RuntimeError("inside")
    assert (fsuid(), fsgid(), thread_groups(), capget()) == before


def test_other_threads_keep_their_credentials() -> None:
    inside, go_on = threading.Event(), threading.Event()

    def act() -> None:
        with acting_as(1001, 1001, [1001], 0):
            inside.set()
            go_on.wait(10)

    t = threading.Thread(target=act)
    t.start()
    try:
        assert inside.wait(10)
        assert (fsuid(), fsgid()) == (0, 0) and 1001 not in thread_groups()
        assert capget()[0] != 0
    finally:
        go_on.set()
        t.join(10)


def test_cap_names() -> None:
    assert cap_names(0) == "none"
    assert cap_names(1 << 7 | 1 << 21) == "cap_setuid,cap_sys_admin"
