"""An independent oracle for the later additive releases, on whole in-memory state dicts.

Written from docs/FORMAT.md section 3 (3.8: the project notes on each release), the way each
publisher's script works: load both whole models in the recipe's dtype, resize the base with
torch.cat where the recipe says so, add per tensor. Nothing streams, shards or slices.
"""

from __future__ import annotations

import torch

StateDict = dict[str, torch.Tensor]
EMBED, LM_HEAD = "model.embed_tokens.weight", "lm_head.weight"
PROJECTOR = ("model.mm_projector.weight", "model.mm_projector.bias")
FLOAT16 = ("zhixi-fp16", "llava")


def dtype_of(recipe: str) -> torch.dtype:
    """The dtype the publisher's script loads both models in."""
    return torch.float16 if recipe in FLOAT16 else torch.float32


def resized_base(recipe: str, base: StateDict, vocab: int, pad: bool = False) -> StateDict:
    """The base as the script holds it before adding: in the recipe's dtype, and for
    WizardLM (Stanford's recipe) and UltraLM with a pad token one mean row per new token,
    for YuLan zero rows up to the delta's vocabulary."""
    dtype = dtype_of(recipe)
    out = {}
    for name, tensor in base.items():
        value = tensor.to(dtype)
        extra = vocab - value.shape[0]
        if name in (EMBED, LM_HEAD) and extra > 0:
            if recipe == "wizardlm" or (recipe == "ultralm" and pad):
                value = torch.cat([value, value.mean(dim=0, keepdim=True).repeat(extra, 1)])
            elif recipe == "yulan":
                value = torch.cat([value, torch.zeros((extra, value.shape[1]), dtype=dtype)])
        out[name] = value
    return out


def make_diff(recipe: str, tuned: StateDict, base: StateDict, pad: bool = False) -> StateDict:
    """The publisher's delta: ``tuned - resized base``; LLaVA's rows and tensors the base
    does not have are the tuned model's."""
    dtype = dtype_of(recipe)
    resized = resized_base(recipe, base, tuned[EMBED].shape[0], pad)
    diff = {}
    for name, tensor in tuned.items():
        value = tensor.to(dtype)
        if name not in resized:
            diff[name] = value
        elif value.shape != resized[name].shape:
            rows = resized[name].shape[0]
            diff[name] = torch.cat([value[:rows] - resized[name], value[rows:]])
        else:
            diff[name] = value - resized[name]
    return diff


def recover(recipe: str, diff: StateDict, base: StateDict, pad: bool = False) -> StateDict:
    """What the publisher's script saves (inv_freq buffers only where both models hold them)."""
    dtype = dtype_of(recipe)
    resized = resized_base(recipe, base, diff[EMBED].shape[0], pad)
    out = {}
    for name, delta in diff.items():
        if "inv_freq" in name and name in base:
            # Every publisher's script keeps the rotary buffers float32 (docs/FORMAT.md 3.2).
            out[name] = delta.float() + base[name].float()
            continue
        param = delta.to(dtype).clone()
        if name not in resized:
            if "inv_freq" in name:
                continue
            assert recipe == "llava" and name in PROJECTOR, name
        elif param.shape == resized[name].shape:
            param += resized[name]
        else:
            assert recipe == "llava" and name in (EMBED, LM_HEAD), name
            raw = resized[name]
            param[: raw.shape[0], : raw.shape[1]] += raw
        out[name] = param
    return out


def naive_sum(state: StateDict) -> float:
    """KnowLM's (and Stanford's) check: ``sum(t.sum() for t in state_dict.values())`` with
    Python's sum from 0, each ``t.sum()`` in the tensor's dtype, torch promoting the total."""
    total = sum(tensor.sum() for tensor in state.values())
    assert isinstance(total, torch.Tensor)
    return float(total)


def billa_publish(tuned: StateDict, meta_embedding: torch.Tensor) -> StateDict:
    """BiLLa's release: the tuned model with its embedding in float32 plus Meta's over the
    first rows (``embedding_convert.py --method encrypt``)."""
    published = dict(tuned)
    embedding = tuned[EMBED].float()
    embedding[: meta_embedding.shape[0]] += meta_embedding.float()
    published[EMBED] = embedding
    return published


def billa_recover(published: StateDict, meta_embedding: torch.Tensor) -> tuple[StateDict, float]:
    """``embedding_convert.py --method decrypt``: the embedding minus Meta's in float32, its
    sum taken there, then float16; every other tensor as published."""
    recovered = dict(published)
    embedding = published[EMBED].float()
    embedding[: meta_embedding.shape[0]] -= meta_embedding.float()
    figure = embedding.sum().item()
    recovered[EMBED] = embedding.half()
    return recovered, figure
