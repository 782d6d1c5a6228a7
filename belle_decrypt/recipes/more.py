"""What two of the later additive releases need beyond ``delta + base`` (docs/FORMAT.md
section 3, 3.8); the others are plain rows of the catalogue.

- UltraLM adds a mean ``<PAD>`` row only when the diff's tokenizer names a pad token and the
  base's does not (:class:`PadTokenRecipe`);
- BiLLa publishes full weights with only ``model.embed_tokens.weight`` disguised: its base
  needs only that embedding (an HF base, or Meta's ``tok_embeddings`` through
  :meth:`~belle_decrypt.tensors.sources.meta.MetaFolder.open_embedding`), every other tensor
  passes through as published, no "is this a diff" check applies, and its published sum is
  the float32 embedding's (:class:`EmbeddingRecipe`, :class:`EmbeddingSum`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from belle_decrypt.recipes.additive import (
    EQUAL,
    MEAN_ROWS,
    AdditiveRecipe,
    check_base_config,
    pair,
)
from belle_decrypt.tensors.buffers import Scratch, shaped
from belle_decrypt.tensors.llama import VOCAB_TENSORS, state_dict_key
from belle_decrypt.tensors.protocol import BASE, DIFF, Item, TensorSource
from belle_decrypt.tensors.sources.meta import EMBED
from belle_decrypt.tensors.sources.metafiles import FIRST_FILE

if TYPE_CHECKING:
    import torch

# The scratch slot where BiLLa's float32 embedding is computed (its sum is taken there).
_EMBED_SLOT = "delta"


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


@dataclass(frozen=True)
class PadTokenRecipe(AdditiveRecipe):
    """UltraLM: a mean ``<PAD>`` row when the diff's tokenizer names a pad token and the
    base's does not, else ``delta + base`` on equal shapes."""

    def plan(self, sources: Mapping[str, TensorSource]) -> list[Item]:
        """The pairing of the recipe these two tokenizers call for."""
        diff, base = sources[DIFF], sources[BASE]
        if not (names_pad_token(diff.path) and not names_pad_token(base.path)):
            return pair(replace(self, new_rows=EQUAL), diff, base)
        for name in VOCAB_TENSORS:
            tuned, raw = diff.tensors.get(name), base.tensors.get(name)
            if tuned is not None and raw is not None and tuned.shape[0] != raw.shape[0] + 1:
                raise diff.fail(
                    f"its tokenizer names a pad token, so {self.name} adds one <PAD> row to "
                    f"the base's {raw.shape[0]}, but {name} has {tuned.shape[0]} rows: the base "
                    "is another model, or the tokenizer files are not the release's",
                    tuned.file,
                )
        return pair(replace(self, new_rows=MEAN_ROWS), diff, base)


@dataclass(frozen=True)
class EmbeddingSum:
    """BiLLa's published figure: the float32 embedding's sum, taken before its cast to
    float16 (``embedding_convert.py`` prints it); no other tensor counts."""

    label: str | None = "embedding"

    def term(self, item: Item, tensor: torch.Tensor, scratch: Scratch) -> float:
        """The float32 embedding's sum (still in the scratch slot), 0 for other tensors."""
        if item.name != EMBED or item.input(BASE) is None:
            return 0.0
        flat = scratch.slots[_EMBED_SLOT]
        return float(shaped(flat, tuple(tensor.shape), "float32").sum())

    def total(self, terms: Sequence[tuple[str, float]], dtype: str) -> float:
        """The embedding's term."""
        return next((value for name, value in terms if name == EMBED), 0.0)


EMBEDDING_SUM = EmbeddingSum()


@dataclass(frozen=True)
class EmbeddingRecipe(AdditiveRecipe):
    """BiLLa: only the embedding is recovered (published rows minus the base's, in float32);
    every other tensor is written as published."""

    def check(self, sources: Mapping[str, TensorSource]) -> None:
        """Refuse a LLaMA-2 base; full weights are what BiLLa publishes, so no diff check."""
        check_base_config(sources[BASE])

    def plan(self, sources: Mapping[str, TensorSource]) -> list[Item]:
        """The embedding against the base's; every other tensor as published."""
        diff, base = sources[DIFF], sources[BASE]
        published, raw = diff.tensors.get(EMBED), base.tensors.get(EMBED)
        if published is None:
            raise diff.fail(f"holds no {EMBED}: not a {self.name} release")
        if raw is None:
            raise base.fail(
                f"holds no {EMBED}; pass LLaMA-7B converted to the Hugging Face layout, or "
                f"Meta's {FIRST_FILE}"
            )
        if len(published.shape) != 2 or len(raw.shape) != 2 or published.shape[1] != raw.shape[1]:
            raise diff.fail(
                f"{EMBED} has shape {list(published.shape)} but the base's {list(raw.shape)}: "
                "the base is another model size (BiLLa was made from LLaMA-7B)",
                published.file,
            )
        if published.shape[0] < raw.shape[0]:
            raise diff.fail(
                f"{EMBED} has {published.shape[0]} rows, fewer than the base's "
                f"{raw.shape[0]}: DIFF_DIR and BASE_DIR are probably swapped",
                published.file,
            )
        items = []
        for name in sorted(diff.tensors, key=state_dict_key):
            info = diff.tensors[name]
            if name == EMBED:
                items.append(Item(name, self.dtype, info.shape, ((BASE, raw), (DIFF, info))))
            else:
                items.append(Item(name, info.dtype, info.shape, ((DIFF, info),)))
        return items

    def combine(
        self, item: Item, tensors: Mapping[str, torch.Tensor], out: torch.Tensor, scratch: Scratch
    ) -> torch.Tensor:
        """The embedding in float32, the published rows minus the base's first rows, then
        back to float16, as ``embedding_convert.py`` computes it (rows past the base's are the
        published ones); every other tensor as it is."""
        base, diff = tensors.get(BASE), tensors[DIFF]
        if base is None:
            return diff
        work = scratch.converted(_EMBED_SLOT, diff, "float32")
        raw = scratch.converted("base", base, "float32")
        work[: raw.shape[0]].sub_(raw)
        out.copy_(work)
        return out
