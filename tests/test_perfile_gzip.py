"""Per-file gzip payloads (docs/FORMAT.md 7.2) decompressed once: a payload whose trailer's
ISIZE allows its base file's size takes that size without a counting pass, and the decode checks
that the stream ends exactly there; one that does not is read raw, as the rules for a stream
that is not a whole one say, and a payload of another size is still counted first."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest

from belle_decrypt.layouts import gzipped
from belle_decrypt.layouts.gzipped import ISIZE_MODULUS, isize_allows, trailer_isize
from tests import reference
from tests.conftest import listing, random_bytes
from tests.runner import run

SHARD = "pytorch_model-00001-of-00002.bin"
RAW_NOT_GZIP = "read as raw bytes (it starts like a gzip stream but is not a whole one)"
GZIP = "read as a gzip stream"
DAMAGED = (
    "it starts like a gzip stream but is not a whole one (a truncated download?), and read as "
    f"raw bytes it does not match the manifest either; download {SHARD} again; nothing written\n"
)


def allows_by_search(isize: int, size: int) -> bool:
    """The reference: some k >= 0 with isize + k * 2**32 == size, found by trying each k."""
    return any(isize + k * 2**32 == size for k in range(size // 2**32 + 1))


@pytest.mark.parametrize(
    ("isize", "size"),
    [
        (0, 0),
        (5, 5),
        (5, 4),
        (5, 6),
        (0, 2**32),
        (5, 5 + 2**32),
        (5, 5 + 3 * 2**32),
        (5, 4 + 2**32),
        (2**32 - 1, 2**32 - 1),
        (2**32 - 1, 2**33 - 1),
        (2**32 - 1, 2**33),
        (123, 123 + 2**32 + 1),
    ],
)
def test_the_trailer_allows_every_size_congruent_mod_4_gib(isize: int, size: int) -> None:
    assert isize_allows(isize, size) is allows_by_search(isize, size)


def test_an_isize_out_of_its_32_bits_allows_nothing() -> None:
    assert not isize_allows(ISIZE_MODULUS, ISIZE_MODULUS)
    assert not isize_allows(-1, 2**32 - 1)


def test_the_trailer_isize_is_the_last_four_bytes(tmp_path: Path) -> None:
    path = tmp_path / "payload"
    path.write_bytes(gzip.compress(random_bytes(70000, 1)))
    assert trailer_isize(path) == 70000
    path.write_bytes(b"\x1f\x8b" + bytes(15))
    assert trailer_isize(path) is None


class Counted:
    """Bytes decompressed and gzip payloads opened during a run (the library's own reader)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.opened = 0
        self.decompressed = 0
        init = gzipped.GzipPayload.__init__
        read = gzipped.GzipPayload._read

        def counting_init(
            payload: gzipped.GzipPayload, path: Path, size: int | None = None
        ) -> None:
            self.opened += 1
            init(payload, path, size)

        def counting_read(payload: gzipped.GzipPayload, view: memoryview) -> int:
            got = read(payload, view)
            self.decompressed += got
            return got

        monkeypatch.setattr(gzipped.GzipPayload, "__init__", counting_init)
        monkeypatch.setattr(gzipped.GzipPayload, "_read", counting_read)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def release(tmp_path: Path, plain: bytes, base: bytes, payload: bytes) -> tuple[Path, Path, Path]:
    """Base folder, payload folder and the decoded card for one shard."""
    (tmp_path / "base").mkdir()
    (tmp_path / "payload").mkdir()
    (tmp_path / "base" / SHARD).write_bytes(base)
    (tmp_path / "payload" / SHARD).write_bytes(payload)
    card = tmp_path / "decoded.md5"
    card.write_text(f"{md5(plain)}  {SHARD}\n")
    return tmp_path / "base", tmp_path / "payload", card


def shard_line(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if SHARD in line)


@pytest.mark.parametrize("check", ["--manifest", "--no-verify"])
def test_a_base_sized_gzip_payload_is_decompressed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, check: str
) -> None:
    base = random_bytes(300_000, 2)
    plain = random_bytes(300_000, 3)
    payload = gzip.compress(reference.perfile_encode(plain, base), compresslevel=1)
    base_dir, payload_dir, card = release(tmp_path, plain, base, payload)
    counted = Counted(monkeypatch)
    options = ["--manifest", card] if check == "--manifest" else [check]
    result = run(payload_dir, base_dir, tmp_path / "out", *options)
    assert result.exit_code == 0
    assert "error" not in result.stderr
    assert shard_line(result.stdout).endswith("; " + GZIP)
    assert (tmp_path / "out" / SHARD).read_bytes() == plain
    assert (counted.opened, counted.decompressed) == (1, len(plain))
    again = run(payload_dir, base_dir, tmp_path / "out", *options)  # a re-run keeps it
    assert again.exit_code == 0
    assert shard_line(again.stdout).startswith("already decrypted")
    assert shard_line(again.stdout).endswith("; " + GZIP)
    assert (tmp_path / "out" / SHARD).read_bytes() == plain


