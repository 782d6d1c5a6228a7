"""TechGPT (headerless BELLE) and OpenBuddy (16 MiB seed): keystreams byte for byte against
tests/reference_layouts.py, detection, round trips through encrypt, and hostile inputs."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from belle_decrypt.checks import keyid
from belle_decrypt.layouts.seed import SeedStream
from belle_decrypt.streams import engine
from belle_decrypt.streams.engine import Backend
from tests import reference, reference_layouts
from tests.conftest import Key, listing, random_bytes, unknown_key_warning
from tests.reference_layouts import PLACEHOLDER, SEED_SIZE
from tests.runner import run

MiB = 1024 * 1024
ERR = "belle-decrypt: error: "
WARN = "belle-decrypt: warning: "
LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    "size 12345\n"
)
LFS_MESSAGE = (
    "is a Git LFS pointer, not the data; run `git lfs pull` in the cloned repository (or "
    "download the file itself)"
)
ENCRYPT = {
    "techgpt": (reference_layouts.techgpt_name, reference_layouts.techgpt_encrypt),
    "openbuddy": (reference_layouts.openbuddy_name, reference_layouts.openbuddy_encrypt),
}


@pytest.fixture(scope="session")
def other_key(tmp_path_factory: pytest.TempPathFactory) -> Key:
    """A wrong key, also longer than the seed."""
    data = random_bytes(SEED_SIZE + 1, seed=12)
    path = tmp_path_factory.mktemp("other") / "llama-13b.pth"
    path.write_bytes(data)
    return path, data


@pytest.fixture
def seed_is_known(big_key: Key, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the first 16 MiB of ``big_key`` the known LLaMA-7B seed."""
    head = hashlib.md5(big_key[1][:SEED_SIZE]).hexdigest()
    monkeypatch.setattr(keyid, "LLAMA_7B", replace(keyid.LLAMA_7B, head_md5=head))


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def write_card(path: Path, plain: dict[str, bytes]) -> Path:
    path.write_text("".join(f"{md5(data)}  ./{name}\n" for name, data in plain.items()))
    return path


def publish(folder: Path, layout: str, key: bytes, plain: dict[str, bytes]) -> dict[str, Path]:
    """Write each plain file encrypted by the reference into ``folder``."""
    name_of, encrypt = ENCRYPT[layout]
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, data in plain.items():
        paths[name] = folder / name_of(name)
        paths[name].write_bytes(encrypt(data, key))
    return paths


def seed_warning(key: Path) -> str:
    return (
        f"{WARN}{key}: does not start with the 16 MiB seed of the original LLaMA-7B "
        "consolidated.00.pth (its first 16 MiB differ); decrypting anyway (see "
        f"`belle-decrypt check-key --format openbuddy {key}`)"
    )


def key_warning(layout: str, key: Path) -> str:
    return seed_warning(key) if layout == "openbuddy" else unknown_key_warning(key)


# --- keystreams, byte for byte --------------------------------------------------------------


def _both_ways(tmp_path: Path, layout: str, key: Key, size: int) -> None:
    """decrypt (with the card) gives the plain file; encrypt gives the reference's bytes."""
    key_path, key_bytes = key
    plain = {"model.bin": random_bytes(size, seed=size % 1000)}
    enc = publish(tmp_path / "enc", layout, key_bytes, plain)["model.bin"]
    card = write_card(tmp_path / "card.txt", plain)
    result = run(enc, key_path, tmp_path / "out", "--manifest", card)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "model.bin").read_bytes() == plain["model.bin"]
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "model.bin").write_bytes(plain["model.bin"])
    made = tmp_path / "made"
    result = run("encrypt", tmp_path / "plain", key_path, made, "--format", layout)
    assert result.exit_code == 0, result.output
    assert (made / enc.name).read_bytes() == enc.read_bytes()
    assert listing(made) == sorted([enc.name, "md5sums.txt"])


