"""An independent statement of docs/FORMAT.md sections 4-6 (TechGPT, OpenBuddy, detection):
whole files in memory, written from the spec's words, sharing no code with the package."""

from __future__ import annotations

import hashlib

from tests import reference

SEED_SIZE = 16 * 1024 * 1024
PLACEHOLDER = hashlib.sha256(b"").hexdigest()


def techgpt_encrypt(plain: bytes, key: bytes, piece: int = reference.REAL_PIECE) -> bytes:
    """Section 4.2: no header, the container's keystream over the whole file."""
    return reference.xor(plain, reference.keystream(key, len(plain), piece))


def techgpt_name(name: str) -> str:
    """Section 4.1: every file carries the placeholder hex."""
    return f"{name}.{PLACEHOLDER}.enc"


def seed_keystream(key: bytes, length: int, seed_size: int = SEED_SIZE) -> bytes:
    """Section 5.2: the key's first 16 MiB repeated end to end, cut to ``length``."""
    seed = key[:seed_size]
    assert len(seed) == seed_size, "the key is shorter than the seed"
    return (seed * (length // seed_size + 1))[:length]


def openbuddy_encrypt(plain: bytes, key: bytes, seed_size: int = SEED_SIZE) -> bytes:
    """Section 5.2: no header, the seed's keystream."""
    return reference.xor(plain, seed_keystream(key, len(plain), seed_size))


def openbuddy_name(name: str) -> str:
    """Section 5.1: `NAME.enc`."""
    return f"{name}.enc"
