"""An independent, deliberately simple statement of docs/FORMAT.md section 1: the oracle.

Whole files in memory, byte by byte through Python ints: slow, but obviously correct.
"""

from __future__ import annotations

import hashlib

REAL_PIECE = 10 * 1024 * 1024


def keystream(key: bytes, length: int, piece: int = REAL_PIECE) -> bytes:
    """The keystream for a payload of ``length`` bytes, written as docs/FORMAT.md says."""
    pieces = [key[j : j + piece] for j in range(0, len(key), piece)]
    out = bytearray()
    i = 0
    while len(out) < length:
        key_piece = pieces[i % len(pieces)]
        want = min(piece, length - len(out))
        tiled = key_piece * (want // len(key_piece) + 1)
        out += tiled[:want]
        i += 1
    return bytes(out)


def xor(data: bytes, stream: bytes) -> bytes:
    """Byte-wise XOR of two equal-length strings, via Python ints."""
    assert len(data) == len(stream)
    if not data:
        return b""
    value = int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")
    return value.to_bytes(len(data), "big")


def encrypt(plain: bytes, key: bytes, piece: int = REAL_PIECE) -> tuple[str, bytes]:
    """Return (hex digest for the name, whole `.enc` file contents)."""
    digest = hashlib.sha256(plain).digest()
    return digest.hex(), digest + xor(plain, keystream(key, len(plain), piece))


def enc_filename(name: str, plain: bytes) -> str:
    """The published name of ``plain`` saved as ``name``."""
    return f"{name}.{hashlib.sha256(plain).hexdigest()}.enc"


def perfile_keystream(base: bytes, length: int) -> bytes:
    """docs/FORMAT.md section 7: the base cut to ``length``, or followed by zero bytes."""
    if len(base) >= length:
        return base[:length]
    return base + bytes(length - len(base))


def perfile_decode(payload: bytes, base: bytes) -> bytes:
    """The decoded file of a (decompressed) payload over its same-named base."""
    return xor(payload, perfile_keystream(base, len(payload)))


def perfile_encode(plain: bytes, base: bytes) -> bytes:
    """The payload of a model file over its same-named base (the same XOR)."""
    return xor(plain, perfile_keystream(base, len(plain)))
