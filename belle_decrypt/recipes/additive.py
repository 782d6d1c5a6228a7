"""The additive recipes: ``tuned = base + diff`` per tensor, as each publisher's tool does it.

docs/FORMAT.md section 3 states every recipe.

A recipe fixes the dtype the arithmetic runs in, how the vocabulary rows of ``embed_tokens``
and ``lm_head`` may differ between base and diff and what the base's new rows hold, which
tensors are taken from the diff as they are, and the integrity figure the publisher checks.
The arithmetic is torch's, in the recipe's dtype, exactly as the publisher's tool does it.
Before anything is written, the base must be LLaMA-1, the diff a diff, and every tensor of one
must pair with a tensor of the other as the recipe allows; each check raises one InputError
naming the first problem and its most likely cause.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from belle_decrypt.ground.torchload import import_torch
from belle_decrypt.tensors.buffers import Scratch
from belle_decrypt.tensors.llama import INV_FREQ, VOCAB_TENSORS, state_dict_key
from belle_decrypt.tensors.protocol import (
    BASE,
    DIFF,
    Item,
    SourceKind,
    SumRule,
    TensorInfo,
    TensorSource,
)
from belle_decrypt.tensors.sources.meta import MetaFolder
from belle_decrypt.tensors.sumcheck import FLOAT32_TOTAL

if TYPE_CHECKING:
    import torch

# How the base's vocabulary rows are extended to the diff's: not at all, with zero rows, or
# with rows equal to the mean of the existing ones; or the diff's extra rows kept as they are
# (LLaVA), or one mean row only when the diff's tokenizer names a pad token (UltraLM: its
# recipe's plan checks which, so combine meets extra rows only where a mean row is right).
EQUAL, ZERO_ROWS, MEAN_ROWS = "equal", "zero rows", "mean rows"
DELTA_ROWS, PAD_TOKEN_ROW = "delta rows", "pad-token row"


@dataclass(frozen=True)
class AdditiveRecipe:
    """One publisher's arithmetic; see docs/FORMAT.md section 3."""

    name: str
    purpose: str
    dtype: str
    new_rows: str
    # Tensors whose name contains one of these are the diff's own, cast to ``dtype``.
    from_diff: tuple[str, ...] = ()
    expected_sum: float | None = None
    sum_tolerance: float = 1e-2
    # How the sum is taken; None: Stanford's float32 total for a float32 recipe, else no sum.
    sums: SumRule | None = None
    base_kinds: tuple[SourceKind, ...] = ()

    @property
    def sum_rule(self) -> SumRule | None:
        """How this recipe's output is summed, or None when it has no sum."""
        if self.sums is not None:
            return self.sums
        return FLOAT32_TOTAL if self.dtype == "float32" else None

    def takes_diff(self, name: str) -> bool:
        """Whether tensor ``name`` is the diff's own (no base needed)."""
        return any(part in name for part in self.from_diff)

    def check(self, sources: Mapping[str, TensorSource]) -> None:
        """Refuse a LLaMA-2 base, full weights as the diff, or the two folders swapped."""
        check_base_config(sources[BASE])
        check_diff_is_diff(sources[DIFF], sources[BASE])

    def plan(self, sources: Mapping[str, TensorSource]) -> list[Item]:
        """Every diff tensor paired with the base's, in state-dict order (see :func:`pair`)."""
        return pair(self, sources[DIFF], sources[BASE])

    def combine(
        self, item: Item, tensors: Mapping[str, torch.Tensor], out: torch.Tensor, scratch: Scratch
    ) -> torch.Tensor:
        """The recovered tensor ``item``, computed into ``out`` (the diff's shape, the recipe's
        dtype; float32 for the rotary inv_freq buffers, which the arithmetic then runs in);
        the diff itself when it is taken as it is. The base is absent when not needed.

        The publishers' tools add the base to the delta (``delta + base``) in the recipe's
        dtype; the base's new vocabulary rows (zeros, or the mean of its rows in float32) are
        added to the delta's last rows the same way, or (LLaVA) those rows stay the delta's.
        ``torch.add(..., out=)`` and
        ``copy_`` are the same kernels as ``+`` and ``.to``: the bits are the same.
        """
        name, base, diff = item.name, tensors.get(BASE), tensors[DIFF]
        tm = import_torch()
        dtype = out.dtype
        dtype_name = str(dtype).removeprefix("torch.")
        if base is None or self.takes_diff(name):
            if diff.dtype == dtype:
                return diff
            out.copy_(diff)
            return out
        delta = diff if diff.dtype == dtype else scratch.converted("delta", diff, dtype_name)
        raw = base if base.dtype == dtype else scratch.converted("base", base, dtype_name)
        if raw.shape == delta.shape:
            tm.add(delta, raw, out=out)
            return out
        rows = raw.shape[0]
        tm.add(delta[:rows], raw, out=out[:rows])
        if self.new_rows == DELTA_ROWS:
            out[rows:].copy_(delta[rows:])
            return out
        if self.new_rows in (MEAN_ROWS, PAD_TOKEN_ROW):
            fill = raw.mean(dim=0, keepdim=True)
        else:
            fill = tm.zeros((1, *raw.shape[1:]), dtype=dtype)
        tm.add(delta[rows:], fill, out=out[rows:])
        return out


