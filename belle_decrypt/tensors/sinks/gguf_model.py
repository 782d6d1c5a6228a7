"""What a llama GGUF file holds of a LLaMA model, decided from metadata alone
(docs/FORMAT.md section 9): llama.cpp's tensor names, each tensor's type, the model's figures
from config.json and the shapes, and how a tensor becomes the bytes the file stores (q and k
un-permuted, float16, or Q8_0 in row chunks so that Ctrl-C is seen between them)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from belle_decrypt.ground.errors import InputError
from belle_decrypt.tensors.llama import INV_FREQ

if TYPE_CHECKING:
    import numpy as np
    import torch

F32, F16, Q8_0 = "f32", "f16", "q8_0"
GGUF_TYPES = (F16, Q8_0)
FILE_TYPES = {F16: 1, Q8_0: 7}
"""``general.file_type`` (llama_ftype): mostly F16, mostly Q8_0."""
ALIGNMENT = 32
Q8_BLOCK, Q8_BLOCK_BYTES = 32, 34
QUANT_CHUNK = 4 * 1024 * 1024
"""Float32 values quantized per call: a Ctrl-C waits for at most one such chunk."""

MODEL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
"""Hugging Face LLaMA names and llama.cpp's (gguf-py's names for LLM_ARCH_LLAMA)."""
LAYER_NAMES = {
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_MULTIMODAL = ("mm_projector", "vision_tower", "vision_model", "multi_modal")
"""Tensors of LLaVA-style models (a vision projector): no place for them in a llama GGUF."""


@dataclass(frozen=True)
class Figures:
    """The model's hyperparameters as llama.cpp's ``llama.*`` keys hold them."""

    context_length: int
    embedding_length: int
    block_count: int
    feed_forward_length: int
    head_count: int
    head_count_kv: int
    rms_epsilon: float
    rope_theta: float | None
    vocab_size: int

    @property
    def rope_dimension_count(self) -> int:
        """Rotary dimensions: the whole head."""
        return self.embedding_length // self.head_count


def gguf_name(source: str) -> str | None:
    """llama.cpp's name for a Hugging Face LLaMA tensor (None: it has none)."""
    if source in MODEL_NAMES:
        return MODEL_NAMES[source]
    match = _LAYER_RE.match(source)
    if match is None or match.group(2) not in LAYER_NAMES:
        return None
    return f"blk.{match.group(1)}.{LAYER_NAMES[match.group(2)]}"


def file_name(out_dir: Path, gguf_type: str) -> str:
    """``NAME-<type>.gguf``, NAME being the output folder's name, as llama.cpp names files."""
    return f"{out_dir.resolve().name}-{gguf_type}.gguf"


def mapped(tensors: dict[str, tuple[int, ...]], folder: Path) -> dict[str, tuple[int, ...]]:
    """Shapes by GGUF name (the rotary buffers left out: llama.cpp computes them); anything a
    llama GGUF cannot hold is refused with one line naming ``folder``."""
    shapes = {}
    for source, shape in tensors.items():
        if INV_FREQ in source:
            continue
        name = gguf_name(source)
        if name is None:
            if any(part in source for part in _MULTIMODAL):
                raise InputError(
                    f"holds {source}, a multimodal (LLaVA) projector: a llama GGUF has no place "
                    "for it; run it with LLaVA's own tools, or convert it with llama.cpp's "
                    "LLaVA scripts",
                    folder,
                )
            raise InputError(
                f"holds {source}, which a llama GGUF has no place for: only LLaMA's own "
                "tensors can be written as GGUF",
                folder,
            )
        shapes[name] = shape
    if "token_embd.weight" not in shapes:
        raise InputError("has no model.embed_tokens.weight: not a LLaMA model", folder)
    return shapes


