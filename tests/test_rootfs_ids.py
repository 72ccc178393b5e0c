"""Ownership of a private area moved between id ranges (ve/rootfs.shift_ids): every file
of the range, never through a symlink, set-id bits and file capabilities kept."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cpt.errors import CptError
from ve.rootfs import shift_ids

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root"),
]
BASE = 300000


def test_shift_moves_the_range_and_keeps_bits(tmp_path: Path) -> None:
    area = tmp_path / "area"
    outside = tmp_path / "outside"
    outside.write_text("host file")
    (area / "etc").mkdir(parents=True)
    (area / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (area / "home").mkdir()
    os.chown(area / "home", 1000, 1000)
    suid = area / "suid"
    suid.write_bytes(b"\x7fELF")
    os.chmod(suid, 0o4755)
    os.setxattr(
        suid, "security.capability", bytes.fromhex("0000000200200000000000000000000000000000")
    )
    (area / "link").symlink_to(outside)  # never followed
    os.mkfifo(area / "fifo")
    os.mknod(area / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    big = area / "big-id"
    big.write_text("")
    os.chown(big, 70000, 70000)  # outside the 65536 ids: stays
    n = shift_ids(str(area), 0, BASE, 65536)
    assert n == 8
    st = os.lstat(area)
    assert (st.st_uid, st.st_gid) == (BASE, BASE)
    assert os.lstat(area / "etc" / "passwd").st_uid == BASE
    assert os.lstat(area / "home").st_uid == BASE + 1000
    assert os.lstat(area / "link").st_uid == BASE
    assert os.lstat(outside).st_uid == 0, "the symlink's target is not touched"
    assert os.lstat(area / "fifo").st_gid == BASE
    assert os.lstat(area / "null").st_uid == BASE
    assert os.lstat(big).st_uid == 70000
    assert stat.S_IMODE(os.lstat(suid).st_mode) == 0o4755, "chown cleared it: put back"
    assert os.getxattr(suid, "security.capability")[:4] == bytes.fromhex("00000002")
    # and back (a VE made privileged again)
    shift_ids(str(area), BASE, 0, 65536)
    assert os.lstat(area / "home").st_uid == 1000 and os.lstat(area).st_uid == 0
    assert stat.S_IMODE(os.lstat(suid).st_mode) == 0o4755


def test_shift_of_a_missing_area_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(CptError, match="shifting the owners of"):
        shift_ids(str(tmp_path / "nothing"), 0, BASE, 65536)
