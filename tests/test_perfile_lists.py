"""Per-file publishing and decoding against the lists (docs/FORMAT.md section 7): one file at a
time builds both lists, payloads that start like gzip, and the advice when a list is the wrong
one."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest

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


def starting_like_gzip(base: bytes, size: int, seed: int) -> bytes:
    """A model file whose payload over ``base`` starts with the gzip magic 1f 8b."""
    plain = bytearray(random_bytes(size, seed))
    plain[0], plain[1] = base[0] ^ 0x1F, base[1] ^ 0x8B
    return bytes(plain)


def decode(payload: Path, base: Path, out: Path, *options: str | Path) -> tuple[int, str, str]:
    """Decode the one payload file in ``payload``: exit code, its line on stdout, stderr."""
    result = run(payload, base, out, *options)
    lines = [line for line in result.stdout.splitlines() if SHARD in line]
    return result.exit_code, lines[0] if lines else "", result.stderr


RAW_NOT_GZIP = "read as raw bytes (it starts like a gzip stream but is not a whole one)"
RAW_NOT_LISTED = "read as raw bytes (read as a gzip stream it does not match the manifest)"
GZIP = "read as a gzip stream"


@pytest.mark.parametrize("check", ["--manifest", "--no-verify"])
def test_a_raw_payload_starting_like_gzip_is_read_raw(tmp_path: Path, check: str) -> None:
    bases = {SHARD: random_bytes(3000, 3)}
    plains = {SHARD: starting_like_gzip(bases[SHARD], 3000, 4)}
    base = write_files(tmp_path / "base", bases)
    payload = write_files(
        tmp_path / "payload", {SHARD: reference.perfile_encode(plains[SHARD], bases[SHARD])}
    )
    assert (payload / SHARD).read_bytes()[:2] == b"\x1f\x8b"
    card = tmp_path / "card.md5"
    card.write_text(f"{md5(plains[SHARD])}  {SHARD}\n")
    options = ["--manifest", card] if check == "--manifest" else [check]
    code, line, _ = decode(payload, base, tmp_path / "out", *options)
    assert code == 0
    assert line.endswith("; " + RAW_NOT_GZIP)
    assert (tmp_path / "out" / SHARD).read_bytes() == plains[SHARD]


def test_the_manifest_picks_the_reading_of_a_payload_that_is_both(tmp_path: Path) -> None:
    inner = random_bytes(2000, 5)
    both = gzip.compress(inner, mtime=0)  # a whole gzip stream, and also some raw payload
    bases = {SHARD: random_bytes(len(both), 6)}
    base = write_files(tmp_path / "base", bases)
    payload = write_files(tmp_path / "payload", {SHARD: both})
    as_raw = reference.perfile_decode(both, bases[SHARD])
    as_gzip = reference.perfile_decode(inner, bases[SHARD])
    card = tmp_path / "card.md5"
    for listed, note in ((as_raw, RAW_NOT_LISTED), (as_gzip, GZIP)):
        card.write_text(f"{md5(listed)}  {SHARD}\n")
        out = tmp_path / f"out-{len(note)}"
        code, line, stderr = decode(payload, base, out, "--manifest", card)
        assert (code, stderr) == (0, "")
        assert line.endswith("; " + note)
        assert (out / SHARD).read_bytes() == listed
        code, line, stderr = decode(payload, base, out, "--manifest", card)  # run again
        assert (code, stderr) == (0, "")
        assert line.startswith("already decrypted")
        assert line.endswith("; " + note)
    code, line, _ = decode(payload, base, tmp_path / "unverified", "--no-verify")
    assert code == 0
    assert line.endswith("; " + GZIP)
    assert (tmp_path / "unverified" / SHARD).read_bytes() == as_gzip


def test_publishing_never_writes_a_raw_payload_that_starts_like_gzip(tmp_path: Path) -> None:
    bases = {SHARD: random_bytes(3000, 7), "config.json": b'{"a": 0}'}
    plains = {SHARD: starting_like_gzip(bases[SHARD], 3500, 8), "config.json": b'{"b": 1}'}
    model = write_files(tmp_path / "model", plains)
    base = write_files(tmp_path / "base", bases)
    published = tmp_path / "published"
    result = run("encrypt", "--format", "perfile", model, base, published, "-q")
    assert (result.exit_code, result.stderr) == (0, "")
    written = (published / SHARD).read_bytes()
    assert gzip.decompress(written) == reference.perfile_encode(plains[SHARD], bases[SHARD])
    raw = reference.perfile_encode(plains["config.json"], bases["config.json"])
    assert (published / "config.json").read_bytes() == raw
    assert (published / "md5sums.txt").read_text() == (
        f"{md5(raw)}  ./config.json\n{md5(written)}  ./{SHARD}\n"
    )
    out = tmp_path / "out"
    code, line, _ = decode(published, base, out, "--manifest", published / "md5sums-decoded.txt")
    assert code == 0
    assert line.endswith("; " + GZIP)
    assert (out / SHARD).read_bytes() == plains[SHARD]


class Lists:
    """A published per-file release with added_tokens.json, and the card's two blocks."""

    def __init__(self, root: Path) -> None:
        self.plains = {
            "added_tokens.json": b'{"<x>": 32000}',
            "config.json": b'{"b": 1}',
            SHARD: random_bytes(3000, 9),
        }
        self.bases = {"config.json": b'{"a": 0}', SHARD: random_bytes(2500, 10)}
        self.base = write_files(root / "base", self.bases)
        self.payload = root / "payload"
        result = run("encrypt", "--format", "perfile", write_files(root / "model", self.plains),
                     self.base, self.payload, "-q")  # fmt: skip
        assert result.exit_code == 0, result.stderr
        self.decoded_block = self.payload / "md5sums-decoded.txt"
        self.payload_list = self.payload / "md5sums.txt"
        self.base_block = root / "base.md5"
        self.base_block.write_text(
            "".join(f"{md5(data)}  {name}\n" for name, data in self.bases.items())
        )
        self.out = root / "out"