@pytest.mark.parametrize(
    "size", [0, 1, SEED_SIZE, SEED_SIZE + 1, 2 * SEED_SIZE + 777], ids=lambda n: f"{n}B"
)
def test_the_seed_keystream_matches_the_reference(
    tmp_path: Path, big_key: Key, seed_is_known: None, size: int
) -> None:
    _both_ways(tmp_path, "openbuddy", big_key, size)


@pytest.mark.parametrize(
    "size",
    [0, 1, 10 * MiB, SEED_SIZE + 12_345 + 10 * MiB + 3],
    ids=["empty", "1B", "10MiB", "wraps-past-the-key"],
)
def test_the_headerless_keystream_matches_the_reference(
    tmp_path: Path, big_key: Key, size: int
) -> None:
    _both_ways(tmp_path, "techgpt", big_key, size)


def test_a_32_byte_container_of_an_empty_file_is_belle(tmp_path: Path, make_key: Any) -> None:
    key = make_key(100)
    enc = tmp_path / "enc" / f"added_tokens.json.{PLACEHOLDER}.enc"
    enc.parent.mkdir()
    digest_hex, blob = reference.encrypt(b"", key.read_bytes())
    assert digest_hex == PLACEHOLDER and len(blob) == 32
    enc.write_bytes(blob)
    result = run(enc, key, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "added_tokens.json").read_bytes() == b""
    assert result.stdout.endswith(", SHA-256 verified\n")


@pytest.mark.parametrize("size", [32, 1000])
def test_a_headerless_file_with_the_same_hex_is_techgpt(
    tmp_path: Path, make_key: Any, size: int
) -> None:
    key = make_key(100)
    plain = {"model.bin": random_bytes(size, seed=3)}
    enc = publish(tmp_path / "enc", "techgpt", key.read_bytes(), plain)["model.bin"]
    card = write_card(tmp_path / "card.txt", plain)
    result = run(enc, key, tmp_path / "out", "--manifest", card)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "model.bin").read_bytes() == plain["model.bin"]
    assert result.stdout.endswith(", md5 verified\n")


# --- round trips through encrypt, a folder with clutter --------------------------------------

PLAIN = {"config.json": 300, "pytorch_model.bin": 70_000, "tokenizer.model": 5_000}


def plain_folder(tmp_path: Path) -> dict[str, bytes]:
    folder = tmp_path / "plain"
    folder.mkdir()
    plain = {name: random_bytes(size, seed=size) for name, size in PLAIN.items()}
    for name, data in plain.items():
        (folder / name).write_bytes(data)
    return plain


def add_clutter(folder: Path) -> None:
    (folder / "README.md").write_text("# a model card\n")
    (folder / ".gitattributes").write_text("*.enc filter=lfs diff=lfs merge=lfs -text\n")
    (folder / "LICENSE").write_text(LFS_POINTER)


@pytest.mark.parametrize("layout", ["belle", "techgpt", "openbuddy"])
def test_encrypt_then_decrypt_with_the_manifest(
    tmp_path: Path, big_key: Key, seed_is_known: None, layout: str
) -> None:
    key = big_key[0]
    plain = plain_folder(tmp_path)
    enc = tmp_path / "enc"
    made = run("encrypt", tmp_path / "plain", key, enc, "--format", layout)
    assert made.exit_code == 0, made.output
    add_clutter(enc)
    extra = {"generation_config.json": b'{"do_sample": true}\n'}
    if layout == "openbuddy":  # its plain model files are copied
        (enc / "generation_config.json").write_bytes(extra["generation_config.json"])
        plain |= extra
    out = tmp_path / "out"
    result = run(enc, key, out, "--manifest", enc / "md5sums.txt")
    assert result.exit_code == 0, result.output
    assert listing(out) == sorted(plain)
    for name, data in plain.items():
        assert (out / name).read_bytes() == data
    copied = "1 copied, " if layout == "openbuddy" else ""
    assert result.stdout.splitlines()[-1] == f"3 decrypted, 0 already decrypted, {copied}0 failed"
    again = run(enc, key, out, "--manifest", enc / "md5sums.txt")
    assert again.exit_code == 0, again.output
    already = "1 copied, " if layout == "openbuddy" else ""
    assert again.stdout.splitlines()[-1] == f"0 decrypted, 3 already decrypted, {already}0 failed"


