"""``convert``: Meta's LLaMA files to the Hugging Face layout (or one GGUF file), as a recipe of
the tensor run.

A conversion is a run whose recipe passes each tensor of Meta's folder through as the source
gives it (slices joined, q and k permuted: :mod:`~belle_decrypt.tensors.sources.meta`), in
Meta's dtype, with the same shard plan and writer, pending names, journal, resume and finish
as ``recover``. Its config.json, generation_config.json and tokenizer files are not copied
but made from Meta's files (the recipe's ``model_files`` hook); ``tokenizer.model`` is copied.
With ``--to gguf`` the GGUF sink takes its config and tokenizer from those same files, and q
and k come in Meta's own layout, which GGUF stores (nothing permuted there and back).
docs/FORMAT.md sections 8 and 9 state the rules.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from belle_decrypt.ground.errors import InputError
from belle_decrypt.recipes.sentencepiece import tokenizer_json
from belle_decrypt.tensors.options import Options
from belle_decrypt.tensors.protocol import BASE, DIFF, Item, SourceKind, SumRule, TensorSource
from belle_decrypt.tensors.run import Recovery
from belle_decrypt.tensors.sinks.ggufsink import GGUF
from belle_decrypt.tensors.sources.meta import MetaFolder
from belle_decrypt.tensors.sources.metafiles import POSITIONS

if TYPE_CHECKING:
    import torch

    from belle_decrypt.tensors.buffers import Scratch

LLAMA_DIR = "LLAMA_DIR"
"""The role of convert's input in messages."""


@dataclass(frozen=True)
class PassThrough:
    """The recipe of a conversion: every tensor of the base as it comes, in its dtype."""

    dtype: str
    name: str = "convert"
    purpose: str = "Meta's files to the Hugging Face layout"
    expected_sum: float | None = None
    sum_tolerance: float = 0.0
    sum_rule: SumRule | None = None
    base_kinds: tuple[SourceKind, ...] = ()

    def check(self, sources: Mapping[str, TensorSource]) -> None:
        """Only Meta's folder is converted (it is opened as one before this is made)."""
        assert isinstance(sources[BASE], MetaFolder)

    def plan(self, sources: Mapping[str, TensorSource]) -> list[Item]:
        """Every tensor of Meta's folder, under its HF name, in state-dict order."""
        return [
            Item(name, info.dtype, info.shape, ((BASE, info),))
            for name, info in sources[BASE].tensors.items()
        ]

    def combine(
        self, item: Item, tensors: Mapping[str, torch.Tensor], out: torch.Tensor, scratch: Scratch
    ) -> torch.Tensor:
        """The source's tensor as it is (already joined and permuted)."""
        return tensors[BASE]

    def forwarded(self, item: Item) -> tuple[str, str] | None:
        """Every item is its base tensor as it is (:class:`~belle_decrypt.tensors.protocol.
        Forwards`): the sink writes Meta's slices joined piece by piece, never whole."""
        return BASE, item.reads[0][1].name

    def model_files(
        self, sources: Mapping[str, TensorSource]
    ) -> tuple[list[Path], dict[str, bytes]]:
        """Meta's tokenizer.model as it is, and the config.json, generation_config.json and
        tokenizer files an HF conversion has (:class:`~belle_decrypt.tensors.protocol.
        MakesModelFiles`)."""
        folder = sources[BASE]
        assert isinstance(folder, MetaFolder)
        return meta_model_files(folder)


def meta_model_files(folder: MetaFolder) -> tuple[list[Path], dict[str, bytes]]:
    """What an HF conversion of Meta's ``folder`` holds besides its weights: tokenizer.model
    (copied), config.json, generation_config.json and the tokenizer files (made)."""
    try:
        tokenizer = folder.tokenizer.read_bytes()
    except OSError as exc:
        raise folder.fail(f"cannot read: {exc.strerror or exc}", folder.tokenizer) from exc
    try:
        made = tokenizer_json(tokenizer)
    except InputError as exc:
        raise folder.fail(f"{exc.message}; download it again", folder.tokenizer) from exc
    settings = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "model_max_length": POSITIONS[folder.version],
    }
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    generation = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    return [folder.tokenizer], {
        "config.json": _json_bytes(folder.config or {}),
        "generation_config.json": _json_bytes(generation),
        "special_tokens_map.json": _json_bytes(special),
        "tokenizer.json": made,
        "tokenizer_config.json": _json_bytes(settings),
    }


def check_out_dir(folder: MetaFolder, out_dir: Path) -> None:
    """Refuse an output folder inside Meta's size folder, or the download's root itself."""
    target = out_dir.resolve()
    size_dir = folder.path.resolve()
    if target == size_dir or size_dir in target.parents:
        raise InputError(
            f"is inside {folder.path}, Meta's folder; pass an output folder elsewhere", out_dir
        )
    if target == folder.tokenizer.parent.resolve():
        raise InputError("is the folder of Meta's download; pass a new output folder", out_dir)


def _json_bytes(doc: Mapping[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2) + "\n").encode()


def prepare_conversion(
    llama_dir: Path,
    out_dir: Path,
    options: Options,
    *,
    size: str | None = None,
    version: int | None = None,
    verify: bool = True,
) -> Recovery:
    """Open and check Meta's folder (``size``: a size folder under ``llama_dir``; ``version``:
    LLaMA-1 or 2 as given; ``verify``: Meta's checklists and published SHA-256 checked in the
    same pass) and the output folder; a run of :class:`PassThrough` with Meta's
    folder in both roles, ready to run. Raises before writing anything."""
    folder = MetaFolder.open_meta(llama_dir, LLAMA_DIR, size=size, version=version, verify=verify)
    try:
        check_out_dir(folder, out_dir)
    except BaseException:
        folder.close()
        raise
    # GGUF stores q and k in Meta's layout: handed as they are, not permuted there and back.
    folder.hf_layout = options.fmt != GGUF
    sources: dict[str, TensorSource] = {DIFF: folder, BASE: folder}
    recipe = PassThrough(folder.dtype)
    return Recovery.prepare_opened(recipe, None, sources, out_dir, options, folder.listed)


def describe(job: Recovery) -> str:
    """One line on the model a conversion reads."""
    folder = job.sources[BASE]
    assert isinstance(folder, MetaFolder)
    files = len(folder.files)
    return (
        f"LLaMA-{folder.version} {folder.dtype}, {folder.params.n_layers} layers, hidden "
        f"{folder.params.dim}, {files} file{'s' * (files != 1)} in {folder.path}"
    )
