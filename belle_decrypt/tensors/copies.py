"""The files that describe the recovered model (config and tokenizer), copied to OUT_DIR as
they are: the diff's, or the base's for a diff downloaded with its weights only."""

from __future__ import annotations

import fnmatch
from pathlib import Path

from belle_decrypt.tensors.protocol import TensorSource

COPIED = (
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "*.tiktoken",
)
"""Name patterns of the files copied."""


def describing(folder: TensorSource) -> list[Path]:
    """The folder's files that describe a model (:data:`COPIED`)."""
    return [p for p in folder.others if any(fnmatch.fnmatch(p.name, c) for c in COPIED)]


def model_files(diff: TensorSource, base: TensorSource, warnings: list[str]) -> list[Path]:
    """The config and tokenizer files to copy: the diff's. A diff without config.json
    (downloaded with its weights only) takes the base's config and tokenizer files it lacks,
    with a warning added to ``warnings``, when the base's vocabulary fits it; else it is
    refused, as the output would not load."""
    own = describing(diff)
    if any(p.name == "config.json" for p in own) or base.config is None:
        return own
    vocab = base.config.get("vocab_size")
    rows = diff.tensors.get("model.embed_tokens.weight")
    if rows is not None and rows.shape[0] != vocab:
        raise diff.fail(
            f"has no config.json, and the base's does not fit it (vocab_size {vocab}, the "
            f"diff has {rows.shape[0]} rows); download the diff's config.json and tokenizer "
            "files into it"
        )
    names = {p.name for p in own}
    taken = [p for p in describing(base) if p.name not in names]
    warnings.append(
        str(
            diff.fail(
                f"has no config.json; the base's {', '.join(p.name for p in taken)} are "
                "used instead (a diff downloaded with its weights only?)"
            )
        )
    )
    return sorted([*own, *taken], key=lambda p: p.name)
