"""An independent oracle for `recover`, on whole in-memory state dicts.

Written from docs/FORMAT.md section 3.

It does what the publishers' tools do in the simplest way: resize the whole base (a zero row
for vicuna-v0, mean rows for alpaca and tulu) with torch.cat, then add the whole diff in the
recipe's dtype. Nothing here streams, shards or slices.
"""

from __future__ import annotations

import torch

StateDict = dict[str, torch.Tensor]
FLOAT16 = ("vicuna", "vicuna-v0", "ziya")
ZIYA_FROM_DELTA = ("embed_tokens", "lm_head.weight", "self_attn.rotary_emb.inv_freq")


def dtype_of(recipe: str) -> torch.dtype:
    """The dtype the recipe computes in."""
    return torch.float16 if recipe in FLOAT16 else torch.float32


def resized_base(recipe: str, base: StateDict, vocab: int) -> StateDict:
    """The base in the recipe's dtype with its vocabulary rows extended to ``vocab``."""
    dtype = dtype_of(recipe)
    out = {}
    for name, tensor in base.items():
        value = tensor.to(dtype)
        if name in ("model.embed_tokens.weight", "lm_head.weight") and value.shape[0] < vocab:
            extra = vocab - value.shape[0]
            if recipe == "vicuna-v0":
                fill = torch.zeros((extra, value.shape[1]), dtype=dtype)
            else:
                fill = value.mean(dim=0, keepdim=True).repeat(extra, 1)
            value = torch.cat([value, fill])
        out[name] = value
    return out


def make_diff(recipe: str, tuned: StateDict, base: StateDict) -> StateDict:
    """The publisher's diff: ``tuned - resized base`` (ziya: embeddings as tuned has them)."""
    dtype = dtype_of(recipe)
    vocab = tuned["model.embed_tokens.weight"].shape[0]
    resized = resized_base(recipe, base, vocab)
    diff = {}
    for name, tensor in tuned.items():
        if recipe == "ziya" and any(part in name for part in ZIYA_FROM_DELTA):
            diff[name] = tensor.to(dtype)
        else:
            diff[name] = tensor.to(dtype) - resized[name]
    return diff


def recover(recipe: str, diff: StateDict, base: StateDict) -> StateDict:
    """The recovered state dict, as the publisher's tool computes it; rotary inv_freq
    buffers in float32 whatever the recipe (docs/FORMAT.md 3.3)."""
    dtype = dtype_of(recipe)
    vocab = diff["model.embed_tokens.weight"].shape[0]
    resized = resized_base(recipe, base, vocab)
    out = {}
    for name, delta in diff.items():
        if name.endswith("rotary_emb.inv_freq"):  # float32, as every publisher writes them
            if recipe == "ziya":
                out[name] = delta.float()
            elif name in base:
                out[name] = delta.float() + base[name].float()
        elif recipe == "ziya" and any(part in name for part in ZIYA_FROM_DELTA):
            out[name] = delta.to(dtype)
        elif name in resized:
            out[name] = delta.to(dtype) + resized[name]
    return out


def alpaca_sum(state: StateDict) -> float:
    """Stanford's check: ``sum(t.sum() for t in state_dict.values())``, float32, in order."""
    total = sum(tensor.sum() for tensor in state.values())
    assert isinstance(total, torch.Tensor)
    return float(total)
