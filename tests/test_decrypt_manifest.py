"""decrypt with --manifest, the key warning, refusals, and the diagnosis of checksum failures."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from belle_decrypt.checks import keyid
from belle_decrypt.checks.keyid import HEAD_SIZE, KnownKey
from belle_decrypt.checks.manifest import Manifest
from belle_decrypt.ground.errors import ChecksumError
from belle_decrypt.ground.states import FileState
from belle_decrypt.layouts.container import EncFile
from belle_decrypt.streams.hashing import hash_file
from belle_decrypt.streams.keystream import Key
from belle_decrypt.xor.batch import Settings, decrypt_all
from belle_decrypt.xor.decrypt import decrypt_file
from belle_decrypt.xor.diagnose import Diagnoser
from tests.conftest import listing
from tests.release import Release, make_release, md5
from tests.runner import run

KEY = b"the right key, a few bytes, tiled"
WRONG_KEY = b"another key of some other model"
ERR = "belle-decrypt: error: "


@pytest.fixture
def release(tmp_path: Path) -> Release:
    return make_release(tmp_path, KEY)


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    path = tmp_path / "consolidated.00.pth"
    path.write_bytes(KEY)
    return path


@pytest.fixture
def wrong_key(tmp_path: Path) -> Path:
    path = tmp_path / "wrong.pth"
    path.write_bytes(WRONG_KEY)
    return path


@pytest.fixture
def key_is_llama(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the synthetic right key the 'known LLaMA-7B file'."""
    known = KnownKey(
        "LLaMA-7B consolidated.00.pth",
        md5=hashlib.md5(KEY).hexdigest(),
        size=len(KEY),
        head_md5=hashlib.md5(KEY[:HEAD_SIZE]).hexdigest(),
    )
    monkeypatch.setattr(keyid, "LLAMA_7B", known)
    monkeypatch.setattr(keyid, "KNOWN_KEYS", (known,))


def verdict_for(path: Path) -> str:
    return f"is not the original LLaMA-7B consolidated.00.pth ({path.stat().st_size} bytes, not "


@pytest.mark.usefixtures("key_is_llama")
def test_manifest_checks_every_output(release: Release, key_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run(release.enc_dir, key_path, out, "--manifest", release.card)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # the known key: no warning
    for name, data in release.plain.items():
        assert (out / name).read_bytes() == data
    lines = [line for line in result.stdout.splitlines() if line.startswith("decrypted ")]
    assert len(lines) == 3
    assert all(line.endswith(", SHA-256 and md5 verified") for line in lines)
    again = run(release.enc_dir, key_path, out, "--manifest", release.card)
    assert again.exit_code == 0
    assert again.stdout.count("SHA-256 and md5 verified") == 3
    assert "already decrypted" in again.stdout


def test_unknown_key_warns_and_unlisted_file_is_reported(
    release: Release, key_path: Path, tmp_path: Path
) -> None:
    card = tmp_path / "partial.md5"
    card.write_text(f"{md5(release.plain['config.json'])}  config.json\n")
    out = tmp_path / "out"
    result = run(release.enc_dir, key_path, out, "--manifest", card)
    assert result.exit_code == 0, result.output
    assert result.stderr == (
        f"belle-decrypt: warning: {key_path}: {verdict_for(key_path)}13,476,939,516); "
        f"decrypting anyway (see `belle-decrypt check-key {key_path}`)\n"
    )
    stdout = result.stdout
    assert "config.json  300 B" in stdout
    assert stdout.count(", SHA-256 verified, not in manifest") == 2
    assert stdout.count(", SHA-256 and md5 verified") == 1


def test_md5_mismatch_leaves_nothing(release: Release, key_path: Path, tmp_path: Path) -> None:
    card = tmp_path / "other-release.md5"
    card.write_text(f"{'0' * 32}  pytorch_model.bin\n")
    enc = release.enc_path("pytorch_model.bin")
    out = tmp_path / "out"
    result = run(enc, key_path, out, "--manifest", card)
    assert result.exit_code == 1
    actual = md5(release.plain["pytorch_model.bin"])
    assert result.stderr.splitlines()[-1] == (
        f"{ERR}{enc}: md5 {actual} differs from the manifest's {'0' * 32} although the SHA-256 "
        "in the name matches; nothing written: check that the manifest is for this release"
    )
    assert listing(out) == []


def test_md5_checked_for_an_existing_output(
    release: Release, key_path: Path, tmp_path: Path
) -> None:
    with Key(key_path) as key:
        enc = EncFile.open(release.enc_path("config.json"))
        first = decrypt_file(enc, key, tmp_path, fsync=False, expected=None)
        assert first.status is FileState.DECRYPTED and first.md5 is None
        right = md5(release.plain["config.json"])
        again = decrypt_file(enc, key, tmp_path, fsync=False, expected={"md5": right})
        assert (again.status, again.md5) == (FileState.ALREADY_DECRYPTED, right)
        with pytest.raises(ChecksumError, match="left as it is"):
            decrypt_file(enc, key, tmp_path, fsync=False, expected={"md5": "1" * 32})
    assert (tmp_path / "config.json").read_bytes() == release.plain["config.json"]


def test_lfs_pointer_refused_first(release: Release, key_path: Path, tmp_path: Path) -> None:
    pointer = release.enc_path("tokenizer.model")
    pointer.write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 4032\n"
    )
    out = tmp_path / "out"
    result = run(release.enc_dir, key_path, out)
    assert result.exit_code == 2
    assert result.stderr == (
        f"{ERR}{pointer}: is a Git LFS pointer, not the data; run `git lfs pull` in the "
        "cloned repository (or download the file itself)\n"
    )
    assert not out.exists()