def figures(shapes: dict[str, tuple[int, ...]], config: dict[str, Any], path: Path) -> Figures:
    """The hyperparameters: sizes from the shapes, heads and the rest from config.json."""
    rows, hidden = shapes["token_embd.weight"]
    layers = {int(name.split(".")[1]) for name in shapes if name.startswith("blk.")}
    if layers != set(range(len(layers))):
        raise InputError(f"layers {sorted(layers)} are not numbered 0..N-1 without a gap", path)
    heads = _whole(config, "num_attention_heads", None, path)
    kv_heads = _whole(config, "num_key_value_heads", heads, path)
    head_dim = hidden // heads
    if hidden % heads or head_dim % 2 or heads % kv_heads:
        raise InputError(
            f"num_attention_heads {heads} (num_key_value_heads {kv_heads}) does not divide "
            f"the width {hidden} into heads of an even size; download config.json again",
            path,
        )
    for name, expected in (("blk.0.attn_q.weight", heads), ("blk.0.attn_k.weight", kv_heads)):
        if name in shapes and shapes[name][0] != expected * head_dim:
            raise InputError(
                f"says {expected} heads of {head_dim}, but {name} has {shapes[name][0]} rows: "
                "the config belongs to another model; download config.json again",
                path,
            )
    eps = config.get("rms_norm_eps", 1e-6)
    theta = config.get("rope_theta")
    if not isinstance(eps, float) or not (theta is None or isinstance(theta, int | float)):
        raise InputError("rms_norm_eps or rope_theta is not a number; download it again", path)
    return Figures(
        context_length=_whole(config, "max_position_embeddings", 2048, path),
        embedding_length=hidden,
        block_count=len(layers),
        feed_forward_length=shapes.get("blk.0.ffn_gate.weight", (0,))[0],
        head_count=heads,
        head_count_kv=kv_heads,
        rms_epsilon=eps,
        rope_theta=None if theta is None else float(theta),
        vocab_size=rows,
    )


def _whole(config: dict[str, Any], key: str, default: int | None, path: Path) -> int:
    """A positive whole number from ``config`` (``default`` when absent; None: required)."""
    value = config.get(key, default)
    if value is None and default is not None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InputError(
            f"{key} is {value!r}, not a positive whole number; a GGUF file needs it: "
            "download config.json again",
            path,
        )
    return value


def kind(shape: tuple[int, ...], gguf_type: str) -> str:
    """Norms (1-D) float32; matrices float16, or Q8_0 where a row divides into its blocks."""
    if len(shape) < 2:
        return F32
    if gguf_type == Q8_0 and shape[-1] % Q8_BLOCK == 0:
        return Q8_0
    return F16


def stored_size(shape: tuple[int, ...], tensor_kind: str) -> int:
    """Bytes of a tensor's data in the file."""
    count = 1
    for dim in shape:
        count *= dim
    if tensor_kind == Q8_0:
        return count // Q8_BLOCK * Q8_BLOCK_BYTES
    return count * (4 if tensor_kind == F32 else 2)


def stored_shape(shape: tuple[int, ...], tensor_kind: str) -> tuple[int, ...]:
    """The shape handed to gguf's writer (bytes per row for a quantized tensor)."""
    if tensor_kind == Q8_0:
        return (*shape[:-1], shape[-1] // Q8_BLOCK * Q8_BLOCK_BYTES)
    return shape


def numpy_dtype(tensor_kind: str) -> Any:
    """The numpy dtype gguf's writer is given for a kind."""
    import numpy

    return {F32: numpy.float32, F16: numpy.float16, Q8_0: numpy.uint8}[tensor_kind]


def unpermute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of the Meta -> Hugging Face q/k permutation (docs/FORMAT.md section 9):
    back to the interleaved rotary layout llama.cpp's LLaMA uses."""
    rows, cols = weight.shape
    result: torch.Tensor = (
        weight.reshape(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)
    )
    return result


def encoded(
    values: torch.Tensor, tensor_kind: str, heads: int | None, check: Callable[[], None]
) -> np.ndarray[Any, Any]:
    """``values`` as the file stores them (q/k un-permuted by ``heads`` first): float32
    norms, float16 or Q8_0 matrices; ``check`` is called between quantized row chunks."""
    if heads is not None:
        values = unpermute(values, heads)
    if tensor_kind == F32:
        return values.float().contiguous().numpy()
    if tensor_kind == F16:
        return values.half().contiguous().numpy()
    return quantized(values, check)


def _row_chunks(rows: int, cols: int) -> Iterator[tuple[int, int]]:
    step = max(1, QUANT_CHUNK // max(cols, 1))
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


def quantized(values: torch.Tensor, check: Callable[[], None]) -> np.ndarray[Any, Any]:
    """Q8_0 of a matrix, a few rows at a time (blocks never cross a row, so it is the same as
    one call), calling ``check`` (Ctrl-C) between chunks."""
    import numpy
    from gguf import GGMLQuantizationType, quants

    rows, cols = values.shape
    out = numpy.empty((rows, cols // Q8_BLOCK * Q8_BLOCK_BYTES), dtype=numpy.uint8)
    for start, end in _row_chunks(rows, cols):
        chunk = values[start:end].float().contiguous().numpy()
        out[start:end] = quants.quantize(chunk, GGMLQuantizationType.Q8_0)
        check()
    return out
