"""Errors raised by the image library.

Every problem with an image file surfaces as ImageError, carrying where it was found
(file, section, record, byte offset) so the user gets one line naming the place.
"""

from __future__ import annotations


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
            parts.append(self.path)
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