def test_header_and_name_disagree(release: Release, key_path: Path, tmp_path: Path) -> None:
    enc = release.enc_path("config.json")
    blob = bytearray(enc.read_bytes())
    blob[0] ^= 0xFF
    enc.write_bytes(blob)
    result = run(enc, key_path, tmp_path / "out")
    assert result.exit_code == 2
    name_hex = release.enc_names["config.json"].split(".")[-2]
    assert result.stderr == (
        f"{ERR}{enc}: header digest {bytes(blob[:32]).hex()} disagrees with the name's "
        f"{name_hex}; the file is damaged or renamed: download it again\n"
    )


def test_broken_download_diagnosed(release: Release, key_path: Path, tmp_path: Path) -> None:
    enc = release.enc_path("pytorch_model.bin")
    blob = bytearray(enc.read_bytes())
    blob[100] ^= 1  # a payload byte: the header still matches the name
    enc.write_bytes(blob)
    out = tmp_path / "out"
    result = run(enc, key_path, out, "--manifest", release.card)
    assert result.exit_code == 1
    (entry,) = Manifest.read(release.card).lookup(enc.name)
    message = result.stderr.splitlines()[-1]
    assert message.startswith(f"{ERR}{enc}: decrypted SHA-256 ")
    assert message.endswith(
        f": broken download: its md5 {md5(bytes(blob))} differs from "
        f"{entry.digest} ({release.card}:{entry.line}); download {enc.name} again; nothing written"
    )
    assert listing(out) == []


def test_wrong_key_diagnosed(release: Release, wrong_key: Path, tmp_path: Path) -> None:
    enc = release.enc_path("config.json")
    result = run(enc, wrong_key, tmp_path / "out", "--manifest", release.card)
    assert result.exit_code == 1
    (entry,) = Manifest.read(release.card).lookup(enc.name)
    assert result.stderr.splitlines()[-1].endswith(
        f": the download is intact (md5 matches {release.card}:{entry.line}), "
        f"so the key is wrong: {wrong_key} {verdict_for(wrong_key)}13,476,939,516); "
        "nothing written"
    )


def test_wrong_key_without_manifest(release: Release, wrong_key: Path, tmp_path: Path) -> None:
    result = run(release.enc_path("config.json"), wrong_key, tmp_path / "out")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1].endswith(
        f": the key is probably wrong: {wrong_key} "
        f"{verdict_for(wrong_key)}13,476,939,516); nothing written"
    )


@pytest.mark.usefixtures("key_is_llama")
def test_known_key_without_manifest_blames_download(
    release: Release, key_path: Path, tmp_path: Path
) -> None:
    enc = release.enc_path("config.json")
    blob = bytearray(enc.read_bytes())
    blob[-1] ^= 1
    enc.write_bytes(blob)
    result = run(enc, key_path, tmp_path / "out")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-2].endswith(
        f"so the download is probably damaged; download {enc.name} again (pass the model "
        "card's md5 list with --manifest to tell for sure); nothing written"
    )
    assert result.stderr.splitlines()[-1] == damaged_key_advice(key_path)


def damaged_key_advice(key: Path) -> str:
    return (
        f"belle-decrypt: warning: every file failed its checksum, yet {key} passed the instant "
        "key check (size and first 16 MiB): it may be damaged past its first 16 MiB (a "
        f"preallocated, unfinished copy); run `belle-decrypt check-key {key} --full` before "
        "downloading anything again"
    )


