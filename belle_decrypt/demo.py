"""A small synthetic release for `belle-decrypt demo`: no network, no real LLaMA file.

It stands in for both sides: a random key a little over one 10 MiB piece (so the short last key
piece is tiled and the keystream wraps), and a plain model folder with a real torch checkpoint
larger than two pieces, a config and a tokenizer stand-in.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from belle_decrypt.errors import ChecksumError
from belle_decrypt.keystream import PIECE_SIZE
from belle_decrypt.torchload import import_torch

KEY_SIZE = PIECE_SIZE + 4321
CHECKPOINT = "pytorch_model.bin"
# name -> shape; about 22 MiB of float32, more than two key pieces.
TENSORS = {
    "tok_embeddings.weight": (2000, 1024),
    "layers.0.attention.wq.weight": (1024, 1024),
    "layers.0.attention.wk.weight": (1024, 1024),
    "norm.weight": (1024,),
    "output.weight": (2000, 1024),
}


@dataclass(frozen=True)
class DemoRelease:
    """Where the demo's key and plain model folder are."""

    key: Path
    model: Path


def build_release(folder: Path, seed: int = 2023) -> DemoRelease:
    """Write a key and a plain model folder (config.json, checkpoint, tokenizer) in ``folder``."""
    torch = import_torch()
    rng = random.Random(seed)
    key = folder / "consolidated.00.pth"
    key.write_bytes(rng.randbytes(KEY_SIZE))
    model = folder / "demo-model"
    model.mkdir()
    config = {"dim": 1024, "n_layers": 1, "vocab_size": 2000, "note": "belle-decrypt demo"}
    (model / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (model / "tokenizer.model").write_bytes(rng.randbytes(500_000))
    generator = torch.Generator().manual_seed(seed)
    tensors = {name: torch.randn(shape, generator=generator) for name, shape in TENSORS.items()}
    torch.save(tensors, model / CHECKPOINT)
    return DemoRelease(key=key, model=model)


def check_checkpoint(decrypted: Path, original: Path) -> int:
    """Load both checkpoints with torch and return the tensor count; raise if they differ."""
    torch = import_torch()
    got = torch.load(decrypted, map_location="cpu", weights_only=True)
    want = torch.load(original, map_location="cpu", weights_only=True)
    if set(got) != set(want) or not all(torch.equal(got[k], want[k]) for k in want):
        raise ChecksumError("does not hold the original tensors", decrypted)
    return len(got)
