"""The READMEs' per-file rows (OpenAssistant, Pygmalion/Metharme): each command run as written
against a small per-file release built by tests/reference.py, with the lists it names."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from tests import reference
from tests.conftest import random_bytes
from tests.test_readme import ROOT, run_in

ROW_RE = re.compile(
    r"^\| (?P<release>[^|]+?) \| (?P<base>[^|]+?) \| `(?P<command>belle-decrypt [^`]+)` \|$"
)
PLAIN = {"config.json": 300, "pytorch_model-00001-of-00002.bin": 9000, "tokenizer.model": 500}


def rows(readme: Path) -> list[tuple[str, str]]:
    """(release, command) of each row whose key argument is a base folder."""
    found = [ROW_RE.match(line) for line in readme.read_text().splitlines()]
    return [
        (m["release"], m["command"])
        for m in found
        if m is not None and m["command"].split()[2].endswith("-hf/")
    ]


def option(command: str, name: str) -> str | None:
    words = command.split()
    return words[words.index(name) + 1] if name in words else None


def write_list(path: Path, files: dict[str, bytes]) -> None:
    algorithm = "sha256" if "sha256" in path.name else "md5"
    path.write_text(
        "".join(f"{hashlib.new(algorithm, d).hexdigest()}  ./{n}\n" for n, d in files.items())
    )


def test_both_readmes_have_the_same_per_file_rows() -> None:
    english = [command for _, command in rows(ROOT / "README_en.md")]
    assert english == [command for _, command in rows(ROOT / "README.md")]
    assert len(english) == 2


@pytest.mark.parametrize("row", rows(ROOT / "README_en.md"), ids=lambda row: row[0].split()[0])
def test_each_per_file_row_decodes_its_release(tmp_path: Path, row: tuple[str, str]) -> None:
    _, command = row
    payload, base, out = (tmp_path / arg for arg in command.split()[1:4])
    payload.mkdir()
    base.mkdir()
    plain = {name: random_bytes(size, seed=size) for name, size in PLAIN.items()}
    bases = {name: random_bytes(size - 20, seed=size + 1) for name, size in PLAIN.items()}
    for name, data in plain.items():
        (base / name).write_bytes(bases[name])
        (payload / name).write_bytes(reference.perfile_encode(data, bases[name]))
    plain["added_tokens.json"] = b'{"<|prompter|>": 32000}'
    (payload / "added_tokens.json").write_bytes(plain["added_tokens.json"])
    for clutter in ("README.md", ".gitattributes", "xor_codec.py"):
        (payload / clutter).write_text("hub file\n")
    decoded_list, base_list = option(command, "--manifest"), option(command, "--base-manifest")
    assert decoded_list is not None
    write_list(tmp_path / decoded_list, plain)
    if base_list is not None:
        write_list(tmp_path / base_list, bases)
    proc = run_in(tmp_path, command)
    assert proc.returncode == 0, (command, proc.stdout, proc.stderr)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == plain
