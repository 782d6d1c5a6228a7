"""Tiny LLaMA-shaped models and Hugging Face folders for the `recover` tests.

Models are state dicts in LLaMA's state-dict order, made with torch directly (hidden 64,
2 layers); folders are written as transformers lays them out (config.json, tokenizer files,
weights as safetensors or torch zip pickles, sharded or not, with or without an index), and
optionally as a hub-cache snapshot whose files are symbolic links to blobs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

HIDDEN, INTERMEDIATE, LAYERS, HEADS = 64, 128, 2, 4
StateDict = dict[str, torch.Tensor]
LAYOUTS = (
    "safetensors",
    "safetensors-sharded",
    "safetensors-sharded-noindex",
    "bin",
    "bin-sharded",
    "bin-sharded-noindex",
)


def tensor_names(layers: int = LAYERS, inv_freq: bool = False) -> list[str]:
    """LLaMA's tensor names in state-dict order."""
    names = ["model.embed_tokens.weight"]
    for n in range(layers):
        layer = f"model.layers.{n}."
        names += [layer + f"self_attn.{p}_proj.weight" for p in "qkvo"]
        if inv_freq:
            names.append(layer + "self_attn.rotary_emb.inv_freq")
        names += [layer + f"mlp.{p}_proj.weight" for p in ("gate", "down", "up")]
        names += [layer + "input_layernorm.weight", layer + "post_attention_layernorm.weight"]
    return [*names, "model.norm.weight", "lm_head.weight"]