# --- hostile inputs --------------------------------------------------------------------------


@pytest.fixture
def techgpt_release(tmp_path: Path, big_key: Key) -> tuple[Path, Path, dict[str, bytes]]:
    plain = {"config.json": b'{"dim": 4096}\n', "model.bin": random_bytes(5000, seed=5)}
    publish(tmp_path / "enc", "techgpt", big_key[1], plain)
    return tmp_path / "enc", write_card(tmp_path / "card.txt", plain), plain


@pytest.mark.parametrize("layout", ["techgpt", "openbuddy"])
def test_a_wrong_key_is_named_and_nothing_is_written(
    tmp_path: Path, big_key: Key, other_key: Key, seed_is_known: None, layout: str
) -> None:
    plain_folder(tmp_path)
    enc = tmp_path / "enc"
    assert run("encrypt", tmp_path / "plain", big_key[0], enc, "--format", layout).exit_code == 0
    wrong = other_key[0]
    out = tmp_path / "out"
    result = run(enc, wrong, out, "--manifest", enc / "md5sums.txt")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0] == key_warning(layout, wrong)
    name_of, encrypt = ENCRYPT[layout]
    first = enc / name_of("config.json")  # the smallest: decrypted first
    garbage = encrypt(first.read_bytes(), other_key[1])
    verdict = (
        "does not start with the 16 MiB seed of the original LLaMA-7B consolidated.00.pth (its "
        "first 16 MiB differ)"
        if layout == "openbuddy"
        else "is not the original LLaMA-7B consolidated.00.pth (16,777,217 bytes, not "
        "13,476,939,516)"
    )
    assert lines[1] == (
        f"{ERR}{first}: decrypted md5 {md5(garbage)} does not match "
        f"{md5((tmp_path / 'plain' / 'config.json').read_bytes())}: the download is intact (md5 "
        f"matches {enc / 'md5sums.txt'}:1), so the key is wrong: {wrong} {verdict}; nothing written"
    )
    assert lines[-1].startswith(f"{ERR}stopped: the first two files both failed their checksum")
    assert listing(out) == []


@pytest.mark.parametrize("layout", ["techgpt", "openbuddy"])
def test_a_truncated_download_is_caught_by_the_manifest(
    tmp_path: Path, big_key: Key, layout: str
) -> None:
    plain = {"model.bin": random_bytes(5000, seed=5)}
    card = write_card(tmp_path / "card.txt", plain)
    enc = publish(tmp_path / "enc", layout, big_key[1], plain)["model.bin"]
    whole = enc.read_bytes()
    enc_card = tmp_path / "enc-card.txt"
    enc_card.write_text(f"{md5(whole)}  ./{enc.name}\n")
    enc.write_bytes(whole[:-100])
    out = tmp_path / "out"
    result = run(enc, big_key[0], out, "--manifest", card, "--manifest", enc_card)
    assert result.exit_code == 1
    got = md5(ENCRYPT[layout][1](whole[:-100], big_key[1]))
    assert result.stderr.splitlines()[1:] == [
        f"{ERR}{enc}: decrypted md5 {got} does not match {md5(plain['model.bin'])}: broken "
        f"download: its md5 {md5(whole[:-100])} differs from {md5(whole)} ({enc_card}:1); "
        f"download {enc.name} again; nothing written"
    ]
    assert listing(out) == []


