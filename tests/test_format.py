"""Byte-exactness: the product's decryption equals the independent oracle on every edge case."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from belle_decrypt.ground.states import FileState
from belle_decrypt.layouts.container import EncFile
from belle_decrypt.streams.keystream import Key
from belle_decrypt.xor.decrypt import decrypt_file
from tests import reference
from tests.conftest import random_bytes

MIB = 1024 * 1024
REAL = reference.REAL_PIECE

# (case id, key size, payload size) at a small piece size of 64 bytes.
SMALL_PIECE = 64
SMALL_CASES = [
    ("empty-payload", 200, 0),
    ("payload-shorter-than-key", 200, 150),
    ("payload-exact-multiple-of-piece", 200, 4 * SMALL_PIECE),
    ("payload-wraps-key-twice", 200, 2 * 200 + 3 * SMALL_PIECE + 5),
    ("key-shorter-than-a-piece", 3, 5 * SMALL_PIECE + 1),
    ("key-exact-multiple-of-piece", 3 * SMALL_PIECE, 7 * SMALL_PIECE + 9),
    ("short-last-key-piece-tiled", 2 * SMALL_PIECE + 5, 6 * SMALL_PIECE + 60),
    ("one-byte-payload", 3, 1),
    ("one-byte-key", 1, 3 * SMALL_PIECE),
]

# Cases at the real 10 MiB piece.
REAL_CASES = [
    ("real-short-last-piece-tiled-and-wrap", REAL + 5, 2 * REAL + 100),
    ("real-key-exact-multiple-wraps-twice", REAL, 2 * REAL + MIB + 1),
    ("real-three-byte-key", 3, REAL + 17),
]


def _roundtrip(
    tmp_path: Path,
    make_key: Callable[..., Path],
    make_enc: Callable[..., Path],
    key_size: int,
    payload_size: int,
    piece: int,
    buffer_size: int,
) -> tuple[bytes, bytes]:
    key_path = make_key(key_size)
    plain = random_bytes(payload_size, seed=payload_size + key_size)
    enc_path = make_enc("model.bin", plain, key_path, piece)
    out = tmp_path / "out"
    out.mkdir()
    with Key(key_path, piece_size=piece) as key:
        result = decrypt_file(EncFile.open(enc_path), key, out, buffer_size=buffer_size)
    assert result.status is FileState.DECRYPTED
    assert result.sha256 == enc_path.name.split(".")[-2]
    return plain, (out / "model.bin").read_bytes()


@pytest.mark.parametrize("buffer_size", [1, 7, SMALL_PIECE, 100, 4096])
@pytest.mark.parametrize(("case", "key_size", "payload_size"), SMALL_CASES)
def test_small_pieces_match_reference(
    tmp_path: Path,
    make_key: Callable[..., Path],
    make_enc: Callable[..., Path],
    case: str,
    key_size: int,
    payload_size: int,
    buffer_size: int,
) -> None:
    plain, decrypted = _roundtrip(
        tmp_path, make_key, make_enc, key_size, payload_size, SMALL_PIECE, buffer_size
    )
    assert decrypted == plain


@pytest.mark.parametrize(("case", "key_size", "payload_size"), REAL_CASES)
def test_real_piece_size_matches_reference(
    tmp_path: Path,
    make_key: Callable[..., Path],
    make_enc: Callable[..., Path],
    case: str,
    key_size: int,
    payload_size: int,
) -> None:
    plain, decrypted = _roundtrip(
        tmp_path, make_key, make_enc, key_size, payload_size, REAL, 3 * MIB + 1
    )
    assert decrypted == plain


def test_keystream_fill_matches_reference_at_every_offset(make_key: Callable[..., Path]) -> None:
    """Key.fill from any offset equals the oracle's keystream slice (wrap and tiling)."""
    piece = 8
    key_path = make_key(19)
    expected = reference.keystream(key_path.read_bytes(), 200, piece)
    with Key(key_path, piece_size=piece) as key:
        for offset in range(0, 150):
            for length in (1, 5, 8, 13, 50):
                out = bytearray(length)
                key.fill(memoryview(out), offset)
                assert bytes(out) == expected[offset : offset + length], (offset, length)


def test_reference_is_its_own_inverse() -> None:
    """The oracle's XOR applied twice gives back the plaintext (a check on the oracle)."""
    key = random_bytes(10, seed=1)
    plain = random_bytes(77, seed=2)
    stream = reference.keystream(key, len(plain), 4)
    assert reference.xor(reference.xor(plain, stream), stream) == plain
    assert stream[:4] == key[:4] and stream[8:10] + stream[10:12] == key[8:10] * 2


def test_the_worked_example_of_the_spec_is_right() -> None:
    """docs/FORMAT.md section 1.5, recomputed with the oracle at a 4-byte piece."""
    spec = (Path(__file__).parents[1] / "docs" / "FORMAT.md").read_text()
    key = bytes.fromhex("101112131415")
    digest_hex, blob = reference.encrypt(b"hello world", key, piece=4)
    stream = reference.keystream(key, 11, piece=4)
    assert f"keystream              {_spaced(stream[:4])} | {_spaced(stream[4:8])} | " in spec
    assert f"payload (plain XOR)    {_spaced(blob[32:])}\n" in spec
    assert f"SHA-256 of the plain   {digest_hex}\n" in spec
    assert f"`hello.txt.{digest_hex}.enc`" in spec and f"{len(blob)} bytes long" in spec


def _spaced(data: bytes) -> str:
    return data.hex(" ")


def test_every_reference_to_the_spec_resolves() -> None:
    """Each mention of FORMAT.md in the code, tests and READMEs names docs/FORMAT.md, and each
    section it cites exists there."""
    root = Path(__file__).parents[1]
    spec = (root / "docs" / "FORMAT.md").read_text()
    sections = set(re.findall(r"^#+ (\d+(?:\.\d+)?)\. ", spec, flags=re.MULTILINE))
    files = [*root.glob("belle_decrypt/**/*.py"), *root.glob("tests/*.py"), *root.glob("*.md")]
    cited = 0
    for path in files:
        text = path.read_text()
        for match in re.finditer(r"(\S*)FORMAT\.md(?: section (\d+(?:\.\d+)?))?", text):
            if path.name == "test_format.py":
                continue
            assert match.group(1).endswith("docs/"), f"{path}: {match.group(0)}"
            if match.group(2) is not None:
                assert match.group(2) in sections, f"{path}: {match.group(0)}"
            cited += 1
    assert cited >= 5
