"""The dump file container: header, sections, index, trailer.

Grammar of a file (SPEC.md, "File layout"):

    file     := preamble section* index trailer
    preamble := MAGIC major:u16 minor:u16 hdr_len:u32 Header-record zero-pad   (hdr_len bytes)
    section  := SECT_MAGIC type:u16 version:u16 hdr_len:u32 compression:u8 level:u8
                checksum_algo:u8 flags:u8 count:u32 0:u32 payload_len:u64 raw_len:u64
                checksum:u64 base:u64 zero-pad  (hdr_len bytes)  payload  pad-to-8
    index    := a section of type INDEX holding one IndexEntry record per section
    trailer  := index_offset:u64 file_size:u64 digest:u64 END_MAGIC              (32 bytes)

The writer never seeks, so an image can be written to a pipe or a socket.  PAGES sections
are padded (inside their header) so their payload starts on a page boundary.  A writer to
a regular file may instead place the page data in the file first and fill in the PAGES
section headers afterwards (``PageArea``): the bytes are the same, only the order in
which they are written differs.
"""

from __future__ import annotations

import errno
import fcntl
import io
import mmap
import os
import stat
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

import xxhash

from . import _codec
from .errors import ImageError, ImageVersionError, MagicError, shorten
from .fields import align8, decode_records, encode_records
from .records import (
    ChecksumAlgo,
    Compression,
    Header,
    IndexEntry,
    SectionType,
)

# The structures are declared in construct in schema.py; _codec.py is generated from them.
MAGIC = _codec.PREAMBLE_MAGIC
SECT_MAGIC = _codec.SECTION_HEADER_MAGIC
END_MAGIC = _codec.TRAILER_MAGIC
FORMAT_MAJOR = 1
# 1.1: user namespaces; 1.2: owner; 1.3: chains; 1.4: socket records; 1.5: task state
FORMAT_MINOR = 7

# Version of each section's payload layout in format 1.x.
SECTION_VERSIONS: dict[int, int] = {t: 1 for t in SectionType}

PREAMBLE_SIZE = _codec.PREAMBLE_SIZE
SECTION_HEADER_SIZE = _codec.SECTION_HEADER_SIZE
TRAILER_SIZE = _codec.TRAILER_SIZE
_DIGESTED_TRAILER = 16  # index_offset and file_size are covered by the digest

DEFAULT_ZSTD_LEVEL = 3
BLOCK_SIZE = 16 << 20  # page data per PAGES section
Buffer = bytes | bytearray | memoryview
# a section payload larger than this is refused before allocating it
MAX_SECTION = 1 << 40


def checksum(data: Buffer) -> int:
    return xxhash.xxh3_64_intdigest(data)


class _Value:
    """A small mutable value: the __repr__ and __eq__ that @dataclass would give, without
    importing dataclasses (7 ms with inspect) in every command that reads an image."""

    __slots__: tuple[str, ...] = ()
    _fields: tuple[str, ...] = ()  # in declaration order (__slots__ literals get sorted)

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._fields)
        return f"{type(self).__qualname__}({inner})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self._fields)

    __hash__ = None  # type: ignore[assignment]


class SectionInfo(_Value):
    """A section as the index (or a sequential walk) describes it."""

    _fields = (
        "type",
        "version",
        "offset",  # of the section header
        "hdr_len",
        "compression",
        "level",
        "count",
        "payload_len",
        "raw_len",
        "checksum",
        "base",
    )
    __slots__ = _fields

    def __init__(
        self,
        type: int,
        version: int,
        offset: int,
        hdr_len: int,
        compression: int,
        level: int,
        count: int,
        payload_len: int,
        raw_len: int,
        checksum: int,
        base: int = 0,
    ) -> None:
        self.type = type
        self.version = version
        self.offset = offset
        self.hdr_len = hdr_len
        self.compression = compression
        self.level = level
        self.count = count
        self.payload_len = payload_len
        self.raw_len = raw_len
        self.checksum = checksum
        self.base = base

    @property
    def payload_offset(self) -> int:
        return self.offset + self.hdr_len

    @property
    def end(self) -> int:
        return align8(self.payload_offset + self.payload_len)

    @property
    def name(self) -> str:
        try:
            return SectionType(self.type).name
        except ValueError:
            return f"0x{self.type:04x}"

    def index_entry(self) -> IndexEntry:
        return IndexEntry(
            type=self.type,
            version=self.version,
            compression=self.compression,
            count=self.count,
            hdr_len=self.hdr_len,
            offset=self.offset,
            payload_len=self.payload_len,
            raw_len=self.raw_len,
            checksum=self.checksum,
            base=self.base,
        )


def _compress(data: Buffer, level: int) -> bytes:
    import zstandard  # here: an image without compression never loads it

    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)


def decompress(data: bytes, raw_len: int, where: str) -> bytes:
    import zstandard

    try:
        out = zstandard.ZstdDecompressor().decompress(data, max_output_size=raw_len)
    except zstandard.ZstdError as e:
        raise ImageError(f"zstd: {e}", section=where) from None
    if len(out) != raw_len:
        raise ImageError(f"decompressed to {len(out)} bytes, header says {raw_len}", section=where)
    return out


