"""OpenBuddy's plain model files are read once (hashed as they are copied), and a file that
changes between the check and the end of its copy never gets a final name."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from belle_decrypt.layouts import seed
from belle_decrypt.layouts.seed import ZeroStream
from tests import reference_layouts
from tests.conftest import Key, listing, random_bytes
from tests.runner import run

CONFIG = b'{"dim": 4096, "n_layers": 32}\n'
WEIGHTS = random_bytes(5000, seed=61)


def release(tmp_path: Path, key: bytes) -> tuple[Path, Path]:
    """An OpenBuddy folder (one `.enc`, one plain config) and the card listing both."""
    enc = tmp_path / "enc"
    enc.mkdir()
    (enc / "model.bin.enc").write_bytes(reference_layouts.openbuddy_encrypt(WEIGHTS, key))
    (enc / "config.json").write_bytes(CONFIG)
    card = tmp_path / "card.txt"
    card.write_text(
        f"{hashlib.md5(WEIGHTS).hexdigest()}  ./model.bin\n"
        f"{hashlib.md5(CONFIG).hexdigest()}  ./config.json\n"
    )
    return enc, card


def test_a_fresh_copy_reads_the_file_once(
    tmp_path: Path, big_key: Key, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No hash of the plain file before its copy: the copy's own pass is the only read."""

    def no_second_read(*args: object, **kwargs: object) -> dict[str, str]:
        raise AssertionError("the plain file was hashed before its copy")

    monkeypatch.setattr(seed, "hash_file", no_second_read)
    enc, card = release(tmp_path, big_key[1])
    out = tmp_path / "out"
    result = run(enc, big_key[0], out, "--manifest", card)
    assert result.exit_code == 0, result.output
    assert (out / "config.json").read_bytes() == CONFIG
    assert (out / "model.bin").read_bytes() == WEIGHTS
    assert result.stdout.splitlines()[-1] == "1 decrypted, 0 already decrypted, 1 copied, 0 failed"


def test_an_existing_copy_is_recognised_and_a_different_one_refused(
    tmp_path: Path, big_key: Key
) -> None:
    """A second run compares the existing copy with the plain file's SHA-256 (read then)."""
    enc, card = release(tmp_path, big_key[1])
    out = tmp_path / "out"
    assert run(enc, big_key[0], out, "--manifest", card).exit_code == 0
    again = run(enc, big_key[0], out, "--manifest", card)
    assert again.exit_code == 0, again.output
    assert again.stdout.splitlines()[-1] == "0 decrypted, 1 already decrypted, 1 copied, 0 failed"
    (out / "config.json").write_bytes(CONFIG.replace(b"4096", b"5120"))
    refused = run(enc, big_key[0], out, "--manifest", card)
    assert refused.exit_code == 1
    assert f"{out / 'config.json'}: exists and differs" in refused.stderr


@pytest.mark.parametrize("change", ["rewritten, times set back", "grown", "replaced"])
def test_a_plain_file_changed_during_its_copy_gets_no_final_name(
    tmp_path: Path, big_key: Key, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """The file changes after the run checked it, while its copy runs: refused, one line,
    nothing under the final name and no temporary file; the next run copies it."""
    enc, card = release(tmp_path, big_key[1])
    plain = enc / "config.json"
    new = CONFIG.replace(b"4096", b"5120")
    fills = 0
    real_fill = ZeroStream.fill

    def changing_fill(stream: ZeroStream, out: memoryview, offset: int) -> None:
        nonlocal fills
        fills += 1
        if fills == 1:
            before = os.stat(plain)
            if change == "grown":
                with open(plain, "ab") as handle:
                    handle.write(b"\n")
            elif change == "replaced":
                spare = plain.with_name("config.new")
                spare.write_bytes(CONFIG)
                os.replace(spare, plain)
            else:
                plain.write_bytes(new)
                os.utime(plain, ns=(before.st_atime_ns, before.st_mtime_ns))
        real_fill(stream, out, offset)

    monkeypatch.setattr(ZeroStream, "fill", changing_fill)
    out = tmp_path / "out"
    result = run(enc, big_key[0], out, "--manifest", card)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if ": warning: " not in line]
    assert errors == [
        f"belle-decrypt: error: {plain}: changed while being copied; nothing written; run the "
        "same command again"
    ]
    assert listing(out) == ["model.bin"]
    monkeypatch.setattr(ZeroStream, "fill", real_fill)
    now = plain.read_bytes()
    card.write_text(card.read_text().replace(_md5(CONFIG), _md5(now)))  # the card of the new file
    again = run(enc, big_key[0], out, "--manifest", card)
    assert again.exit_code == 0, again.output
    assert (out / "config.json").read_bytes() == plain.read_bytes()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()
