"""Tiny LoRA adapters for the `recover` tests: made by PEFT itself (``get_peft_model`` with
non-zero ``lora_B``), or written by hand as Chinese-LLaMA-Alpaca's releases lay them out; and
the references they are checked against (PEFT's ``merge_and_unload``, and a merge written from
docs/FORMAT.md section 10).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tests import tinyllama as tiny

PREFIX = "base_model.model."
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj", "up_proj")
# A Chinese-LLaMA-Alpaca adapter_config.json as their v1 releases (PEFT 0.3) wrote it.
CHINESE_CONFIG: dict[str, Any] = {
    "base_model_name_or_path": "decapoda-research/llama-7b-hf",
    "bias": "none",
    "enable_lora": None,
    "fan_in_fan_out": False,
    "inference_mode": True,
    "lora_alpha": 32.0,
    "lora_dropout": 0.05,
    "merge_weights": False,
    "modules_to_save": ["embed_tokens", "lm_head"],
    "peft_type": "LORA",
    "r": 8,
    "target_modules": ["q_proj", "v_proj", "k_proj", "o_proj", "gate_proj", "down_proj", "up_proj"],
    "task_type": "CAUSAL_LM",
}


def base_model(folder: Path, dtype: torch.dtype = torch.float16) -> Any:
    """The tiny base in ``folder`` loaded by transformers, in ``dtype``."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)


