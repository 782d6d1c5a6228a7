"""A small synthetic release for `belle-decrypt demo`: no network, no real LLaMA file.

It stands in for both sides: a random key a little over one 10 MiB piece (so the short last key
piece is tiled and the keystream wraps), and a plain model folder with a real torch checkpoint
larger than two pieces, a config and a tokenizer stand-in.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from belle_decrypt.ground.errors import ChecksumError
from belle_decrypt.ground.torchload import import_torch
from belle_decrypt.streams.keystream import PIECE_SIZE

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


def run_steps(folder: Path, echo: Callable[[str], None], run: Callable[[list[str]], None]) -> None:
    """Build the release in ``folder`` and run the user's commands on it, from inside it.

    ``echo`` prints a line; ``run`` runs one command line of the tool (its arguments) and
    raises if it fails.
    """
    prog = "belle-decrypt"
    echo(f"{prog} demo: a synthetic release in {folder} (no network, no LLaMA file)\n")
    release = build_release(folder)
    model, key = release.model.name, release.key.name
    enc, out, card = f"{model}-enc", f"{model}-out", f"{model}-enc/md5sums.txt"
    files = ", ".join(sorted(p.name for p in release.model.iterdir()))
    echo(
        f"1. A random stand-in for Meta's key ({release.key.stat().st_size:,} bytes: one "
        f"10 MiB piece and a short one) and a plain model: {files}."
    )

    def step(title: str, args: list[str]) -> None:
        echo(f"\n{title}\n$ {prog} {' '.join(args)}")
        run(args)

    previous = Path.cwd()
    os.chdir(folder)
    try:
        step("2. The publisher encrypts it and writes the md5 list:", ["encrypt", model, key, enc])
        step(
            "3. You decrypt the folder, each file checked against the md5 list "
            "(the demo key is not LLaMA-7B, so decrypt warns about it):",
            [enc, key, out, "--manifest", card],
        )
        step(
            "4. You verify the results, as a CI script would:", ["verify", out, "--manifest", card]
        )
        count = check_checkpoint(Path(out) / CHECKPOINT, Path(model) / CHECKPOINT)
    finally:
        os.chdir(previous)
    echo(f"\n5. torch loads the decrypted {CHECKPOINT}: {count} tensors, equal to the original.")
    echo(
        "\nWith real files:\n"
        f"  {prog} check-key llama/7B/consolidated.00.pth\n"
        f"  {prog} BELLE-7B-2M-enc/ llama/7B/consolidated.00.pth BELLE-7B-2M/ --manifest md5.txt\n"
        f"  {prog} verify BELLE-7B-2M/ --manifest md5.txt"
    )
