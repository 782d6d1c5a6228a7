"""`encrypt`: byte-identical to the oracle's `.enc` files, a model-card manifest, safe re-runs."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from belle_decrypt.publish.encrypt import encrypt_file
from belle_decrypt.streams.keystream import Key
from tests import reference
from tests.conftest import listing, random_bytes
from tests.runner import run


@pytest.fixture
def model(tmp_path: Path) -> dict[str, bytes]:
    """A plain model folder: an empty file, one larger than the key, a name with several dots."""
    files = {
        "empty.txt": b"",
        "pytorch_model.bin": random_bytes(9000, seed=21),
        "pytorch_model.bin.index.json": b'{"weight_map": {}}\n',
        "special tokens map.json": b"{}",
    }
    folder = tmp_path / "model"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / ".hidden").write_text("not published")
    return files


@pytest.mark.parametrize(("piece", "buffer_size"), [(64, 7), (64, 64), (1000, 333)])
def test_library_output_equals_reference(
    make_key: Callable[..., Path],
    tmp_path: Path,
    model: dict[str, bytes],
    piece: int,
    buffer_size: int,
) -> None:
    key_path = make_key(2 * piece + 3)
    out = tmp_path / "enc"
    out.mkdir()
    with Key(key_path, piece_size=piece) as key:
        for name, data in model.items():
            result = encrypt_file(tmp_path / "model" / name, key, out, buffer_size=buffer_size)
            digest_hex, blob = reference.encrypt(data, key_path.read_bytes(), piece)
            assert result.target.name == f"{name}.{digest_hex}.enc"
            assert result.target.read_bytes() == blob
            assert result.plain_md5 == hashlib.md5(data).hexdigest()
            assert result.enc_md5 == hashlib.md5(blob).hexdigest()


def test_cli_round_trip_with_manifest(
    make_key: Callable[..., Path], tmp_path: Path, model: dict[str, bytes]
) -> None:
    key = make_key(4000)
    enc_dir = tmp_path / "enc"
    result = run("encrypt", tmp_path / "model", key, enc_dir, "--no-fsync")
    assert result.exit_code == 0, result.output
    expected_enc = {reference.enc_filename(name, data): data for name, data in model.items()}
    assert listing(enc_dir) == sorted([*expected_enc, "md5sums.txt"])
    for enc_name, data in expected_enc.items():
        _, blob = reference.encrypt(data, key.read_bytes())
        assert (enc_dir / enc_name).read_bytes() == blob
    manifest = (enc_dir / "md5sums.txt").read_text().splitlines()
    enc_lines = [
        f"{hashlib.md5((enc_dir / n).read_bytes()).hexdigest()}  ./{n}"
        for n in sorted(expected_enc)
    ]
    plain_lines = [f"{hashlib.md5(model[n]).hexdigest()}  ./{n}" for n in sorted(model)]
    assert manifest == enc_lines + plain_lines

    # The user's side with that manifest: check the downloads, decrypt, check the results.
    card = enc_dir / "md5sums.txt"
    downloads = run("verify", enc_dir, "--manifest", card)
    assert downloads.exit_code == 0, downloads.output
    assert downloads.stdout.splitlines()[-1] == "4 OK, 0 FAILED, 0 MISSING (encrypted files)"
    out = tmp_path / "out"
    result = run(enc_dir, key, out, "--manifest", card)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("SHA-256 and md5 verified") == len(model)
    for name, data in model.items():
        assert (out / name).read_bytes() == data
    results = run("verify", out, "--manifest", card)
    assert results.exit_code == 0, results.output
    assert results.stdout.splitlines()[-1] == "4 OK, 0 FAILED, 0 MISSING (decrypted files)"


def test_rerun_keeps_identical_files_and_refuses_different_ones(
    make_key: Callable[..., Path], tmp_path: Path, model: dict[str, bytes]
) -> None:
    key = make_key(4000)
    enc_dir = tmp_path / "enc"
    assert run("encrypt", tmp_path / "model" / "pytorch_model.bin", key, enc_dir).exit_code == 0
    target = enc_dir / reference.enc_filename("pytorch_model.bin", model["pytorch_model.bin"])
    before = target.stat()
    again = run("encrypt", tmp_path / "model" / "pytorch_model.bin", key, enc_dir)
    assert again.exit_code == 0
    assert again.stdout.startswith(f"unchanged  {target.name}")
    after = target.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    target.write_bytes(b"tampered")
    refused = run("encrypt", tmp_path / "model" / "pytorch_model.bin", key, enc_dir)
    assert refused.exit_code == 1
    assert refused.stderr == (
        f"belle-decrypt: error: {target}: exists and differs from the newly encrypted file; "
        "move it away or pass --force\n"
    )
    assert target.read_bytes() == b"tampered"
    assert (
        run("encrypt", tmp_path / "model" / "pytorch_model.bin", key, enc_dir, "--force").exit_code
        == 0
    )
    assert target.read_bytes() != b"tampered"
    assert not [n for n in listing(enc_dir) if n.startswith(".belle-tmp")]


def test_output_folder_must_differ_from_source(
    make_key: Callable[..., Path], tmp_path: Path, model: dict[str, bytes]
) -> None:
    key = make_key(10)
    folder = tmp_path / "model"
    result = run("encrypt", folder, key, folder)
    assert result.exit_code == 2
    assert result.stderr == (
        f"belle-decrypt: error: {folder}: the output folder is the source folder; "
        "choose another one\n"
    )
    assert listing(folder) == sorted([".hidden", *model])


def test_one_file_at_a_time_builds_one_manifest(
    make_key: Callable[..., Path], tmp_path: Path, model: dict[str, bytes]
) -> None:
    key = make_key(4000)
    enc_dir = tmp_path / "enc"
    for name in model:
        assert run("encrypt", tmp_path / "model" / name, key, enc_dir, "-q").exit_code == 0
    together = tmp_path / "together"
    assert run("encrypt", tmp_path / "model", key, together, "-q").exit_code == 0
    assert (enc_dir / "md5sums.txt").read_text() == (together / "md5sums.txt").read_text()

    # Publishing a changed file replaces both of its entries, and keeps the others.
    changed = tmp_path / "model" / "pytorch_model.bin"
    changed.write_bytes(b"retrained")
    assert run("encrypt", changed, key, enc_dir, "-q").exit_code == 0
    lines = (enc_dir / "md5sums.txt").read_text().splitlines()
    assert f"{hashlib.md5(b'retrained').hexdigest()}  ./pytorch_model.bin" in lines
    assert len(lines) == 2 * len(model)
    new_enc = reference.enc_filename("pytorch_model.bin", b"retrained")
    assert any(line.endswith(f"./{new_enc}") for line in lines)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("back\\slash.bin", "would decrypt to the unsafe name"),
        ("new\nline.bin", "control characters"),
        (".belle-tmp.x", ".belle-tmp."),
        ("x" * 190, "too long to publish"),
    ],
)
def test_unpublishable_names_are_refused_before_writing(
    make_key: Callable[..., Path], tmp_path: Path, name: str, why: str
) -> None:
    key = make_key(100)
    src = tmp_path / "src"
    src.mkdir()
    (src / "fine.bin").write_bytes(b"ok")
    (src / name).write_bytes(b"weights")
    target = src / name
    result = run("encrypt", target if name.startswith(".") else src, key, tmp_path / "pub")
    assert result.exit_code == 2, result.output
    shown = str(target).replace("\n", "\\n")  # control characters escaped: one line
    assert result.stderr.startswith(f"belle-decrypt: error: {shown}: ")
    assert why in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "pub").exists()


def test_a_broken_old_manifest_is_refused_before_writing(
    make_key: Callable[..., Path], tmp_path: Path, model: dict[str, bytes]
) -> None:
    key = make_key(100)
    pub = tmp_path / "pub"
    pub.mkdir()
    (pub / "md5sums.txt").write_text("hello\n")
    result = run("encrypt", tmp_path / "model", key, pub)
    assert result.exit_code == 2
    assert result.stderr == (
        f"belle-decrypt: error: {pub / 'md5sums.txt'}: lists no checksum entries (expected lines "
        "like `<md5 or sha256 hex>  FILE`); this run would update it: fix it or move it away\n"
    )
    assert listing(pub) == ["md5sums.txt"]


def test_a_failed_file_does_not_stop_the_others_and_the_manifest_is_written(
    make_key: Callable[..., Path], tmp_path: Path, model: dict[str, bytes]
) -> None:
    key = make_key(4000)
    pub = tmp_path / "pub"
    pub.mkdir()
    in_the_way = pub / reference.enc_filename("empty.txt", model["empty.txt"])
    in_the_way.write_bytes(b"someone else's file")
    result = run("encrypt", tmp_path / "model", key, pub)
    assert result.exit_code == 1
    assert result.stderr == (
        f"belle-decrypt: error: {in_the_way}: exists and differs from the newly encrypted file; "
        "move it away or pass --force\n"
    )
    assert in_the_way.read_bytes() == b"someone else's file"
    lines = (pub / "md5sums.txt").read_text().splitlines()
    assert len(lines) == 2 * (len(model) - 1)
    assert not any("empty.txt" in line for line in lines)


def test_not_enough_free_space_is_refused_before_writing(
    make_key: Callable[..., Path],
    tmp_path: Path,
    model: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = make_key(100)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    result = run("encrypt", tmp_path / "model", key, tmp_path / "pub")
    assert result.exit_code == 1
    assert "but only 1,000 (0.0 GiB) are free; free some space" in result.stderr
    assert listing(tmp_path / "pub") == []


def test_hex_run_in_a_name_is_verified_and_republished(
    make_key: Callable[..., Path], tmp_path: Path
) -> None:
    """A name holding a 32-hex run stays in md5sums.txt: verify catches its corruption, and a
    second encrypt into the same folder updates the md5sums.txt the first one wrote."""
    key = make_key(1000)
    src = tmp_path / "src"
    src.mkdir()
    hexed = "w-0123456789abcdef0123456789abcdef.bin"
    (src / hexed).write_bytes(random_bytes(3000, seed=5))
    (src / "other.bin").write_bytes(random_bytes(200, seed=6))
    enc = tmp_path / "e"
    first = run("encrypt", src / hexed, key, enc)
    assert first.exit_code == 0, first.output
    second = run("encrypt", src / "other.bin", key, enc)
    assert second.exit_code == 0, second.output
    manifest = (enc / "md5sums.txt").read_text()
    assert f"  ./{hexed}\n" in manifest and "  ./other.bin\n" in manifest

    out = tmp_path / "o"
    done = run("decrypt", enc, key, out, "--manifest", enc / "md5sums.txt")
    assert done.exit_code == 0, done.output
    data = bytearray((out / hexed).read_bytes())
    data[100] ^= 1
    (out / hexed).write_bytes(bytes(data))
    checked = run("verify", out, "--manifest", enc / "md5sums.txt")
    assert checked.exit_code == 1, checked.output
    assert f"{hexed}: FAILED (md5 " in checked.output
    assert "1 OK, 1 FAILED, 0 MISSING" in checked.output