def shape_of(name: str, vocab: int) -> tuple[int, ...]:
    """A tensor's shape in the tiny model."""
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        return (vocab, HIDDEN)
    if name.endswith("norm.weight"):
        return (HIDDEN,)
    if name.endswith("inv_freq"):
        return (HIDDEN // HEADS // 2,)
    if "gate_proj" in name or "up_proj" in name:
        return (INTERMEDIATE, HIDDEN)
    if "down_proj" in name:
        return (HIDDEN, INTERMEDIATE)
    return (HIDDEN, HIDDEN)


def inv_freq() -> torch.Tensor:
    """The rotary buffer transformers <= 4.30 saved (float32)."""
    dim = HIDDEN // HEADS
    return 1.0 / (10000.0 ** (torch.arange(0, dim, 2).float() / dim))


def model(
    seed: int, vocab: int = 100, dtype: torch.dtype = torch.float16, inv: bool = False
) -> StateDict:
    """Full LLaMA-shaped weights: norms near 1, other weights small and random."""
    gen = torch.Generator().manual_seed(seed)
    state: StateDict = {}
    for name in tensor_names(inv_freq=inv):
        shape = shape_of(name, vocab)
        if name.endswith("inv_freq"):
            state[name] = inv_freq()
            continue
        values = torch.randn(shape, generator=gen) * 0.05
        if name.endswith("norm.weight"):
            values = values + 1.0
        state[name] = values.to(dtype)
    return state


def tuned(base: StateDict, seed: int, vocab: int | None = None) -> StateDict:
    """The base moved a little (a fine-tune), with ``vocab`` rows in embed_tokens and lm_head."""
    gen = torch.Generator().manual_seed(seed)
    out: StateDict = {}
    for name, tensor in base.items():
        if name.endswith("inv_freq"):
            out[name] = tensor.clone()
            continue
        moved = tensor.float() + torch.randn(tensor.shape, generator=gen) * 0.01
        if vocab is not None and name in ("model.embed_tokens.weight", "lm_head.weight"):
            extra = torch.randn((vocab - tensor.shape[0], tensor.shape[1]), generator=gen) * 0.05
            moved = torch.cat([moved, extra])
        out[name] = moved.to(tensor.dtype)
    return out


def config(vocab: int, positions: int = 2048, dtype: str = "float16") -> dict[str, object]:
    """A tiny LlamaConfig as config.json holds it."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "vocab_size": vocab,
        "max_position_embeddings": positions,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def write_folder(
    folder: Path,
    state: StateDict,
    layout: str = "safetensors",
    cfg: dict[str, object] | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Write ``state`` as a Hugging Face model folder in ``layout`` (one of LAYOUTS)."""
    folder.mkdir(parents=True, exist_ok=True)
    if cfg is not None:
        (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    for name, data in (extra_files or {}).items():
        (folder / name).write_bytes(data)
    names = list(state)
    sharded = "sharded" in layout
    groups = [names[: len(names) // 2], names[len(names) // 2 :]] if sharded else [names]
    safetensors = layout.startswith("safetensors")
    stem, ext = ("model", "safetensors") if safetensors else ("pytorch_model", "bin")
    weight_map = {}
    for n, group in enumerate(groups, start=1):
        file = f"{stem}-{n:05d}-of-{len(groups):05d}.{ext}" if sharded else f"{stem}.{ext}"
        part = {name: state[name].contiguous() for name in group}
        if safetensors:
            save_file(part, str(folder / file), metadata={"format": "pt"})
        else:
            torch.save(part, folder / file)
        weight_map.update(dict.fromkeys(group, file))
    if sharded and "noindex" not in layout:
        index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
        (folder / f"{stem}.{ext}.index.json").write_text(json.dumps(index))
    return folder


def as_hub_cache(folder: Path, cache: Path, repo: str) -> Path:
    """Move ``folder``'s files into a hub cache (``models--org--name``) and return the snapshot.

    The snapshot holds symbolic links to blobs named by a digest, as huggingface_hub makes it.
    """
    org, name = repo.split("/")
    root = cache / f"models--{org}--{name}"
    blobs = root / "blobs"
    snapshot = root / "snapshots" / ("0123456789abcdef" * 2 + "01234567")
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for n, path in enumerate(sorted(folder.iterdir())):
        blob = blobs / f"{n:064x}"
        os.replace(path, blob)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / path.name)
    return snapshot


def load_folder(folder: Path) -> StateDict:
    """Every tensor of a recovered folder (safetensors or .bin), read with the packages."""
    from safetensors.torch import load_file

    state: StateDict = {}
    for path in sorted(folder.iterdir()):
        if path.name.endswith(".safetensors"):
            state.update(load_file(str(path)))
        elif path.name.endswith(".bin"):
            state.update(torch.load(path, weights_only=True))
    return state


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and raw bits (so -0.0 differs from 0.0 and NaNs compare)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    width = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.contiguous().view(width), b.contiguous().view(width))


# The releases the READMEs' `recover` commands name: (folder, recipe, vocabulary of the diff).
README_RELEASES = (
    ("vicuna-7b-delta-v1.1", "vicuna", 100),
    ("vicuna-13b-delta-v0", "vicuna-v0", 101),
    ("stable-vicuna-13b-delta", "vicuna-v0", 101),
    ("Ziya-LLaMA-13B-v1", "ziya", 120),
    ("alpaca-7b-wdiff", "alpaca", 101),
    ("tulu-7b", "tulu", 101),
    ("WizardLM-7B-V1.0", "wizardlm", 101),
    ("zhixi-13b-diff", "zhixi", 100),
    ("zhixi-13b-diff-fp16", "zhixi-fp16", 100),
    ("UltraLM-13b", "ultralm", 101),
    ("YuLan-Chat-13b-delta", "yulan", 110),
    ("LLaVA-7b-delta-v0", "llava", 103),
    ("LLaVA-Lightning-7B-delta-v1-1", "llava", 103),
    ("wombat-7b-delta", "vicuna-v0", 101),
    ("chimera-inst-chat-7b-delta", "vicuna-v0", 101),
    ("bayling-7b-diff", "vicuna", 100),
    ("BiLLa-7B-SFT", "billa-sft", 120),
    ("BiLLa-7B-LLM", "billa", 120),
)
# The later releases, whose diffs tests/reference_recover_more.py makes.
_MORE = ("wizardlm", "zhixi", "zhixi-fp16", "ultralm", "yulan", "llava")


def readme_releases(folder: Path, base: StateDict | None = None) -> None:
    """Tiny stand-ins, in ``folder``, for the bases and diffs the READMEs' commands use
    (``base``: the LLaMA-1 they are made against, by default ``model(1)``)."""
    from tests import reference_recover, reference_recover_more

    base = model(1) if base is None else base
    extra_rows = base["model.embed_tokens.weight"].shape[0] - 100
    for name in ("llama-7b-hf", "llama-13b-hf"):
        write_folder(folder / name, base, "bin-sharded", config(100 + extra_rows))
    for name, recipe, vocab in README_RELEASES:
        vocab += extra_rows
        tuned_model = tuned({k: v.float() for k, v in base.items()}, 2, vocab=vocab)
        files: dict[str, bytes] = {}
        if recipe.startswith("billa"):
            embedding = base["model.embed_tokens.weight"]
            diff = reference_recover_more.billa_publish(tuned(base, 2, vocab=vocab), embedding)
        elif recipe in _MORE:
            if recipe == "llava":
                tuned_model["model.mm_projector.weight"] = torch.full((HIDDEN, 32), 0.01)
                tuned_model["model.mm_projector.bias"] = torch.full((HIDDEN,), 0.01)
            pad = recipe == "ultralm"
            if pad:
                files["special_tokens_map.json"] = b'{"pad_token": "<PAD>"}'
            diff = reference_recover_more.make_diff(recipe, tuned_model, base, pad)
        else:
            diff = reference_recover.make_diff(recipe, tuned_model, base)
        write_folder(folder / name, diff, "bin", config(vocab), files)
