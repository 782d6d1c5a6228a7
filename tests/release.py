"""A synthetic model release: `.enc` files made by the oracle and a model card listing md5s."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from tests import reference
from tests.conftest import random_bytes

FILES = {"config.json": 300, "pytorch_model.bin": 9000, "tokenizer.model": 4000}


@dataclass
class Release:
    """Where a release lies and what it holds."""

    enc_dir: Path
    card: Path
    plain: dict[str, bytes]
    enc_names: dict[str, str]

    def enc_path(self, name: str) -> Path:
        return self.enc_dir / self.enc_names[name]


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def make_release(folder: Path, key: bytes, files: dict[str, int] | None = None) -> Release:
    """Encrypt random files with ``key`` into ``folder/enc`` and write the model card's md5s
    (Windows line ends, `./` names, the command line and fences, as users paste them)."""
    enc_dir = folder / "enc"
    enc_dir.mkdir(parents=True, exist_ok=True)
    plain: dict[str, bytes] = {}
    enc_names: dict[str, str] = {}
    enc_lines: list[str] = []
    for seed, (name, size) in enumerate((files or FILES).items()):
        data = random_bytes(size, seed + 100)
        digest_hex, blob = reference.encrypt(data, key)
        enc_names[name] = f"{name}.{digest_hex}.enc"
        (enc_dir / enc_names[name]).write_bytes(blob)
        plain[name] = data
        enc_lines.append(f"{md5(blob)}  ./{enc_names[name]}")
    dec_lines = [f"> {md5(data)}  ./{name}" for name, data in plain.items()]
    card = folder / "card.md"
    lines = ["After you clone:", "```", "md5sum ./*", *enc_lines, "```", ""]
    text = "\n".join([*lines, "After you decrypt:", *dec_lines])
    card.write_bytes((text + "\n").replace("\n", "\r\n").encode())
    return Release(enc_dir, card, plain, enc_names)
