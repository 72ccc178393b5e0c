"""Errors raised by the image library, and how a message quotes a value.

Every problem with an image file surfaces as ImageError, carrying where it was found
(file, section, record, byte offset) so the user gets one line naming the place.

A message quotes what it did not expect, and what it quotes may be hostile: 4 KiB of
text, a newline, a terminal escape.  ``printable`` escapes control characters (so a
message stays one line and a terminal shows it as text), ``shorten`` also cuts it to
LIMIT characters and says how long it was, ``quote`` does both to a value's repr.
"""

from __future__ import annotations

from typing import Any

LIMIT = 80  # characters of a quoted value in a message


def printable(text: str) -> str:
    """``text`` with every non-printable character escaped as Python would (\\n, \\x1b)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def shorten(text: str, limit: int = LIMIT) -> str:
    """``text`` made printable and cut to ``limit`` characters, saying how long it was."""
    out = printable(text)
    if len(out) <= limit:
        return out
    return f"{out[:limit]}... ({len(text)} characters)"


def quote(value: Any, limit: int = LIMIT) -> str:
    """A value as a message quotes it: its repr, cut to ``limit`` characters."""
    r = repr(value)
    if len(r) <= limit:
        return r
    n = len(value) if isinstance(value, (str, bytes, list, dict, tuple)) else len(r)
    unit = "items" if isinstance(value, (list, dict, tuple)) else "characters"
    if isinstance(value, bytes):
        unit = "bytes"
    return f"{r[:limit]}... ({n} {unit})"


class ImageError(Exception):
    """The image is malformed, corrupted, truncated or otherwise unreadable."""

    def __init__(
        self,
        msg: str,
        *,
        path: str | None = None,
        section: str | None = None,
        record: str | None = None,
        offset: int | None = None,
    ) -> None:
        super().__init__(msg)
        self.msg = msg
        self.path = path
        self.section = section
        self.record = record
        self.offset = offset

    def where(self) -> str:
        parts = []
        if self.path:
            parts.append(shorten(self.path, 2 * LIMIT))
        if self.section:
            parts.append(f"section {self.section}")
        if self.record:
            parts.append(f"record {self.record}")
        if self.offset is not None:
            parts.append(f"offset {self.offset}")
        return ", ".join(parts)

    def __str__(self) -> str:
        where = self.where()
        return f"{where}: {self.msg}" if where else self.msg


class ImageVersionError(ImageError):
    """The image was written by a newer major format version (exit 41, not 40)."""


class MagicError(ImageError):
    """A magic number (a construct Const of the format) is not what the format says."""
