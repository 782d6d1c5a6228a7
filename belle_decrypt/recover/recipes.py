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
# with rows equal to the mean of the existing ones; or the diff's extra rows kept as they are
# (LLaVA), or one mean row only when the diff's tokenizer names a pad token (UltraLM; resolved
# to MEAN_ROWS or EQUAL per run by recipes_more.resolve).
EQUAL, ZERO_ROWS, MEAN_ROWS = "equal", "zero rows", "mean rows"
DELTA_ROWS, PAD_TOKEN_ROW = "delta rows", "pad-token row"
# How a published integrity sum is taken (docs/FORMAT.md section 3, 3.4 and 3.8): each tensor's
# torch sum totalled in float32; totalled with torch's type promotion from the first term's
# dtype (KnowLM's float16 path); or only the embedding's float32 sum (BiLLa).
FLOAT32_TOTAL, PROMOTED_TOTAL, EMBEDDING_SUM = "float32 total", "promoted total", "embedding sum"


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
    # FLOAT32_TOTAL for float32 recipes unless set; None: no sum can be checked.
    sums: str | None = None
    # BiLLa: only the embedding is recovered (recipes_more); no other tensor needs the base.
    embedding_only: bool = False

    @property
    def sum_kind(self) -> str | None:
        """How this recipe's integrity sum is taken, or None when it has none."""
        if self.sums is not None:
            return self.sums
        return FLOAT32_TOTAL if self.dtype == "float32" else None

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
        dtype); the diff itself when it is taken as it is. ``base`` is None when not needed.

        The publishers' tools add the base to the delta (``delta + base``) in the recipe's
        dtype; the base's new vocabulary rows (zeros, or the mean of its rows in float32) are
        added to the delta's last rows the same way, or (LLaVA) those rows stay the delta's.
        ``torch.add(..., out=)`` and ``copy_`` are the same kernels as ``+`` and ``.to``: the
        bits are the same.
        """
        tm = import_torch()
        dtype = getattr(tm, self.dtype)
        if base is None or self.takes_diff(name):
            if diff.dtype == dtype:
                return diff
            out.copy_(diff)
            return out
        delta = diff if diff.dtype == dtype else scratch.converted("delta", diff, self.dtype)
        raw = base if base.dtype == dtype else scratch.converted("base", base, self.dtype)
        if raw.shape == delta.shape:
            tm.add(delta, raw, out=out)
            return out
        rows = raw.shape[0]
        tm.add(delta[:rows], raw, out=out[:rows])
        if self.new_rows == DELTA_ROWS:
            out[rows:].copy_(delta[rows:])
            return out
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
            "FastChat delta v1.1 (vicuna-*-delta-v1.1) and BayLing: float16 base + delta",
            "float16",
            EQUAL,
        ),
        Recipe(
            "vicuna-v0",
            "FastChat delta v0, StableVicuna, Wombat, Chimera: float16, a zero [PAD] row",
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
        Recipe(
            "wizardlm",
            "WizardLM 7B/13B/30B V1.0: float32, a mean [PAD] row (no published sum)",
            "float32",
            MEAN_ROWS,
        ),
        Recipe(
            "zhixi",
            "KnowLM zhixi-13b-diff: float32, no pad row, sum checked",
            "float32",
            EQUAL,
            expected_sum=94052.2891,
        ),
        Recipe(
            "zhixi-fp16",
            "KnowLM zhixi-13b-diff-fp16: float16, no pad row, sum as KnowLM's is_fp16 path",
            "float16",
            EQUAL,
            expected_sum=94046.1875,
            sums=PROMOTED_TOTAL,
        ),
        Recipe(
            "ultralm",
            "UltraLM-13b: float32, a mean <PAD> row if the diff's tokenizer names a pad token",
            "float32",
            PAD_TOKEN_ROW,
        ),
        Recipe(
            "yulan",
            "YuLan-Chat 13B/65B deltas: float32, zero rows where the delta has more",
            "float32",
            ZERO_ROWS,
        ),
        Recipe(
            "llava",
            "LLaVA v0 and Lightning: float16, mm_projector and new rows kept from the delta",
            "float16",
            DELTA_ROWS,
            from_diff=("model.mm_projector.weight", "model.mm_projector.bias"),
        ),
        Recipe(
            "billa",
            "BiLLa-7B-LLM: full weights but the embedding (float32, minus LLaMA-7B's)",
            "float16",
            EQUAL,
            sums=EMBEDDING_SUM,
            embedding_only=True,
        ),
        Recipe(
            "billa-sft",
            "BiLLa-7B-SFT: as billa, the embedding's sum checked",
            "float16",
            EQUAL,
            expected_sum=-3756.942626953125,
            sum_tolerance=1e-4,
            sums=EMBEDDING_SUM,
            embedding_only=True,
        ),
    )
}

# Release names (a folder's, or the last part of a hub-cache `models--org--name` folder);
# same-family full-weight releases (Tulu 2, WizardLM-13B-V1.2, UltraLM-13b-v2.0, YuLan-Chat-2,
# all LLaMA-2) do not match.
_RECOGNISED = (
    (re.compile(r"vicuna-\d+b-delta-v0", re.IGNORECASE), "vicuna-v0"),
    (re.compile(r"stable-vicuna-\d+b-delta", re.IGNORECASE), "vicuna-v0"),
    (re.compile(r"vicuna-\d+b-delta-v1\.\d+", re.IGNORECASE), "vicuna"),
    (re.compile(r"ziya-llama-13b.*", re.IGNORECASE), "ziya"),
    (re.compile(r"alpaca-7b-wdiff", re.IGNORECASE), "alpaca"),
    (re.compile(r"tulu-(7|13|30|65)b", re.IGNORECASE), "tulu"),
    (re.compile(r"wizardlm(-(7|13|30)b-v1\.0)?", re.IGNORECASE), "wizardlm"),
    (re.compile(r"zhixi-13b-diff", re.IGNORECASE), "zhixi"),
    (re.compile(r"zhixi-13b-diff-fp16", re.IGNORECASE), "zhixi-fp16"),
    (re.compile(r"ultralm-13b", re.IGNORECASE), "ultralm"),
    (re.compile(r"yulan-chat-(13b|65b|65b-v2)-delta", re.IGNORECASE), "yulan"),
    (re.compile(r"llava-(7b|13b)-delta-v0", re.IGNORECASE), "llava"),
    (re.compile(r"llava-lightning-7b-delta-v1-1", re.IGNORECASE), "llava"),
    (re.compile(r"wombat-7b(-gpt4)?-delta", re.IGNORECASE), "vicuna-v0"),
    (re.compile(r"chimera-(inst-)?chat-(7|13)b-delta", re.IGNORECASE), "vicuna-v0"),
    (re.compile(r"bayling-(7|13)b-diff", re.IGNORECASE), "vicuna"),
    (re.compile(r"billa-7b-llm", re.IGNORECASE), "billa"),
    (re.compile(r"billa-7b-sft", re.IGNORECASE), "billa-sft"),
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
