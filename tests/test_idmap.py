"""Machine-wide id ranges of VEs (ve/idmap.py), in a scratch directory (never /etc):
allocation past host users' ranges, the subuid/subgid lines, release, reclaim of ranges
whose VE is gone, two node roots, the hand-over, and concurrent creates."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from cpt.errors import LockedError
from ve import idmap
from ve.idmap import FIRST_ID, ID_COUNT, IdRangeError, IdRegistry


@pytest.fixture
def reg(tmp_path: Path) -> IdRegistry:
    return IdRegistry(str(tmp_path / "ids"))


def node(tmp_path: Path, name: str, *veids: str) -> str:
    """A node root with configs for `veids` (only their existence matters here)."""
    root = tmp_path / name
    (root / "ve").mkdir(parents=True, exist_ok=True)
    for v in veids:
        (root / "ve" / f"{v}.toml").write_text("")
    return str(root)


def lines(reg: IdRegistry, name: str) -> list[str]:
    return Path(reg.dir, name).read_text().splitlines()


def test_allocation_skips_users_and_writes_both_files(reg: IdRegistry, tmp_path: Path) -> None:
    os.makedirs(reg.dir)
    Path(reg.dir, "subuid").write_text(f"alice:{FIRST_ID}:65536\n# a comment\n")
    Path(reg.dir, "subgid").write_text(f"bob:{FIRST_ID + 65536}:1000\n")
    root = node(tmp_path, "n1", "101")
    a = reg.allocate("101", root)
    assert a == FIRST_ID + 65536 + 1000, "past alice's uids and bob's gids"
    reg.commit("101", root)
    b = reg.allocate("102", root)
    assert b == a + ID_COUNT
    assert lines(reg, "subuid") == [
        f"alice:{FIRST_ID}:65536",
        "# a comment",
        f"cpt-ve-101:{a}:65536",
        f"cpt-ve-102:{b}:65536",
    ]
    assert lines(reg, "subgid")[1:] == [f"cpt-ve-101:{a}:65536", f"cpt-ve-102:{b}:65536"]
    data = json.loads(Path(reg.dir, "cpt-idmap.json").read_text())["ranges"]
    assert data["101"] == {"root": root, "base": a, "count": ID_COUNT, "pending": None}
    assert data["102"]["pending"][0] == os.getpid(), "held by its creator until commit"


def test_release_gives_the_range_back(reg: IdRegistry, tmp_path: Path) -> None:
    root = node(tmp_path, "n1", "101", "102")
    a = reg.allocate("101", root)
    reg.commit("101", root)
    reg.allocate("102", root)
    reg.commit("102", root)
    reg.release("101", node(tmp_path, "other"))  # not its node root: nothing happens
    assert "101" in reg.holders()
    reg.release("101", root)
    assert "101" not in reg.holders()
    assert not any(ln.startswith("cpt-ve-101:") for ln in lines(reg, "subuid"))
    assert reg.allocate("103", root) == a, "the lowest free range again"


def test_ranges_of_ves_that_are_gone_are_reclaimed(reg: IdRegistry, tmp_path: Path) -> None:
    root = node(tmp_path, "n1", "101")
    a = reg.allocate("101", root)
    reg.commit("101", root)
    b = reg.allocate("102", root)  # created, but its config never written ...
    reg.commit("102", root)  # ... and its process is still this one: committed anyway
    assert b == a + ID_COUNT
    # 102's config is gone and nobody creates it: the next allocation takes it back
    assert reg.allocate("103", root) == b
    assert set(reg.holders()) == {"101", "103"}
    # a range still being created (its creator alive) is not reclaimed
    assert reg.holders()["103"].pending is not None
    assert reg.allocate("104", root) == b + ID_COUNT


def test_a_dead_creator_loses_its_range(reg: IdRegistry, tmp_path: Path) -> None:
    root = node(tmp_path, "n1")
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=reg.allocate, args=("101", root))
    p.start()
    p.join(10)
    assert p.exitcode == 0
    assert reg.holders()["101"].pending is not None, "killed before its commit"
    assert reg.allocate("102", root) == FIRST_ID


def test_veids_are_machine_wide(reg: IdRegistry, tmp_path: Path) -> None:
    n1, n2 = node(tmp_path, "n1", "101"), node(tmp_path, "n2", "101")
    a = reg.allocate("101", n1)
    reg.commit("101", n1)
    with pytest.raises(IdRangeError, match=f"VE 101 already holds ids {a}-{a + 65535}"):
        reg.allocate("101", n2)
    assert reg.check("101", n1, a) is None
    assert reg.check("101", n2, a) == f"VE 101 is registered on this machine for node root {n1}"
    assert reg.check("102", n2, a + 100) == (
        f"ids {a}-{a + 65535} are held by VE 101 (node root {n1})"
    )
    assert reg.check("102", n2, a + ID_COUNT) is None
    with pytest.raises(IdRangeError, match=f"ids {a}-{a + 65535} are held by VE 101"):
        reg.ensure("102", n2, a)


def test_hand_over_keeps_the_range(reg: IdRegistry, tmp_path: Path) -> None:
    n1, n2 = node(tmp_path, "n1", "101"), node(tmp_path, "n2", "101")
    a = reg.allocate("101", n1)
    reg.commit("101", n1)
    with pytest.raises(IdRangeError, match="holds no id range for node root"):
        reg.hand_over("101", n2, n1)
    reg.hand_over("101", n1, n2)
    h = reg.holders()["101"]
    assert (h.root, h.base) == (n2, a)
    assert reg.check("101", n2, a) is None
    reg.release("101", n1)
    assert "101" in reg.holders(), "the old node root releases nothing"


def test_ensure_registers_a_free_range(reg: IdRegistry, tmp_path: Path) -> None:
    """A VE that comes with its range (a migration's destination, a registry lost)."""
    n1 = node(tmp_path, "n1", "101")
    reg.ensure("101", n1, 500000)
    assert reg.holders()["101"].base == 500000
    reg.ensure("101", n1, 500000)  # its own: fine
    with pytest.raises(IdRangeError, match="VE 101 holds ids 500000-565535 here, not 600000"):
        reg.ensure("101", n1, 600000)
    os.makedirs(reg.dir, exist_ok=True)
    Path(reg.dir, "subuid").write_text("carol:700000:10\n" + Path(reg.dir, "subuid").read_text())
    with pytest.raises(IdRangeError, match="ids 700000-700009 are carol's"):
        reg.ensure("102", n1, 690000)


def test_a_held_lock_times_out(reg: IdRegistry, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import fcntl

    monkeypatch.setattr(idmap, "LOCK_TIMEOUT", 0.2)
    os.makedirs(reg.dir)
    fd = os.open(Path(reg.dir, "cpt-idmap.lock"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        ctx = multiprocessing.get_context("fork")
        q = ctx.Queue()

        def try_it() -> None:
            try:
                reg.allocate("101", node(tmp_path, "n1"))
                q.put("allocated")
            except LockedError as e:
                q.put(str(e))

        p = ctx.Process(target=try_it)
        p.start()
        p.join(10)
        assert "stay locked by another cpt command" in q.get(timeout=1)
    finally:
        os.close(fd)


def _create(directory: str, root: str, veid: str, q: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    reg = IdRegistry(directory)
    base = reg.allocate(veid, root)
    Path(root, "ve", f"{veid}.toml").write_text("")
    reg.commit(veid, root)
    q.put((veid, base))


def test_concurrent_creates_get_distinct_ranges(
    reg: IdRegistry, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Twelve creates at once; each dwells between reading the ranges and writing its own,
    so that without the lock they would read the same state and take the same range."""
    read = IdRegistry._holders

    def slow_read(self: IdRegistry) -> dict[str, idmap.Holder]:
        got = read(self)
        time.sleep(0.05)
        return got

    monkeypatch.setattr(IdRegistry, "_holders", slow_read)
    root = node(tmp_path, "n1")
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_create, args=(reg.dir, root, str(200 + i), q)) for i in range(12)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    got = dict(q.get(timeout=1) for _ in procs)
    bases = sorted(got.values())
    assert bases == [FIRST_ID + i * ID_COUNT for i in range(12)]
    assert {h.veid: h.base for h in reg.holders().values()} == got
    assert len(lines(reg, "subuid")) == len(lines(reg, "subgid")) == 12


def test_take_over_moves_the_registration_and_gives_it_back(
    reg: IdRegistry, tmp_path: Path
) -> None:
    n1, n2 = node(tmp_path, "n1", "101"), node(tmp_path, "n2", "101")
    a = reg.allocate("101", n1)
    reg.commit("101", n1)
    with pytest.raises(IdRangeError, match="registered on this machine for node root"):
        reg.ensure("101", n2, a)  # what a plain start on the destination says
    with pytest.raises(IdRangeError, match=f"registered on this machine for node root {n1}"):
        reg.take_over("101", n2, a + ID_COUNT)  # another range: not the same VE
    assert reg.take_over("101", n2, a) == n1
    assert (reg.holders()["101"].root, reg.holders()["101"].base) == (n2, a)
    assert reg.check("101", n2, a) is None and reg.check("101", n1, a) is not None
    assert reg.take_over("101", n2, a) is None, "already here: nothing moves"
    reg.release("101", n1)
    assert reg.holders()["101"].root == n2, "the source's destroy releases nothing"
    reg.hand_over("101", n2, n1)  # a failed move gives it back
    assert reg.holders()["101"].root == n1
    b = reg.allocate("102", n1)
    reg.commit("102", n1)
    assert b == a + ID_COUNT, "the range was never free meanwhile"
    assert reg.take_over("103", n2, b + ID_COUNT) is None  # a VE new to this machine
    assert reg.holders()["103"].root == n2
