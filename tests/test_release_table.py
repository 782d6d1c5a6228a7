"""The READMEs' "release → command" table: every row run as written against a small release of
that row's layout, built in a temporary folder by the references (the table cannot drift)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from tests import reference, reference_layouts
from tests.conftest import Key, random_bytes
from tests.test_readme import ROOT, run_in

ROW_RE = re.compile(
    r"^\| (?P<release>[^|]+?) \| `(?P<names>[^`]+)` \| `(?P<command>belle-decrypt [^`]+)` \|$"
)
LAYOUT_BY_NAMES = {
    "NAME.<sha256>.enc": "belle",
    "NAME.e3b0c442…b855.enc": "techgpt",
    "NAME.enc": "openbuddy",
}
PLAIN = {"config.json": 200, "pytorch_model-00001-of-00002.bin": 9000, "tokenizer.model": 3000}


def rows(readme: Path) -> list[tuple[str, str, str]]:
    """(release, file-name pattern, command) for each row of the table."""
    found = [ROW_RE.match(line) for line in readme.read_text().splitlines()]
    return [(m["release"], m["names"], m["command"]) for m in found if m is not None]


def encrypted(layout: str, name: str, data: bytes, key: bytes) -> tuple[str, bytes]:
    """The published file name and bytes of ``data`` in ``layout``, by the references."""
    if layout == "belle":
        digest_hex, blob = reference.encrypt(data, key)
        return f"{name}.{digest_hex}.enc", blob
    if layout == "techgpt":
        return reference_layouts.techgpt_name(name), reference_layouts.techgpt_encrypt(data, key)
    return reference_layouts.openbuddy_name(name), reference_layouts.openbuddy_encrypt(data, key)


def test_both_readmes_have_the_same_rows() -> None:
    english = rows(ROOT / "README_en.md")
    assert [row[1:] for row in rows(ROOT / "README.md")] == [row[1:] for row in english]
    assert [row[0].split(" ")[0] for row in english] == [
        "BELLE",
        "point-alpaca",
        "lawyer-llama",
        "TechGPT-7B",
        "OpenBuddy",
    ]


@pytest.mark.parametrize("row", rows(ROOT / "README_en.md"), ids=lambda row: row[0].split()[0])
def test_each_row_decrypts_its_release(
    tmp_path: Path, big_key: Key, row: tuple[str, str, str]
) -> None:
    _, names, command = row
    layout = LAYOUT_BY_NAMES[names]
    enc_dir, _, out_dir = (tmp_path / arg for arg in command.split()[1:4])
    key = tmp_path / "llama" / "7B" / "consolidated.00.pth"
    key.parent.mkdir(parents=True)
    key.symlink_to(big_key[0])
    enc_dir.mkdir()
    plain = {name: random_bytes(size, seed=size) for name, size in PLAIN.items()}
    for name, data in plain.items():
        enc_name, blob = encrypted(layout, name, data, big_key[1])
        (enc_dir / enc_name).write_bytes(blob)
    (enc_dir / "README.md").write_text("# model card\n")
    (enc_dir / ".gitattributes").write_text("*.enc filter=lfs diff=lfs merge=lfs -text\n")
    if layout == "openbuddy":  # its plain files are loaded from the same folder
        plain["generation_config.json"] = b'{"max_new_tokens": 512}\n'
        (enc_dir / "generation_config.json").write_bytes(plain["generation_config.json"])
    card = "".join(f"{hashlib.md5(data).hexdigest()}  ./{n}\n" for n, data in plain.items())
    (tmp_path / "md5.txt").write_text("md5sum ./*\n" + card)
    proc = run_in(tmp_path, command)
    assert proc.returncode == 0, (command, proc.stdout, proc.stderr)
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == plain
