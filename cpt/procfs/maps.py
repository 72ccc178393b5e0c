"""/proc/PID/maps and /proc/PID/smaps.

Grammar as this kernel (6.18) prints them:
  maps        START-END PERMS PGOFF MAJ:MIN INODE [PAD PATH]   hex except INODE; a '\\n' in
              PATH is printed as "\\012", nothing else is escaped; " (deleted)" is appended
              to the path of an unlinked file
  smaps       per VMA: the maps line, "Key: value kB" lines, "VmFlags: xx yy " last
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass, fields

from ._common import dec

_BDELETED = b" (deleted)"


class VmaKind(enum.Enum):
    ANON = "anon"  # private anonymous, no name
    ANON_NAMED = "anon_named"  # [anon:NAME] (needs CONFIG_ANON_VMA_NAME; not on this kernel)
    SHMEM = "shmem"  # MAP_SHARED|MAP_ANONYMOUS: "/dev/zero (deleted)" or [anon_shmem:NAME]
    SYSV = "sysv"  # SysV shm segment: "/SYSV%08x (deleted)"
    MEMFD = "memfd"  # "/memfd:NAME (deleted)"
    FILE = "file"
    HEAP = "heap"
    STACK = "stack"
    VDSO = "vdso"
    VVAR = "vvar"
    VVAR_VCLOCK = "vvar_vclock"  # split out of [vvar] in 6.13
    VSYSCALL = "vsyscall"
    SPECIAL = "special"  # any other [name], e.g. [uprobes]


_SPECIAL_KINDS = {
    "[heap]": VmaKind.HEAP,
    "[stack]": VmaKind.STACK,
    "[vdso]": VmaKind.VDSO,
    "[vvar]": VmaKind.VVAR,
    "[vvar_vclock]": VmaKind.VVAR_VCLOCK,
    "[vsyscall]": VmaKind.VSYSCALL,
}
_SYSV_RE = re.compile(r"/SYSV[0-9a-f]{8}")


@dataclass(frozen=True, slots=True)
class Vma:
    """One line of /proc/PID/maps.  ``path`` is "" for an anonymous mapping and has the
    " (deleted)" suffix removed (``deleted`` tells)."""

    start: int
    end: int
    perms: str  # "rwxp" / "r--s"
    pgoff: int  # file offset in bytes
    major: int
    minor: int
    inode: int
    path: str
    deleted: bool

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def read(self) -> bool:
        return self.perms[0] == "r"

    @property
    def write(self) -> bool:
        return self.perms[1] == "w"

    @property
    def exec(self) -> bool:
        return self.perms[2] == "x"

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"

    @property
    def kind(self) -> VmaKind:
        p = self.path
        if not p:
            return VmaKind.ANON
        if p[0] == "[":
            if p.startswith("[anon:"):
                return VmaKind.ANON_NAMED
            if p.startswith("[anon_shmem:"):
                return VmaKind.SHMEM
            return _SPECIAL_KINDS.get(p, VmaKind.SPECIAL)
        if self.deleted:
            # shmem objects have no path: the kernel shows the name of their internal file
            if p == "/dev/zero":
                return VmaKind.SHMEM
            if p.startswith("/memfd:"):
                return VmaKind.MEMFD
            if _SYSV_RE.fullmatch(p):
                return VmaKind.SYSV
        return VmaKind.FILE

    @property
    def name(self) -> str | None:
        """NAME of [anon:NAME], [anon_shmem:NAME] and /memfd:NAME; the bracketed name else."""
        p = self.path
        if p.startswith(("[anon:", "[anon_shmem:")):
            return p[p.index(":") + 1 : -1]
        if p.startswith("/memfd:") and self.deleted:
            return p[7:]
        if p.startswith("["):
            return p[1:-1]
        return None


_PERMS: dict[bytes, str] = {}


def parse_maps(data: bytes) -> list[Vma]:
    """Parse /proc/PID/maps: about 12 ms for 10,000 lines on this machine kind."""
    out: list[Vma] = []
    append = out.append
    # perms, devices and paths repeat from line to line: parse each distinct one once
    perms_cache: dict[bytes, str] = {}
    dev_cache: dict[bytes, tuple[int, int]] = {}
    path_cache: dict[bytes, tuple[str, bool]] = {}
    for line in data.split(b"\n"):
        if not line:
            continue
        # at most 6 fields: the path, spaces and all, is the remainder; split() eats the
        # padding before it (a path starts with '/', '[' or "anon_inode:", never a space)
        f = line.split(None, 5)
        start, end = f[0].split(b"-")
        perms = perms_cache.get(f[1])
        if perms is None:
            perms = perms_cache[f[1]] = f[1].decode()
        dev = dev_cache.get(f[3])
        if dev is None:
            mj, mn = f[3].split(b":")
            dev = dev_cache[f[3]] = (int(mj, 16), int(mn, 16))
        if len(f) == 6:
            pd = path_cache.get(f[5])
            if pd is None:
                pd = path_cache[f[5]] = _maps_path(f[5])
            path, deleted = pd
        else:
            path, deleted = "", False
        append(
            _new_vma(
                int(start, 16),
                int(end, 16),
                perms,
                int(f[2], 16),
                dev[0],
                dev[1],
                int(f[4]),
                path,
                deleted,
            )
        )
    return out


def _vma_constructor() -> Callable[..., Vma]:
    """Vma(...) minus the frozen dataclass __init__, which calls object.__setattr__ once per
    field: that was 8 of the 16 ms that 10,000 maps lines took.  Same slots, same order; the
    tests check that it builds objects equal to Vma(...)."""
    s0, s1, s2, s3, s4, s5, s6, s7, s8 = (getattr(Vma, f.name).__set__ for f in fields(Vma))
    new = object.__new__

    def make(
        start: int,
        end: int,
        perms: str,
        pgoff: int,
        major: int,
        minor: int,
        inode: int,
        path: str,
        deleted: bool,
    ) -> Vma:
        o = new(Vma)
        s0(o, start)
        s1(o, end)
        s2(o, perms)
        s3(o, pgoff)
        s4(o, major)
        s5(o, minor)
        s6(o, inode)
        s7(o, path)
        s8(o, deleted)
        return o

    return make


_new_vma = _vma_constructor()


def _maps_path(p: bytes) -> tuple[str, bool]:
    deleted = p.endswith(_BDELETED)
    if deleted:
        p = p[:-10]
    if b"\\" in p:
        # seq_file_path() escapes only '\n' (as \012), not '\\': a name holding a literal
        # "\012" reads the same; /proc/PID/map_files/<range> has the real file if it matters
        p = p.replace(b"\\012", b"\n")
    return dec(p), deleted


def parse_smaps_vmflags(data: bytes) -> dict[tuple[int, int], frozenset[str]]:
    """(start, end) -> VmFlags two-letter codes, from /proc/PID/smaps, skipping all other lines.

    Relies on VmFlags being the last line of each VMA block (true since 3.8, which added it):
    it jumps from each header straight to the next "VmFlags:" line.
    """
    out: dict[tuple[int, int], frozenset[str]] = {}
    cache: dict[bytes, frozenset[str]] = {}  # few distinct flag strings: share the sets
    pos, n = 0, len(data)
    find = data.find
    while pos < n:
        eol = find(b"\n", pos)
        dash = find(b"-", pos, eol)
        sp = find(b" ", pos, eol)
        if eol < 0 or dash < 0 or sp < dash:
            raise ValueError(f"smaps: no VMA header at offset {pos}")
        key = (int(data[pos:dash], 16), int(data[dash + 1 : sp], 16))
        vf = find(b"\nVmFlags:", eol - 1)
        if vf < 0:
            raise ValueError(f"smaps: VMA {key[0]:x}-{key[1]:x} has no VmFlags line")
        vf_eol = find(b"\n", vf + 1)
        if vf_eol < 0:
            vf_eol = n
        raw = data[vf + 9 : vf_eol]
        flags = cache.get(raw)
        if flags is None:
            flags = cache[raw] = frozenset(raw.decode().split())
        out[key] = flags
        pos = vf_eol + 1
    return out