@pytest.mark.parametrize("layout", ["techgpt", "openbuddy"])
def test_no_checksum_and_no_manifest_is_refused(tmp_path: Path, big_key: Key, layout: str) -> None:
    plain = {"model.bin": b"weights"}
    enc = publish(tmp_path / "enc", layout, big_key[1], plain)["model.bin"]
    out = tmp_path / "out"
    assert_refused_unlisted(run(tmp_path / "enc", big_key[0], out), enc, out)


def assert_refused_unlisted(result: Result, enc: Path, out: Path, listed: bool = False) -> None:
    """Exit 2 with one line for ``enc`` (which decrypts to model.bin), nothing written;
    ``listed``: a --manifest was given, which does not name it."""
    assert result.exit_code == 2
    assert result.stderr == (
        f"{ERR}{enc}: carries no checksum and the --manifest list does not name 'model.bin'; "
        "pass the card's list of the decrypted files with --manifest, or --no-verify to decrypt "
        "it unchecked\n"
        if listed
        else f"{ERR}{enc}: carries no checksum and no manifest lists 'model.bin'; pass the model "
        "card's md5 list with --manifest\n"
    )
    assert not out.exists()


def test_a_file_the_manifest_does_not_list_is_refused(
    tmp_path: Path, big_key: Key, techgpt_release: tuple[Path, Path, dict[str, bytes]]
) -> None:
    enc_dir, _, plain = techgpt_release
    card = write_card(tmp_path / "partial.txt", {"config.json": plain["config.json"]})
    out = tmp_path / "out"
    result = run(enc_dir, big_key[0], out, "--manifest", card)
    enc = enc_dir / reference_layouts.techgpt_name("model.bin")
    assert_refused_unlisted(result, enc, out, listed=True)


def test_no_verify_decrypts_unverified_and_rechecks_by_a_fresh_decryption(
    tmp_path: Path, big_key: Key, techgpt_release: tuple[Path, Path, dict[str, bytes]]
) -> None:
    enc_dir, _, plain = techgpt_release
    key, out = big_key[0], tmp_path / "out"
    result = run(enc_dir, key, out, "--no-verify")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[:4] for line in lines[:2]] == [
        ["decrypted", "(not", "verified)", "config.json"],
        ["decrypted", "(not", "verified)", "model.bin"],
    ]
    assert lines[0].endswith(", no checksum in the file or the manifest (--no-verify)")
    assert lines[2] == "2 decrypted, 0 already decrypted, 0 failed (2 not verified)"
    assert result.stderr.splitlines()[1:] == [
        f"{WARN}2 files not verified (--no-verify, no checksum in the files or the manifest); "
        "check them against the model card's md5 list: belle-decrypt verify OUT_DIR --manifest "
        "CARD"
    ]
    for name, data in plain.items():
        assert (out / name).read_bytes() == data
    again = run(enc_dir, key, out, "--no-verify")
    assert again.exit_code == 0, again.output
    assert again.stdout.splitlines()[0].startswith("already decrypted  config.json  ")
    assert again.stdout.splitlines()[0].endswith(
        ", same bytes as a fresh decryption, no checksum (--no-verify)"
    )
    damaged = bytearray(plain["model.bin"])
    damaged[4000] ^= 1
    (out / "model.bin").write_bytes(damaged)
    third = run(enc_dir, key, out, "--no-verify")
    assert third.exit_code == 1
    assert third.stderr.splitlines()[1] == (
        f"{ERR}{out / 'model.bin'}: exists and differs from what this file decrypts to; move "
        "it away or pass --force to replace it"
    )
    forced = run(enc_dir, key, out, "--no-verify", "--force")
    assert forced.exit_code == 0, forced.output
    assert (out / "model.bin").read_bytes() == plain["model.bin"]


