"""Image chains: an incremental image, the parent it builds on, that one's parent, and so on
down to an image that builds on none (SPEC.md section 5, "Chains").

    Chain(path)              the image and every parent below it, opened, each link
                             checked (ChainError names the missing or changed file)
    chain.pieces(owner)      where every page of an owner is: the newest image that has it
    verify_chain(path)       every image's own problems, and every link's
    flatten(path, out)       one self-contained image (or one that builds on a lower
                             link: `keep`)

A link is checked by what the child's Parent record says of its parent: the parent's
UUID (also the child's Header.parent_uuid), its file size and its file digest (its
trailer's), so a parent replaced, rewritten or altered since the child was written on it
is refused.  A parent is looked for at the path the Parent record names relative to the
child's directory, or, with `parent_dir`, under its file name in that directory.

Each image is opened through `open_image`, the one place a chain opens a file.
"""

from __future__ import annotations

import bisect
import os
from collections import defaultdict
from collections.abc import Callable, Collection
from typing import Any, BinaryIO, NamedTuple

from .container import ImageReader, ImageWriter
from .errors import ImageError
from .pagestore import DEFAULT_CHUNK
from .records import (
    Header,
    HeaderFlags,
    OwnerKind,
    PageFlags,
    PagemapRun,
    Parent,
    SectionType,
    Vma,
)

MAX_DEPTH = 4096  # links; a longer chain is refused (and a loop is found before that)
ZERO_UUID = bytes(16)
Owner = tuple[int, int]  # (OwnerKind, pid or shmem id)


class ChainError(ImageError):
    """A chain that cannot be followed: a parent missing, not the right one, or changed."""


class Piece(NamedTuple):
    """Pages of an owner resolved through the chain: `level` is the image that holds them
    (0 the newest), -1 for ZERO pages (nothing stored)."""

    vaddr: int
    nr_pages: int
    level: int
    data_offset: int  # in that image's page data stream


def open_image(path: str) -> ImageReader:
    """Open one image of a chain (a parent, or the newest)."""
    return ImageReader(path)


def parent_record(reader: ImageReader) -> Parent | None:
    """The Parent record of an incremental image (None for one that builds on nothing)."""
    for r in reader.records(SectionType.CHAIN):
        if isinstance(r, Parent):
            return r
    return None


def locate_parent(child: str | None, parent: Parent, parent_dir: str | None = None) -> str:
    """Where the parent file is: next to the child (the path the record names, relative
    to the child's directory), or in `parent_dir` under its file name."""
    if parent_dir is not None:
        return os.path.join(parent_dir, os.path.basename(parent.name))
    base = os.path.dirname(child) if child else "."
    return os.path.normpath(os.path.join(base, parent.name))


def kind(header: Header) -> str:
    """ "pre-dump", "incremental" or "full": what an image is."""
    if header.flags & HeaderFlags.PREDUMP:
        return "pre-dump"
    if header.flags & HeaderFlags.INCREMENTAL:
        return "incremental"
    return "full"


def link_problem(parent: Parent, path: str, reader: ImageReader | None) -> str | None:
    """Why the image at `path` (opened: `reader`) is not the parent a Parent record names;
    None when it is."""
    if reader is None:
        return f"the parent image {path} is missing (give --parent-dir DIR if it was moved)"
    want = parent.uuid.hex()
    if reader.header.uuid != parent.uuid:
        return (
            f"{path} is not the parent (its UUID is {reader.header.uuid.hex()}, the parent's "
            f"is {want})"
        )
    if reader.size != parent.size or reader.digest != parent.digest:
        return f"the parent image {path} was changed after its child was written on it"
    return None


def parent_for(child_path: str | None, reader: ImageReader) -> Parent:
    """The Parent record of a new image (to be written at `child_path`) that builds on the
    image `reader` has open: its name relative to the child's directory."""
    path = reader.path or ""
    return Parent(
        uuid=reader.header.uuid,
        digest=reader.digest,
        size=reader.size,
        created_ns=reader.header.created_ns,
        flags=reader.header.flags,
        name=parent_name(child_path, path) if child_path else os.path.basename(path),
    )


def parent_name(child_path: str, parent_path: str) -> str:
    """The path a child at `child_path` records for its parent: relative to its directory."""
    return os.path.relpath(
        os.path.abspath(parent_path), os.path.dirname(os.path.abspath(child_path))
    )


