"""OpenBuddy folders (docs/FORMAT.md section 5): the plain files copied beside the decrypted
ones, checked against the card like them, and a folder decrypted in place as OpenBuddy's own
script does."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.conftest import Key, listing, random_bytes
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


def test_a_folder_decrypted_in_place_as_openbuddy_s_script_does(
    tmp_path: Path, big_key: Key
) -> None:
    weights = random_bytes(5000, 21)
    plain = {"config.json": b'{"a": 1}', "tokenizer.model": b"tok"}
    enc = release(tmp_path / "model", big_key[1], {"pytorch_model.bin": weights}, plain)
    listed = card(tmp_path / "card.txt", {"pytorch_model.bin": weights, **plain})
    result = run(enc, big_key[0], enc, "--manifest", listed)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "1 decrypted, 0 already decrypted, 0 failed"
    assert (enc / "pytorch_model.bin").read_bytes() == weights
    assert listing(enc) == ["config.json", "pytorch_model.bin", "pytorch_model.bin.enc",
                            "tokenizer.model"]  # fmt: skip
    for name, data in plain.items():
        assert (enc / name).read_bytes() == data
    again = run(enc, big_key[0], enc, "--manifest", listed)
    assert again.exit_code == 0, again.stderr
    assert again.stdout.splitlines()[-1] == "0 decrypted, 1 already decrypted, 0 failed"


def test_an_unfinished_in_place_output_beside_its_enc_is_refused(
    tmp_path: Path, big_key: Key
) -> None:
    weights = random_bytes(5000, 22)
    enc = release(tmp_path / "model", big_key[1], {"pytorch_model.bin": weights}, {})
    (enc / "pytorch_model.bin").write_bytes(weights[:1000])  # what an interrupted run leaves
    listed = card(tmp_path / "card.txt", {"pytorch_model.bin": weights})
    out = tmp_path / "out"
    out.mkdir()
    (out / "pytorch_model.bin").write_bytes(weights)  # verified by an earlier run
    for force in ([], ["--force"]):
        result = run(enc, big_key[0], out, "--manifest", listed, *force)
        assert (result.exit_code, result.stdout) == (2, "")
        assert result.stderr == (
            f"{ERR}{enc / 'pytorch_model.bin'}: is beside pytorch_model.bin.enc, which decrypts "
            "to it: the unfinished output of a decryption in this folder? remove it from this "
            "folder and run again (pytorch_model.bin.enc gives it)\n"
        )
        assert (out / "pytorch_model.bin").read_bytes() == weights
    result = run(enc, big_key[0], enc, "--manifest", listed)  # in place: the .enc's output
    assert result.exit_code == 1
    assert [line for line in result.stderr.splitlines() if line.startswith(ERR)] == [
        f"{ERR}{enc / 'pytorch_model.bin'}: exists and differs from what this file decrypts to; "
        "move it away or pass --force to replace it"
    ]
    result = run(enc, big_key[0], enc, "--manifest", listed, "--force")
    assert result.exit_code == 0, result.stderr
    assert (enc / "pytorch_model.bin").read_bytes() == weights
