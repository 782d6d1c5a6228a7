"""Every recipe ``recover`` knows, by name, and the release folder names that choose one.

Adding a recipe (LoRA adapters, ...): write a module in this package with a class that has the
attributes and methods of :class:`~belle_decrypt.tensors.protocol.Recipe` (``check`` and
``plan`` raise one-line InputErrors before anything is written; ``plan`` returns the output
tensors as :class:`~belle_decrypt.tensors.protocol.Item` with the input tensors each reads;
``combine`` computes one into the buffer it is given), put an instance in :data:`RECIPES`, and
the release names that mean it in :data:`RELEASES`. The pipeline (the checks before writing,
shards, journal and resume, free space, ``--manifest``, the sum check, bars, Ctrl-C and exit
codes) does not change; tests/test_tensor_pipeline.py adds a toy recipe this way.
"""

from __future__ import annotations

import re
from pathlib import Path

from belle_decrypt.ground.errors import InputError
from belle_decrypt.recipes.additive import EQUAL, MEAN_ROWS, ZERO_ROWS, AdditiveRecipe
from belle_decrypt.tensors.protocol import Recipe

RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        AdditiveRecipe(
            "vicuna",
            "FastChat delta v1.1 (vicuna-*-delta-v1.1): float16 base + delta",
            "float16",
            EQUAL,
        ),
        AdditiveRecipe(
            "vicuna-v0",
            "FastChat delta v0 and StableVicuna: float16, a zero [PAD] row added to the base",
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
    )
}

# Release names (a folder's, or the last part of a hub-cache `models--org--name` folder).
RELEASES: tuple[tuple[re.Pattern[str], str], ...] = (
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
            for pattern, recipe in RELEASES:
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
