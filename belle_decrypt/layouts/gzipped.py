"""The per-file layout's gzip payloads (docs/FORMAT.md section 7, part 7.2): a payload that starts
with the gzip magic is read as its decompressed bytes when it decodes cleanly to its end."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

from belle_decrypt.ground.errors import InputError

GZIP_MAGIC = b"\x1f\x8b"
COUNT_CHUNK = 1024 * 1024
"""Bytes decompressed at a time when counting a payload's size."""
NOT_GZIP = "it starts like a gzip stream but is not a whole one"
NOT_LISTED = "read as a gzip stream it does not match the manifest"


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


class GzipPayload:
    """A gzip payload read as its decompressed bytes; damage surfaces as OSError, which the
    engine turns into one line naming the file."""

    def __init__(self, path: Path) -> None:
        self.name = str(path)
        self._raw = open(path, "rb")  # noqa: SIM115 (closed by close())
        self._stream = gzip.GzipFile(fileobj=self._raw, mode="rb")

    def readinto(self, view: memoryview) -> int:
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
