"""Per-file publishing and decoding against the lists (docs/FORMAT.md section 7): one file at a
time builds both lists, payloads that start like gzip, and the advice when a list is the wrong
one."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests import reference
from tests.conftest import random_bytes
from tests.runner import run

SHARD = "pytorch_model-00001-of-00002.bin"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def test_publishing_one_file_at_a_time_keeps_every_entry_of_both_lists(tmp_path: Path) -> None:
    plains = {"config.json": b'{"b": 1}', SHARD: random_bytes(3000, 1), "tokenizer.model": b"t"}
    bases = {"config.json": b'{"a": 0}', SHARD: random_bytes(2000, 2), "tokenizer.model": b"u"}
    model = write_files(tmp_path / "model", plains)
    base = write_files(tmp_path / "base", bases)
    published = tmp_path / "published"
    for name in (SHARD, "config.json", "tokenizer.model"):
        result = run("encrypt", "--format", "perfile", model / name, base, published, "-q")
        assert (result.exit_code, result.stderr) == (0, "")
    payloads = {name: reference.perfile_encode(plains[name], bases[name]) for name in plains}
    assert (published / "md5sums.txt").read_text() == "".join(
        f"{md5(payloads[name])}  ./{name}\n" for name in sorted(plains)
    )
    assert (published / "md5sums-decoded.txt").read_text() == "".join(
        f"{md5(plains[name])}  ./{name}\n" for name in sorted(plains)
    )
    (model / "config.json").write_bytes(b'{"b": 2}')  # published again: its entries replaced
    result = run(
        "encrypt", "--format", "perfile", model / "config.json", base, published, "--force"
    )
    assert result.exit_code == 0, result.stderr
    plains["config.json"] = b'{"b": 2}'
    payloads["config.json"] = reference.perfile_encode(plains["config.json"], bases["config.json"])
    assert (published / "md5sums.txt").read_text() == "".join(
        f"{md5(payloads[name])}  ./{name}\n" for name in sorted(plains)
    )
    assert (published / "md5sums-decoded.txt").read_text() == "".join(
        f"{md5(plains[name])}  ./{name}\n" for name in sorted(plains)
    )


def test_an_unreadable_list_in_the_output_folder_is_refused_before_writing(
    tmp_path: Path,
) -> None:
    model = write_files(tmp_path / "model", {"config.json": b"{}"})
    base = write_files(tmp_path / "base", {"config.json": b"[]"})
    published = write_files(tmp_path / "published", {"md5sums-decoded.txt": b"\xff\xfe\x00"})
    result = run("encrypt", "--format", "perfile", model, base, published)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"belle-decrypt: error: {published / 'md5sums-decoded.txt'}: ")
    assert result.stderr.endswith("; this run would update it: fix it or move it away\n")
    assert sorted(p.name for p in published.iterdir()) == ["md5sums-decoded.txt"]


def test_publishing_says_a_plain_file_is_copied_not_encrypted(tmp_path: Path) -> None:
    plains = {"added_tokens.json": b'{"<x>": 32000}', "config.json": b'{"b": 1}'}
    model = write_files(tmp_path / "model", plains)
    base = write_files(tmp_path / "base", {"config.json": b'{"a": 0}'})
    published = tmp_path / "published"
    result = run("encrypt", "--format", "perfile", model, base, published)
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout.splitlines()[:2] == [
        "encrypted  config.json  8 B",
        "copied     added_tokens.json  14 B",
    ]
    assert (published / "added_tokens.json").read_bytes() == plains["added_tokens.json"]