class Chain:
    """An image and all its parents, opened, newest first (`readers[0]` is the image).

    Opening checks every link (ChainError, naming the file, on the first broken one)
    but not the images themselves: verify_chain does both.
    """

    def __init__(
        self,
        source: str | ImageReader,
        parent_dir: str | None = None,
        *,
        opener: Callable[[str], ImageReader] = open_image,
    ) -> None:
        self.readers: list[ImageReader] = []
        self.paths: list[str] = []
        self._runs: list[dict[Owner, list[PagemapRun]] | None] = []
        self._own_first = not isinstance(source, ImageReader)
        self._own_parents = True
        try:
            first = opener(source) if isinstance(source, str) else source
            self._add(first, first.path or "-")
            seen = {first.header.uuid}
            while True:
                r = self.readers[-1]
                parent = _expect_parent(r, self.paths[-1])
                if parent is None:
                    break
                if len(self.readers) >= MAX_DEPTH:
                    raise ChainError(f"the chain is longer than {MAX_DEPTH} images", path=r.path)
                where = locate_parent(r.path, parent, parent_dir)
                try:
                    p = opener(where)
                except ImageError as e:
                    if not os.path.exists(where):
                        msg = link_problem(parent, where, None) or ""
                        raise ChainError(msg, path=r.path) from None
                    raise ChainError(f"the parent image {where}: {e.msg}", path=r.path) from None
                why = link_problem(parent, where, p)
                if why is None and p.header.uuid in seen:
                    why = f"the chain loops back to {where}"
                if why:
                    p.close()
                    raise ChainError(why, path=r.path)
                seen.add(p.header.uuid)
                self._add(p, where)
        except BaseException:
            self.close()
            raise

    @classmethod
    def of(cls, readers: list[ImageReader]) -> Chain:
        """The chain of images already opened and checked (newest first, each the parent
        of the one before): closing it closes none of them."""
        self = cls.__new__(cls)
        self.readers = list(readers)
        self.paths = [r.path or "-" for r in readers]
        self._runs = [None] * len(readers)
        self._own_first = self._own_parents = False
        return self

    def _add(self, reader: ImageReader, path: str) -> None:
        self.readers.append(reader)
        self.paths.append(path)
        self._runs.append(None)

    @property
    def image(self) -> ImageReader:
        return self.readers[0]

    def close(self) -> None:
        for i, r in enumerate(self.readers):
            if (i and self._own_parents) or (not i and self._own_first):
                r.close()
        self.readers.clear()

    def __enter__(self) -> Chain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.readers)

    # -- pages

    def runs(self, level: int) -> dict[Owner, list[PagemapRun]]:
        """The runs of one image by owner, sorted by address (read once)."""
        got = self._runs[level]
        if got is None:
            got = defaultdict(list)
            for r in self.readers[level].records(SectionType.PAGEMAP):
                if isinstance(r, PagemapRun):
                    got[(r.owner_kind, r.owner)].append(r)
            for rs in got.values():
                rs.sort(key=lambda r: r.vaddr)
            got = dict(got)
            self._runs[level] = got
        return got

    def pieces(self, owner_kind: int, owner: int, level: int = 0) -> list[Piece]:
        """Every page of the owner in image `level`, each from the newest image at or below
        it that holds it (ZERO pages: level -1), sorted by address.  ChainError when a
        PARENT run finds no data below."""
        page = self.readers[level].header.page_size
        out: list[Piece] = []
        pending: list[tuple[int, int]] = []
        for r in self.runs(level).get((owner_kind, owner), []):
            end = r.vaddr + r.nr_pages * page
            if r.flags & PageFlags.PRESENT:
                out.append(Piece(r.vaddr, r.nr_pages, level, r.data_offset))
            elif r.flags & PageFlags.PARENT:
                pending.append((r.vaddr, end))
            else:
                out.append(Piece(r.vaddr, r.nr_pages, -1, 0))
        while pending:
            level += 1
            if level >= len(self.readers):
                a, _ = pending[0]
                raise ChainError(
                    f"pages at {a:#x} of {_owner_text(owner_kind, owner)} are in no image of "
                    f"the chain (PARENT runs, no parent below {self.paths[level - 1]})",
                    path=self.paths[0],
                )
            runs = self.runs(level).get((owner_kind, owner), [])
            starts = [r.vaddr for r in runs]
            nxt: list[tuple[int, int]] = []
            for a, b in pending:
                i = max(0, bisect.bisect_right(starts, a) - 1)
                cur = a
                while cur < b and i < len(runs):
                    r = runs[i]
                    rs, re_ = r.vaddr, r.vaddr + r.nr_pages * page
                    if re_ <= cur:
                        i += 1
                        continue
                    if rs > cur:
                        break  # a hole below a PARENT run
                    hi = min(b, re_)
                    n = (hi - cur) // page
                    if r.flags & PageFlags.PRESENT:
                        out.append(Piece(cur, n, level, r.data_offset + (cur - rs)))
                    elif r.flags & PageFlags.PARENT:
                        nxt.append((cur, hi))
                    else:
                        out.append(Piece(cur, n, -1, 0))
                    cur = hi
                    if hi == re_:
                        i += 1
                if cur < b:
                    raise ChainError(
                        f"pages {cur:#x}-{b:#x} of {_owner_text(owner_kind, owner)} are PARENT "
                        f"in {self.paths[level - 1]} but not in its parent {self.paths[level]}",
                        path=self.paths[0],
                    )
            pending = nxt
        out.sort(key=lambda p: p.vaddr)
        return out

    def owners(self, level: int = 0) -> list[Owner]:
        return sorted(self.runs(level))

    def read(self, piece: Piece, offset: int, length: int) -> bytes:
        """`length` bytes of a piece from `offset` into it (zeros for ZERO pages)."""
        if piece.level < 0:
            return bytes(length)
        return self.readers[piece.level].read_pages(piece.data_offset + offset, length)

    def describe(self) -> list[dict[str, Any]]:
        """One row per image, newest first: path, kind, UUID, size, page data."""
        return [
            dict(
                path=p,
                kind=kind(r.header),
                uuid=r.header.uuid.hex(),
                created_ns=r.header.created_ns,
                size=r.size,
                page_data=r.page_data_len,
            )
            for p, r in zip(self.paths, self.readers, strict=True)
        ]