def test_a_gzip_payload_of_another_size_is_still_counted_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = random_bytes(5000, 4)
    plain = random_bytes(7000, 5)
    payload = gzip.compress(reference.perfile_encode(plain, base))
    base_dir, payload_dir, card = release(tmp_path, plain, base, payload)
    counted = Counted(monkeypatch)
    result = run(payload_dir, base_dir, tmp_path / "out", "--manifest", card)
    assert (result.exit_code, result.stderr) == (0, "")
    assert shard_line(result.stdout).endswith("; " + GZIP)
    assert (tmp_path / "out" / SHARD).read_bytes() == plain
    assert (counted.opened, counted.decompressed) == (2, 2 * len(plain))


def flipped_in_the_middle(stream: bytes) -> bytes:
    """One compressed byte changed: the stream's CRC fails only at its end."""
    damaged = bytearray(stream)
    damaged[len(damaged) // 2] ^= 0x40
    return bytes(damaged)


def with_wrong_isize(stream: bytes, size: int) -> bytes:
    """The stream with its trailer's ISIZE replaced by ``size`` (mod 4 GiB)."""
    return stream[:-4] + (size % ISIZE_MODULUS).to_bytes(4, "little")


def damaged_payloads(encoded: bytes, base_size: int) -> dict[str, bytes]:
    """Payloads whose trailer says the base's size but that do not decode to exactly it."""
    whole = gzip.compress(encoded, compresslevel=1, mtime=0)
    return {
        "crc": flipped_in_the_middle(whole),
        "more": gzip.compress(b"an extra member first", mtime=0) + whole,
        "garbage": whole + b"trailing garbage" + base_size.to_bytes(4, "little"),
        "fewer": with_wrong_isize(gzip.compress(encoded[:-10], mtime=0), base_size),
        "cut": whole[: len(whole) // 2] + whole[-8:],
    }


@pytest.mark.parametrize("damage", ["crc", "more", "garbage", "fewer", "cut"])
def test_a_base_sized_trailer_on_a_damaged_stream_follows_the_raw_reading_rule(
    tmp_path: Path, damage: str
) -> None:
    base = random_bytes(200_000, 6)
    plain = random_bytes(200_000, 7)
    payload = damaged_payloads(reference.perfile_encode(plain, base), len(base))[damage]
    assert trailer_isize_of(payload) == len(base)
    base_dir, payload_dir, card = release(tmp_path, plain, base, payload)

    result = run(payload_dir, base_dir, tmp_path / "listed", "--manifest", card, "-q")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"belle-decrypt: error: {payload_dir / SHARD}: decrypted md5 ")
    assert result.stderr.endswith(DAMAGED)
    assert listing(tmp_path / "listed") == []

    result = run(payload_dir, base_dir, tmp_path / "unverified", "--no-verify")
    assert result.exit_code == 0
    assert "error" not in result.stderr
    assert shard_line(result.stdout).endswith("; " + RAW_NOT_GZIP)
    assert listing(tmp_path / "unverified") == [SHARD]
    raw = reference.perfile_decode(payload, base)
    assert (tmp_path / "unverified" / SHARD).read_bytes() == raw


def trailer_isize_of(payload: bytes) -> int:
    return int.from_bytes(payload[-4:], "little")


def test_a_damaged_stream_whose_raw_reading_is_listed_is_decoded_raw(tmp_path: Path) -> None:
    base = random_bytes(100_000, 8)
    stream = flipped_in_the_middle(gzip.compress(random_bytes(100_000, 9), mtime=0))
    raw = reference.perfile_decode(stream, base)
    base_dir, payload_dir, card = release(tmp_path, raw, base, stream)
    result = run(payload_dir, base_dir, tmp_path / "out", "--manifest", card)
    assert (result.exit_code, result.stderr) == (0, "")
    assert shard_line(result.stdout).endswith("; " + RAW_NOT_GZIP)
    assert (tmp_path / "out" / SHARD).read_bytes() == raw
