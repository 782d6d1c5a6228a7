"""OpenBuddy folders (docs/FORMAT.md section 5.4): the plain files copied beside the decrypted
ones, checked against the card like them, and a folder decrypted in place as OpenBuddy's own
script does."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.conftest import Key, listing
from tests.reference_layouts import openbuddy_encrypt
from tests.runner import run

ERR = "belle-decrypt: error: "


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def release(folder: Path, key: bytes, encrypted: dict[str, bytes], plain: dict[str, bytes]) -> Path:
    """An OpenBuddy folder: ``encrypted`` files as NAME.enc, ``plain`` files as they are."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in encrypted.items():
        (folder / f"{name}.enc").write_bytes(openbuddy_encrypt(data, key))
    for name, data in plain.items():
        (folder / name).write_bytes(data)
    return folder


def card(path: Path, files: dict[str, bytes]) -> Path:
    path.write_text("".join(f"{md5(data)}  ./{name}\n" for name, data in files.items()))
    return path


def test_a_copied_file_that_differs_from_the_card_says_so(tmp_path: Path, big_key: Key) -> None:
    enc = release(tmp_path / "enc", big_key[1], {"model.bin": b"weights"}, {"config.json": b"{}"})
    listed = card(tmp_path / "card.txt", {"model.bin": b"weights", "config.json": b"[]"})
    out = tmp_path / "out"
    result = run(enc, big_key[0], out, "--manifest", listed, "-q")
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith(ERR)]
    assert errors == [
        f"{ERR}{enc / 'config.json'}: md5 {md5(b'{}')} differs from the manifest's "
        f"{md5(b'[]')}; it is copied as it is, so this file is not the one the card lists; "
        "nothing written: download it again, or check that the manifest is for this release"
    ]
    assert listing(out) == ["model.bin"]
