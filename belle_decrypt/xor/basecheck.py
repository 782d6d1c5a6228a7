"""`check-key` on a folder: does it look like LLaMA converted to the Hugging Face layout (the
base of a per-file release, docs/FORMAT.md section 7), and does it match the card's base list?

The look is read from `config.json` (a LLaMA architecture, its size from the hidden size and
layer count) and the shard names (`pytorch_model-0000N-of-0000M.bin` or `.safetensors`, all M
present, with their index); the match is the card's list checked like `verify`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from belle_decrypt.checks.manifest import Manifest
from belle_decrypt.checks.verify import VerifyReport, verify_folder
from belle_decrypt.ground.errors import InputError
from belle_decrypt.layouts.perfile import PINNED, PLAIN_NAMES

BASE_HINT = "pass the folder of LLaMA converted to the Hugging Face layout"
_SHARD_RE = re.compile(r"(?:pytorch_model|model)-(\d{5})-of-(\d{5})\.(bin|safetensors)")
_SIZES = {(4096, 32): "7B", (5120, 40): "13B", (6656, 60): "30B", (8192, 80): "65B"}


@dataclass(frozen=True)
class BaseReport:
    """What a base folder holds, and (with a base list) how its files compare."""

    folder: Path
    findings: tuple[tuple[str, str], ...]
    """(what, found) pairs, in the order they are worth reading."""
    looks_converted: bool
    verdict: str
    listed: VerifyReport | None = None

    @property
    def ok(self) -> bool:
        """Every listed file matching when a list was given (the list is what counts), else
        the look of a converted LLaMA."""
        return self.listed.ok if self.listed is not None else self.looks_converted


def _config(folder: Path) -> tuple[str, bool]:
    """What config.json says, and whether it is a LLaMA's."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "missing", False
    except (OSError, ValueError) as exc:
        return f"not readable as JSON ({exc})", False
    if not isinstance(config, dict):
        return "not a JSON object", False
    architectures = config.get("architectures") or []
    llama = config.get("model_type") == "llama" or "LlamaForCausalLM" in architectures
    shape = (config.get("hidden_size"), config.get("num_hidden_layers"))
    size = next((name for dims, name in _SIZES.items() if dims == shape), None)
    words = (
        f"model_type {config.get('model_type')!r}, hidden size {shape[0]}, {shape[1]} layers, "
        f"vocabulary {config.get('vocab_size')}"
    )
    if llama:
        words += f": LLaMA-{size}" if size else ": a LLaMA of no published size"
    return words, llama


def _shards(folder: Path) -> tuple[str, bool]:
    """Which weight shards are there, and whether the set is whole."""
    names = sorted(path.name for path in folder.iterdir() if path.is_file())
    shards = [m for m in map(_SHARD_RE.fullmatch, names) if m is not None]
    if not shards:
        single = [n for n in names if n in ("pytorch_model.bin", "model.safetensors")]
        return (f"one file, {single[0]}", True) if single else ("no weight files", False)
    total = int(shards[0].group(2))
    have = {int(m.group(1)) for m in shards if int(m.group(2)) == total}
    missing = sorted(set(range(1, total + 1)) - have)
    kind = shards[0].group(3)
    index = (
        "model.safetensors.index.json" if kind == "safetensors" else "pytorch_model.bin.index.json"
    )
    words = f"{len(have)} of {total} {kind} shards"
    if missing:
        words += f", missing {', '.join(f'{n:05d}' for n in missing)}"
    if index not in names:
        words += f", no {index}"
    return words, not missing and index in names


def check_base(
    folder: Path,
    manifest: Manifest | None = None,
    *,
    on_progress: Callable[[int], None] | None = None,
) -> BaseReport:
    """Describe ``folder`` as a base, and check it against ``manifest`` (the card's base list)."""
    if not folder.is_dir():
        what = "is not a folder" if os.path.lexists(folder) else "no such folder"
        raise InputError(f"{what}; {BASE_HINT}", folder)
    try:
        config, llama = _config(folder)
        shards, whole = _shards(folder)
    except OSError as exc:
        raise InputError(
            f"cannot read: {exc.strerror or exc}; check its permissions", folder
        ) from exc
    tokenizer = "present" if (folder / "tokenizer.model").is_file() else "missing"
    findings = (("config.json", config), ("weights", shards), ("tokenizer.model", tokenizer))
    looks = llama and whole and tokenizer == "present"
    listed = verify_folder(folder, manifest, on_progress=on_progress) if manifest else None
    if listed is None and not looks:
        verdict = "does not look like LLaMA converted to the Hugging Face layout"
    elif listed is None:
        verdict = (
            "looks like LLaMA converted to the Hugging Face layout; pass the card's base list "
            "with --base-manifest to know it is the publisher's conversion"
        )
    elif listed.ok:
        verdict = "matches the base list: it is the publisher's conversion"
    elif plain := sorted(name for name in PLAIN_NAMES if manifest and manifest.lookup(name)):
        verdict = (
            f"cannot be checked with this list: it names {plain[0]}, which no base holds, so "
            "it is the card's decoded block; pass the card's base block with --base-manifest"
        )
    else:
        verdict = f"differs from the base list: not the publisher's conversion; {PINNED}"
    return BaseReport(folder, findings, looks, verdict, listed)