def _owner_text(owner_kind: int, owner: int) -> str:
    return f"process {owner}" if owner_kind == OwnerKind.PROCESS else f"shared memory {owner}"


def _expect_parent(reader: ImageReader, path: str) -> Parent | None:
    """The Parent record of an image, checked against its header."""
    incremental = bool(reader.header.flags & HeaderFlags.INCREMENTAL)
    parent = parent_record(reader)
    if not incremental:
        return None
    if parent is None:
        raise ChainError("an incremental image without its Parent record", path=path)
    if parent.uuid != reader.header.parent_uuid:
        raise ChainError("the Parent record and the header name different parents", path=path)
    return parent


# --------------------------------------------------------------------------- flatten


def flatten(
    chain: Chain,
    out: BinaryIO,
    *,
    keep: int | None = None,
    out_path: str | None = None,
    compress_pages: bool = False,
) -> Header:
    """Write the newest image of `chain` as one whose pages are all its own: PARENT runs
    become PRESENT, their data copied from the parents.  With `keep` (a level >= 1) the
    pages the images from `keep` down hold stay PARENT runs, and the image builds on image
    `keep` instead (its Parent record named relative to `out_path`).  The UUID stays: the
    new image holds the same memory state as the old one.  Returns its header."""
    src = chain.image
    h = src.header
    if keep is not None and not 1 <= keep < len(chain):
        raise ValueError(f"keep={keep}: the chain has {len(chain)} images")
    import dataclasses  # here: 7 ms, only for a flatten

    header = dataclasses.replace(h)
    extra: list[Any] = []
    if keep is None:
        header.flags = h.flags & ~HeaderFlags.INCREMENTAL
        header.parent_uuid = ZERO_UUID
    else:
        base = chain.readers[keep]
        p = parent_for(out_path, base)
        if out_path is not None:  # as the chain found it (maybe through parent_dir)
            p.name = parent_name(out_path, chain.paths[keep])
        header.parent_uuid = base.header.uuid
        extra.append(p)
    page = h.page_size
    with ImageWriter(out, header, compress_pages=compress_pages) as w:
        runs: list[PagemapRun] = []
        for owner_kind, owner in chain.owners():
            for piece in chain.pieces(owner_kind, owner):
                if piece.level < 0:
                    runs.append(
                        _run(owner_kind, owner, piece.vaddr, piece.nr_pages, PageFlags.ZERO)
                    )
                elif keep is not None and piece.level >= keep:
                    runs.append(
                        _run(owner_kind, owner, piece.vaddr, piece.nr_pages, PageFlags.PARENT)
                    )
                else:
                    total = piece.nr_pages * page
                    first = -1
                    for off in range(0, total, DEFAULT_CHUNK):
                        n = min(DEFAULT_CHUNK, total - off)
                        at = w.write_pages(chain.read(piece, off, n))
                        first = at if first < 0 else first
                    runs.append(
                        _run(
                            owner_kind, owner, piece.vaddr, piece.nr_pages, PageFlags.PRESENT, first
                        )
                    )
        for stype in SectionType:
            if stype in (SectionType.PAGES, SectionType.INDEX, SectionType.PAGEMAP):
                continue
            if stype == SectionType.CHAIN:
                w.add_section(stype, extra)
                continue
            w.add_section(stype, src.records(stype))
        starts: set[tuple[int, int, int]] = {
            (int(OwnerKind.PROCESS), v.pid, v.start)
            for v in src.records(SectionType.MM)
            if isinstance(v, Vma)
        }
        w.add_section(SectionType.PAGEMAP, _merge(runs, page, starts))
    return header