def peft_adapter(
    base_dir: Path,
    out: Path,
    seed: int,
    *,
    safetensors: bool = True,
    dtype: torch.dtype = torch.float16,
    rows: int | None = None,
    **lora: Any,
) -> Path:
    """An adapter made by PEFT on the base in ``base_dir`` (its vocabulary resized to ``rows``
    when given) with ``LoraConfig(**lora)``, every lora_B non-zero (``init_lora_weights=False``),
    saved in the file form asked for."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    base = base_model(base_dir, dtype)
    if rows is not None:
        base.resize_token_embeddings(rows)
    model = get_peft_model(base, LoraConfig(init_lora_weights=False, **lora))
    model.save_pretrained(str(out), safe_serialization=safetensors)
    return out


def peft_merged(
    base_dir: Path,
    adapters: list[Path],
    dtype: torch.dtype = torch.float16,
    rows: int | None = None,
) -> tiny.StateDict:
    """The base (its vocabulary resized to ``rows`` when given, as PEFT's docs say to do before
    loading such an adapter) with each adapter loaded by PEFT and merged
    (``merge_and_unload()``) in order."""
    from peft import PeftModel

    model = base_model(base_dir, dtype)
    if rows is not None:
        model.resize_token_embeddings(rows)
    for adapter in adapters:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def chinese_adapter(
    out: Path,
    seed: int,
    rows: int,
    *,
    layers: int = tiny.LAYERS,
    hidden: int = tiny.HIDDEN,
    tokenizer: bytes | None = None,
    config: dict[str, Any] | None = None,
    base: tiny.StateDict | None = None,
) -> tiny.StateDict:
    """A Chinese-LLaMA-Alpaca-style adapter (float16 LoRA on every linear layer, embed_tokens and
    lm_head whole at ``rows`` rows) written as ``adapter_model.bin``; returns its tensors.
    ``base``: the model it is for, whose shapes it takes (else the tiny model's)."""
    gen = torch.Generator().manual_seed(seed)
    doc = config if config is not None else CHINESE_CONFIG
    rank = doc["r"]
    state: tiny.StateDict = {}
    for n in range(layers):
        for module in LINEAR:
            part = "mlp" if module in ("gate_proj", "down_proj", "up_proj") else "self_attn"
            name = f"{PREFIX}model.layers.{n}.{part}.{module}"
            rows_out, cols = _linear_shape(f"model.layers.{n}.{part}.{module}.weight", base)
            if base is None and hidden != tiny.HIDDEN:
                rows_out, cols = (hidden * rows_out) // tiny.HIDDEN, (hidden * cols) // tiny.HIDDEN
            state[f"{name}.lora_A.weight"] = (torch.randn((rank, cols), generator=gen) * 0.1).half()
            state[f"{name}.lora_B.weight"] = (
                torch.randn((rows_out, rank), generator=gen) * 0.1
            ).half()
    if base is not None:
        hidden = base["model.embed_tokens.weight"].shape[1]
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        state[PREFIX + name] = (torch.randn((rows, hidden), generator=gen) * 0.05).half()
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text(json.dumps(doc, indent=2))
    torch.save(state, out / "adapter_model.bin")
    if tokenizer is not None:
        (out / "tokenizer.model").write_bytes(tokenizer)
        (out / "special_tokens_map.json").write_text('{"bos_token": "<s>"}')
    return state


def _linear_shape(name: str, base: tiny.StateDict | None) -> tuple[int, int]:
    """A Linear weight's (out, in) in ``base``, else in the tiny model."""
    rows, cols = tiny.shape_of(name, 0) if base is None else base[name].shape
    return rows, cols


def save_adapter(
    out: Path, state: tiny.StateDict, config: dict[str, Any], bin_file: bool = True
) -> Path:
    """Write an adapter folder from tensors and a config (for the refusals)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    if bin_file:
        torch.save(state, out / "adapter_model.bin")
    else:
        save_file(state, str(out / "adapter_model.safetensors"))
    return out


def chinese_reference(
    base: tiny.StateDict, adapters: list[tuple[tiny.StateDict, dict[str, Any]]]
) -> tiny.StateDict:
    """The merge written from docs/FORMAT.md section 10: for each adapter in order, the whole
    tensors it carries replace the base's; each LoRA product, float32, is added in place into
    the float16 weight (``w += (B.float() @ A.float()) * alpha / r``, torch rounding once)."""
    merged = {name: tensor.clone() for name, tensor in base.items()}
    for state, config in adapters:
        scale = config["lora_alpha"] / config["r"]
        for name, tensor in state.items():
            target = name.removeprefix(PREFIX)
            if target.endswith(".lora_A.weight"):
                weight = target.removesuffix(".lora_A.weight") + ".weight"
                b = state[name.replace(".lora_A.", ".lora_B.")]
                merged[weight] += (b.float() @ tensor.float()) * scale
            elif not target.endswith(".lora_B.weight"):
                merged[target] = tensor.to(base[target].dtype).clone()
    return merged


# An alpaca-lora adapter_config.json as PEFT 0.2 wrote it (tloen/alpaca-lora-7b).
ALPACA_LORA_CONFIG: dict[str, Any] = {
    "base_model_name_or_path": "decapoda-research/llama-7b-hf",
    "bias": "none",
    "enable_lora": None,
    "fan_in_fan_out": False,
    "inference_mode": True,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "merge_weights": False,
    "modules_to_save": None,
    "peft_type": "LORA",
    "r": 16,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "task_type": "CAUSAL_LM",
}
# Guanaco (QLoRA): every linear layer, alpha 16, saved by a later PEFT as safetensors.
GUANACO_CONFIG: dict[str, Any] = {
    **ALPACA_LORA_CONFIG,
    "lora_alpha": 16,
    "r": 32,
    "target_modules": list(LINEAR),
    "lora_dropout": 0.1,
}
# The merged folders the READMEs' LoRA commands write.
README_MERGED = (
    "alpaca-lora-7b-merged",
    "guanaco-7b-merged",
    "chinese-alpaca-7b",
    "chinese-alpaca-plus-7b",
)


def readme_adapters(folder: Path, base: tiny.StateDict) -> None:
    """Tiny stand-ins, in ``folder``, for the adapters the READMEs' LoRA commands use, made for
    ``base`` (the model of llama-7b-hf and of Meta's llama/7B/)."""
    for name, config, seed, safetensors in (
        ("alpaca-lora-7b", ALPACA_LORA_CONFIG, 11, False),
        ("guanaco-7b", GUANACO_CONFIG, 12, True),
    ):
        gen = torch.Generator().manual_seed(seed)
        state: tiny.StateDict = {}
        for n in range(tiny.LAYERS):
            for module in config["target_modules"]:
                part = "mlp" if module in ("gate_proj", "down_proj", "up_proj") else "self_attn"
                key = f"model.layers.{n}.{part}.{module}"
                rows, cols = _linear_shape(key + ".weight", base)
                a = torch.randn((config["r"], cols), generator=gen) * 0.1
                state[f"{PREFIX}{key}.lora_A.weight"] = a
                state[f"{PREFIX}{key}.lora_B.weight"] = (
                    torch.randn((rows, config["r"]), generator=gen) * 0.1
                )
        save_adapter(folder / name, state, config, bin_file=not safetensors)
    for name, seed, rows, tokenizer in (
        ("chinese-alpaca-lora-7b", 13, 49954, b"Chinese-Alpaca"),
        ("chinese-llama-plus-lora-7b", 14, 49953, b"LLaMA-Plus"),
        ("chinese-alpaca-plus-lora-7b", 15, 49954, b"Alpaca-Plus"),
    ):
        chinese_adapter(folder / name, seed, rows, tokenizer=tokenizer, base=base)
