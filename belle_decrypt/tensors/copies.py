"""The files that describe the recovered model (config and tokenizer), copied to OUT_DIR as
they are: the diff's, or the base's for a diff downloaded with its weights only, or those a
recipe decides itself; the same files are what a self-contained sink (GGUF) is bound to."""

from __future__ import annotations

import filecmp
import fnmatch
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from belle_decrypt.ground.errors import InputError
from belle_decrypt.streams.output import AtomicFile
from belle_decrypt.tensors.journal import write_small_file
from belle_decrypt.tensors.protocol import (
    BASE,
    DIFF,
    MakesModelFiles,
    Recipe,
    Rotary,
    Sink,
    SinkContext,
    TensorSource,
)

TOKENIZER_MODEL = "tokenizer.model"

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
    recipe: Recipe,
    sink: Sink,
    sources: Mapping[str, TensorSource],
    out_dir: Path,
    output_type: str | None,
    warnings: list[str],
) -> tuple[list[Path], dict[str, bytes], SinkContext]:
    """The files to copy beside the weights, the files to write (name: bytes), and what the
    sink is bound to. A recipe that makes its own files
    (:class:`~belle_decrypt.tensors.protocol.MakesModelFiles`) decides them, for both: a sink
    that carries the model's description itself (GGUF) takes its config and tokenizer from
    exactly the files a Hugging Face output would get, and none go beside it. Else the diff's
    are copied (:func:`model_files`), and such a sink takes the tokenizer from the first of
    the diff and the base that has a ``tokenizer.model``."""
    diff, base = sources[DIFF], sources[BASE]
    layouts = [s.hf_layout for s in sources.values() if isinstance(s, Rotary)]
    if isinstance(recipe, MakesModelFiles):
        copies, made = recipe.model_files(sources)
        files: dict[str, Path | bytes] = {p.name: p for p in copies}
        files.update(made)
        entry = files.get("config.json")
        config_path = entry if isinstance(entry, Path) else base.path / "config.json"
        context = SinkContext(
            out_dir,
            _config(entry, config_path, base),
            config_path,
            files,
            diff.path,
            output_type,
            all(layouts),
        )
        return ([], {}, context) if sink.self_contained else (copies, made, context)
    described = diff if diff.config is not None else base
    tokenizer: dict[str, Path | bytes] = {}
    for source in (diff, base):
        tokenizer = {p.name: p for p in describing(source)}
        if TOKENIZER_MODEL in tokenizer:
            break
    context = SinkContext(
        out_dir,
        described.config,
        described.path / "config.json",
        tokenizer if TOKENIZER_MODEL in tokenizer else {},
        diff.path,
        output_type,
        all(layouts),
    )
    if sink.self_contained:
        return [], {}, context
    return model_files(diff, base, warnings), {}, context


def _config(entry: Path | bytes | None, path: Path, base: TensorSource) -> dict[str, Any] | None:
    """The config.json a recipe decided (made, or a file to copy), as a document."""
    if entry is None:
        return base.config
    try:
        doc = json.loads(entry if isinstance(entry, bytes) else entry.read_bytes())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read it as JSON ({exc}); download it again", path) from exc
    if not isinstance(doc, dict):
        raise InputError("is not a JSON object; download it again", path)
    return doc


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