def test_a_folder_mixing_layouts_is_refused(tmp_path: Path, big_key: Key) -> None:
    enc_dir = tmp_path / "enc"
    publish(enc_dir, "openbuddy", big_key[1], {"a.bin": b"one"})
    publish(enc_dir, "techgpt", big_key[1], {"b.bin": b"two"})
    digest_hex, blob = reference.encrypt(b"three", big_key[1])
    (enc_dir / f"c.bin.{digest_hex}.enc").write_bytes(blob)
    out = tmp_path / "out"
    result = run(enc_dir, big_key[0], out, "--no-verify")
    assert result.exit_code == 2
    assert result.stderr == (
        f"{ERR}{enc_dir}: mixes layouts: a.bin.enc is OpenBuddy (NAME.enc), "
        f"b.bin.{PLACEHOLDER}.enc is TechGPT (NAME.e3b0c442….enc), c.bin.{digest_hex}.enc is "
        "BELLE (NAME.<sha256>.enc); put each release in a folder of its own (nothing was "
        "written)\n"
    )
    assert not out.exists()


@pytest.mark.parametrize("digits", ["0" * 40, "A" * 64, "f" * 32, "1" * 65])
def test_a_hex_run_that_is_not_a_sha256_is_refused(
    tmp_path: Path, big_key: Key, digits: str
) -> None:
    enc = tmp_path / f"model.bin.{digits}.enc"
    enc.write_bytes(b"x" * 100)
    out = tmp_path / "out"
    result = run(enc, big_key[0], out, "--no-verify")
    assert result.exit_code == 2
    assert result.stderr == (
        f"{ERR}{enc}: its name ends in a {len(digits)}-digit hex run where NAME.<sha256>.enc "
        "has 64 lower-case digits: the file is damaged or renamed; download it again (or give "
        "it its published name)\n"
    )
    assert not out.exists()


def test_a_short_hex_part_is_an_openbuddy_name(tmp_path: Path, big_key: Key) -> None:
    plain = {"model.v2.abc123": b"weights"}
    publish(tmp_path / "enc", "openbuddy", big_key[1], plain)
    card = write_card(tmp_path / "card.txt", plain)
    result = run(tmp_path / "enc", big_key[0], tmp_path / "out", "--manifest", card)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "model.v2.abc123").read_bytes() == b"weights"


@pytest.mark.parametrize("layout", ["techgpt", "openbuddy"])
def test_an_lfs_pointer_is_refused(tmp_path: Path, big_key: Key, layout: str) -> None:
    enc = tmp_path / ENCRYPT[layout][0]("model.bin")
    enc.write_text(LFS_POINTER)
    result = run(enc, big_key[0], tmp_path / "out", "--no-verify")
    assert result.exit_code == 2
    assert result.stderr == f"{ERR}{enc}: {LFS_MESSAGE}\n"


def test_an_lfs_pointer_among_openbuddy_plain_files_is_refused(
    tmp_path: Path, big_key: Key
) -> None:
    plain = {"model.bin": b"weights"}
    publish(tmp_path / "enc", "openbuddy", big_key[1], plain)
    (tmp_path / "enc" / "tokenizer.model").write_text(LFS_POINTER)
    card = write_card(tmp_path / "card.txt", plain)
    out = tmp_path / "out"
    result = run(tmp_path / "enc", big_key[0], out, "--manifest", card)
    assert result.exit_code == 2
    assert (
        result.stderr.splitlines()[0]
        == f"{ERR}{tmp_path / 'enc' / 'tokenizer.model'}: {LFS_MESSAGE}"
    )
    assert not out.exists()


# --- OpenBuddy's seed check ------------------------------------------------------------------


def test_a_wrong_seed_is_a_warning_when_the_manifest_checks(tmp_path: Path, big_key: Key) -> None:
    plain = {"model.bin": b"weights"}
    publish(tmp_path / "enc", "openbuddy", big_key[1], plain)
    card = write_card(tmp_path / "card.txt", plain)
    result = run(tmp_path / "enc", big_key[0], tmp_path / "out", "--manifest", card)
    assert result.exit_code == 0, result.output
    assert result.stderr == seed_warning(big_key[0]) + "\n"