LLAMA2_POSITIONS = 4096
# A diff's norm weights are a small fraction of the base's (a fine-tune moves them a little);
# full weights' are about the same size. LLaMA's own average far above NEAR_ZERO.
FULL_WEIGHTS_RATIO = 0.5
NEAR_ZERO = 0.02


def check_base_config(base: TensorSource) -> None:
    """Refuse a LLaMA-2 base: every additive release was made against LLaMA-1."""
    if isinstance(base, MetaFolder):
        base.require_llama1()
        return
    config = base.config or {}
    if config.get("max_position_embeddings") == LLAMA2_POSITIONS:
        raise base.fail(
            f"config.json says max_position_embeddings {LLAMA2_POSITIONS}: this is LLaMA-2, but "
            "these diffs were made against LLaMA-1 (2048); pass LLaMA-1 converted to the "
            "Hugging Face layout",
            base.path / "config.json",
        )


def _norm_level(folder: TensorSource) -> float | None:
    """The mean absolute value of the folder's ``*norm.weight`` tensors (None if it has none)."""
    total, count = 0.0, 0
    for name in folder.tensors:
        if name.endswith("norm.weight"):
            tensor = folder.load(name).float()
            total += float(tensor.abs().sum())
            count += tensor.numel()
    return total / count if count else None


def check_diff_is_diff(diff: TensorSource, base: TensorSource) -> None:
    """Refuse full weights passed as the diff, the two folders swapped, or a diff as the base.

    A diff's ``*norm.weight`` entries are the small changes a fine-tune made, a model's are
    the weights themselves. LLaMA's own are not all near 1 (early layers' are small), so the
    test is relative: the diff's mean |x| must be well under the base's, and the base's must
    not be near 0.
    """
    diff_level, base_level = _norm_level(diff), _norm_level(base)
    if diff_level is None or base_level is None:
        return
    if base_level < NEAR_ZERO:
        if diff_level > base_level:
            raise base.fail(
                f"its *norm.weight tensors are near 0 (mean |x| {base_level:.3f}, the diff's "
                f"{diff_level:.3f}), so this is a diff, not LLaMA weights: DIFF_DIR and "
                "BASE_DIR are probably swapped"
            )
        raise base.fail(
            f"its *norm.weight tensors are near 0 (mean |x| {base_level:.3f}), so this is a "
            "diff, not LLaMA weights; pass LLaMA-1 converted to the Hugging Face layout"
        )
    if diff_level > FULL_WEIGHTS_RATIO * base_level:
        raise diff.fail(
            f"its *norm.weight tensors are as large as the base's (mean |x| {diff_level:.2f} "
            f"against {base_level:.2f}), so these are full weights, not a diff: use the folder "
            "as it is, or check that you downloaded the delta release"
        )


def pair(recipe: AdditiveRecipe, diff: TensorSource, base: TensorSource) -> list[Item]:
    """The output tensors in state-dict order, every diff tensor paired with the base's.

    ``rotary_emb.inv_freq`` buffers never block pairing: one is recovered only when both
    folders hold it (or, for recipes that take it from the diff, when the diff does).
    """
    items = []
    for name in sorted(diff.tensors, key=state_dict_key):
        info = diff.tensors[name]
        other = base.tensors.get(name)
        if INV_FREQ in name:
            if other is None and not recipe.takes_diff(name):
                continue
        elif other is None and not recipe.takes_diff(name):
            raise diff.fail(
                f"{name} is in the diff but not in the base: the base is not the model this "
                "diff was made from (another size or architecture), or a base shard is missing",
                info.file,
            )
        if other is not None and not recipe.takes_diff(name):
            _check_shapes(recipe, name, info, other, diff)
        # The publishers' scripts all write the rotary buffers as float32, whatever the recipe.
        dtype = "float32" if INV_FREQ in name else recipe.dtype
        reads = ((BASE, other), (DIFF, info)) if other is not None else ((DIFF, info),)
        items.append(Item(name, dtype, info.shape, reads))
    for name in sorted(base.tensors, key=state_dict_key):
        info = base.tensors[name]
        if INV_FREQ not in name and name not in diff.tensors:
            raise base.fail(
                f"{name} is in the base but not in the diff: the diff is incomplete (a shard "
                "missing or damaged) or was made from another model",
                info.file,
            )
    return items


def _check_shapes(
    recipe: AdditiveRecipe, name: str, diff: TensorInfo, base: TensorInfo, folder: TensorSource
) -> None:
    """Shapes equal, except extra vocabulary rows in the diff where the recipe adds them."""
    if diff.shape == base.shape:
        return
    extra_rows = (
        name in VOCAB_TENSORS
        and recipe.new_rows != EQUAL
        and len(diff.shape) == len(base.shape) == 2
        and diff.shape[1] == base.shape[1]
        and diff.shape[0] > base.shape[0]
    )
    if not extra_rows:
        raise folder.fail(
            f"{name} has shape {list(diff.shape)} in the diff but {list(base.shape)} in the "
            f"base: the base is another model size, or the recipe is not {recipe.name}",
            diff.file,
        )
