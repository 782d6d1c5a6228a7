"""What the later additive releases need beyond ``delta + base`` (docs/FORMAT.md section 3, 3.8).

The recipes themselves are rows of ``recipes.RECIPES``; this module holds the behaviour a few
of them add, kept apart so that the run calls one function per step whatever the recipe:

- UltraLM adds a mean ``<PAD>`` row only when the diff's tokenizer names a pad token and the
  base's does not (``resolve``);
- BiLLa publishes full weights with only ``model.embed_tokens.weight`` disguised: its base
  needs only that embedding (an HF base, or Meta's ``tok_embeddings`` in
  ``consolidated.00.pth``), every other tensor passes through as published, and no "is this a
  diff" check applies (``open_base``, ``check_and_pair``, ``combine``);
- the published sums are taken three ways (``sum_term``, ``total``): Stanford's float32 total,
  KnowLM's float16 path (torch's type promotion from the first term), BiLLa's embedding sum.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from belle_decrypt.recover import checks
from belle_decrypt.recover.buffers import Scratch, shaped
from belle_decrypt.recover.checks import Item
from belle_decrypt.recover.hfdir import TensorInfo, WeightFolder
from belle_decrypt.recover.recipes import (
    EMBEDDING_SUM,
    EQUAL,
    INV_FREQ,
    MEAN_ROWS,
    PAD_TOKEN_ROW,
    VOCAB_TENSORS,
    Recipe,
    state_dict_key,
)
from belle_decrypt.torchload import import_torch

if TYPE_CHECKING:
    import torch

EMBED = "model.embed_tokens.weight"
META_EMBED = "tok_embeddings.weight"
META_FILE = "consolidated.00.pth"
# LLaMA-2's params.json says norm_eps 1e-05 (LLaMA-1: 1e-06); its weights are bfloat16.
LLAMA2_NORM_EPS = 1e-05
# The scratch slot where BiLLa's float32 embedding is computed (its sum is taken there).
_BILLA_SLOT = "delta"


# --- UltraLM: a pad row only when the tokenizers say so ------------------------------------


def names_pad_token(folder: Path) -> bool:
    """Whether the folder's tokenizer files name a pad token, as ``tokenizer.pad_token is not
    None`` would after ``AutoTokenizer.from_pretrained`` (special_tokens_map.json or
    tokenizer_config.json)."""
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            doc: Any = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        pad = doc.get("pad_token") if isinstance(doc, dict) else None
        if isinstance(pad, dict):
            pad = pad.get("content")
        if isinstance(pad, str) and pad:
            return True
    return False


def resolve(recipe: Recipe, diff: WeightFolder, base: WeightFolder) -> Recipe:
    """The recipe for these folders: UltraLM's pad row decided by the two tokenizers."""
    if recipe.new_rows != PAD_TOKEN_ROW:
        return recipe
    pad = names_pad_token(diff.path) and not names_pad_token(base.path)
    if not pad:
        return replace(recipe, new_rows=EQUAL)
    for name in VOCAB_TENSORS:
        tuned, raw = diff.tensors.get(name), base.tensors.get(name)
        if tuned is not None and raw is not None and tuned.shape[0] != raw.shape[0] + 1:
            raise diff.fail(
                f"its tokenizer names a pad token, so {recipe.name} adds one <PAD> row to the "
                f"base's {raw.shape[0]}, but {name} has {tuned.shape[0]} rows: the base is "
                "another model, or the tokenizer files are not the release's",
                tuned.file,
            )
    return replace(recipe, new_rows=MEAN_ROWS)


# --- BiLLa: only the embedding, against an HF base or Meta's tok_embeddings --------------


