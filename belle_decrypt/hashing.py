"""Whole-file digests, read in fixed-size chunks so memory stays flat."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 8 * 1024 * 1024


def file_digest(path: Path, algorithm: str, chunk: int = CHUNK) -> str:
    """Hex digest of a whole file with a hashlib ``algorithm`` ("sha256", "md5")."""
    digest = hashlib.new(algorithm)
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as handle:
        while got := handle.readinto(buf):
            digest.update(view[:got])
    return digest.hexdigest()