def _run(
    owner_kind: int, owner: int, vaddr: int, n: int, flags: int, data_offset: int = 0
) -> PagemapRun:
    return PagemapRun(
        owner_kind=owner_kind,
        flags=flags,
        owner=owner,
        vaddr=vaddr,
        nr_pages=n,
        data_offset=data_offset,
    )


def _merge(
    runs: list[PagemapRun], page: int, starts: set[tuple[int, int, int]]
) -> list[PagemapRun]:
    """Adjacent runs of one owner and kind joined (PRESENT ones when their data is too),
    but never across the start of a VMA (`starts`: (owner kind, owner, address)): a run
    lies inside one VMA."""
    out: list[PagemapRun] = []
    for r in runs:
        last = out[-1] if out else None
        if (
            last is not None
            and (r.owner_kind, r.owner, r.vaddr) not in starts
            and (last.owner_kind, last.owner, last.flags) == (r.owner_kind, r.owner, r.flags)
            and last.vaddr + last.nr_pages * page == r.vaddr
            and (
                not r.flags & PageFlags.PRESENT
                or last.data_offset + last.nr_pages * page == r.data_offset
            )
        ):
            last.nr_pages += r.nr_pages
        else:
            out.append(r)
    return out


# --------------------------------------------------------------------------- verify


def verify_chain(
    source: str | os.PathLike[str] | BinaryIO,
    parent_dir: str | None = None,
    *,
    chunk_size: int = 1 << 20,
    open_file: Callable[[str], BinaryIO] | None = None,
    name: str | None = None,
    verified: Collection[str] = (),
) -> Any:
    """`verify` of an image and of every parent below it, and of every link: the parent
    is there, is the one the child names (UUID, size, digest), and holds every page the
    child's PARENT runs leave to it.  Returns the newest image's Report with every
    problem found in the chain (a parent's own problems prefixed with its path).
    `open_file` opens each parent (once: what is checked is what is read; a restore's
    trust check); `name`: the path of a `source` given as an open file; `verified`: the
    paths (normalized) of parents whose own bytes were verified already, as `open_file`
    gives them (a migration's pre-dumps, verified as they arrived): only their links and
    the pages their children leave to them are checked."""
    from .verify import Problem, verify_report

    if not isinstance(source, (str, os.PathLike)) and source.seekable():
        source.seek(0)  # verify reads the file from its start (a stream: from where it is)
    report = verify_report(source, chunk_size=chunk_size)
    child = os.fspath(source) if isinstance(source, (str, os.PathLike)) else name
    if report.problems or report.parent is None:
        return report
    seen = {report.header.uuid} if report.header is not None else set()
    rep = report
    for _ in range(MAX_DEPTH):
        parent = rep.parent
        if parent is None:
            break
        where = locate_parent(child, parent, parent_dir)
        f: BinaryIO | None = None
        try:
            if open_file is None:
                reader: ImageReader | None = open_image(where)
            else:
                f = open_file(where)
                reader = ImageReader(f)
        except ImageError as e:
            reader = None
            if f is not None:
                f.close()
                f = None
            if os.path.exists(where):
                report.problems.append(Problem("chain", "", None, f"{where}: {e.msg}"))
                break
        try:
            why = link_problem(parent, where, reader)
            if why is None and parent.uuid in seen:
                why = f"the chain loops back to {where}"
            if why:
                report.problems.append(Problem("chain", "", None, why))
                break
            assert reader is not None
            seen.add(parent.uuid)
            if f is not None:
                f.seek(0)
            if os.path.normpath(where) in verified:
                below = _checked_report(reader)
            else:
                below = verify_report(where if f is None else f, chunk_size=chunk_size)
            for p in below.problems:
                report.problems.append(Problem("chain", "", None, f"parent {where}: {p}"))
            if below.problems:
                break
            _coverage(rep.parent_runs, reader, child or "-", where, report.problems)
        finally:
            if reader is not None:
                reader.close()
            if f is not None:
                f.close()
        rep, child = below, where
    return report


