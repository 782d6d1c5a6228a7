"""The per-file layout's gzip payloads (docs/FORMAT.md section 7, part 7.2): a payload that starts
with the gzip magic is read as its decompressed bytes when it decodes cleanly to its end.

Its decoded size is taken from the trailer (ISIZE: the size modulo 4 GiB) when that agrees with
its base file's size, as a decoded model file normally does; the decode itself then checks that
the stream ends exactly there. Otherwise the size is counted by decompressing it once first.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

from belle_decrypt.ground.errors import InputError

GZIP_MAGIC = b"\x1f\x8b"
COUNT_CHUNK = 1024 * 1024
"""Bytes decompressed at a time when counting a payload's size."""
NOT_GZIP = "it starts like a gzip stream but is not a whole one"
NOT_LISTED = "read as a gzip stream it does not match the manifest"
ISIZE_MODULUS = 2**32
"""The gzip trailer's ISIZE is the decoded size modulo this (RFC 1952)."""
_TRAILER = 8
_SMALLEST = 18
"""Bytes in the smallest gzip stream: a 10-byte header and the 8-byte trailer."""


class DamagedGzip(OSError):
    """A payload that does not decode as gzip to its end."""


def gzip_size(path: Path) -> int | None:
    """The decompressed size of a gzip payload, by decompressing it once without keeping the
    output (the trailer holds the size only modulo 4 GiB); None when it does not decode
    cleanly to its end (it is then not a gzip stream: docs/FORMAT.md 7.2)."""
    size = 0
    buffer = memoryview(bytearray(COUNT_CHUNK))
    try:
        with GzipPayload(path) as stream:
            while got := stream.readinto(buffer):
                size += got
    except DamagedGzip:
        return None
    except OSError as exc:
        raise InputError(
            f"cannot read the gzip payload: {exc.strerror or exc}; download it again", path
        ) from exc
    return size


def trailer_isize(path: Path) -> int | None:
    """The ISIZE field of the payload's trailer (its last 4 bytes, little-endian), None when
    the file is too short to hold a gzip stream."""
    try:
        with open(path, "rb", buffering=0) as file:
            size = file.seek(0, os.SEEK_END)
            if size < _SMALLEST:
                return None
            file.seek(size - _TRAILER // 2)
            tail = file.read(_TRAILER // 2)
    except OSError as exc:
        raise InputError(
            f"cannot read the gzip payload: {exc.strerror or exc}; download it again", path
        ) from exc
    return int.from_bytes(tail, "little") if len(tail) == _TRAILER // 2 else None


def isize_allows(isize: int, size: int) -> bool:
    """Whether a stream whose trailer holds ``isize`` can decode to ``size`` bytes: ``isize +
    k * 2**32 == size`` for some k >= 0."""
    return 0 <= isize < ISIZE_MODULUS and size >= isize and (size - isize) % ISIZE_MODULUS == 0


class GzipPayload:
    """A gzip payload read as its decompressed bytes; damage surfaces as OSError, which the
    engine turns into one line naming the file.

    With ``size`` (a size taken from the trailer, not counted), the stream must decode to
    exactly that many bytes and end cleanly there: the read that reaches ``size`` also reads
    on to the stream's end (its CRC checked, nothing after it), and raises DamagedGzip if not.
    """

    def __init__(self, path: Path, size: int | None = None) -> None:
        self.name = str(path)
        self._left = size
        self._raw = open(path, "rb")  # noqa: SIM115 (closed by close())
        self._stream = gzip.GzipFile(fileobj=self._raw, mode="rb")

    def readinto(self, view: memoryview) -> int:
        got = self._read(view)
        if self._left is None:
            return got
        if got > self._left:
            raise DamagedGzip(
                "damaged gzip payload (it decodes to more bytes than its trailer says)"
            )
        if not got and self._left:
            raise DamagedGzip("damaged gzip payload (it ends before the size its trailer says)")
        self._left -= got
        if got and not self._left and self._read(memoryview(bytearray(1))):
            raise DamagedGzip(
                "damaged gzip payload (it decodes to more bytes than its trailer says)"
            )
        return got

    def _read(self, view: memoryview) -> int:
        try:
            return self._stream.readinto(view)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise DamagedGzip(f"damaged gzip payload ({exc})") from exc

    def seek(self, offset: int) -> int:
        return self._stream.seek(offset)

    def close(self) -> None:
        self._stream.close()
        self._raw.close()

    def __enter__(self) -> GzipPayload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
