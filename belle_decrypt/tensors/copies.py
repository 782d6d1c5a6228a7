"""The files that describe the recovered model (config and tokenizer), copied to OUT_DIR as
they are: the diff's, or the base's for a diff downloaded with its weights only."""

from __future__ import annotations

import filecmp
import fnmatch
import shutil
from collections.abc import Mapping
from pathlib import Path

from belle_decrypt.ground.errors import InputError
from belle_decrypt.streams.output import AtomicFile
from belle_decrypt.tensors.journal import write_small_file
from belle_decrypt.tensors.protocol import (
    BASE,
    DIFF,
    MakesModelFiles,
    Recipe,
    Sink,
    TensorSource,
)

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


def output_files(
    recipe: Recipe, sink: Sink, sources: Mapping[str, TensorSource], warnings: list[str]
) -> tuple[list[Path], dict[str, bytes]]:
    """The files to copy beside the weights and the files to write (name: bytes): none for a
    sink that carries the model's description itself (GGUF), the recipe's own where it makes
    them (:class:`~belle_decrypt.tensors.protocol.MakesModelFiles`), else :func:`model_files`.
    A self-contained sink cannot yet take a recipe's own files: refused with the two-run way."""
    if isinstance(recipe, MakesModelFiles):
        if sink.self_contained:
            raise InputError(
                f"--to {sink.fmt} does not take this recipe's own model files yet "
                "(LoRA adapters); merge into a Hugging Face folder first, then run "
                f"`belle-decrypt convert MERGED_DIR OUT_DIR --to {sink.fmt}`",
                sources[DIFF].path,
            )
        return recipe.model_files(sources)
    if sink.self_contained:
        return [], {}
    return model_files(sources[DIFF], sources[BASE], warnings), {}


def write_output_files(
    out_dir: Path, copies: list[Path], generated: dict[str, bytes], fsync: bool
) -> list[str]:
    """Copy ``copies`` and write ``generated`` into ``out_dir`` atomically, each unless an
    equal file is already there; the names written."""
    written = []
    for path in copies:
        target = out_dir / path.name
        if target.exists() and filecmp.cmp(path, target, shallow=False):
            continue
        atomic = AtomicFile(target, fsync=fsync)
        with atomic as handle, open(path, "rb") as source:
            shutil.copyfileobj(source, handle, 4 * 1024 * 1024)
            atomic.commit()
        written.append(path.name)
    for name, data in generated.items():
        target = out_dir / name
        if not (target.is_file() and target.read_bytes() == data):
            write_small_file(target, data, fsync=fsync)
            written.append(name)
    return written
