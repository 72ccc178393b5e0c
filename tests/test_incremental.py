"""Incremental dumps end to end: pre-dumps, chains of images, their restore and checks, the
holder that keeps the tracking between commands, and leave-running dumps in rounds.

The workload is fixtures/workloads/scribble.c: memory rewritten page by page at a steady
rate with the generation of each page kept in memory too, so that a restore assembled
from images of different moments (a stale page, a lost one) fails its self-check.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from test_engine_e2e import pid_exists, traced_by
from workloads import Workload, reaping, workloads_fixture  # noqa: F401

from cptimage.container import ImageReader
from cptimage.records import HeaderFlags, PathObj, SectionType

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="checkpoint/restore needs root (ptrace, clone3 set_tid)"
    ),
]

MIB = "16"
RATE = "1000"  # pages per second


def _ok(res: tuple[int, str, str]) -> tuple[str, str]:
    rc, out, err = res
    assert rc == 0, err
    return out, err


def _chain(cpt, wl: Workload, d: Path, n: int) -> list[Path]:  # type: ignore[no-untyped-def]
    """n pre-dumps, each on the one before: their paths."""
    imgs: list[Path] = []
    for i in range(n):
        img = d / f"pre{i}.img"
        parent = ("--parent", imgs[-1]) if imgs else ()
        _, err = _ok(cpt("chkpnt", "--pid", wl.pid, "--pre-dump", *parent, "--dumpfile", img))
        assert "notice" not in err, err
        imgs.append(img)
        time.sleep(0.05)
    return imgs


def _final(cpt, wl: Workload, parent: Path, img: Path) -> dict:  # type: ignore[no-untyped-def,type-arg]
    with reaping(wl):
        out, err = _ok(
            cpt("chkpnt", "--pid", wl.pid, "--parent", parent, "--dumpfile", img, "--json")
        )
    assert "notice" not in err, err
    return json.loads(out)  # nothing else on stdout


def _holder(cpt, wl: Workload) -> int:  # type: ignore[no-untyped-def]
    st = json.loads((cpt.run_dir / f"pid-{wl.pid}.track.json").read_text())
    return int(st["holder"])


def _rewind_files(img: Path, wl: Workload) -> None:
    """The workload's files (DIR/counter, DIR/writes: same size, rewritten in place) given
    back the modification times the image recorded, as a restore of its files would: the
    tree ran on after a leave-running or staged dump, and the restore refuses files that
    changed since the dump.  Only once the tree is gone."""
    assert not wl.alive()
    with ImageReader(str(img)) as r:
        for rec in r.records(SectionType.FILES):
            if isinstance(rec, PathObj) and rec.path.startswith(f"{wl.dir}/"):
                assert os.stat(rec.path).st_size == rec.size, rec.path
                os.utime(rec.path, ns=(rec.mtime_ns, rec.mtime_ns))


def _restore_passes(cpt, wl: Workload, img: Path, *extra: object) -> None:  # type: ignore[no-untyped-def]
    _ok(cpt("restore", "--dumpfile", img, *extra))
    wl.refresh()
    c = wl.counter()
    assert wl.wait_counter(above=c) > c
    with reaping(wl):
        assert wl.finish() == "PASS"


@pytest.mark.parametrize("n", [1, 2, 5, 20])
def test_chain_restores(workloads, cpt, tmp_path: Path, n: int) -> None:
    wl = workloads.start("scribble", MIB, RATE)
    wl.wait_counter()
    imgs = _chain(cpt, wl, tmp_path, n)
    total = 16 << 20
    for img in imgs[1:]:
        # a pre-dump on a parent holds only what changed (16 MiB, ~1000 pages/s)
        assert img.stat().st_size < total // 2, img
    final = tmp_path / "final.img"
    stats = _final(cpt, wl, imgs[-1], final)
    assert stats["frozen_s"] > 0 and "pages_s" in stats and "state_s" in stats
    assert final.stat().st_size < total // 2
    rc, out, err = cpt("image", "verify", final)
    assert rc == 0, out + err
    rc, out, _ = cpt("image", "show", final)
    assert rc == 0 and out.count("pre-dump") == n and "incremental" in out
    _restore_passes(cpt, wl, final)


def test_broken_chain_is_refused_and_flatten_is_the_same(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("scribble", MIB, RATE)
    wl.wait_counter()
    imgs = _chain(cpt, wl, tmp_path, 3)
    final = tmp_path / "final.img"
    _final(cpt, wl, imgs[-1], final)
    assert not pid_exists(wl.pid)
    middle = imgs[1]

    saved = middle.read_bytes()
    bad = bytearray(saved)
    bad[len(bad) // 2] ^= 0xFF
    middle.write_bytes(bytes(bad))
    rc, _, err = cpt("restore", "--dumpfile", final)
    assert rc != 0 and str(middle) in err and "refusing to restore" in err, err
    assert err.count("\n") == 1 and not pid_exists(wl.pid), "refused before touching anything"
    rc, out, err = cpt("image", "verify", final)
    assert rc != 0 and str(middle) in out + err

    middle.unlink()
    rc, _, err = cpt("restore", "--dumpfile", final)
    assert rc != 0 and str(middle) in err and "missing" in err, err
    assert not pid_exists(wl.pid)

    # moved elsewhere: found with --parent-dir
    other = tmp_path / "other"
    other.mkdir()
    (other / middle.name).write_bytes(saved)
    for p in (imgs[0], imgs[2]):
        p.rename(other / p.name)
    flat = tmp_path / "flat.img"
    _ok(cpt("image", "flatten", final, "-o", flat, "--parent-dir", other))
    rc, out, err = cpt("image", "diff", final, flat, "--parent-dir", other)
    assert rc == 1 and "pages[" not in out + err, out + err  # the same memory
    assert "header.flags" in out and "header.parent_uuid" in out, "flattened: not incremental"
    rc, out, err = cpt("image", "show", flat)
    assert rc == 0 and "pre-dump" not in out
    _restore_passes(cpt, wl, flat)


def test_chain_restore_through_parent_dir(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("scribble", MIB, RATE)
    wl.wait_counter()
    imgs = _chain(cpt, wl, tmp_path, 2)
    final = tmp_path / "final.img"
    _final(cpt, wl, imgs[-1], final)
    other = tmp_path / "elsewhere"
    other.mkdir()
    for p in imgs:
        p.rename(other / p.name)
    rc, _, err = cpt("restore", "--dumpfile", final)
    assert rc != 0 and "missing" in err and "--parent-dir" in err
    _restore_passes(cpt, wl, final, "--parent-dir", other)


def test_a_predump_alone_is_not_restorable(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("scribble", MIB, "0")
    wl.wait_counter()
    img = tmp_path / "pre.img"
    _ok(cpt("chkpnt", "--pid", wl.pid, "--pre-dump", "--dumpfile", img))
    rc, _, err = cpt("restore", "--dumpfile", img)
    assert rc != 0 and "pre-dump" in err
    with reaping(wl):
        assert wl.finish() == "PASS"


def _gone(pid: int, timeout: float = 10.0) -> bool:
    """The process exited (a zombie counts: an orphaned holder is reparented to the test,
    a subreaper, which reaps only its workloads)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return True
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_holder_killed_then_full_dump_with_a_notice(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("scribble", MIB, RATE)
    wl.wait_counter()
    p1 = tmp_path / "p1.img"
    _ok(cpt("chkpnt", "--pid", wl.pid, "--pre-dump", "--dumpfile", p1))
    holder = _holder(cpt, wl)
    assert Path(f"/proc/{holder}/comm").read_text().strip() == "cpt-holder"
    assert traced_by(wl.pid) == 0, "the tracking holds no ptrace and no freeze"
    c = wl.counter()
    assert wl.wait_counter(above=c) > c
    os.kill(holder, signal.SIGKILL)
    assert _gone(holder)
    p2 = tmp_path / "p2.img"
    _, err = _ok(cpt("chkpnt", "--pid", wl.pid, "--pre-dump", "--parent", p1, "--dumpfile", p2))
    assert "notice" in err and "full" in err and err.count("\n") == 1, err
    rc, out, _ = cpt("image", "show", p2)
    assert rc == 0 and "incremental" not in out
    # the tracking goes on from p2: the tree exits, its holder with it
    holder = _holder(cpt, wl)
    with reaping(wl):
        assert wl.finish() == "PASS"
    assert _gone(holder), "a holder never outlives its tree"


def test_staged_dump_on_a_parent_then_resume_ends_the_holder(
    workloads, cpt, tmp_path: Path
) -> None:
    wl = workloads.start("scribble", MIB, RATE)
    wl.wait_counter()
    p1 = tmp_path / "p1.img"
    _ok(cpt("chkpnt", "--pid", wl.pid, "--pre-dump", "--dumpfile", p1))
    _ok(cpt("chkpnt", "--pid", wl.pid, "--suspend"))
    final = tmp_path / "final.img"
    _, err = _ok(cpt("chkpnt", "--pid", wl.pid, "--dump", "--parent", p1, "--dumpfile", final))
    assert "notice" not in err
    holder = _holder(cpt, wl)
    assert pid_exists(holder)
    _ok(cpt("chkpnt", "--pid", wl.pid, "--resume"))
    assert _gone(holder), "--resume after the dump that closed the chain ends the tracking"
    assert not (cpt.run_dir / f"pid-{wl.pid}.track.json").exists()
    c = wl.counter()
    assert wl.wait_counter(above=c) > c
    with reaping(wl):
        _ok(cpt("chkpnt", "--pid", wl.pid, "--dumpfile", tmp_path / "kill.img"))
    _rewind_files(final, wl)
    _restore_passes(cpt, wl, final)


@pytest.mark.parametrize("fault", ["track:inject", "track:round", "dump:pages"])
def test_failed_predump_leaves_the_tree_running(workloads, cpt, tmp_path: Path, fault: str) -> None:
    wl = workloads.start("scribble", MIB, RATE)
    wl.wait_counter()
    p1 = tmp_path / "p1.img"
    rc, _, err = cpt("chkpnt", "--pid", wl.pid, "--pre-dump", "--dumpfile", p1, fault=fault)
    if fault == "dump:pages":  # a pre-dump passes no such point: it succeeds
        assert rc == 0, err
    else:
        assert rc != 0 and f"fault injected at {fault}" in err and err.count("\n") == 1, err
        assert not p1.exists()
        assert not (cpt.run_dir / f"pid-{wl.pid}.track.json").exists(), "no tracking left"
        assert traced_by(wl.pid) == 0
        c = wl.counter()
        assert wl.wait_counter(above=c) > c, "the tree runs on after a failed pre-dump"
        _ok(cpt("chkpnt", "--pid", wl.pid, "--pre-dump", "--dumpfile", p1))
    p2 = tmp_path / "p2.img"
    rc, _, err = cpt(
        "chkpnt", "--pid", wl.pid, "--pre-dump", "--parent", p1, "--dumpfile", p2, fault=fault
    )
    if fault == "track:round":
        assert rc != 0 and not p2.exists(), err
        _, err = _ok(cpt("chkpnt", "--pid", wl.pid, "--pre-dump", "--parent", p1, "--dumpfile", p2))
        assert "full" in err, "the failed round ended the tracking: the next one is full"
    else:
        assert rc == 0, err  # taken over from the holder: nothing injected
    # a failed final dump on the parent: the tree runs on, unfrozen
    final = tmp_path / "final.img"
    rc, _, err = cpt(
        "chkpnt", "--pid", wl.pid, "--parent", p2, "--dumpfile", final, fault="dump:pages"
    )
    assert rc != 0 and "fault injected at dump:pages" in err
    assert not final.exists()
    assert traced_by(wl.pid) == 0
    c = wl.counter()
    assert wl.wait_counter(above=c) > c, "the tree runs on after a failed dump"
    with reaping(wl):
        assert wl.finish() == "PASS"


def test_leave_running_in_rounds(workloads, cpt, tmp_path: Path) -> None:
    wl = workloads.start("scribble", "64", RATE)
    wl.wait_counter()
    img = tmp_path / "lr.img"
    with reaping(wl):
        out, err = _ok(
            cpt("chkpnt", "--pid", wl.pid, "--leave-running", "--dumpfile", img, "--json")
        )
    stats = json.loads(out)
    assert set(stats) >= {"frozen_s", "pages_s", "state_s"}
    assert traced_by(wl.pid) == 0
    assert not (cpt.run_dir / f"pid-{wl.pid}.track.json").exists(), "one command: no holder"
    c = wl.counter()
    assert wl.wait_counter(above=c) > c
    rc, out, err = cpt("image", "verify", img)
    assert rc == 0, out + err
    with reaping(wl):
        _ok(cpt("chkpnt", "--pid", wl.pid, "--dumpfile", tmp_path / "kill.img"))
    _rewind_files(img, wl)
    _restore_passes(cpt, wl, img)


def test_every_parent_of_a_chain_is_trusted(tmp_path: Path) -> None:
    """A restore opens each parent of a chain as it opens the dump file (restore/trust.py):
    a parent others may write is refused (17) naming it, before anything is restored;
    --trust vouches for it."""
    import samples

    from cpt.errors import RestoreError
    from cpt.stages.restore import open_image

    paths = samples.write_chain(str(tmp_path), 3)
    for p in paths:
        os.chmod(p, 0o600)
    with open_image(paths[-1]) as r:  # the chain, open in place: its two parents below it
        assert r.header.flags & HeaderFlags.INCREMENTAL
        assert [p.header.uuid for p in r.below] == [samples.chain_uuid(1), samples.chain_uuid(0)]
    os.chmod(paths[0], 0o666)
    with pytest.raises(RestoreError, match=f"{paths[0]} .*writable by its group or others"):
        open_image(paths[-1])
    with open_image(paths[-1], trust=True) as r:
        assert r.header.uuid == samples.chain_uuid(2)


def test_a_chain_is_restored_in_place(tmp_path: Path) -> None:
    """A restore reads an incremental image's pages from the images of its chain in place
    (no flattened copy): each page from the newest image holding it, a page a later image
    discarded (ZERO) not at all.  A chain of 5 where each level rewrote and discarded
    other pages comes out byte for byte as the memory it describes, mapped or read in
    chunks (compressed pages)."""
    import samples

    from cpt.restore.pages import PageSource
    from cpt.stages.restore import open_image
    from cptimage.records import OwnerKind

    paths = samples.write_chain(str(tmp_path), 5)
    for p in paths:
        os.chmod(p, 0o600)
    want = samples.chain_memory(5)
    with open_image(paths[-1]) as r:
        assert os.fstat(r.f.fileno()).st_ino == os.stat(paths[-1]).st_ino  # the file itself
        assert [os.fstat(p.f.fileno()).st_ino for p in r.below] == [
            os.stat(p).st_ino for p in reversed(paths[:-1])
        ]
        runs = sorted(
            (x for x in r.records(SectionType.PAGEMAP) if x.owner == 100), key=lambda x: x.vaddr
        )
        for mapped in (True, False):
            pages = PageSource(r)
            got = bytearray(len(want))
            if mapped:
                pages.map()
                pieces = pages.pieces(OwnerKind.PROCESS, 100, runs)
                assert pieces is not None
                assert {p.level for p in pieces} == {0, 1, 2, 3, 4}
                views = pages.views()
                for addr, n, level, off in pieces:
                    view = views[level]
                    assert view is not None
                    at = addr - samples.CHAIN_START
                    got[at : at + n] = view[off : off + n]
                for v in views:
                    assert v is not None
                    v.release()
            else:
                for addr, data in pages.chunks(OwnerKind.PROCESS, 100, runs):
                    at = addr - samples.CHAIN_START
                    got[at : at + len(data)] = data
            pages.close()
            assert bytes(got) == want, f"mapped={mapped}"


def test_leave_running_dump_keeps_the_flags_of_every_mapping(
    workloads, cpt, tmp_path: Path
) -> None:
    """The memory workload's MADV_DONTFORK/DONTDUMP/HUGEPAGE/NOHUGEPAGE regions and its
    MAP_GROWSDOWN mapping come back with exactly their flags (its self-check), restored from
    a leave-running image (whose flags are read in the freeze, after its live rounds)."""
    wl = workloads.start("memory")
    wl.wait_counter()
    img = tmp_path / "lr.img"
    _, err = _ok(cpt("chkpnt", "--pid", wl.pid, "--leave-running", "--dumpfile", img))
    assert "notice" not in err, err
    with reaping(wl):
        _ok(cpt("chkpnt", "--pid", wl.pid, "--dumpfile", tmp_path / "kill.img"))
    _rewind_files(img, wl)
    _restore_passes(cpt, wl, img)


def test_predumps_of_a_tree_whose_children_come_and_go(cpt, tmp_path: Path) -> None:
    """A shell forking short-lived children all the time (a VE's scripts do): a child that
    exits while a pre-dump reads it (its memory gone before its /proc entry) is left out
    of that pre-dump, never its failure.  CI once failed a migration's pre-copy on it."""
    import subprocess

    sh = subprocess.Popen(
        ["/bin/sh", "-c", "(while :; do sleep 0.003; done) & while :; do sleep 0.007; done"],
        stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        parent: tuple[object, ...] = ()
        for i in range(25):
            img = tmp_path / f"pre{i}.img"
            rc, _, err = cpt("chkpnt", "--pid", sh.pid, "--pre-dump", *parent, "--dumpfile", img)
            assert rc == 0, f"pre-dump {i}: {err}"
            parent = ("--parent", img)
    finally:
        os.killpg(sh.pid, signal.SIGKILL)
        sh.wait(10)