def _checked_report(reader: ImageReader) -> Any:
    """The Report of an image verified before: no problems, its header, its Parent
    record and PARENT runs (as verify_report gives them)."""
    from .verify import Report

    runs = [
        r
        for r in reader.records(SectionType.PAGEMAP)
        if isinstance(r, PagemapRun) and r.flags == PageFlags.PARENT
    ]
    return Report([], [], reader.header, parent_record(reader), runs)


def _coverage(
    runs: list[PagemapRun], parent: ImageReader, child: str, where: str, problems: list[Any]
) -> None:
    """Every PARENT run of the child must lie in runs of the parent (of any kind)."""
    from .verify import Problem

    if not runs:
        return
    page = parent.header.page_size
    have: dict[Owner, list[tuple[int, int]]] = defaultdict(list)
    for r in parent.records(SectionType.PAGEMAP):
        if isinstance(r, PagemapRun):
            have[(r.owner_kind, r.owner)].append((r.vaddr, r.vaddr + r.nr_pages * page))
    merged: dict[Owner, list[tuple[int, int]]] = {}
    for owner, rs in have.items():
        m: list[tuple[int, int]] = []
        for a, b in sorted(rs):
            if m and a <= m[-1][1]:
                m[-1] = (m[-1][0], max(b, m[-1][1]))
            else:
                m.append((a, b))
        merged[owner] = m
    bad = 0
    for r in runs:
        a, b = r.vaddr, r.vaddr + r.nr_pages * page
        m = merged.get((r.owner_kind, r.owner), [])
        i = bisect.bisect_right([s for s, _ in m], a) - 1
        if i < 0 or m[i][1] < b:
            bad += 1
            if bad <= 3:
                problems.append(
                    Problem(
                        "chain",
                        "",
                        None,
                        f"{child}: the PARENT run {a:#x}-{b:#x} of "
                        f"{_owner_text(r.owner_kind, r.owner)} has no data in the parent {where}",
                    )
                )
    if bad > 3:
        problems.append(Problem("chain", "", None, f"{child}: {bad - 3} more such runs"))


def memory_digests(chain: Chain) -> dict[tuple[int, int, int], str]:
    """xxh3-64 (hex) of each VMA's memory as the chain's newest image has it: which
    pages hold data, which are zero, and the data, whatever image holds it (a chain and
    its flattened image give the same digests).  Keyed by (pid, start, end)."""
    import xxhash

    from .records import Vma

    vmas = sorted(
        (v for v in chain.image.records(SectionType.MM) if isinstance(v, Vma)),
        key=lambda v: (v.pid, v.start),
    )
    page = chain.image.header.page_size
    out: dict[tuple[int, int, int], str] = {}
    pieces: dict[int, list[Piece]] = {}
    for v in vmas:
        if v.pid not in pieces:
            pieces[v.pid] = chain.pieces(OwnerKind.PROCESS, v.pid)
        h = xxhash.xxh3_64()
        runs: list[tuple[int, int, bool]] = []  # (start, end, zero) merged
        mine = [p for p in pieces[v.pid] if v.start <= p.vaddr < v.end]
        for p in mine:
            end = p.vaddr + p.nr_pages * page
            zero = p.level < 0
            if runs and runs[-1][1] == p.vaddr and runs[-1][2] == zero:
                runs[-1] = (runs[-1][0], end, zero)
            else:
                runs.append((p.vaddr, end, zero))
        for s, e, zero in runs:
            h.update(b"%d:%d:%d;" % (s - v.start, (e - s) // page, 1 if zero else 0))
        for p in mine:
            if p.level >= 0:
                total = p.nr_pages * page
                for off in range(0, total, DEFAULT_CHUNK):
                    h.update(chain.read(p, off, min(DEFAULT_CHUNK, total - off)))
        out[(v.pid, v.start, v.end)] = h.hexdigest()
    return out


__all__ = [
    "Chain",
    "ChainError",
    "Piece",
    "flatten",
    "kind",
    "link_problem",
    "locate_parent",
    "memory_digests",
    "open_image",
    "parent_for",
    "parent_name",
    "parent_record",
    "verify_chain",
]