def test_a_wrong_seed_is_refused_under_no_verify(tmp_path: Path, big_key: Key) -> None:
    publish(tmp_path / "enc", "openbuddy", big_key[1], {"model.bin": b"weights"})
    out = tmp_path / "out"
    result = run(tmp_path / "enc", big_key[0], out, "--no-verify")
    assert result.exit_code == 2
    assert result.stderr == (
        f"{ERR}{big_key[0]}: does not start with the 16 MiB seed of the original LLaMA-7B "
        "consolidated.00.pth (its first 16 MiB differ); with --no-verify nothing would catch "
        "the wrong seed: pass LLaMA-7B consolidated.00.pth, or the model card's md5 list with "
        "--manifest\n"
    )
    assert not out.exists()


def test_the_right_seed_under_no_verify(tmp_path: Path, big_key: Key, seed_is_known: None) -> None:
    plain = {"model.bin": random_bytes(3000, seed=9)}
    publish(tmp_path / "enc", "openbuddy", big_key[1], plain)
    result = run(tmp_path / "enc", big_key[0], tmp_path / "out", "--no-verify")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].startswith("decrypted (not verified) model.bin  ")
    assert (tmp_path / "out" / "model.bin").read_bytes() == plain["model.bin"]


def test_a_key_shorter_than_the_seed_is_refused(tmp_path: Path, make_key: Any) -> None:
    key = make_key(1000)
    enc = tmp_path / "model.bin.enc"
    enc.write_bytes(b"weights")
    card = write_card(tmp_path / "card.txt", {"model.bin": b"weights"})
    result = run(enc, key, tmp_path / "out", "--manifest", card)
    assert result.exit_code == 2
    assert result.stderr == (
        f"{ERR}{key}: is 1,000 bytes, shorter than the 16 MiB seed taken from the start of the "
        "original LLaMA-7B consolidated.00.pth; pass LLaMA-7B consolidated.00.pth\n"
    )


def test_check_key_for_openbuddy_needs_only_the_seed(big_key: Key, seed_is_known: None) -> None:
    key = big_key[0]
    result = run("check-key", key, "--format", "openbuddy", "-q")
    assert result.exit_code == 0
    assert result.stdout == (
        f"verdict:             {key} starts with the 16 MiB seed of the original LLaMA-7B "
        "consolidated.00.pth (all the seed layout uses)\n"
    )
    whole = run("check-key", key, "-q")
    assert whole.exit_code == 1


def test_check_key_for_openbuddy_refuses_a_short_key(make_key: Any) -> None:
    key = make_key(SEED_SIZE - 1)
    result = run("check-key", key, "--format", "openbuddy", "-q")
    assert result.exit_code == 1
    assert result.stdout == (
        f"verdict:             {key} is 16,777,215 bytes, shorter than the 16 MiB seed taken "
        "from the start of the original LLaMA-7B consolidated.00.pth\n"
    )


# --- --format ------------------------------------------------------------------------------


def test_format_belle_keeps_the_header_check(
    tmp_path: Path, big_key: Key, techgpt_release: tuple[Path, Path, dict[str, bytes]]
) -> None:
    enc = techgpt_release[0] / reference_layouts.techgpt_name("model.bin")
    result = run(enc, big_key[0], tmp_path / "out", "--format", "belle")
    assert result.exit_code == 2
    assert result.stderr == (
        f"{ERR}{enc}: header digest {enc.read_bytes()[:32].hex()} disagrees with the name's "
        f"{PLACEHOLDER}; the file is damaged or renamed: download it again\n"
    )


def test_format_techgpt_reads_any_hex_as_a_placeholder(tmp_path: Path, big_key: Key) -> None:
    plain = b"weights of some model"
    enc = tmp_path / f"model.bin.{'ab' * 32}.enc"
    enc.write_bytes(reference_layouts.techgpt_encrypt(plain, big_key[1]))
    card = write_card(tmp_path / "card.txt", {"model.bin": plain})
    result = run(enc, big_key[0], tmp_path / "out", "--format", "techgpt", "--manifest", card)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "model.bin").read_bytes() == plain


