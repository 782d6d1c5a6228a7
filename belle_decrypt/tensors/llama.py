"""LLaMA's tensor names as the sources hold them: the state-dict order publishers' tools
iterate in (the order of a float32 running sum), the decoder layer of a name, the vocabulary
tensors, and the rotary ``inv_freq`` buffer that transformers <= 4.30 saved in checkpoints."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from belle_decrypt.ground.errors import InputError
from belle_decrypt.ground.torchload import import_torch
from belle_decrypt.tensors.protocol import TensorSource

if TYPE_CHECKING:
    import torch

VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")
INV_FREQ = "rotary_emb.inv_freq"

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


def rotary_inv_freq(folder: TensorSource) -> torch.Tensor:
    """LLaMA's rotary ``inv_freq`` buffer (float32) for the folder's config, as transformers
    made it; LLaMA-7B's when the config does not say. A config whose figures cannot give it
    is refused (before anything is written)."""
    config = folder.config or {}
    hidden = config.get("hidden_size", 4096)
    heads = config.get("num_attention_heads", 32)
    theta = config.get("rope_theta")
    theta = 10000.0 if theta is None else theta
    if not _positive(hidden, True):
        raise _unusable_config(folder, "hidden_size", hidden)
    if not _positive(heads, True) or hidden % heads:
        raise _unusable_config(folder, "num_attention_heads", heads)
    if not _positive(theta, False):
        raise _unusable_config(folder, "rope_theta", theta)
    torch_module = import_torch()
    dim = hidden // heads
    result: torch.Tensor = 1.0 / (theta ** (torch_module.arange(0, dim, 2).float() / dim))
    return result


def _positive(value: object, whole: bool) -> bool:
    """Whether ``value`` is a positive (``whole``: integer) number; JSON's true is not."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value > 0
    return not whole and isinstance(value, float) and value > 0


def _unusable_config(folder: TensorSource, name: str, value: object) -> InputError:
    return folder.fail(
        f"{name} {value!r} is not usable for the rotary inv_freq buffers the sum check adds "
        "(hidden_size and num_attention_heads must be positive whole numbers, one a multiple "
        "of the other, rope_theta a positive number); download config.json again",
        folder.path / "config.json",
    )
