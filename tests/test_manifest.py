"""The checksum manifest parser, on every model-card quirk users paste."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest

from belle_decrypt.checks.manifest import Manifest, ManifestEntry
from belle_decrypt.ground.errors import EXIT_USAGE, ManifestError

MD5_A = "0123456789abcdef0123456789abcdef"
MD5_B = "fedcba9876543210fedcba9876543210"
ENC = "pytorch_model.bin." + "ab" * 32 + ".enc"


def names_and_md5s(text: str) -> list[tuple[str, str]]:
    return [(entry.name, entry.digest) for entry in Manifest.parse(text, "card.md").entries]


def md5_entry(name: str, line: int = 1, digest: str = MD5_A) -> ManifestEntry:
    return ManifestEntry(name=name, algorithm="md5", digest=digest, source="card.md", line=line)


@pytest.mark.parametrize(
    "line",
    [
        f"{MD5_A}  a.bin",  # md5sum text mode
        f"{MD5_A} *a.bin",  # md5sum binary mode
        f"{MD5_A}  ./a.bin",  # `md5sum ./*`
        f"{MD5_A}  a.bin\r",  # Windows line end
        f"{MD5_A.upper()}  a.bin",  # upper-case digest
        f"> {MD5_A}  ./a.bin",  # quoted
        f"- `{MD5_A}  ./a.bin`",  # bullet and backticks
        f"| {MD5_A} | a.bin |",  # table row
        f"   {MD5_A}\t./a.bin   ",  # tabs and trailing spaces
        f"1. {MD5_A}  a.bin",  # numbered list
        f"\\{MD5_A}  a.bin",  # md5sum's escape marker
        f"{MD5_A}  .//./a.bin",  # empty and `.` parts dropped
        f"MD5 (./a.bin) = {MD5_A}",  # md5sum --tag
    ],
)
def test_entry_quirks(line: str) -> None:
    entry = ManifestEntry.from_line(line, "card.md", 3)
    assert entry == md5_entry("a.bin", line=3)


@pytest.mark.parametrize(
    "line",
    [
        "",
        "```",
        "```bash",
        "$ md5sum ./*",
        "md5sum ./*",
        "After you decrypt the files, the md5 should be:",
        f"the md5 of the key is {MD5_A}",  # prose before the digest
        f"{MD5_A} is what you should see",  # prose after it
        f"{MD5_A}",  # a digest without a name
        f"{MD5_A}0  a.bin",  # 33 hex digits
        "ab" * 24 + "  a.bin",  # 48 hex digits: neither md5 nor SHA-256
        f"SHA256 (a.bin) = {MD5_A}",  # a tag whose digest has the wrong length
        f"{MD5_A}  ./..",  # no file name
    ],
)
def test_non_entries_are_ignored(line: str) -> None:
    assert ManifestEntry.from_line(line, "card.md", 1) is None


@pytest.mark.parametrize(
    ("line", "name"),
    [
        (f"{MD5_A}  w-{MD5_B}.bin", f"w-{MD5_B}.bin"),  # a 32-hex run inside the name
        (f"{MD5_A} *{MD5_B}", MD5_B),  # a name that is all hex
        (f"{MD5_A}  ./a.bin {MD5_B}  b.bin", f"a.bin {MD5_B}  b.bin"),  # as md5sum -c reads it
        (f"MD5 (w-{MD5_B}.bin) = {MD5_A}", f"w-{MD5_B}.bin"),
        (f"MD5 (a (1).bin) = {MD5_A}", "a (1).bin"),
        (f"\\{MD5_A}  a\\\\b\\nc.bin", "a\\b\nc.bin"),  # md5sum's escaping undone
        (f"| {MD5_A} | w-{MD5_B}.bin |", f"w-{MD5_B}.bin"),
    ],
)
def test_name_is_everything_after_the_separator(line: str, name: str) -> None:
    entry = ManifestEntry.from_line(line, "card.md", 1)
    assert entry == md5_entry(name)


@pytest.mark.parametrize(
    "line",
    [
        f"the md5 of the key is {MD5_A}",
        f"{MD5_A} is what you should see",
        f"{MD5_A}",
        f"{MD5_A}0  a.bin",
        "ab" * 24 + "  a.bin",
    ],
)
def test_digest_lines_that_are_not_entries_are_reported(line: str) -> None:
    manifest = Manifest.parse(f"{MD5_B}  b.bin\n{line}\n", "card.md")
    assert [entry.name for entry in manifest.entries] == ["b.bin"]
    assert [(i.source, i.line, i.text) for i in manifest.ignored] == [("card.md", 2, line)]
    assert manifest.ignored[0].message.startswith("card.md:2: holds a digest but is not")


def test_prose_without_a_digest_is_not_reported() -> None:
    manifest = Manifest.parse(f"```\n$ md5sum ./*\nAfter you decrypt:\n{MD5_A}  a.bin\n")
    assert manifest.ignored == ()


@pytest.mark.parametrize(
    "line",
    [
        f"{MD5_A}  my model.bin",
        f"{MD5_A} *my model.bin",
        f"MD5 (my model.bin) = {MD5_A}",
        f"{MD5_A}  ./my model.bin\r",
    ],
)
def test_names_with_spaces_in_md5sum_layouts(line: str) -> None:
    entry = ManifestEntry.from_line(line, "card.md", 1)
    assert entry is not None and (entry.name, entry.digest) == ("my model.bin", MD5_A)


def test_model_card_pasted_as_is() -> None:
    text = (
        "## After you clone\r\n"
        "```\r\n"
        "$ md5sum ./*\r\n"
        f"{MD5_A}  ./{ENC}\r\n"
        "\r\n"
        "```\r\n"
        "After you decrypt:\r\n"
        f"> {MD5_B}  ./pytorch_model.bin  \r\n"
        f"> {MD5_B}  ./pytorch_model.bin\r\n"  # the same entry twice is fine
    )
    manifest = Manifest.parse(text, "card.md")
    assert names_and_md5s(text) == [(ENC, MD5_A), ("pytorch_model.bin", MD5_B)]
    assert [e.encrypted for e in manifest.entries] == [True, False]
    (entry,) = manifest.lookup("pytorch_model.bin")
    assert entry.line == 8 and entry.where == "card.md:8"
    assert manifest.lookup("missing.bin") == ()


def test_conflicting_digests_name_the_lines() -> None:
    text = f"{MD5_A}  a.bin\nprose\n{MD5_B}  ./a.bin\n{MD5_A}  b.bin\n"
    with pytest.raises(ManifestError) as caught:
        Manifest.parse(text, "card.md")
    assert caught.value.exit_code == EXIT_USAGE
    assert str(caught.value) == (
        f"a.bin has different md5 sums at card.md:1 ({MD5_A}), card.md:3 ({MD5_B}); "
        "keep the entry that matches your release"
    )


def test_merge_repeated_manifests(tmp_path: Path) -> None:
    one = tmp_path / "enc.md5"
    two = tmp_path / "dec.md5"
    one.write_text(f"{MD5_A}  {ENC}\n")
    two.write_text(f"{MD5_B}  pytorch_model.bin\n{MD5_A}  {ENC}\n")
    merged = Manifest.read_all([one, two])
    assert [(e.name, e.source) for e in merged.entries] == [
        (ENC, str(one)),
        ("pytorch_model.bin", str(two)),
    ]
    two.write_text(f"{MD5_B}  {ENC}\n")
    with pytest.raises(ManifestError, match=rf"{one}:1 \({MD5_A}\), {two}:1 \({MD5_B}\)"):
        Manifest.read_all([one, two])


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read the manifest"):
        Manifest.read(tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("```\nmd5sum ./*\n```\n")
    with pytest.raises(ManifestError, match="lists no checksum entries"):
        Manifest.read(empty)


def test_read_utf16_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "card.txt"
    path.write_bytes(f"{MD5_A}  a.bin\r\n".encode("utf-16"))
    assert [e.name for e in Manifest.read(path).entries] == ["a.bin"]
    path.write_bytes(b"\xef\xbb\xbf" + f"{MD5_A}  a.bin\n".encode())
    assert [e.name for e in Manifest.read(path).entries] == ["a.bin"]


SHA_A = "ab" * 32


@pytest.mark.parametrize(
    "line",
    [
        f"{SHA_A}  a.bin",  # sha256sum, rhash --sha256
        f"{SHA_A} *./a.bin",  # sha256sum -b
        f"{SHA_A.upper()}  a.bin",
        f"SHA256 (a.bin) = {SHA_A}",  # sha256sum --tag
        f"SHA-256 (./a.bin) = {SHA_A}",  # rhash --bsd
        f"> {SHA_A}  ./a.bin",
    ],
)
def test_sha256_entries(line: str) -> None:
    entry = ManifestEntry.from_line(line, "card.md", 2)
    assert entry == ManifestEntry("a.bin", "sha256", SHA_A, "card.md", 2)


def test_md5_and_sha256_of_one_file_are_both_kept() -> None:
    manifest = Manifest.parse(f"{MD5_A}  a.bin\n{SHA_A}  ./a.bin\n{SHA_A}  a.bin\n", "card.md")
    assert manifest.lookup("a.bin") == (
        md5_entry("a.bin"),
        ManifestEntry("a.bin", "sha256", SHA_A, "card.md", 2),
    )
    with pytest.raises(ManifestError, match=r"a\.bin has different sha256 sums at card\.md:1"):
        Manifest.parse(f"{SHA_A}  a.bin\n{'cd' * 32}  a.bin\n", "card.md")


@pytest.mark.parametrize(
    ("line", "name"),
    [
        (f"{MD5_A}  7B/config.json", "7B/config.json"),
        (f"{MD5_A}  ./7B/./config.json", "7B/config.json"),
        (f"{MD5_A}  7B\\config.json", "7B/config.json"),  # a Windows separator
        (f"{MD5_A}  /home/me/BELLE/a.bin", "home/me/BELLE/a.bin"),
    ],
)
def test_names_are_relative_paths(line: str, name: str) -> None:
    assert ManifestEntry.from_line(line, "card.md", 1) == md5_entry(name)


def test_names_in_folders_are_different_files() -> None:
    text = f"{MD5_A}  7B/config.json\n{MD5_B}  13B/config.json\n"
    manifest = Manifest.parse(text, "tree.md5")
    assert names_and_md5s(text) == [("7B/config.json", MD5_A), ("13B/config.json", MD5_B)]
    assert [e.digest for e in manifest.lookup("13B/config.json")] == [MD5_B]
    assert manifest.lookup("config.json") == ()  # two files end so: ambiguous


def test_lookup_by_last_parts_where_unambiguous() -> None:
    manifest = Manifest.parse(f"{MD5_A}  BELLE-7B/{ENC}\n{MD5_B}  BELLE-7B/sub/x.bin\n")
    assert [e.digest for e in manifest.lookup(ENC)] == [MD5_A]
    assert [e.digest for e in manifest.lookup("sub/x.bin")] == [MD5_B]
    assert [e.digest for e in manifest.lookup("x.bin")] == [MD5_B]
    assert manifest.lookup("B/x.bin") == ()  # only whole parts count


def test_read_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    class Stdin:
        buffer = io.BytesIO(f"{MD5_A}  a.bin\n".encode())

    monkeypatch.setattr(sys, "stdin", Stdin)
    manifest = Manifest.read(Path("-"))
    assert [(e.name, e.source) for e in manifest.entries] == [("a.bin", "standard input")]


def test_undecodable_names_kept_as_the_file_system_names_them(tmp_path: Path) -> None:
    gbk = "模型.bin".encode("gbk")
    path = tmp_path / "card.md5"
    path.write_bytes(f"{MD5_A}  ./".encode() + gbk + b"\n" + b"\xff prose\n")
    (entry,) = Manifest.read(path).entries
    assert entry.name == os.fsdecode(gbk)
