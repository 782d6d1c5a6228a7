"""Manifests as `md5sum -c` and `sha256sum -c` read them: names are paths relative to the folder,
SHA-256 entries beside md5 ones, each checked with its own algorithm; standard input."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import Result

from belle_decrypt.checks import verify
from belle_decrypt.checks.manifest import Manifest
from belle_decrypt.streams import hashing
from tests.conftest import listing, random_bytes
from tests.faults import CLI
from tests.release import Release, make_release, md5
from tests.runner import run

KEY = b"a key of a few bytes, tiled"


def sh(command: str, cwd: Path) -> bytes:
    """Run a shell command line as a user would (globs, md5sum, sha256sum)."""
    return subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, check=True).stdout


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def release(tmp_path: Path) -> Release:
    return make_release(tmp_path, KEY)


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "key.pth"
    path.write_bytes(KEY)
    return path


def plain_copy(release: Release, folder: Path) -> Path:
    """The release's decrypted files in ``folder``, as the publisher has them."""
    folder.mkdir()
    for name, data in release.plain.items():
        (folder / name).write_bytes(data)
    return folder


def decrypted_lines(result: Result) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("decrypted ")]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Two models with files of the same names in their own folders."""
    root = tmp_path / "tree"
    for size, seed in (("7B", 1), ("13B", 2)):
        (root / size).mkdir(parents=True)
        (root / size / "config.json").write_bytes(random_bytes(200, seed))
        (root / size / "tokenizer.model").write_bytes(random_bytes(300, seed + 10))
    return root


def test_md5sum_of_a_tree_verifies(tree: Path) -> None:
    (tree / "tree.md5").write_bytes(sh("md5sum */config.json", tree))
    result = run("verify", tree, "--manifest", tree / "tree.md5")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "13B/config.json: OK",
        "7B/config.json: OK",
        "2 OK, 0 FAILED, 0 MISSING (decrypted files)",
    ]
    (tree / "13B" / "config.json").write_bytes(b"damaged")
    failed = run("verify", tree, "--manifest", tree / "tree.md5", "-q")
    assert failed.exit_code == 1
    assert failed.stdout == (
        f"13B/config.json: FAILED (md5 {md5(b'damaged')}, expected {md5(random_bytes(200, 2))})\n"
    )


def test_card_made_from_the_parent_folder_matches_by_last_parts(tree: Path) -> None:
    card = tree.parent / "card.md5"
    card.write_bytes(sh("md5sum tree/*/tokenizer.model ./tree/7B/config.json", tree.parent))
    result = run("verify", tree, "--manifest", card)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "3 OK, 0 FAILED, 0 MISSING (decrypted files)"


def test_same_base_name_in_two_folders_never_matches_a_flat_file(tree: Path) -> None:
    """`config.json` in a flat folder is neither `7B/config.json` nor `13B/config.json`."""
    card = tree / "tree.md5"
    card.write_bytes(sh("md5sum */config.json", tree))
    flat = tree.parent / "flat"
    flat.mkdir()
    (flat / "config.json").write_bytes((tree / "7B" / "config.json").read_bytes())
    (flat / "tokenizer.model").write_bytes(b"unlisted")
    result = run("verify", flat, "--manifest", card)
    assert result.exit_code == 2
    assert "holds none of the 2 files listed" in result.stderr


def test_md5sum_dir_star_card_checks_downloads_and_outputs(
    release: Release, key: Path, tmp_path: Path
) -> None:
    """Cards made with `md5sum BELLE-7B-enc/*`: the folder prefix is not under DIR."""
    enc_card = tmp_path / "enc.md5"
    enc_card.write_bytes(sh("md5sum enc/*", tmp_path))
    assert b"  enc/config.json." in enc_card.read_bytes()
    downloads = run("verify", release.enc_dir, "--manifest", enc_card)
    assert downloads.exit_code == 0, downloads.output
    assert downloads.stdout.splitlines()[-1] == "3 OK, 0 FAILED, 0 MISSING (encrypted files)"

    plain_copy(release, tmp_path / "BELLE-7B")
    out_card = tmp_path / "out.md5"
    out_card.write_bytes(sh("md5sum BELLE-7B/*", tmp_path))
    result = run(release.enc_dir, key, tmp_path / "out", "--manifest", out_card)
    assert result.exit_code == 0, result.output
    lines = decrypted_lines(result)
    assert len(lines) == 3 and all(line.endswith("SHA-256 and md5 verified") for line in lines)


def test_sha256sum_card_verifies_and_decrypts(release: Release, key: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    reference = plain_copy(release, tmp_path / "reference")
    card = tmp_path / "sha256.txt"
    card.write_bytes(sh("sha256sum * && sha256sum --tag config.json", reference))
    result = run(release.enc_dir, key, out, "--manifest", "-", stdin=card.read_bytes())
    assert result.exit_code == 0, result.output
    lines = decrypted_lines(result)
    assert len(lines) == 3
    assert all(line.endswith("SHA-256 verified, as listed in the manifest") for line in lines)
    checked = run("verify", out, "--manifest", card, "--json")
    assert checked.exit_code == 0, checked.output
    assert '"algorithm": "sha256"' in checked.stdout and '"algorithm": "md5"' not in checked.stdout


def test_a_wrong_sha256_entry_stops_decrypt(release: Release, key: Path, tmp_path: Path) -> None:
    card = tmp_path / "card.txt"
    card.write_text(f"{'ab' * 32}  config.json\n")
    out = tmp_path / "out"
    enc = release.enc_path("config.json")
    result = run(enc, key, out, "--manifest", card)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        f"belle-decrypt: error: {enc}: SHA-256 {sha256(release.plain['config.json'])} differs "
        f"from the manifest's {'ab' * 32} although the SHA-256 in the name matches; nothing "
        "written: check that the manifest is for this release"
    )
    assert listing(out) == []


def test_each_entry_checked_with_its_own_algorithm(release: Release, tmp_path: Path) -> None:
    out = plain_copy(release, tmp_path / "out")
    data = release.plain["tokenizer.model"]
    card = tmp_path / "mixed.txt"
    card.write_text(
        f"{md5(data)}  tokenizer.model\n"
        f"{'cd' * 32}  tokenizer.model\n"  # a wrong SHA-256 beside a right md5
        f"SHA256 (config.json) = {sha256(release.plain['config.json'])}\n"
    )
    result = run("verify", out, "--manifest", card)
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "tokenizer.model: OK",
        f"tokenizer.model: FAILED (sha256 {sha256(data)}, expected {'cd' * 32})",
        "config.json: OK",
        "2 OK, 1 FAILED, 0 MISSING (decrypted files)",
    ]


def test_a_file_is_read_once_for_both_algorithms(
    release: Release, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, tuple[str, ...]]] = []
    real = hashing.hash_file

    def spy(path: Path, algorithms: tuple[str, ...], **kwargs: object) -> dict[str, str]:
        seen.append((path.name, algorithms))
        return real(path, algorithms)

    monkeypatch.setattr(verify, "hash_file", spy)
    blob = release.enc_path("config.json").read_bytes()
    name = release.enc_names["config.json"]
    text = f"{md5(blob)}  {name}\n{sha256(blob)}  {name}\n{md5(b'')}  ./other.bin\n"
    report = verify.verify_folder(release.enc_dir, Manifest.parse(text))
    assert report.ok
    assert seen == [(name, ("md5", "sha256"))]


def test_manifest_from_standard_input(release: Release) -> None:
    card = release.card.read_bytes()
    result = run("verify", release.enc_dir, "--manifest", "-", stdin=card)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "3 OK, 0 FAILED, 0 MISSING (encrypted files)"
    empty = run("verify", release.enc_dir, "--manifest", "-", stdin=b"")
    assert empty.exit_code == 2
    assert empty.stderr == (
        "belle-decrypt: error: standard input: lists no checksum entries (expected lines like "
        "`<md5 or sha256 hex>  FILE`)\n"
    )


def test_decrypt_says_when_the_name_is_listed_in_several_folders(
    release: Release, key: Path, tmp_path: Path
) -> None:
    data = release.plain["config.json"]
    card = tmp_path / "tree.md5"
    card.write_text(f"{md5(data)}  7B/config.json\n{md5(b'other')}  13B/config.json\n")
    result = run(release.enc_path("config.json"), key, tmp_path / "out", "--manifest", card)
    assert result.exit_code == 0, result.output
    assert decrypted_lines(result)[0].endswith(
        "SHA-256 verified; the manifest lists this name in several folders"
    )


def test_manifest_from_closed_standard_input(release: Release) -> None:
    proc = subprocess.run(
        [*CLI, "verify", str(release.enc_dir), "--manifest", "-"],
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.close(0),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        "belle-decrypt: error: standard input: is closed; pipe the manifest in or name its file\n"
    )