SWAPPED = (
    "the list given with --base-manifest names added_tokens.json, which no base holds: it is "
    "the card's decoded block; pass the card's base block with --base-manifest and its decoded "
    "block with --manifest"
)


def test_swapped_blocks_naming_added_tokens_are_named_as_swapped(tmp_path: Path) -> None:
    lists = Lists(tmp_path)
    result = run(lists.payload, lists.base, lists.out, "--manifest", lists.base_block,
                 "--base-manifest", lists.decoded_block)  # fmt: skip
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == f"belle-decrypt: error: {lists.decoded_block}: {SWAPPED}\n"
    assert not lists.out.exists()


def test_a_manifest_that_does_not_list_a_file_is_not_called_missing(tmp_path: Path) -> None:
    lists = Lists(tmp_path)
    result = run(lists.payload, lists.base, lists.out, "--manifest", lists.base_block)
    assert result.exit_code == 2
    assert result.stderr == (
        f"belle-decrypt: error: {lists.payload / 'added_tokens.json'}: carries no checksum and "
        "the --manifest list does not name 'added_tokens.json'; pass the card's list of the "
        "decrypted files with --manifest, or --no-verify to decrypt it unchecked\n"
    )
    assert not lists.out.exists()


def test_the_payload_list_given_as_manifest_is_named_as_such(tmp_path: Path) -> None:
    lists = Lists(tmp_path)
    no_list: list[str | Path] = []
    for base_list in (no_list, ["--base-manifest", lists.base_block]):
        result = run(lists.payload, lists.base, lists.out, "--manifest", lists.payload_list,
                     "-q", *base_list)  # fmt: skip
        assert result.exit_code == 1
        errors = result.stderr.splitlines()
        assert len(errors) == 2
        for line, name in zip(errors, ["config.json", SHARD], strict=True):
            assert line.startswith(f"belle-decrypt: error: {lists.payload / name}: decrypted md5 ")
            assert line.endswith(
                ": the --manifest list gives this payload file's own md5: it lists the payload "
                'files (md5sums.txt, "after you clone"), not the decoded ones; pass the decoded '
                "files' list (md5sums-decoded.txt, or the card's decoded block) with --manifest; "
                "nothing written"
            )
        assert sorted(p.name for p in lists.out.iterdir()) == ["added_tokens.json"]


def test_check_key_with_the_decoded_block_says_the_lists_are_swapped(tmp_path: Path) -> None:
    lists = Lists(tmp_path)
    result = run("check-key", lists.base, "--base-manifest", lists.decoded_block, "-q")
    assert result.exit_code == 1
    assert result.stdout.splitlines()[-1] == (
        f"verdict:             {lists.base} cannot be checked with this list: it names "
        "added_tokens.json, which no base holds, so it is the card's decoded block; pass the "
        "card's base block with --base-manifest"
    )