class EmbeddingOnly(WeightFolder):
    """A checkpoint file of which only the embedding is needed: Meta's ``consolidated.00.pth``
    (``tok_embeddings.weight``) or any torch zip state dict holding ``model.embed_tokens``.

    It is read like a folder's ``.bin`` (mapped, ``weights_only``) and shows the one tensor
    under its Hugging Face name.
    """

    def _open(self) -> None:
        file = self.path if self.path.is_file() else self.path / META_FILE
        if not self.path.is_file():
            pieces = sorted(self.path.glob("consolidated.*.pth"))
            if len(pieces) != 1:
                raise self.fail(
                    f"holds {len(pieces)} consolidated.*.pth files: BiLLa was made from "
                    "LLaMA-7B (one file); pass LLaMA-7B's folder or its consolidated.00.pth"
                )
            self._check_llama2_params(self.path / "params.json")
        self._check_entry(file)
        self._read_file(file)
        info = self.tensors.get(META_EMBED) or self.tensors.get(EMBED)
        if info is None:
            raise self.fail(
                f"holds neither {META_EMBED} (Meta's) nor {EMBED}: pass LLaMA-7B's "
                f"{META_FILE} or its Hugging Face folder",
                file,
            )
        if info.dtype == "bfloat16":
            raise self.fail(
                f"its {info.name} is bfloat16: this is LLaMA-2, but BiLLa was made from "
                "LLaMA-1 (float16); pass LLaMA-1 7B",
                file,
            )
        handle = self._handles[file]
        self._handles[file] = {EMBED: handle[info.name]}
        self.tensors = {EMBED: TensorInfo(EMBED, info.dtype, info.shape, file)}
        self.files = (file,)

    def _check_llama2_params(self, params: Path) -> None:
        if not params.is_file():
            return
        try:
            doc: Any = json.loads(params.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise self.fail(f"cannot read params.json: {exc}", params) from exc
        if isinstance(doc, dict) and doc.get("norm_eps") == LLAMA2_NORM_EPS:
            raise self.fail(
                "params.json says norm_eps 1e-05: this is LLaMA-2, but BiLLa was made from "
                "LLaMA-1 (1e-06); pass LLaMA-1 7B",
                params,
            )


def open_base(recipe: Recipe, base_dir: Path) -> WeightFolder:
    """BASE_DIR opened for the recipe: for BiLLa also Meta's folder or a single checkpoint."""
    if recipe.embedding_only and (base_dir.is_file() or (base_dir / META_FILE).exists()):
        return EmbeddingOnly.open(base_dir, "BASE_DIR")
    return WeightFolder.open(base_dir, "BASE_DIR")


def check_and_pair(
    recipe: Recipe, diff: WeightFolder, base: WeightFolder
) -> tuple[Recipe, list[Item]]:
    """Every check of the inputs (docs/FORMAT.md section 3, 3.5); the recipe for these folders
    (``resolve``) and the output tensors in state-dict order."""
    checks.check_base_config(base)
    if recipe.embedding_only:
        return recipe, _pair_embedding(recipe, diff, base)
    checks.check_diff_is_diff(diff, base)
    recipe = resolve(recipe, diff, base)
    return recipe, checks.pair(recipe, diff, base)


def _pair_embedding(recipe: Recipe, diff: WeightFolder, base: WeightFolder) -> list[Item]:
    """BiLLa: the embedding against the base's; every other tensor as published."""
    published, raw = diff.tensors.get(EMBED), base.tensors.get(EMBED)
    if published is None:
        raise diff.fail(f"holds no {EMBED}: not a {recipe.name} release")
    if raw is None:
        raise base.fail(
            f"holds no {EMBED}; pass LLaMA-7B converted to the Hugging Face layout, or Meta's "
            f"{META_FILE}"
        )
    if len(published.shape) != 2 or len(raw.shape) != 2 or published.shape[1] != raw.shape[1]:
        raise diff.fail(
            f"{EMBED} has shape {list(published.shape)} but the base's {list(raw.shape)}: the "
            "base is another model size (BiLLa was made from LLaMA-7B)",
            published.file,
        )
    if published.shape[0] < raw.shape[0]:
        raise diff.fail(
            f"{EMBED} has {published.shape[0]} rows, fewer than the base's {raw.shape[0]}: "
            "DIFF_DIR and BASE_DIR are probably swapped",
            published.file,
        )
    items = []
    for name in sorted(diff.tensors, key=state_dict_key):
        info = diff.tensors[name]
        if name == EMBED:
            items.append(Item(name, raw, info, recipe.dtype, info.shape))
        else:
            items.append(Item(name, None, info, info.dtype, info.shape))
    return items


def combine(
    recipe: Recipe,
    name: str,
    base: torch.Tensor | None,
    diff: torch.Tensor,
    out: torch.Tensor,
    scratch: Scratch,
) -> torch.Tensor:
    """The recovered tensor ``name`` (see ``Recipe.combine``); for BiLLa's embedding, in
    float32 the published rows minus the base's first rows, then back to float16, as
    ``embedding_convert.py`` computes it (rows past the base's are the published ones)."""
    if not recipe.embedding_only or base is None:
        return recipe.combine(name, base, diff, out, scratch)
    work = scratch.converted(_BILLA_SLOT, diff, "float32")
    raw = scratch.converted("base", base, "float32")
    work[: raw.shape[0]].sub_(raw)
    out.copy_(work)
    return out


# --- the published sums ---------------------------------------------------------------------


def summed(recipe: Recipe) -> bool:
    """Whether the run sums the recovered tensors (the recipe has a kind of sum)."""
    return recipe.sum_kind is not None


def sum_term(recipe: Recipe, name: str, tensor: torch.Tensor, scratch: Scratch) -> float:
    """One recovered tensor's term of the sum: its torch sum in its own dtype (a float16
    tensor's sum is float16, as ``t.sum()`` gives it); for BiLLa the float32 embedding's sum
    taken before the cast to float16, and 0 for every other tensor."""
    if recipe.sum_kind == EMBEDDING_SUM:
        if name != EMBED:
            return 0.0
        flat = scratch.slots[_BILLA_SLOT]
        return float(shaped(flat, tuple(tensor.shape), "float32").sum())
    return float(tensor.sum())


def total(recipe: Recipe, terms: Iterable[tuple[str, float]]) -> float:
    """The publisher's ``sum(t.sum() for t in state_dict.values())`` from the per-tensor terms
    in state-dict order: a running total that starts as the first term's dtype and follows
    torch's promotion (a float16 recipe's terms are float16, the inv_freq buffers' float32, so
    KnowLM's float16 total turns float32 at the first buffer); BiLLa's is the embedding's."""
    tm = import_torch()
    if recipe.sum_kind == EMBEDDING_SUM:
        return next((value for name, value in terms if name == EMBED), 0.0)
    running: torch.Tensor | None = None
    for name, value in terms:
        dtype = tm.float32 if INV_FREQ in name else getattr(tm, recipe.dtype)
        term = tm.tensor(value, dtype=dtype)
        running = term if running is None else running + term
    return 0.0 if running is None else float(running)


def sums_inv_freq(recipe: Recipe) -> bool:
    """Whether the sum has a variant with the rotary inv_freq buffers (not BiLLa's)."""
    return recipe.sum_kind != EMBEDDING_SUM