def parse_section_header(raw: bytes, offset: int) -> SectionInfo:
    if len(raw) < SECTION_HEADER_SIZE:
        raise ImageError("section header truncated", offset=offset)
    try:
        (
            stype,
            version,
            hdr_len,
            compression,
            level,
            checksum_algo,
            _flags,
            count,
            _reserved,
            payload_len,
            raw_len,
            digest,
            base,
        ) = _codec.parse_section_header(raw)
    except MagicError:
        raise ImageError("no section magic: corrupted or misaligned", offset=offset) from None
    if hdr_len < SECTION_HEADER_SIZE or hdr_len % 8:
        raise ImageError(f"section header length {hdr_len} is invalid", offset=offset)
    if payload_len > MAX_SECTION or raw_len > MAX_SECTION:
        raise ImageError(f"section length {payload_len} is absurd", offset=offset)
    if compression not in (Compression.NONE, Compression.ZSTD):
        raise ImageError(f"unknown compression {compression}", offset=offset)
    if checksum_algo != ChecksumAlgo.XXH3_64:
        raise ImageError(f"unknown checksum algorithm {checksum_algo}", offset=offset)
    if compression == Compression.NONE and raw_len != payload_len:
        raise ImageError("uncompressed section with raw_len != payload_len", offset=offset)
    return SectionInfo(
        type=stype,
        version=version,
        offset=offset,
        hdr_len=hdr_len,
        compression=compression,
        level=level,
        count=count,
        payload_len=payload_len,
        raw_len=raw_len,
        checksum=digest,
        base=base,
    )


def build_preamble(header: Header, minor: int = FORMAT_MINOR) -> bytes:
    rec = header.encode()
    hdr_len = align8(PREAMBLE_SIZE + len(rec))
    pre = _codec.build_preamble(FORMAT_MAJOR, minor, hdr_len)
    return pre + rec + b"\0" * (hdr_len - PREAMBLE_SIZE - len(rec))


# --------------------------------------------------------------------------- page area


