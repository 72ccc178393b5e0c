"""/proc/PID/auxv: native u64 pairs (type, value), AT_NULL terminated."""

from __future__ import annotations

import struct

AuxvEntry = tuple[int, int]


def parse_auxv(data: bytes, word_size: int = 8) -> list[AuxvEntry]:
    """(type, value) pairs up to, not including, AT_NULL.  word_size 4 for an ia32 process."""
    fmt = "=QQ" if word_size == 8 else "=II"
    out = []
    for t, v in struct.iter_unpack(fmt, data[: len(data) - len(data) % (2 * word_size)]):
        if t == 0:  # AT_NULL
            break
        out.append((t, v))
    return out