def test_format_openbuddy_takes_the_whole_name(tmp_path: Path, big_key: Key) -> None:
    plain = b"weights"
    name = f"model.bin.{'ab' * 32}"
    enc = tmp_path / f"{name}.enc"
    enc.write_bytes(reference_layouts.openbuddy_encrypt(plain, big_key[1]))
    card = write_card(tmp_path / "card.txt", {name: plain})
    result = run(enc, big_key[0], tmp_path / "out", "--format", "openbuddy", "--manifest", card)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / name).read_bytes() == plain


@pytest.mark.parametrize("command", ["decrypt", "encrypt", "check-key"])
def test_help_lists_the_formats(command: str) -> None:
    result = run(command, "--help")
    assert result.exit_code == 0
    assert "--format [belle|techgpt|openbuddy|perfile]" in result.stdout
    assert ("--no-verify" in result.stdout) == (command == "decrypt")


# --- the rest of the run, unchanged for these layouts ----------------------------------------


def test_a_sha256_list_checks_a_headerless_file(tmp_path: Path, big_key: Key) -> None:
    plain = {"model.bin": random_bytes(4000, seed=21)}
    enc = publish(tmp_path / "enc", "techgpt", big_key[1], plain)["model.bin"]
    card = tmp_path / "sha256.txt"
    card.write_text(f"{hashlib.sha256(plain['model.bin']).hexdigest()}  ./model.bin\n")
    result = run(enc, big_key[0], tmp_path / "out", "--manifest", card)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "model.bin").read_bytes() == plain["model.bin"]
    card.write_text(f"{'0' * 64}  ./model.bin\n")
    wrong = run(enc, big_key[0], tmp_path / "other", "--manifest", card)
    assert wrong.exit_code == 1
    assert wrong.stderr.splitlines()[1].startswith(
        f"{ERR}{enc}: decrypted SHA-256 {hashlib.sha256(plain['model.bin']).hexdigest()} does "
        f"not match {'0' * 64}: "
    )
    assert listing(tmp_path / "other") == []