class PageArea:
    """The page data of an image written to a regular file, placed in the file in place.

    The file is sized for ``capacity`` bytes of page data and mapped (MAP_SHARED) before
    the data exists, so that a caller can fault the mapping in ahead of time (allocating
    page cache costs far more than copying into it) and then read pages straight into it
    (``claim``).  The layout is the one the streaming writer produces from full blocks:
    the preamble, then PAGES sections of ``block_size`` bytes (the last one shorter), each
    payload on a page boundary right after its header page.  More data than the capacity
    makes the area grow (the file is extended and the new part mapped, not faulted in).
    ``ImageWriter(area=...)`` fills in the section headers, checksums and digest once the
    page data is complete, truncates the file to what was used and writes the records
    after it.  The caller owns ``fd``, which must be open for reading and writing.
    """

    def __init__(
        self, fd: int, capacity: int, *, page_size: int, block_size: int = BLOCK_SIZE
    ) -> None:
        if block_size % page_size or page_size % mmap.ALLOCATIONGRANULARITY:
            raise ValueError(f"block size {block_size} is not a multiple of the page size")
        self.fd = fd
        self.page_size = page_size
        self.block_size = block_size
        self.first = page_size  # payload of block 0: the preamble and its header before it
        self.used = 0  # page data bytes claimed
        self.capacity = 0  # page data bytes the mapped file holds
        # (file offset, end, mapping, view of it) of each mapped piece of the file
        self.segments: list[tuple[int, int, mmap.mmap, memoryview]] = []
        self._claims: list[memoryview] = []
        self.grow(max(capacity, page_size))

    @property
    def map(self) -> mmap.mmap:
        """The first mapping: the file as sized at creation (for the caller to fault in)."""
        return self.segments[0][2]

    def file_offset(self, pos: int) -> int:
        """Where byte ``pos`` of the page data stream is in the file."""
        block, within = divmod(pos, self.block_size)
        return self.first + block * (self.block_size + self.page_size) + within

    def grow(self, capacity: int) -> None:
        """Extend the file and its mapping to hold ``capacity`` bytes of page data."""
        capacity = -(-capacity // self.page_size) * self.page_size
        if capacity <= self.capacity:
            return
        start = self.segments[-1][1] if self.segments else 0
        end = self.file_offset(capacity - 1) + 1
        os.ftruncate(self.fd, end)
        m = mmap.mmap(self.fd, end - start, flags=mmap.MAP_SHARED, offset=start)
        self.segments.append((start, end, m, memoryview(m)))
        self.capacity = capacity

    def room(self) -> int:
        """Bytes the next ``claim`` may take: up to the end of the current block and of
        the mapping it is in (the area grows when it is full)."""
        if self.used >= self.capacity:
            self.grow(max(2 * self.capacity, self.used + self.block_size))
        off = self.file_offset(self.used)
        seg_end = next(e for s, e, _, _ in self.segments if s <= off < e)
        return min(self.block_size - self.used % self.block_size, seg_end - off)

    def claim(self, n: int) -> tuple[int, memoryview]:
        """The next ``n`` bytes of page data (at most ``room()``): their offset in the page
        data stream and the writable view of the file where they go, to be filled by the
        caller before the writer seals the area."""
        if n <= 0 or n > self.room():
            raise ValueError(f"claim of {n} bytes, room for {self.room()}")
        off = self.file_offset(self.used)
        start, _, _, view = next(seg for seg in self.segments if seg[0] <= off < seg[1])
        piece = view[off - start : off - start + n]
        self._claims.append(piece)
        pos, self.used = self.used, self.used + n
        return pos, piece

    def views(self, offset: int, length: int) -> Iterator[memoryview]:
        """Views of the file's bytes [offset, offset+length), one per mapping they are in;
        each is released when the next is asked for."""
        end = offset + length
        for start, seg_end, _, view in self.segments:
            if offset < end and start <= offset < seg_end:
                take = min(end, seg_end) - offset
                piece = view[offset - start : offset - start + take]
                try:
                    yield piece
                finally:
                    piece.release()
                offset += take

    def close(self) -> None:
        """Unmap the file."""
        for piece in self._claims:
            piece.release()
        self._claims.clear()
        for _, _, m, view in self.segments:
            view.release()
            try:
                m.close()
            except BufferError:  # pragma: no cover - a view kept: unmapped when it goes
                pass
        self.segments.clear()

    def discard(self) -> None:
        """Not used after all: unmap and empty the file."""
        self.close()
        os.ftruncate(self.fd, 0)


# --------------------------------------------------------------------------- writing


class ImageWriter:
    """Streams an image to a binary file object, never seeking.

    Record sections are written with ``add_section``; page data with ``write_pages``,
    which returns the byte offset of the data in the page data stream (the
    concatenation of every PAGES payload, uncompressed).  ``close`` writes the index
    and the trailer; the caller owns fsync and rename (see ``atomic.atomic_output``).

    ``minor`` is for re-encoders only (``jsonio.encode`` reproducing a newer-minor file
    it decoded); everything else writes the current version.

    With ``area`` (a ``PageArea`` of ``out``'s file, which must then be a regular file
    opened for writing at offset 0) page data goes into the file in place: a caller
    reads pages straight into ``claim_pages`` views, ``write_pages`` copies into the
    area, and the first record section (or ``close``) seals it: the PAGES headers, the
    checksums and the digest are computed then, outside the caller's time-critical
    copy.  An area that does not fit (compressed pages, another page or block size, a
    preamble longer than its first page) is discarded and the image streamed as usual.
    """

    def __init__(
        self,
        out: BinaryIO,
        header: Header,
        *,
        compress_records: bool = False,
        compress_pages: bool = False,
        level: int = DEFAULT_ZSTD_LEVEL,
        block_size: int = BLOCK_SIZE,
        minor: int = FORMAT_MINOR,
        area: PageArea | None = None,
    ) -> None:
        if header.page_size < 512 or header.page_size & (header.page_size - 1):
            raise ImageError(f"page size {header.page_size} is not a power of two >= 512")
        self.out = out
        self.header = header
        self.page_size = header.page_size
        self.pos = 0
        self.digest = xxhash.xxh3_64()
        self.sections: list[SectionInfo] = []
        self.compress_records = compress_records
        self.compress_pages = compress_pages
        self.level = level
        self.block_size = block_size
        self.page_data_len = 0  # logical length of the page data stream
        self._pending = bytearray()  # small page writes coalesced into one block
        self._pages_flushed = 0  # page data bytes already in PAGES sections
        self._closed = False
        preamble = build_preamble(header, minor)
        self.area: PageArea | None = None
        if area is not None:
            if (
                compress_pages
                or area.used
                or (area.page_size, area.block_size) != (self.page_size, block_size)
                or len(preamble) + SECTION_HEADER_SIZE > area.first
            ):
                area.discard()
            else:
                self.area = area
        if self.area is not None:
            # the file position stays at 0 until the area is sealed
            os.pwrite(self.area.fd, preamble, 0)
            self.digest.update(preamble)
            self.pos = len(preamble)
        else:
            self._emit(preamble)

    # -- low level

    def _emit(self, data: Buffer) -> None:
        self.out.write(data)
        self.digest.update(data)
        self.pos += len(data)

    def _section(
        self,
        stype: int,
        payload: Buffer,
        *,
        count: int,
        compress: bool,
        base: int = 0,
        page_align: bool = False,
        version: int | None = None,
        level: int | None = None,
    ) -> SectionInfo:
        raw_len = len(payload)
        comp = Compression.NONE
        if compress and raw_len:
            level = self.level if level is None else level
            payload = _compress(payload, level)
            comp = Compression.ZSTD
            page_align = False  # compressed data is never mapped in place
        else:
            level = 0
        hdr_len = SECTION_HEADER_SIZE
        if page_align:
            hdr_len += (-(self.pos + SECTION_HEADER_SIZE)) % self.page_size
        info = SectionInfo(
            type=stype,
            version=version if version is not None else SECTION_VERSIONS.get(stype, 1),
            offset=self.pos,
            hdr_len=hdr_len,
            compression=comp,
            level=level,
            count=count,
            payload_len=len(payload),
            raw_len=raw_len,
            checksum=checksum(payload),
            base=base,
        )
        hdr = _codec.build_section_header(
            info.type,
            info.version,
            hdr_len,
            comp,
            level,
            ChecksumAlgo.XXH3_64,
            0,
            count,
            0,
            info.payload_len,
            raw_len,
            info.checksum,
            base,
        )
        self._emit(hdr + b"\0" * (hdr_len - SECTION_HEADER_SIZE))
        self._emit(payload)
        pad = (-len(payload)) % 8
        if pad:
            self._emit(b"\0" * pad)
        self.sections.append(info)
        return info

    # -- records

    def add_section(
        self, stype: int, records: Iterable[Any], *, compress: bool | None = None
    ) -> None:
        recs = list(records)
        if not recs:
            return
        self._flush_pages()
        payload = encode_records(recs)
        self._section(
            stype,
            payload,
            count=len(recs),
            compress=self.compress_records if compress is None else compress,
        )

    def add_raw_section(
        self,
        stype: int,
        version: int,
        payload: bytes,
        *,
        count: int,
        compression: int,
        level: int | None = None,
        base: int = 0,
    ) -> None:
        """A section given as its uncompressed payload (re-encoding a decoded image).

        ``level`` is the zstd level to compress with (the writer's default if None).
        """
        self._flush_pages()
        self._section(
            stype,
            payload,
            count=count,
            compress=compression == Compression.ZSTD,
            base=base,
            version=version,
            page_align=stype == SectionType.PAGES,
            level=level,
        )

    # -- pages

    def page_room(self) -> int:
        """Bytes ``claim_pages`` may take now (the end of a block); 0 when page data is
        streamed (no area, or it was sealed by a record section)."""
        return self.area.room() if self.area is not None else 0

    def claim_pages(self, n: int) -> tuple[int, memoryview]:
        """Page data written in place: the offset in the page data stream of the next
        ``n`` bytes (at most ``page_room()``) and the view of the file where the caller
        puts them.  The view is valid until the area is sealed."""
        if self.area is None:
            raise ValueError("claim_pages without a page area")
        pos, view = self.area.claim(n)
        self.page_data_len += n
        return pos, view

    def write_pages(self, data: bytes | bytearray | memoryview) -> int:
        """Append page data; returns its offset in the page data stream."""
        off = self.page_data_len
        n = len(data)
        if n == 0:
            return off
        if self.area is not None:
            view = memoryview(data).cast("B")
            done = 0
            while done < n:
                take = min(self.area.room(), n - done)
                self.claim_pages(take)
                pos = self.area.file_offset(self.area.used - take)
                # pwrite, not a store into the mapping: an error stays an OSError
                _pwrite_all(self.area.fd, view[done : done + take], pos)
                done += take
            return off
        if n >= self.block_size:
            self._flush_pages()
            self._page_block(data)
        else:
            self._pending += data
            if len(self._pending) >= self.block_size:
                self._flush_pages()
        self.page_data_len += n
        return off

    def _page_block(self, data: bytes | bytearray | memoryview) -> None:
        self._section(
            SectionType.PAGES,
            data,
            count=0,
            compress=self.compress_pages,
            base=self._pages_flushed,
            page_align=True,
        )
        self._pages_flushed += len(data)

    def _seal(self) -> None:
        """The area's page data is complete: write the PAGES headers (checksums of the
        data in the file), feed the digest in file order, unmap, cut the file after the
        last block and continue writing there."""
        area, self.area = self.area, None
        assert area is not None
        block = area.block_size
        try:
            for base in range(0, area.used, block):
                n = min(block, area.used - base)
                payload = area.file_offset(base)
                h = xxhash.xxh3_64()
                for piece in area.views(payload, n):
                    h.update(piece)
                info = SectionInfo(
                    type=SectionType.PAGES,
                    version=SECTION_VERSIONS[SectionType.PAGES],
                    offset=self.pos,
                    hdr_len=payload - self.pos,
                    compression=Compression.NONE,
                    level=0,
                    count=0,
                    payload_len=n,
                    raw_len=n,
                    checksum=h.intdigest(),
                    base=base,
                )
                hdr = _codec.build_section_header(
                    info.type, info.version, info.hdr_len, Compression.NONE, 0,
                    ChecksumAlgo.XXH3_64, 0, 0, 0, n, n, info.checksum, base,
                )  # fmt: skip
                hdr += b"\0" * (info.hdr_len - SECTION_HEADER_SIZE)
                _pwrite_all(area.fd, hdr, self.pos)
                self.digest.update(hdr)
                for piece in area.views(payload, n):
                    self.digest.update(piece)
                pad = b"\0" * ((-n) % 8)
                if pad:
                    _pwrite_all(area.fd, pad, payload + n)
                    self.digest.update(pad)
                self.pos = payload + n + len(pad)
                self.sections.append(info)
        finally:
            area.close()
        self._pages_flushed = area.used
        os.ftruncate(area.fd, self.pos)
        self.out.seek(self.pos)

    def _flush_pages(self) -> None:
        if self.area is not None:
            self._seal()
        if self._pending:
            self._page_block(bytes(self._pending))
            self._pending.clear()

    # -- end

    def close(self) -> None:
        if self._closed:
            return
        self._flush_pages()
        self._closed = True
        entries = [s.index_entry() for s in self.sections]
        index_offset = self.pos
        self._section(
            SectionType.INDEX, encode_records(entries), count=len(entries), compress=False
        )
        file_size = self.pos + TRAILER_SIZE
        self.digest.update(_codec.build_trailer(index_offset, file_size, 0)[:_DIGESTED_TRAILER])
        self.out.write(_codec.build_trailer(index_offset, file_size, self.digest.intdigest()))
        self.pos = file_size
        self.out.flush()

    def __enter__(self) -> ImageWriter:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None:
            self.close()


def _pwrite_all(fd: int, data: Buffer, offset: int) -> None:
    view = memoryview(data)
    while view:
        k = os.pwrite(fd, view, offset)
        view, offset = view[k:], offset + k


# --------------------------------------------------------------------------- reading


def parse_preamble(raw: bytes, *, path: str | None = None) -> tuple[int, int, int]:
    """(major, minor, hdr_len) of a file's first bytes; refuses a newer major version."""
    try:
        if len(raw) < PREAMBLE_SIZE:
            raise MagicError("too short")
        major, minor, hdr_len = _codec.parse_preamble(raw)
    except MagicError:
        raise ImageError("not a cpt image (bad magic)", path=path, offset=0) from None
    if major > FORMAT_MAJOR:
        raise ImageVersionError(
            f"image format {major}.{minor} is newer than this cpt reads "
            f"({FORMAT_MAJOR}.{FORMAT_MINOR}): upgrade cpt",
            path=path,
        )
    if major < 1:
        raise ImageError(f"image format {major}.{minor} is unknown", path=path, offset=8)
    if hdr_len < PREAMBLE_SIZE + 8 or hdr_len % 8 or hdr_len > 1 << 20:
        raise ImageError(f"header length {hdr_len} is invalid", path=path, offset=12)
    return major, minor, hdr_len


def parse_header_record(raw: bytes, *, path: str | None = None, plain: bool = False) -> Header:
    """The Header record at the start of ``raw`` (the preamble's bytes after its prefix)."""
    if len(raw) < 8:
        raise ImageError("header record truncated", path=path, offset=PREAMBLE_SIZE)
    (size,) = struct.unpack_from("<I", raw)
    if size < 8 or align8(size) > len(raw):
        raise ImageError(
            f"header record length {size} exceeds the header", path=path, offset=PREAMBLE_SIZE
        )
    try:
        recs = decode_records(raw[: align8(size)], plain=plain, where="header")
    except ImageError as e:
        e.path = path
        raise
    if not recs or not isinstance(recs[0], Header):
        raise ImageError("the preamble holds no Header record", path=path, offset=PREAMBLE_SIZE)
    return recs[0]


# --------------------------------------------------------------------------- opening

_FILE_TYPES = {
    stat.S_IFDIR: "a directory",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symbolic link",
}
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC


def file_type(mode: int) -> str:
    """What a non-regular file is, in words ("a FIFO", "a directory", ...)."""
    return _FILE_TYPES.get(stat.S_IFMT(mode), f"of type {stat.S_IFMT(mode):#o}")


def open_regular(path: str, *, what: str = "an image", buffering: int = -1) -> BinaryIO:
    """Open a named file for reading, refusing anything but a regular file.

    A FIFO would block open() (and every read) forever, a device may never end, a
    directory fails half-way: each is refused with one line naming the file and its
    type.  The last component is never followed if it is a symbolic link, the open never
    blocks (O_NONBLOCK, cleared once the fd is known to be a regular file), and the
    check is made on the open fd (fstat), so a file swapped after the lstat is caught
    too.  Raises ImageError (exit 40).
    """
    refuse = f"give {what} file, or - to read standard input"
    if not path:
        raise ImageError(f"the file name is empty: {refuse}")
    try:
        st = os.lstat(path)  # first, so that a device is not even opened
    except OSError as e:
        raise ImageError(f"cannot open: {e.strerror}", path=path) from None
    if stat.S_ISLNK(st.st_mode):
        try:
            target = f" (to {shorten(os.readlink(path))})"
        except OSError:
            target = ""
        raise ImageError(
            f"is a symbolic link{target}; refusing to follow it: give the file itself",
            path=path,
        )
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(f"not a regular file but {file_type(st.st_mode)}: {refuse}", path=path)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ImageError("became a symbolic link; refusing to follow it", path=path) from None
        raise ImageError(f"cannot open: {e.strerror}", path=path) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(f"not a regular file but {file_type(st.st_mode)}: {refuse}", path=path)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb", buffering=buffering)
    except BaseException:
        os.close(fd)
        raise


class ImageReader:
    """Random access to an image through its index.

    Opening reads the preamble, the trailer and the index; section payloads are read on
    demand, their checksum checked on every read (cheap: xxh3 runs at memory speed).
    """

    def __init__(self, source: str | os.PathLike[str] | BinaryIO, *, own: bool = False) -> None:
        """`source`: a path (opened and closed here) or a seekable binary file, which
        `own` makes the reader close with itself."""
        self.warnings: list[str] = []
        # an incremental image opened with its chain: its parents, newest first (opened,
        # checked and closed by whoever opened the chain; closed with this reader)
        self.below: list[ImageReader] = []
        if isinstance(source, (str, os.PathLike)):
            self.path: str | None = os.fspath(source)
            self.f: BinaryIO = open_regular(self.path)  # closed in close()
            self._own = True
        else:
            self.path = (
                getattr(source, "name", None)
                if isinstance(getattr(source, "name", None), str)
                else None
            )
            self.f = source
            self._own = own
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _err(self, msg: str, **kw: Any) -> ImageError:
        return ImageError(msg, path=self.path, **kw)

    def _pread(self, offset: int, n: int) -> bytes:
        self.f.seek(offset)
        data = self.f.read(n)
        if len(data) != n:
            raise self._err(f"file ends after {len(data)} of {n} bytes: truncated", offset=offset)
        return data

    def _open(self) -> None:
        try:
            self.size = self.f.seek(0, io.SEEK_END)
        except (OSError, io.UnsupportedOperation):
            raise self._err(
                "not seekable: use a file, or verify the stream with `cpt image verify`"
            ) from None
        head = self._pread(0, min(self.size, 1 << 16)) if self.size else b""
        self.major, self.minor, self.hdr_len = parse_preamble(head, path=self.path)
        if self.hdr_len > self.size:
            raise self._err("file ends inside the header: truncated")
        self.header = parse_header_record(
            self._pread(PREAMBLE_SIZE, self.hdr_len - PREAMBLE_SIZE), path=self.path
        )
        if self.size < self.hdr_len + TRAILER_SIZE:
            raise self._err("no trailer: the file is truncated")
        t = self._pread(self.size - TRAILER_SIZE, TRAILER_SIZE)
        try:
            index_offset, file_size, self.digest = _codec.parse_trailer(t)
        except MagicError:
            raise self._err(
                "no trailer at the end: the file is truncated or has data appended"
            ) from None
        if file_size != self.size:
            raise self._err(f"trailer says {file_size} bytes, the file has {self.size}")
        if not self.hdr_len <= index_offset < self.size - TRAILER_SIZE:
            raise self._err(f"index offset {index_offset} is outside the file")
        self.index_info = self._section_at(index_offset)
        if self.index_info.type != SectionType.INDEX:
            raise self._err("the trailer does not point at the index", offset=index_offset)
        if self.index_info.end != self.size - TRAILER_SIZE:
            raise self._err("data between the index and the trailer", offset=self.index_info.end)
        entries = decode_records(self.payload(self.index_info), where="INDEX")
        self.sections: list[SectionInfo] = []
        for e in entries:
            if not isinstance(e, IndexEntry):
                raise self._err(
                    "the index holds a record that is not an IndexEntry", section="INDEX"
                )
            info = SectionInfo(
                type=e.type,
                version=e.version,
                offset=e.offset,
                hdr_len=e.hdr_len,
                compression=e.compression,
                level=0,
                count=e.count,
                payload_len=e.payload_len,
                raw_len=e.raw_len,
                checksum=e.checksum,
                base=e.base,
            )
            if info.offset < self.hdr_len or info.end > index_offset:
                raise self._err(
                    f"index entry for {info.name} points outside the file", offset=e.offset
                )
            if e.type not in SectionType._value2member_map_:
                if self.minor > FORMAT_MINOR:
                    self.warnings.append(
                        f"skipping section type 0x{e.type:04x} of newer format {self.major}.{self.minor}"
                    )
                    continue
                raise self._err(f"unknown section type 0x{e.type:04x}", offset=e.offset)
            self.sections.append(info)
        self._page_blocks = sorted(
            (s for s in self.sections if s.type == SectionType.PAGES), key=lambda s: s.base
        )
        self.page_data_len = sum(s.raw_len for s in self._page_blocks)
        self._cache: dict[int, bytes] = {}

    def _section_at(self, offset: int) -> SectionInfo:
        raw = self._pread(offset, SECTION_HEADER_SIZE)
        try:
            return parse_section_header(raw, offset)
        except ImageError as e:
            e.path = self.path
            raise

    def close(self) -> None:
        for parent in getattr(self, "below", ()):
            parent.close()
        if getattr(self, "_own", False):
            self.f.close()

    def __enter__(self) -> ImageReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- payloads

    def payload(self, info: SectionInfo, *, check: bool = True) -> bytes:
        """The uncompressed payload of a section, checksum verified."""
        data = self._pread(info.payload_offset, info.payload_len)
        if check and checksum(data) != info.checksum:
            raise self._err("checksum mismatch", section=info.name, offset=info.offset)
        if info.compression == Compression.ZSTD:
            return decompress(data, info.raw_len, info.name)
        return data

    def sections_of(self, stype: int) -> list[SectionInfo]:
        return [s for s in self.sections if s.type == stype]

    def records(self, stype: int, *, plain: bool = False) -> list[Any]:
        out: list[Any] = []
        for s in self.sections_of(stype):
            try:
                out.extend(decode_records(self.payload(s), plain=plain, where=s.name))
            except ImageError as e:
                e.path = self.path
                raise
        return out

    def all_records(self, *, plain: bool = False) -> dict[int, list[Any]]:
        return {
            t: self.records(t, plain=plain)
            for t in SectionType
            if t not in (SectionType.PAGES, SectionType.INDEX)
        }

    # -- pages

    def page_blocks(self) -> list[SectionInfo]:
        return list(self._page_blocks)

    def read_pages(self, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of the page data stream."""
        out = bytearray()
        end = offset + length
        if offset < 0 or end > self.page_data_len:
            raise self._err(
                f"page data range {offset}+{length} is outside the page data ({self.page_data_len})"
            )
        for s in self._page_blocks:
            if s.base + s.raw_len <= offset or s.base >= end:
                continue
            lo = max(offset, s.base) - s.base
            hi = min(end, s.base + s.raw_len) - s.base
            if s.compression == Compression.NONE:
                out += self._pread(s.payload_offset + lo, hi - lo)
            else:
                block = self._cache.get(s.offset)
                if block is None:
                    block = self.payload(s)
                    self._cache.clear()  # keep one decompressed block
                    self._cache[s.offset] = block
                out += block[lo:hi]
        return bytes(out)

    def integrity(self, chunk_size: int = 1 << 20) -> list[str]:
        """What is wrong with the bytes of the file: the file digest and each section's
        checksum, in one sequential read of the whole file (the sections a command reads
        are checked anyway; this also covers those it does not, page data above all).

        Returns one message per problem, empty when every byte is as it was written.
        """
        end = self.size - TRAILER_SIZE + _DIGESTED_TRAILER  # the digest covers this much
        sections = sorted([*self.sections, self.index_info], key=lambda s: s.payload_offset)
        hashers = [xxhash.xxh3_64() for _ in sections]
        digest = xxhash.xxh3_64()
        buf = memoryview(bytearray(chunk_size))
        pos, first = 0, 0
        self.f.seek(0)
        while pos < end:
            view = buf[: min(chunk_size, end - pos)]
            got = self.f.readinto(view)  # type: ignore[attr-defined]
            if not got:
                return [f"file ends at {pos} of {end} bytes: truncated"]
            view = view[:got]
            digest.update(view)
            # feed the part of this chunk inside each section payload it overlaps
            while (
                first < len(sections)
                and sections[first].payload_offset + sections[first].payload_len <= pos
            ):
                first += 1
            for i in range(first, len(sections)):
                s = sections[i]
                lo, hi = s.payload_offset, s.payload_offset + s.payload_len
                if lo >= pos + got:
                    break
                a, b = max(lo, pos) - pos, min(hi, pos + got) - pos
                if a < b:
                    hashers[i].update(view[a:b])
            pos += got
        out = []
        if digest.intdigest() != self.digest:
            out.append("the file digest is wrong: the file was changed after it was written")
        for s, h in zip(sections, hashers, strict=True):
            if h.intdigest() != s.checksum:
                out.append(f"section {s.name} at offset {s.offset}: checksum mismatch")
        return out

    def page_file_ranges(self, offset: int, length: int) -> list[tuple[int, int]] | None:
        """File (offset, length) pieces holding a page data range, or None if compressed.

        Lets a restorer map or pread page data straight from the image file.
        """
        end = offset + length
        out = []
        for s in self._page_blocks:
            if s.base + s.raw_len <= offset or s.base >= end:
                continue
            if s.compression != Compression.NONE:
                return None
            lo = max(offset, s.base) - s.base
            hi = min(end, s.base + s.raw_len) - s.base
            out.append((s.payload_offset + lo, hi - lo))
        return out


# --------------------------------------------------------------------------- sequential


class StreamedSection(_Value):
    _fields = ("info", "stored", "computed_checksum")
    __slots__ = _fields

    def __init__(self, info: SectionInfo, stored: bytes, computed_checksum: int) -> None:
        self.info = info
        self.stored = stored  # payload as stored (compressed or not); b"" when given to a page sink
        self.computed_checksum = computed_checksum  # xxh3-64 of the stored payload as it was read


class StreamedTrailer(_Value):
    _fields = ("index_offset", "file_size", "digest", "computed_digest", "end", "extra")
    __slots__ = _fields

    def __init__(
        self,
        index_offset: int,
        file_size: int,
        digest: int,
        computed_digest: int,
        end: int,
        extra: int,
    ) -> None:
        self.index_offset = index_offset
        self.file_size = file_size  # as the trailer says
        self.digest = digest  # as the trailer says
        self.computed_digest = computed_digest  # of the bytes read
        self.end = end  # where the trailer ended: the file's real size without appended data
        self.extra = extra  # bytes after the trailer


PageSink = Callable[[SectionInfo, memoryview], None]


class _Stream:
    """Sequential reads that keep the whole-file digest; large payloads reuse one buffer."""

    def __init__(self, f: BinaryIO, path: str | None, chunk_size: int) -> None:
        self.f = f
        self.path = path
        self.pos = 0
        self.digest = xxhash.xxh3_64()
        self.buf = memoryview(bytearray(chunk_size))
        self._readinto = getattr(f, "readinto", None)

    def _truncated(self, what: str) -> ImageError:
        return ImageError(f"file ends inside {what}: truncated", path=self.path, offset=self.pos)

    def read(self, n: int, what: str) -> bytes:
        """Exactly n bytes, digested."""
        chunks = []
        left = n
        while left:
            b = self.f.read(min(left, 16 << 20))
            if not b:
                raise self._truncated(what)
            chunks.append(b)
            left -= len(b)
            self.pos += len(b)
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.digest.update(data)
        return data

    def read_upto(self, n: int) -> bytes:
        """Up to n bytes (fewer only at the end of the file), not digested."""
        out = bytearray(n)
        got = self._fill(memoryview(out))
        self.pos += got
        return bytes(out[:got])

    def _fill(self, view: memoryview) -> int:
        if self._readinto is not None:
            got = self._readinto(view)  # a whole chunk at once from a file: the common case
            if got == len(view) or not got:
                return got or 0
        else:
            got = 0
        while got < len(view):
            if self._readinto is not None:
                k = self._readinto(view[got:])
            else:
                b = self.f.read(len(view) - got)
                k = len(b)
                view[got : got + k] = b
            if not k:
                break
            got += k
        return got

    def stream(self, info: SectionInfo, n: int, sink: PageSink, what: str) -> int:
        """Feed n bytes to sink in chunks of the reused buffer; returns their xxh3-64."""
        h = xxhash.xxh3_64()
        update_digest, update_h = self.digest.update, h.update
        full = self.buf
        left = n
        while left:
            view = full if left >= len(full) else full[:left]
            got = self._fill(view)
            self.pos += got
            if got < len(view):
                raise self._truncated(what)
            update_digest(view)
            update_h(view)
            sink(info, view)
            left -= got
        return h.intdigest()


def walk(
    f: BinaryIO,
    *,
    path: str | None = None,
    page_sink: PageSink | None = None,
    chunk_size: int = 1 << 20,
) -> Iterator[tuple[str, Any]]:
    """Walk an image front to back without seeking (works on pipes).

    Yields ("preamble", (major, minor, header_raw)), ("section", StreamedSection) for each
    section including the index, then ("trailer", StreamedTrailer).  Raises ImageError at
    the first structural break.

    With ``page_sink``, PAGES payloads are not kept: they are passed to the sink in
    chunks of ``chunk_size`` bytes (a view of one reused buffer, valid during the call),
    and the section is yielded afterwards with ``stored`` empty.  Section checksums are
    computed, not compared: the caller decides what a mismatch means.
    """
    s = _Stream(f, path, chunk_size)
    pre = s.read(PREAMBLE_SIZE, "the preamble")
    major, minor, hdr_len = parse_preamble(pre, path=path)
    rest = s.read(hdr_len - PREAMBLE_SIZE, "the header")
    yield "preamble", (major, minor, rest)
    while True:
        off = s.pos
        raw = s.read(SECTION_HEADER_SIZE, "a section header")
        try:
            info = parse_section_header(raw, off)
        except ImageError as e:
            e.path = path
            raise
        s.read(info.hdr_len - SECTION_HEADER_SIZE, "a section header")
        what = f"section {info.name}"
        if page_sink is not None and info.type == SectionType.PAGES:
            stored = b""
            computed = s.stream(info, info.payload_len, page_sink, what)
        else:
            stored = s.read(info.payload_len, what)
            computed = checksum(stored)
        pad = (-info.payload_len) % 8
        if pad:
            s.read(pad, what)
        yield "section", StreamedSection(info, stored, computed)
        if info.type == SectionType.INDEX:
            break
    head = s.read(_DIGESTED_TRAILER, "the trailer")
    computed_digest = s.digest.intdigest()
    tail = s.read_upto(TRAILER_SIZE - _DIGESTED_TRAILER)
    if len(tail) != TRAILER_SIZE - _DIGESTED_TRAILER:
        raise ImageError("file ends inside the trailer: truncated", path=path, offset=s.pos)
    try:
        index_offset, file_size, stored_digest = _codec.parse_trailer(head + tail)
    except MagicError:
        raise ImageError("trailer magic missing", path=path, offset=s.pos - 8) from None
    end = s.pos
    while s.read_upto(1 << 16):
        pass
    yield (
        "trailer",
        StreamedTrailer(index_offset, file_size, stored_digest, computed_digest, end, s.pos - end),
    )
