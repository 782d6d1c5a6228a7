"""Each publisher's recipe for turning ``base + diff`` into the tuned weights.

docs/FORMAT.md section 3 states every recipe.

A recipe fixes the dtype the arithmetic runs in, how the vocabulary rows of ``embed_tokens``
and ``lm_head`` may differ between base and diff and what the base's new rows hold, which
tensors are taken from the diff as they are, and the integrity figure the publisher checks.
The arithmetic is torch's, in the recipe's dtype, exactly as the publisher's tool does it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from belle_decrypt.errors import InputError
from belle_decrypt.recover.buffers import Scratch
from belle_decrypt.torchload import import_torch

if TYPE_CHECKING:
    import torch

VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")
INV_FREQ = "rotary_emb.inv_freq"

# How the base's vocabulary rows are extended to the diff's: not at all, with zero rows, or
# with rows equal to the mean of the existing ones.
EQUAL, ZERO_ROWS, MEAN_ROWS = "equal", "zero rows", "mean rows"


@dataclass(frozen=True)
class Recipe:
    """One publisher's arithmetic; see docs/FORMAT.md section 3."""

    name: str
    purpose: str
    dtype: str
    new_rows: str
    # Tensors whose name contains one of these are the diff's own, cast to ``dtype``.
    from_diff: tuple[str, ...] = ()
    expected_sum: float | None = None
    sum_tolerance: float = 1e-2

    def takes_diff(self, name: str) -> bool:
        """Whether tensor ``name`` is the diff's own (no base needed)."""
        return any(part in name for part in self.from_diff)

    def combine(
        self,
        name: str,
        base: torch.Tensor | None,
        diff: torch.Tensor,
        out: torch.Tensor,
        scratch: Scratch,
    ) -> torch.Tensor:
        """The recovered tensor ``name``, computed into ``out`` (the diff's shape, the recipe's
        dtype; float32 for the rotary inv_freq buffers, which the arithmetic then runs in);
        the diff itself when it is taken as it is. ``base`` is None when not needed.

        The publishers' tools add the base to the delta (``delta + base``) in the recipe's
        dtype; the base's new vocabulary rows (zeros, or the mean of its rows in float32) are
        added to the delta's last rows the same way. ``torch.add(..., out=)`` and
        ``copy_`` are the same kernels as ``+`` and ``.to``: the bits are the same.
        """
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
        if self.new_rows == MEAN_ROWS:
            fill = raw.mean(dim=0, keepdim=True)
        else:
            fill = tm.zeros((1, *raw.shape[1:]), dtype=dtype)
        tm.add(delta[rows:], fill, out=out[rows:])
        return out


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            "vicuna",
            "FastChat delta v1.1 (vicuna-*-delta-v1.1): float16 base + delta",
            "float16",
            EQUAL,
        ),
        Recipe(
            "vicuna-v0",
            "FastChat delta v0 and StableVicuna: float16, a zero [PAD] row added to the base",
            "float16",
            ZERO_ROWS,
        ),
        Recipe(
            "ziya",
            "Ziya-LLaMA-13B: float16, embeddings and lm_head taken from the delta",
            "float16",
            EQUAL,
            from_diff=("embed_tokens", "lm_head.weight", "self_attn.rotary_emb.inv_freq"),
        ),
        Recipe(
            "alpaca",
            "Stanford alpaca-7b-wdiff: float32, a mean [PAD] row, sum checked",
            "float32",
            MEAN_ROWS,
            expected_sum=50637.1836,
        ),
        Recipe(
            "tulu",
            "Tulu v1 (tulu-7b ... tulu-65b): float32, a mean [PAD] row",
            "float32",
            MEAN_ROWS,
        ),
    )
}

# Release names (a folder's, or the last part of a hub-cache `models--org--name` folder).
_RECOGNISED = (
    (re.compile(r"vicuna-\d+b-delta-v0", re.IGNORECASE), "vicuna-v0"),
    (re.compile(r"stable-vicuna-\d+b-delta", re.IGNORECASE), "vicuna-v0"),
    (re.compile(r"vicuna-\d+b-delta-v1\.\d+", re.IGNORECASE), "vicuna"),
    (re.compile(r"ziya-llama-13b.*", re.IGNORECASE), "ziya"),
    (re.compile(r"alpaca-7b-wdiff", re.IGNORECASE), "alpaca"),
    (re.compile(r"tulu-(7|13|30|65)b", re.IGNORECASE), "tulu"),
)


def recipe_list() -> str:
    """Every recipe and what it is for, on one line."""
    return "; ".join(f"{r.name} ({r.purpose})" for r in RECIPES.values())


def _release_names(path: Path) -> list[str]:
    """The names a folder can be recognised by: its own, and for a hub-cache snapshot
    (`models--org--name/snapshots/<hash>`) the release's. A parent folder's name never counts:
    a diff kept under `ziya-llama-13b-x/mydiff/` is not Ziya's."""
    names = [path.name]
    parts = path.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        names.append(parts[-3].rsplit("--", 1)[-1])
    elif path.name.startswith("models--"):
        names.append(path.name.rsplit("--", 1)[-1])
    return names


def recognise(folder: Path) -> tuple[str, str] | None:
    """The recipe named by the release's folder or hub-cache name, and that name, if any."""
    for path in (folder, folder.resolve()):
        for name in _release_names(path):
            for pattern, recipe in _RECOGNISED:
                if pattern.fullmatch(name):
                    return recipe, name
    return None


def choose(name: str | None, diff_dir: Path) -> tuple[Recipe, str | None]:
    """The recipe to use, and the release name it was recognised from (None: given)."""
    if name is not None:
        if name not in RECIPES:
            raise InputError(f"unknown recipe {name!r}; pass one of: {recipe_list()}")
        return RECIPES[name], None
    recognised = recognise(diff_dir)
    if recognised is None:
        raise InputError(
            "the release is not recognised from its folder name; pass --recipe, one of: "
            + recipe_list(),
            diff_dir,
        )
    return RECIPES[recognised[0]], recognised[1]


_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_IN_LAYER = (
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "self_attn.rotary_emb.inv_freq",
    "mlp.gate_proj.weight",
    "mlp.down_proj.weight",
    "mlp.up_proj.weight",
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
)


def layer_of(name: str) -> int | None:
    """The decoder layer a tensor belongs to (``model.layers.N.…``), or None."""
    match = _LAYER_RE.match(name)
    return int(match.group(1)) if match is not None else None


def state_dict_key(name: str) -> tuple[int, int, int, str]:
    """A sort key putting LLaMA tensor names in the model's state-dict order.

    That order (embed_tokens; per layer q, k, v, o, inv_freq, gate, down, up, the two norms;
    norm; lm_head) is the one publishers' tools iterate in, so Alpaca's float32 running sum
    must follow it. Unknown names go last, by name.
    """
    if name == "model.embed_tokens.weight":
        return (0, 0, 0, name)
    match = _LAYER_RE.match(name)
    if match is not None:
        part = match.group(2)
        within = _IN_LAYER.index(part) if part in _IN_LAYER else len(_IN_LAYER)
        return (1, int(match.group(1)), within, part)
    if name == "model.norm.weight":
        return (2, 0, 0, name)
    if name == "lm_head.weight":
        return (3, 0, 0, name)
    return (4, 0, 0, name)
