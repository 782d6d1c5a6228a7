"""Everything checked before a byte is written: the base is LLaMA-1, the diff is a diff, and
every tensor of one pairs with a tensor of the other as the recipe allows.

Each check raises one InputError naming the first problem and its most likely cause.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from belle_decrypt.recover.hfdir import TensorInfo, WeightFolder, data_size
from belle_decrypt.recover.recipes import EQUAL, INV_FREQ, VOCAB_TENSORS, Recipe, state_dict_key
from belle_decrypt.torchload import import_torch

if TYPE_CHECKING:
    import torch

LLAMA2_POSITIONS = 4096
# A diff's norm weights are a small fraction of the base's (a fine-tune moves them a little);
# full weights' are about the same size. LLaMA's own average far above NEAR_ZERO.
FULL_WEIGHTS_RATIO = 0.5
NEAR_ZERO = 0.02


@dataclass(frozen=True)
class Item:
    """One output tensor: its name, the base's and the diff's tensors, its dtype and shape."""

    name: str
    base: TensorInfo | None
    diff: TensorInfo
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Bytes of the recovered tensor's data."""
        return data_size(self.shape, self.dtype)


def check_base_config(base: WeightFolder) -> None:
    """Refuse a LLaMA-2 base: every additive release was made against LLaMA-1."""
    config = base.config or {}
    if config.get("max_position_embeddings") == LLAMA2_POSITIONS:
        raise base.fail(
            f"config.json says max_position_embeddings {LLAMA2_POSITIONS}: this is LLaMA-2, but "
            "these diffs were made against LLaMA-1 (2048); pass LLaMA-1 converted to the "
            "Hugging Face layout",
            base.path / "config.json",
        )


def _norm_level(folder: WeightFolder) -> float | None:
    """The mean absolute value of the folder's ``*norm.weight`` tensors (None if it has none)."""
    total, count = 0.0, 0
    for name in folder.tensors:
        if name.endswith("norm.weight"):
            tensor = folder.load(name).float()
            total += float(tensor.abs().sum())
            count += tensor.numel()
    return total / count if count else None


def check_diff_is_diff(diff: WeightFolder, base: WeightFolder) -> None:
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


def pair(recipe: Recipe, diff: WeightFolder, base: WeightFolder) -> list[Item]:
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
        items.append(Item(name, other, info, dtype, info.shape))
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
    recipe: Recipe, name: str, diff: TensorInfo, base: TensorInfo, folder: WeightFolder
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


def check_finite(folder: WeightFolder, name: str, tensor: torch.Tensor) -> None:
    """Refuse a diff tensor holding NaN or infinite values: no published diff or adapter has
    any, so they mean damage, and the sum would carry them silently into the model."""
    if not tensor.is_floating_point():
        return
    bad = int((~import_torch().isfinite(tensor)).sum())
    if bad:
        values = "value" if bad == 1 else "values"
        raise folder.fail(
            f"{name} holds {bad:,} NaN or infinite {values}: the diff is damaged (no published "
            "diff has any); download it again, or pass --allow-nonfinite to recover it as it "
            "is; nothing was left under a final name",
            folder.tensors[name].file,
        )