def test_every_file_failing_with_a_key_known_from_its_start_suggests_a_full_check(
    release: Release, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = 10
    known = KnownKey("LLaMA-7B consolidated.00.pth", md5(KEY), len(KEY), md5(KEY[:head]))
    monkeypatch.setattr(keyid, "HEAD_SIZE", head)
    monkeypatch.setattr(keyid, "LLAMA_7B", known)
    monkeypatch.setattr(keyid, "KNOWN_KEYS", (known,))
    damaged = tmp_path / "damaged" / "consolidated.00.pth"
    damaged.parent.mkdir()
    damaged.write_bytes(KEY[:head] + bytes(len(KEY) - head))  # a preallocated, unfinished copy
    result = run(release.enc_dir, damaged, tmp_path / "out")
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith(ERR)]
    assert len(errors) == 3  # every file tried: the key passed the instant check
    assert result.stderr.splitlines()[-1] == damaged_key_advice(damaged)
    enc = release.enc_path("config.json")
    blob = bytearray(enc.read_bytes())
    blob[-1] ^= 1
    enc.write_bytes(blob)
    key = tmp_path / "consolidated.00.pth"
    key.write_bytes(KEY)
    partly = run(release.enc_dir, key, tmp_path / "out2")
    assert partly.exit_code == 1
    assert "warning: every file failed" not in partly.stderr  # two files decrypted


def test_folder_stops_after_two_wrong_key_failures(
    release: Release, wrong_key: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = run(release.enc_dir, wrong_key, out, "--manifest", release.card)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith(ERR)]
    assert len(errors) == 3
    assert errors[-1] == (
        f"{ERR}stopped: the first two files both failed their checksum and the key {wrong_key} "
        "is not the original LLaMA-7B consolidated.00.pth; 1 more not tried; pass the right "
        "key, or --keep-going to try every file anyway"
    )
    assert listing(out) == []


def test_keep_going_tries_every_file(release: Release, wrong_key: Path, tmp_path: Path) -> None:
    result = run(release.enc_dir, wrong_key, tmp_path / "out", "--keep-going")
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith(ERR)]
    assert len(errors) == 3
    assert all("the key is probably wrong" in line for line in errors)
    assert "0 decrypted, 0 already decrypted, 3 failed" in result.stdout


def test_broken_downloads_do_not_stop_the_folder(
    release: Release, key_path: Path, tmp_path: Path
) -> None:
    for name in ("config.json", "tokenizer.model"):  # the two smallest, tried first
        enc = release.enc_path(name)
        blob = bytearray(enc.read_bytes())
        blob[40] ^= 1
        enc.write_bytes(blob)
    out = tmp_path / "out"
    result = run(release.enc_dir, key_path, out, "--manifest", release.card)
    assert result.exit_code == 1
    assert result.stderr.count("broken download") == 2
    assert "stopped" not in result.stderr
    assert listing(out) == ["pytorch_model.bin"]


def test_the_enc_md5_is_computed_only_to_explain_a_listed_failure(
    release: Release,
    key_path: Path,
    wrong_key: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hashed: list[str] = []

    def counting_hash(path: Path, algorithms: Sequence[str], **kwargs: Any) -> dict[str, str]:
        hashed.append(path.name)
        return hash_file(path, algorithms, **kwargs)

    monkeypatch.setattr("belle_decrypt.xor.diagnose.hash_file", counting_hash)
    manifest = Manifest.read(release.card)
    files = [EncFile.open(release.enc_path(name)) for name in release.plain]
    with Key(key_path) as key:
        tally = decrypt_all(files, key, Settings(out_dir=tmp_path), Diagnoser(key_path, manifest))
    assert tally.ok and hashed == []  # success: no .enc is hashed
    enc = files[0]
    diagnosis = Diagnoser(wrong_key, manifest).explain(enc)
    assert diagnosis.wrong_key and hashed == [enc.path.name]  # a listed failure: once
    unlisted = Diagnoser(wrong_key).explain(enc)
    assert unlisted.wrong_key and hashed == [enc.path.name]  # no manifest: nothing to compare


def test_the_stop_after_two_needs_both_to_blame_an_unknown_key(
    release: Release, wrong_key: Path
) -> None:
    diagnoser = Diagnoser(wrong_key, Manifest.read(release.card))
    diagnosis = diagnoser.explain(EncFile.open(release.enc_path("config.json")))
    assert diagnosis.wrong_key
    assert diagnoser.stop_early([diagnosis, diagnosis])
    assert not diagnoser.stop_early([diagnosis, None])
    assert not diagnoser.stop_early([diagnosis])


def test_wrong_key_named_from_its_checkpoint(release: Release, tmp_path: Path) -> None:
    import torch

    key = tmp_path / "llama-13b" / "consolidated.00.pth"
    key.parent.mkdir()
    state = {"tok_embeddings.weight": torch.zeros(32000, 4), "norm.weight": torch.ones(8)}
    state.update({f"layers.{n}.attention.wq.weight": torch.zeros(4, 8) for n in range(40)})
    torch.save(state, key)
    result = run(release.enc_path("config.json"), key, tmp_path / "out")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1].endswith(
        ": it is a Meta-format checkpoint: 40 layers, hidden size 8, vocabulary 32000; "
        "nothing written"
    )
