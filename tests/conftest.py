"""Shared fixtures: synthetic keys and `.enc` files made by the reference oracle."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import reference


def random_bytes(size: int, seed: int) -> bytes:
    """Deterministic pseudo-random bytes (fast, reproducible)."""
    return random.Random(seed).randbytes(size)


Key = tuple[Path, bytes]
"""A key file and its bytes."""


@pytest.fixture(scope="session")
def big_key(tmp_path_factory: pytest.TempPathFactory) -> Key:
    """A key longer than the 16 MiB seed and not a whole number of 10 MiB pieces (made once)."""
    data = random_bytes(16 * 1024 * 1024 + 12_345, seed=11)
    path = tmp_path_factory.mktemp("key") / "consolidated.00.pth"
    path.write_bytes(data)
    return path, data


@pytest.fixture
def make_key(tmp_path: Path) -> Callable[..., Path]:
    """Write a key file of ``size`` random bytes and return its path."""

    def make(size: int, name: str = "consolidated.00.pth", seed: int = 7) -> Path:
        path = tmp_path / name
        path.write_bytes(random_bytes(size, seed))
        return path

    return make


@pytest.fixture
def make_enc(tmp_path: Path) -> Callable[..., Path]:
    """Encrypt ``plain`` with the key at ``key_path`` using the oracle, into folder ``enc``."""

    def make(
        name: str,
        plain: bytes,
        key_path: Path,
        piece: int = reference.REAL_PIECE,
        folder: str = "enc",
    ) -> Path:
        out = tmp_path / folder
        out.mkdir(exist_ok=True)
        digest_hex, blob = reference.encrypt(plain, key_path.read_bytes(), piece)
        path = out / f"{name}.{digest_hex}.enc"
        path.write_bytes(blob)
        return path

    return make


def listing(folder: Path) -> list[str]:
    """Every entry in ``folder``, hidden ones included, sorted."""
    return sorted(os.listdir(folder)) if folder.exists() else []


def unknown_key_warning(key: Path) -> str:
    """The warning decrypt prints first for a synthetic (not LLaMA-7B) key."""
    return (
        f"belle-decrypt: warning: {key}: is not the original LLaMA-7B consolidated.00.pth "
        f"({key.stat().st_size:,} bytes, not 13,476,939,516); decrypting anyway "
        f"(see `belle-decrypt check-key {key}`)"
    )


def library_threads() -> list[str]:
    """Names of the library's worker and stage threads still alive (none once a call ends)."""
    return [t.name for t in threading.enumerate() if t.name.startswith("belle-")]
