"""Knowing the key: is this file Meta's original LLaMA-7B `consolidated.00.pth`, and if not, what?

The instant check compares the size and the md5 of the first 16 MiB with the values of
docs/FORMAT.md section 2; the full check compares the whole-file md5 with every known LLaMA
file. Where the file is a checkpoint that can be opened without reading tensor data (a
safetensors header, or torch's zip format through mmap), its layers, hidden size and
vocabulary name what it is.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from belle_decrypt.ground.errors import InputError
from belle_decrypt.ground.torchload import import_torch
from belle_decrypt.streams.hashing import md5_file
from belle_decrypt.streams.keystream import check_key_file

HEAD_SIZE = 16 * 1024 * 1024


@dataclass(frozen=True)
class KnownKey:
    """A published file: its whole md5 and, where known, its size and first-16-MiB md5."""

    label: str
    md5: str
    size: int | None = None
    head_md5: str | None = None
    head_only: bool = False
    """Only the first 16 MiB matter (OpenBuddy's seed): any size with that start is right."""


LLAMA_7B = KnownKey(
    "LLaMA-7B consolidated.00.pth",
    md5="6efc8dab194ab59e49cd24be5574d85e",
    size=13_476_939_516,
    head_md5="08cf0f43451cc4ae056e0b19e56c1fcf",
)
KNOWN_KEYS: tuple[KnownKey, ...] = (
    LLAMA_7B,
    KnownKey("LLaMA-13B consolidated.00.pth", md5="0804c42ca65584f50234a86d71e6916a"),
    KnownKey("LLaMA-13B consolidated.01.pth", md5="016017be6040da87604f77703b92f2bc"),
    KnownKey("LLaMA-30B consolidated.00.pth", md5="f856e9d99c30855d6ead4d00cc3a5573"),
    KnownKey("LLaMA-65B consolidated.00.pth", md5="9deae67e2e7b5ccfb2c738f390c00854"),
)

LLAMA_VOCAB = 32000
# LLaMA-1 model sizes by hidden size.
_SIZE_BY_HIDDEN = {4096: "LLaMA-7B", 5120: "LLaMA-13B", 6656: "LLaMA-30B", 8192: "LLaMA-65B"}
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_SHARD_NAME_RE = re.compile(r"-\d+-of-\d+\.")
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def plural(count: int, noun: str) -> str:
    """'1 tensor', '2 tensors'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint's tensor names and shapes say it is."""

    layout: str
    tensors: int
    layers: tuple[int, ...]
    hidden: int | None
    vocab: int | None
    shard: bool

    @property
    def model(self) -> str | None:
        """The LLaMA size this hidden size belongs to, if any."""
        return _SIZE_BY_HIDDEN.get(self.hidden) if self.hidden is not None else None

    def describe(self) -> str:
        """One phrase, e.g. 'a Meta-format checkpoint: 40 layers, hidden size 5120, ...'."""
        if not self.layers:
            return f"a PyTorch checkpoint with {plural(self.tensors, 'tensor')}, not a LLaMA layout"
        parts = []
        if self.shard:
            parts.append(f"layers {self.layers[0]}-{self.layers[-1]}")
        else:
            parts.append(plural(len(self.layers), "layer"))
        if self.hidden is not None:
            parts.append(f"hidden size {self.hidden}")
        if self.vocab is not None:
            note = "" if self.vocab == LLAMA_VOCAB else f" (not LLaMA's {LLAMA_VOCAB}: extended)"
            parts.append(f"vocabulary {self.vocab}{note}")
        kind = f"{self.layout} checkpoint{' shard' if self.shard else ''}"
        size = f" ({self.model} size)" if self.model else ""
        return f"a {kind}: {', '.join(parts)}{size}"


def describe_tensors(shapes: Mapping[str, Sequence[int]], filename: str = "") -> CheckpointInfo:
    """Name a checkpoint from its tensor names and shapes alone."""
    names = list(shapes)
    layers = sorted({int(m.group(1)) for name in names if (m := _LAYER_RE.search(name))})
    hf = any(name.startswith("model.") or name == "lm_head.weight" for name in names)
    layout = "Hugging-Face-format" if hf else "Meta-format"
    hidden = next(
        (shape[0] for name, shape in shapes.items() if name.endswith("norm.weight") and shape),
        None,
    )
    vocab = None
    for name in ("model.embed_tokens.weight", "tok_embeddings.weight", "lm_head.weight"):
        if shapes.get(name):
            vocab = shapes[name][0]
            break
    whole = bool(layers) and layers[0] == 0 and len(layers) == layers[-1] + 1
    has_ends = any(n in shapes for n in ("model.embed_tokens.weight", "tok_embeddings.weight"))
    shard = bool(_SHARD_NAME_RE.search(filename)) or (bool(layers) and not (whole and has_ends))
    return CheckpointInfo(layout, len(names), tuple(layers), hidden, vocab, shard)


def _safetensors_shapes(path: Path) -> dict[str, list[int]] | None:
    """Tensor shapes from a safetensors header (8-byte length, then JSON), or None."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return None
            (length,) = struct.unpack("<Q", head)
            if not 2 <= length <= min(_MAX_SAFETENSORS_HEADER, path.stat().st_size - 8):
                return None
            header = json.loads(handle.read(length))
    except (OSError, ValueError, RecursionError):  # a crafted header nests arrays deeply
        return None
    if not isinstance(header, dict):
        return None
    return {
        name: meta["shape"]
        for name, meta in header.items()
        if isinstance(meta, dict) and _is_shape(meta.get("shape"))
    }


def _is_shape(value: object) -> bool:
    """A tensor shape: a list of non-negative integers."""
    return isinstance(value, list) and all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value
    )


ZIP_MAGIC = b"PK\x03\x04"


def _torch_shapes(path: Path) -> dict[str, list[int]] | None:
    """Tensor shapes of a torch zip checkpoint, mmapped so that no tensor data is read.

    torch is imported only when the file starts like a zip archive (torch.save's format).
    """
    try:
        with open(path, "rb") as handle:
            if handle.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
                return None
        torch = import_torch()
        loaded: Any = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    except Exception:
        return None
    if isinstance(loaded, dict):
        for wrapper in ("state_dict", "model", "module"):
            if isinstance(loaded.get(wrapper), dict):
                loaded = loaded[wrapper]
                break
    if not isinstance(loaded, dict):
        return None
    return {
        str(name): list(value.shape) for name, value in loaded.items() if hasattr(value, "shape")
    }


def inspect_checkpoint(path: Path) -> CheckpointInfo | None:
    """What the checkpoint at ``path`` is, or None when it cannot be opened as one cheaply."""
    shapes = _safetensors_shapes(path) or _torch_shapes(path)
    if not shapes:
        return None
    return describe_tensors(shapes, path.name)


@dataclass(frozen=True)
class KeyReport:
    """The key's fingerprint, optional whole md5 and checkpoint description, and the verdict."""

    path: Path
    size: int
    head_md5: str
    md5: str | None
    checkpoint: CheckpointInfo | None
    is_expected: bool
    verdict: str


def _verdict(
    size: int,
    head_md5: str,
    md5: str | None,
    checkpoint: CheckpointInfo | None,
    expected: KnownKey,
    known: Sequence[KnownKey],
) -> tuple[bool, str]:
    """(is it the expected key, one phrase saying what it is)."""
    want = f"the original {expected.label}"
    if expected.head_only:
        return _seed_verdict(size, head_md5, checkpoint, expected, want)
    if md5 is not None:
        if md5 == expected.md5:
            return True, f"is {want} (whole-file md5 matches)"
        for other in known:
            if md5 == other.md5 and other != expected:
                return False, f"is {other.label}, not {want}; the diffs are keyed on {want}"
    same_size = expected.size is not None and size == expected.size
    same_head = expected.head_md5 is not None and head_md5 == expected.head_md5
    if same_size and same_head:
        if md5 is None:
            return True, f"is {want} (size and first 16 MiB match; --full checks every byte)"
        return False, f"has the size and start of {want} but its md5 differs: a damaged copy"
    if same_head and expected.size is not None:
        how = "short (an incomplete download)" if size < expected.size else "too long"
        return False, f"starts like {want} but is {abs(expected.size - size):,} bytes {how}"
    if expected.size is not None and not same_size:
        what = f"is not {want} ({size:,} bytes, not {expected.size:,})"
    else:
        differs = "whole-file md5 differs" if md5 is not None else "first 16 MiB differ"
        what = f"is not {want} (its {differs})"
    if checkpoint is not None:
        what += f": it is {checkpoint.describe()}"
    return False, what


def llama_7b() -> KnownKey:
    """LLaMA-7B's values, read at call time (tests replace :data:`LLAMA_7B`)."""
    return LLAMA_7B


def llama_7b_seed() -> KnownKey:
    """What the 16 MiB seed layout (docs/FORMAT.md section 5) needs: LLaMA-7B's first 16 MiB."""
    return replace(LLAMA_7B, head_only=True)


def _seed_verdict(
    size: int, head_md5: str, checkpoint: CheckpointInfo | None, expected: KnownKey, want: str
) -> tuple[bool, str]:
    """The verdict when only the first 16 MiB of the key are used."""
    if size < HEAD_SIZE:
        return False, (
            f"is {size:,} bytes, shorter than the 16 MiB seed taken from the start of {want}"
        )
    if head_md5 == expected.head_md5:
        return True, f"starts with the 16 MiB seed of {want} (all the seed layout uses)"
    what = f"does not start with the 16 MiB seed of {want} (its first 16 MiB differ)"
    if checkpoint is not None:
        what += f": it is {checkpoint.describe()}"
    return False, what


def identify(
    path: Path,
    *,
    full: bool = False,
    inspect: bool = True,
    expected: KnownKey | None = None,
    known: Sequence[KnownKey] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> KeyReport:
    """Fingerprint the key at ``path`` (and hash it whole with ``full``) and say what it is.

    ``expected`` and ``known`` default to LLaMA-7B and the table of docs/FORMAT.md section 2
    (read at call time, so they can be replaced in tests).
    """
    expected = expected if expected is not None else LLAMA_7B
    known = known if known is not None else KNOWN_KEYS
    size = check_key_file(path)
    try:
        head_md5 = md5_file(path, limit=HEAD_SIZE, on_progress=None if full else on_progress)
        md5 = md5_file(path, on_progress=on_progress) if full else None
    except OSError as exc:
        raise InputError(
            f"cannot read the key: {exc.strerror or exc}; check its permissions", path
        ) from exc
    checkpoint = inspect_checkpoint(path) if inspect else None
    is_expected, verdict = _verdict(size, head_md5, md5, checkpoint, expected, known)
    return KeyReport(path, size, head_md5, md5, checkpoint, is_expected, verdict)


def unexpected_key_warning(report: KeyReport, check_key: str = "check-key") -> str | None:
    """The usual answer to a key that is not the expected one: decrypt anyway (the checksums
    will tell) and say how to look closer; None for the expected key."""
    if report.is_expected:
        return None
    return (
        f"{report.path}: {report.verdict}; decrypting anyway (see "
        f"`belle-decrypt {check_key} {report.path}`)"
    )


META_SHARD_RE = re.compile(r"^consolidated\.(\d+)\.pth$")
"""The name of one of Meta's model-parallel files (``consolidated.00.pth``)."""


def is_meta_folder(path: Path) -> bool:
    """Whether ``path`` is a folder of Meta's layout: ``consolidated.NN.pth`` files, or a
    ``params.json`` without Hugging Face weights (some HF repositories carry one too)."""
    try:
        names = os.listdir(path)
    except OSError:
        return False
    if any(META_SHARD_RE.match(name) for name in names):
        return True
    hf_weights = any(n.endswith(".safetensors") or n.startswith("pytorch_model") for n in names)
    return "params.json" in names and not hf_weights