@pytest.mark.parametrize("layout", ["techgpt", "openbuddy"])
def test_jobs_and_verify_work_on_these_layouts(
    tmp_path: Path, big_key: Key, seed_is_known: None, layout: str
) -> None:
    plain = plain_folder(tmp_path)
    enc = tmp_path / "enc"
    assert run("encrypt", tmp_path / "plain", big_key[0], enc, "--format", layout).exit_code == 0
    card = enc / "md5sums.txt"
    downloads = run("verify", enc, "--manifest", card)
    assert downloads.exit_code == 0, downloads.output
    assert downloads.stdout.splitlines()[-1] == "3 OK, 0 FAILED, 0 MISSING (encrypted files)"
    out = tmp_path / "out"
    result = run(enc, big_key[0], out, "--manifest", card, "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == plain
    decrypted = run("verify", out, "--manifest", card)
    assert decrypted.exit_code == 0, decrypted.output


def test_encrypt_updates_its_openbuddy_manifest_one_file_at_a_time(
    tmp_path: Path, big_key: Key
) -> None:
    plain = plain_folder(tmp_path)
    out = tmp_path / "enc"
    for name in ("config.json", "tokenizer.model", "config.json"):
        made = run("encrypt", tmp_path / "plain" / name, big_key[0], out, "--format", "openbuddy")
        assert made.exit_code == 0, made.output
    key = big_key[1]
    assert (out / "md5sums.txt").read_text().splitlines() == [
        f"{md5(reference_layouts.openbuddy_encrypt(plain['config.json'], key))}  ./config.json.enc",
        f"{md5(reference_layouts.openbuddy_encrypt(plain['tokenizer.model'], key))}  "
        "./tokenizer.model.enc",
        f"{md5(plain['config.json'])}  ./config.json",
        f"{md5(plain['tokenizer.model'])}  ./tokenizer.model",
    ]


@pytest.mark.parametrize("layout", ["techgpt", "openbuddy"])
def test_a_fifo_under_these_names_does_not_hang(tmp_path: Path, big_key: Key, layout: str) -> None:
    enc = tmp_path / ENCRYPT[layout][0]("model.bin")
    os.mkfifo(enc)
    proc = subprocess.run(
        [sys.executable, "-m", "belle_decrypt", enc, big_key[0], tmp_path / "out", "--no-verify"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        f"{ERR}{enc}: is not a regular file (a FIFO or device?); pass the downloaded .enc file\n"
    )


# --- the seed keystream at small sizes, through the engine ---------------------------------


def test_the_seed_stream_fills_like_the_reference_at_every_offset() -> None:
    seed = random_bytes(13, seed=31)
    stream = SeedStream(memoryview(bytearray(seed)))
    expected = reference_layouts.seed_keystream(seed, 120, seed_size=13)
    for offset in range(60):
        for length in (1, 5, 13, 14, 40):
            out = bytearray(length)
            stream.fill(memoryview(out), offset)
            assert bytes(out) == expected[offset : offset + length], (offset, length)


@pytest.mark.parametrize("buffer_size", [1, 7, 13, 26, 64, 4096])
@pytest.mark.parametrize("backend", ["numpy", "python", "torch"])
def test_the_engine_with_a_seed_stream_matches_the_reference(
    buffer_size: int, backend: Backend
) -> None:
    seed = random_bytes(13, seed=32)
    plain = random_bytes(500, seed=33)
    enc = reference_layouts.openbuddy_encrypt(plain, seed, seed_size=13)
    out = io.BytesIO()
    engine.xor_stream(
        io.BytesIO(enc),
        out,
        SeedStream(memoryview(bytearray(seed))),
        len(enc),
        buffer_size=buffer_size,
        backend=backend,
    )
    assert out.getvalue() == plain


def test_the_worked_examples_of_the_spec_are_right() -> None:
    """docs/FORMAT.md sections 4.4 and 5.5, recomputed by the references."""
    spec = (Path(__file__).parents[1] / "docs/FORMAT.md").read_text()
    techgpt = reference_layouts.techgpt_encrypt(b"hello world", bytes(range(0x10, 0x16)), piece=4)
    seed = reference_layouts.openbuddy_encrypt(b"hello world", bytes([0x10, 0x11, 0x12]), 3)
    assert f"`{techgpt.hex(' ')}`, section 1.5's payload alone" in spec
    assert f"`{seed.hex(' ')}`." in spec


def test_encrypt_openbuddy_refuses_a_key_shorter_than_the_seed(
    tmp_path: Path, make_key: Any
) -> None:
    key = make_key(5000)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "model.bin").write_bytes(b"weights")
    out = tmp_path / "enc"
    result = run("encrypt", tmp_path / "plain", key, out, "--format", "openbuddy")
    assert result.exit_code == 2
    assert result.stderr == (
        f"{ERR}{key}: the key is 5,000 bytes, shorter than the 16 MiB seed; pass LLaMA-7B "
        "consolidated.00.pth\n"
    )
    assert not out.exists()


def test_a_right_seed_is_not_blamed_when_every_file_fails(
    tmp_path: Path, big_key: Key, seed_is_known: None
) -> None:
    plain = {"a.bin": b"one", "b.bin": b"two"}
    enc = publish(tmp_path / "enc", "openbuddy", big_key[1], plain)
    card = tmp_path / "card.txt"
    card.write_text("".join(f"{'0' * 32}  ./{name}\n" for name in plain))
    result = run(tmp_path / "enc", big_key[0], tmp_path / "out", "--manifest", card)
    assert result.exit_code == 1
    assert [line.split(": decrypted md5 ")[0] for line in result.stderr.splitlines()] == [
        f"{ERR}{enc['a.bin']}",
        f"{ERR}{enc['b.bin']}",
    ]
