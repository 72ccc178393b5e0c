"""cpt/procfs/maps.py: maps and smaps, captured (fixtures/proc) and synthetic."""

from __future__ import annotations

import dataclasses

import pytest
from helpers_procfs import (
    FIX,
    MANY,
    MAPS,
    PG,
    PID,
    WD,
    ZOO,
    vma_at,
)

from cpt.procfs import (
    Proc,
    Vma,
    VmaKind,
    parse_maps,
    parse_smaps_vmflags,
)
from cpt.procfs.maps import _new_vma


@pytest.fixture(scope="module")
def zoo_maps(zoo: Proc) -> dict[int, Vma]:
    return {v.start: v for v in zoo.maps(PID)}


# ---------------------------------------------------------------------------------- maps


def test_maps_mappings_set_up_by_zoo(zoo_maps: dict[int, Vma]) -> None:
    m = zoo_maps
    v = m[MAPS["filemap"]]  # mmap(2 pages of "map me (1).bin" at offset 1 page, PRIVATE)
    assert (v.path, v.deleted, v.perms, v.pgoff, v.size) == (
        f"{WD}/map me (1).bin",
        False,
        "r--p",
        PG,
        2 * PG,
    )
    assert (v.major, v.minor) == tuple(ZOO["lock_dev"]) and v.kind is VmaKind.FILE
    v = m[MAPS["nlmap"]]  # a '\n' in the name: printed as \012
    assert (v.path, v.perms, v.shared) == (f"{WD}/nl\nname", "rw-s", True)
    v = m[MAPS["delmap"]]  # a deleted file whose name holds a space and parentheses
    assert (v.path, v.deleted, v.kind) == (f"{WD}/del me (x)", True, VmaKind.FILE)
    v = m[MAPS["memfd"]]
    assert (v.path, v.deleted, v.kind, v.name, v.size) == (
        "/memfd:cpt zoo",
        True,
        VmaKind.MEMFD,
        "cpt zoo",
        2 * PG,
    )
    v = m[MAPS["sysv"]]
    assert (v.path, v.kind, v.shared) == (f"/SYSV{0:08x}", VmaKind.SYSV, True)
    for key, pages in (("shm_anon", 1), ("shm_named", 2)):
        v = m[MAPS[key]]
        if ZOO["anon_names"]:
            assert v.kind is VmaKind.SHMEM
        else:  # CONFIG_ANON_VMA_NAME is not set on this kernel: no [anon_shmem:...]
            assert (v.path, v.deleted, v.kind, v.size) == (
                "/dev/zero",
                True,
                VmaKind.SHMEM,
                pages * PG,
            )
    v = m[MAPS["named"]]
    if ZOO["anon_names"]:
        assert (v.kind, v.name) == (VmaKind.ANON_NAMED, "cpt zoo anon")
    else:
        assert (v.path, v.kind, v.perms, v.inode) == ("", VmaKind.ANON, "rw-p", 0)
    v = m[MAPS["guard"]]
    assert (v.perms, v.read, v.write, v.exec, v.size) == ("---p", False, False, False, 2 * PG)
    assert m[MAPS["sealed"]].perms == "r--p"


def test_maps_special_mappings(zoo: Proc) -> None:
    maps = zoo.maps(PID)
    kinds = [v.kind for v in maps]
    for k in (
        VmaKind.HEAP,
        VmaKind.STACK,
        VmaKind.VDSO,
        VmaKind.VVAR,
        VmaKind.VVAR_VCLOCK,
        VmaKind.VSYSCALL,
    ):
        assert kinds.count(k) == 1, k
    by = {v.kind: v for v in maps}
    vvar, vclock, vdso = by[VmaKind.VVAR], by[VmaKind.VVAR_VCLOCK], by[VmaKind.VDSO]
    # the 6.13+ layout ENGINE-NOTES relies on: [vvar] 4 pages, [vvar_vclock] 2, [vdso] 2, contiguous
    assert (vvar.size, vclock.size, vdso.size) == (4 * PG, 2 * PG, 2 * PG)
    assert vvar.end == vclock.start and vclock.end == vdso.start
    assert vdso.perms == "r-xp" and vdso.name == "vdso"
    vs = by[VmaKind.VSYSCALL]
    assert (vs.start, vs.perms) == (0xFFFFFFFFFF600000, "--xp")
    assert maps == sorted(maps, key=lambda v: v.start)


def test_parse_maps_synthetic_names() -> None:
    data = (
        b"7f0000000000-7f0000001000 rw-p 00000000 00:00 0                          [anon:my name]\n"
        b"7f0000001000-7f0000003000 rw-s 00000000 00:01 7                          [anon_shmem:shm x]\n"
        b"7f0000003000-7f0000004000 r--p 00000000 00:00 0                          [uprobes]\n"
        b"7f0000004000-7f0000005000 r--p 0000a000 103:05 99                        /a b/c (deleted) (deleted)\n"
        b"7f0000005000-7f0000006000 r--p 00000000 00:00 0 \n"
    )
    a, b, c, d, e = parse_maps(data)
    assert (a.kind, a.name, a.path) == (VmaKind.ANON_NAMED, "my name", "[anon:my name]")
    assert (b.kind, b.name, b.shared, b.inode) == (VmaKind.SHMEM, "shm x", True, 7)
    assert (c.kind, c.name) == (VmaKind.SPECIAL, "uprobes")
    assert (d.path, d.deleted, d.major, d.minor, d.pgoff) == (
        "/a b/c (deleted)",
        True,
        0x103,
        5,
        0xA000,
    )
    assert (e.path, e.kind, e.start, e.end) == ("", VmaKind.ANON, 0x7F0000005000, 0x7F0000006000)


