"""Every recipe ``recover`` knows, by name, and the release folder names that choose one.

Adding a recipe (LoRA adapters, ...): write a module in this package with a class that has the
attributes and methods of :class:`~belle_decrypt.tensors.protocol.Recipe` (``check`` and
``plan`` raise one-line InputErrors before anything is written; ``plan`` returns the output
tensors as :class:`~belle_decrypt.tensors.protocol.Item` with the input tensors each reads;
``combine`` computes one into the buffer it is given; ``sum_rule`` says how a published sum is
taken, ``base_kinds`` which extra source kinds may open BASE_DIR), put an instance in
:data:`RECIPES`, and the release names that mean it in :data:`RELEASES`. The pipeline (the
checks before writing, shards, journal and resume, free space, ``--manifest``, the sum check,
bars, Ctrl-C and exit codes) does not change; tests/test_tensor_pipeline.py adds a toy recipe
this way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from belle_decrypt.ground.errors import InputError
from belle_decrypt.recipes.additive import (
    DELTA_ROWS,
    EQUAL,
    MEAN_ROWS,
    PAD_TOKEN_ROW,
    ZERO_ROWS,
    AdditiveRecipe,
)
from belle_decrypt.recipes.lora import lora_recipe
from belle_decrypt.recipes.more import EMBEDDING_SUM, EmbeddingRecipe, PadTokenRecipe
from belle_decrypt.tensors.protocol import Recipe
from belle_decrypt.tensors.sources.adapter import AdapterKind
from belle_decrypt.tensors.sources.meta import MetaEmbedding
from belle_decrypt.tensors.sumcheck import PROMOTED_TOTAL

RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        AdditiveRecipe(
            "vicuna",
            "FastChat delta v1.1 (vicuna-*-delta-v1.1) and BayLing: float16 base + delta",
            "float16",
            EQUAL,
        ),
        AdditiveRecipe(
            "vicuna-v0",
            "FastChat delta v0, StableVicuna, Wombat, Chimera: float16, a zero [PAD] row",
            "float16",
            ZERO_ROWS,
        ),
        AdditiveRecipe(
            "ziya",
            "Ziya-LLaMA-13B: float16, embeddings and lm_head taken from the delta",
            "float16",
            EQUAL,
            from_diff=("embed_tokens", "lm_head.weight", "self_attn.rotary_emb.inv_freq"),
        ),
        AdditiveRecipe(
            "alpaca",
            "Stanford alpaca-7b-wdiff: float32, a mean [PAD] row, sum checked",
            "float32",
            MEAN_ROWS,
            expected_sum=50637.1836,
        ),
        AdditiveRecipe(
            "tulu",
            "Tulu v1 (tulu-7b ... tulu-65b): float32, a mean [PAD] row",
            "float32",
            MEAN_ROWS,
        ),
        AdditiveRecipe(
            "wizardlm",
            "WizardLM 7B/13B/30B V1.0: float32, a mean [PAD] row (no published sum)",
            "float32",
            MEAN_ROWS,
        ),
        AdditiveRecipe(
            "zhixi",
            "KnowLM zhixi-13b-diff: float32, no pad row, sum checked",
            "float32",
            EQUAL,
            expected_sum=94052.2891,
        ),
        AdditiveRecipe(
            "zhixi-fp16",
            "KnowLM zhixi-13b-diff-fp16: float16, no pad row, sum as KnowLM's is_fp16 path",
            "float16",
            EQUAL,
            expected_sum=94046.1875,
            sums=PROMOTED_TOTAL,
        ),
        PadTokenRecipe(
            "ultralm",
            "UltraLM-13b: float32, a mean <PAD> row if the diff's tokenizer names a pad token",
            "float32",
            PAD_TOKEN_ROW,
        ),
        AdditiveRecipe(
            "yulan",
            "YuLan-Chat 13B/65B deltas: float32, zero rows where the delta has more",
            "float32",
            ZERO_ROWS,
        ),
        AdditiveRecipe(
            "llava",
            "LLaVA v0 and Lightning: float16, mm_projector and new rows kept from the delta",
            "float16",
            DELTA_ROWS,
            from_diff=("model.mm_projector.weight", "model.mm_projector.bias"),
        ),
        EmbeddingRecipe(
            "billa",
            "BiLLa-7B-LLM: full weights but the embedding (float32, minus LLaMA-7B's)",
            "float16",
            EQUAL,
            sums=EMBEDDING_SUM,
            base_kinds=(MetaEmbedding(),),
        ),
        EmbeddingRecipe(
            "billa-sft",
            "BiLLa-7B-SFT: as billa, the embedding's sum checked",
            "float16",
            EQUAL,
            expected_sum=-3756.942626953125,
            sum_tolerance=1e-4,
            sums=EMBEDDING_SUM,
            base_kinds=(MetaEmbedding(),),
        ),
    )
}

# Release names (a folder's, or the last part of a hub-cache `models--org--name` folder);
# same-family full-weight releases (Tulu 2, WizardLM-13B-V1.2, UltraLM-13b-v2.0, YuLan-Chat-2,
# all LLaMA-2) do not match.
RELEASES: tuple[tuple[re.Pattern[str], str], ...] = (
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
            for pattern, recipe in RELEASES:
                if pattern.fullmatch(name):
                    return recipe, name
    return None


def choose(
    name: str | None, diff_dir: Path, *, expect_sum: bool = False, tail: Sequence[str] = ()
) -> tuple[Recipe, str | None]:
    """The recipe to use, and the release name it was recognised from (None: given);
    ``expect_sum``: a sum was given, which only a recipe with a sum can check. A PEFT adapter
    folder takes the LoRA merge (``tail``: the command's BASE_DIR and OUT_DIR, for its
    messages), never a ``--recipe``."""
    if AdapterKind().recognises(diff_dir):
        chosen: tuple[Recipe, str | None] = (
            lora_recipe(name, diff_dir, tail),
            "adapter_config.json",
        )
    elif name is not None:
        if name not in RECIPES:
            raise InputError(f"unknown recipe {name!r}; pass one of: {recipe_list()}")
        chosen = (RECIPES[name], None)
    else:
        recognised = recognise(diff_dir)
        if recognised is None:
            raise InputError(
                "the release is not recognised from its folder name; pass --recipe, one of: "
                + recipe_list(),
                diff_dir,
            )
        chosen = (RECIPES[recognised[0]], recognised[1])
    if expect_sum and chosen[0].sum_rule is None:
        summed = ", ".join(r.name for r in RECIPES.values() if r.sum_rule is not None)
        raise InputError(
            f"--expect-sum applies to the recipes with a sum ({summed}), not {chosen[0].name}"
        )
    return chosen
