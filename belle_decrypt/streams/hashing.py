"""Hashing whole files (or their first bytes) in fixed-size chunks, several digests in one read."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

from belle_decrypt.ground.cancel import CancelToken, check
from belle_decrypt.ground.platform_io import open_regular

CHUNK_SIZE = 4 * 1024 * 1024


class NotRegularFile(OSError):
    """A FIFO, device or socket under a file's name: not read, as it may never end (a FIFO
    with no writer) or never stop (``/dev/zero``)."""

    def __init__(self, path: Path) -> None:
        super().__init__(None, "not a regular file", str(path))


def hash_file(
    path: Path,
    algorithms: Sequence[str] = ("md5",),
    *,
    limit: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    chunk: int = CHUNK_SIZE,
    cancel: CancelToken | None = None,
) -> dict[str, str]:
    """Hex digests of ``path`` (of its first ``limit`` bytes if given), one read for them all.

    hashlib releases the GIL on large updates, so threads hashing different files run in
    parallel. Raises OSError as the file system does (:class:`NotRegularFile` for a FIFO or a
    device, which is never read), and Cancelled within a chunk of ``cancel`` being cancelled.
    """
    digests = {name: hashlib.new(name) for name in algorithms}
    buf = bytearray(chunk)
    view = memoryview(buf)
    remaining = limit
    fd = open_regular(path)
    if fd is None:
        raise NotRegularFile(path)
    with open(fd, "rb", buffering=0) as handle:
        while remaining is None or remaining > 0:
            check(cancel)
            want = chunk if remaining is None else min(chunk, remaining)
            got = handle.readinto(view[:want])
            if not got:
                break
            for digest in digests.values():
                digest.update(view[:got])
            if remaining is not None:
                remaining -= got
            if on_progress is not None:
                on_progress(got)
    return {name: digest.hexdigest() for name, digest in digests.items()}


def md5_file(
    path: Path,
    *,
    limit: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    cancel: CancelToken | None = None,
) -> str:
    """Hex md5 of ``path`` (of its first ``limit`` bytes if given)."""
    return hash_file(path, ("md5",), limit=limit, on_progress=on_progress, cancel=cancel)["md5"]