def test_fast_vma_constructor_builds_equal_frozen_objects() -> None:
    args = (1, 2, "rw-p", 3, 4, 5, 6, "/x", True)
    fast, slow = _new_vma(*args), Vma(*args)
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.start = 9  # type: ignore[misc]
    assert [getattr(fast, f.name) for f in dataclasses.fields(Vma)] == list(args)


def test_manyvmas_fixture() -> None:
    p = Proc(str(FIX / "manyvmas"))
    pid, base, n = MANY["pid"], MANY["base"], MANY["nvmas"]
    maps = p.maps(pid)
    mine = [v for v in maps if base <= v.start < base + n * PG]
    assert len(mine) == n == 200
    for i, v in enumerate(mine):
        assert (v.start, v.size, v.kind) == (base + i * PG, PG, VmaKind.ANON)
        assert v.perms == ("r--p" if i & 1 else "rw-p")
    # the PROT_NONE guard pages either side
    assert vma_at(maps, base - PG).perms == vma_at(maps, base + n * PG).perms == "---p"


def _synthetic_maps(n: int) -> bytes:
    """n lines shaped like the captured ones: 2 anonymous lines for each file line."""
    lines = (FIX / "zoo" / str(PID) / "maps").read_bytes().split(b"\n")
    file_tail = lines[0].split(None, 2)[2]  # "00000000 fe:00 INODE   PATH" of the exe
    out = []
    for i in range(n):
        s = 0x7F0000000000 + i * PG
        tail = file_tail if i % 3 == 0 else b"00000000 00:00 0 "
        out.append(b"%x-%x %s %s" % (s, s + PG, b"r-xp" if i % 3 == 0 else b"rw-p", tail))
    return b"\n".join(out) + b"\n"


def test_parse_maps_10k_lines() -> None:
    """10,000 lines parse, each as alone (their speed: bench/procfs_bench.py)."""
    data = _synthetic_maps(10_000)
    maps = parse_maps(data)
    assert len(maps) == 10_000 and maps[3].path == ZOO["exe"] and maps[4].path == ""
    lines = data.splitlines(keepends=True)
    for i in (0, 1, 2, 4_999, 9_999):
        assert parse_maps(lines[i]) == [maps[i]]


# --------------------------------------------------------------------------------- smaps


def test_smaps_vmflags(zoo: Proc) -> None:
    flags = zoo.smaps_vmflags(PID)
    maps = zoo.maps(PID)
    assert list(flags) == [(v.start, v.end) for v in maps]

    def at(addr: int) -> frozenset[str]:
        v = vma_at(maps, addr)
        return flags[(v.start, v.end)]

    f = MAPS["flags"]
    assert {"dc", "nr"} <= at(f)  # MADV_DONTFORK, MAP_NORESERVE
    assert "dd" in at(f + 2 * PG)  # MADV_DONTDUMP
    assert "wf" in at(f + 4 * PG)  # MADV_WIPEONFORK
    assert "rr" in at(f + 6 * PG)  # MADV_RANDOM
    assert "dc" not in at(f + PG)
    assert {"gd", "rd", "wr"} <= at(MAPS["growsdown"])
    assert "hg" in at(MAPS["huge"])
    assert "nh" in at(MAPS["nohuge"])
    assert "lo" in at(MAPS["locked"])
    assert "sl" in at(MAPS["sealed"])  # mseal()
    assert {"sh", "ms"} <= at(MAPS["memfd"])
    (vvar,) = [v for v in maps if v.kind is VmaKind.VVAR]
    assert {"pf", "io", "dd"} <= flags[(vvar.start, vvar.end)]


def test_parse_smaps_vmflags_synthetic() -> None:
    data = (
        b"00400000-00401000 r--p 00000000 fe:00 1                /bin/x\n"
        b"Size:                  4 kB\nRss:                   4 kB\nVmFlags: rd mr mw me \n"
        b"7f0000000000-7f0000002000 rw-p 00000000 00:00 0 \n"
        b"Size:                  8 kB\nVmFlags: rd wr mr mw me ac dd \n"
    )
    assert parse_smaps_vmflags(data) == {
        (0x400000, 0x401000): {"rd", "mr", "mw", "me"},
        (0x7F0000000000, 0x7F0000002000): {"rd", "wr", "mr", "mw", "me", "ac", "dd"},
    }
    with pytest.raises(ValueError):
        parse_smaps_vmflags(b"00400000-00401000 r--p 00000000 fe:00 1 /bin/x\nSize: 4 kB\n")
