"""Hostile or broken input, in real subprocesses: one line, a non-zero exit, nothing written.

Exit 2 for everything found before writing; exit 1 for a truncated `.enc`, which only its
checksum reveals. Permission cases (chmod 000) are in test_faults.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from belle_decrypt.layouts.container import is_encrypted_name
from tests import reference
from tests.conftest import listing, random_bytes
from tests.faults import one_error, run_cli

PLAIN = random_bytes(40_000, seed=61)
KEY = random_bytes(3000, seed=62)
HEX = reference.encrypt(PLAIN, KEY)[0]
BLOB = reference.encrypt(PLAIN, KEY)[1]

# Each case: (id, build) where build(tmp) -> (source, key, out, exit code, message).
Case = tuple[Path, Path, Path, int, str]
Builder = Callable[[Path], Case]


def _layout(tmp: Path) -> tuple[Path, Path, Path]:
    key = tmp / "consolidated.00.pth"
    key.write_bytes(KEY)
    enc_dir = tmp / "enc"
    enc_dir.mkdir()
    return key, enc_dir, tmp / "out"


def _named(tmp: Path, filename: str, data: bytes = BLOB) -> tuple[Path, Path, Path]:
    key, enc_dir, out = _layout(tmp)
    (enc_dir / filename).write_bytes(data)
    return enc_dir / filename, key, out


def _bad_name(name: str, filename: str, message: str) -> Builder:
    """A good `.enc` under a name that must be refused (the message names its path, control
    characters escaped)."""

    def build(tmp: Path) -> Case:
        enc, key, out = _named(tmp, filename)
        return enc, key, out, 2, f"{str(enc).replace(chr(10), chr(92) + 'n')}: {message}"

    build.__name__ = name
    return build


PUBLISHED = "give it its published NAME.<sha256>.enc name"
empty_name = _bad_name("empty_name", f".{HEX}.enc", f"would decrypt to an empty name; {PUBLISHED}")
dot_name = _bad_name("dot_name", f"..{HEX}.enc", "would decrypt to the unsafe name '.'; rename it")
dot_dot_name = _bad_name(
    "dot_dot_name", f"...{HEX}.enc", "would decrypt to the unsafe name '..'; rename it"
)
path_name = _bad_name(
    "path_name",
    f"..\\..\\evil.{HEX}.enc",
    "would decrypt to the unsafe name '..\\\\..\\\\evil'; rename it",
)
reserved_name = _bad_name(
    "reserved_name",
    f".belle-tmp.1.0123abcd.x.{HEX}.enc",
    "would decrypt to '.belle-tmp.1.0123abcd.x', a name reserved for belle-decrypt's "
    f"temporary files; {PUBLISHED}",
)

line_break_name = _bad_name(
    "line_break_name",
    f"model\nbin.{HEX}.enc",
    "has control characters (a line break?) in its name; rename it",
)


def short_enc(tmp: Path) -> Case:
    enc, key, out = _named(tmp, f"model.bin.{HEX}.enc", BLOB[:31])
    msg = "is 31 bytes, shorter than the 32-byte header; download it again"
    return enc, key, out, 2, f"{enc}: {msg}"


def truncated_enc(tmp: Path) -> Case:
    # Header intact, payload cut: only the checksum can tell (the diagnosis names a cause).
    enc, key, out = _named(tmp, f"model.bin.{HEX}.enc", BLOB[:-1000])
    return enc, key, out, 1, f"{enc}: decrypted SHA-256 * does not match {HEX}: *; nothing written"


def _bad_key(name: str, spoil: Callable[[Path], object], message: str) -> Builder:
    """A case where the key at its usual path is spoiled by ``spoil(key)``."""

    def build(tmp: Path) -> Case:
        enc, key, out = _named(tmp, f"model.bin.{HEX}.enc")
        spoil(key)
        return enc, key, out, 2, f"{key}: {message}"

    build.__name__ = name
    return build


def _bad_source(name: str, make: Callable[[Path], object], message: str) -> Builder:
    """A case where ``make(path)`` puts something other than a good `.enc` at its path."""

    def build(tmp: Path) -> Case:
        key, enc_dir, out = _layout(tmp)
        enc = enc_dir / f"model.bin.{HEX}.enc"
        make(enc)
        return enc, key, out, 2, f"{enc}: {message}"

    build.__name__ = name
    return build


def _make_fifo(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path)


empty_key = _bad_key(
    "empty_key",
    lambda key: key.write_bytes(b""),
    "the key file is empty; pass LLaMA-7B consolidated.00.pth",
)
key_missing = _bad_key(
    "key_missing", Path.unlink, "key file not found; pass LLaMA-7B consolidated.00.pth"
)
key_is_fifo = _bad_key(
    "key_is_fifo",
    _make_fifo,
    "the key is not a regular file (a FIFO or device?); pass LLaMA-7B consolidated.00.pth",
)
missing_source = _bad_source(
    "missing_source",
    lambda enc: None,
    "no such file or folder; pass a downloaded .enc file or its folder",
)
broken_symlink_source = _bad_source(
    "broken_symlink_source",
    lambda enc: enc.symlink_to(enc.parent / "blobs" / "gone"),
    "no such file or folder; pass a downloaded .enc file or its folder",
)
fifo_source = _bad_source(
    "fifo_source",
    _make_fifo,
    "is not a regular file (a FIFO or device?); pass the downloaded .enc file",
)


def key_is_folder(tmp: Path) -> Case:
    enc, _, out = _named(tmp, f"model.bin.{HEX}.enc")
    msg = "the key is a folder; pass the file itself (LLaMA-7B consolidated.00.pth)"
    return enc, tmp, out, 2, f"{tmp}: {msg}"


def out_dir_is_file(tmp: Path) -> Case:
    enc, key, out = _named(tmp, f"model.bin.{HEX}.enc")
    out.write_bytes(b"not a folder")
    return enc, key, out, 2, f"{out}: the output folder is a file; pass a folder"


def out_dir_under_file(tmp: Path) -> Case:
    enc, key, out = _named(tmp, f"model.bin.{HEX}.enc")
    out.write_bytes(b"not a folder")
    msg = "cannot create the output folder: Not a directory; pass a folder you can write to"
    return enc, key, out / "sub", 2, f"{out / 'sub'}: {msg}"


def out_dir_dangling_symlink(tmp: Path) -> Case:
    enc, key, out = _named(tmp, f"model.bin.{HEX}.enc")
    out.symlink_to(tmp / "unmounted" / "disk")
    msg = (
        f"the output folder is a symbolic link to {tmp / 'unmounted' / 'disk'}, which does not "
        "exist; create that folder or pass another one"
    )
    return enc, key, out, 2, f"{out}: {msg}"


def two_files_one_name(tmp: Path) -> Case:
    key, enc_dir, out = _layout(tmp)
    other = random_bytes(100, seed=63)
    other_hex, other_blob = reference.encrypt(other, KEY)
    (enc_dir / f"model.bin.{HEX}.enc").write_bytes(BLOB)
    (enc_dir / f"model.bin.{other_hex}.enc").write_bytes(other_blob)
    second = sorted([f"model.bin.{HEX}.enc", f"model.bin.{other_hex}.enc"])
    msg = f"decrypts to 'model.bin' like {second[0]}; keep only one of them in the folder"
    return enc_dir, key, out, 2, f"{enc_dir / second[1]}: {msg}"


CASES: list[Builder] = [
    empty_name,
    dot_name,
    dot_dot_name,
    path_name,
    reserved_name,
    line_break_name,
    short_enc,
    truncated_enc,
    empty_key,
    key_is_folder,
    key_missing,
    key_is_fifo,
    missing_source,
    broken_symlink_source,
    fifo_source,
    out_dir_is_file,
    out_dir_under_file,
    out_dir_dangling_symlink,
    two_files_one_name,
]


def _matches(line: str, pattern: str) -> bool:
    """``line`` equals ``pattern`` where each ``*`` stands for any text."""
    first, *rest = pattern.split("*")
    if not line.startswith(first):
        return False
    pos = len(first)
    for i, part in enumerate(rest):
        if i == len(rest) - 1:
            return line.endswith(part) and len(line) - len(part) >= pos
        found = line.find(part, pos)
        if found < 0:
            return False
        pos = found + len(part)
    return line == first


@pytest.mark.parametrize("build", CASES, ids=[case.__name__ for case in CASES])
def test_bad_input_is_one_line_and_writes_nothing(
    build: Callable[[Path], Case], tmp_path: Path
) -> None:
    source, key, out, code, message = build(tmp_path)
    proc = run_cli(source, key, out, timeout=60)
    assert proc.returncode == code, proc.stderr
    line = one_error(proc.stderr)
    assert _matches(line, message), line
    assert proc.stdout == ""
    if out.is_dir():
        assert listing(out) == []
    assert not (tmp_path / "out").is_dir() or listing(tmp_path / "out") == []


@pytest.mark.parametrize("build", [empty_name, short_enc], ids=["empty_name", "short_enc"])
def test_bad_file_in_a_folder_stops_the_whole_run(
    build: Callable[[Path], Case], tmp_path: Path
) -> None:
    enc, key, out, code, message = build(tmp_path)
    (enc.parent / f"config.json.{reference.encrypt(b'{}', KEY)[0]}.enc").write_bytes(
        reference.encrypt(b"{}", KEY)[1]
    )
    proc = run_cli(enc.parent, key, out)
    assert proc.returncode == code
    assert one_error(proc.stderr).endswith(message.split(": ", 1)[1])
    assert not out.exists()


def test_only_whole_names_count_as_encrypted() -> None:
    assert is_encrypted_name(f"model.bin.{HEX}.enc")
    assert not is_encrypted_name(f"model.bin.{HEX}.enc.txt")
    assert not is_encrypted_name(f"model.bin.{HEX}.enc\n")


def test_encrypt_and_check_key_refuse_a_fifo_key_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    plain = tmp_path / "model.bin"
    plain.write_bytes(b"weights")
    message = f"{fifo}: the key is not a regular file (a FIFO or device?); pass LLaMA-7B "
    commands: list[list[str | Path]] = [
        ["encrypt", plain, fifo, tmp_path / "pub"],
        ["check-key", fifo],
    ]
    for args in commands:
        proc = run_cli(*args, timeout=30)
        assert proc.returncode == 2, proc.stderr
        assert one_error(proc.stderr) == message + "consolidated.00.pth"
    assert not (tmp_path / "pub").exists()


@pytest.mark.parametrize("force", [True, False], ids=["force", "no-force"])
def test_an_output_never_replaces_another_input(tmp_path: Path, force: bool) -> None:
    """OUT_DIR = the input folder: `a.<h1>.enc.<h2>.enc` decrypts to the name of the input
    `a.<h1>.enc`, which must stay as it is, with or without --force."""
    key, enc_dir, _ = _layout(tmp_path)
    inner = enc_dir / f"model.bin.{HEX}.enc"
    inner.write_bytes(BLOB)
    outer_hex, outer_blob = reference.encrypt(b"something else entirely", KEY)
    outer = enc_dir / f"{inner.name}.{outer_hex}.enc"
    outer.write_bytes(outer_blob)
    proc = run_cli(enc_dir, key, enc_dir, *(["--force"] if force else []))
    assert proc.returncode == 1, proc.stderr
    assert one_error(proc.stderr) == (
        f"{inner}: is an input of this run itself and would be replaced; choose another "
        "output folder"
    )
    assert inner.read_bytes() == BLOB
    assert listing(enc_dir) == sorted([inner.name, outer.name, "model.bin"])
    assert (enc_dir / "model.bin").read_bytes() == PLAIN
