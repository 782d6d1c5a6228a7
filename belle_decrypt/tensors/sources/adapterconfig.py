"""A PEFT adapter's ``adapter_config.json``, read as a whitelist, and the published adapters
known by their SHA-256 (docs/FORMAT.md section 10).

Only the keys whose meaning for a merge into plain weights is known are accepted with any
value; every other key must be at PEFT's default (or absent), so that a config from a later
PEFT release that changes the math is refused instead of merged wrongly.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from belle_decrypt.ground.errors import InputError

CONFIG_NAME = "adapter_config.json"
# Keys read here (the math), and keys that say nothing about merging (any value).
MATH_KEYS = (
    "peft_type",
    "r",
    "lora_alpha",
    "use_rslora",
    "rank_pattern",
    "alpha_pattern",
    "fan_in_fan_out",
    "bias",
)
# The adapter's tensors are the truth about which modules it touches: these only say how it
# was trained or found them.
DESCRIPTIVE_KEYS = (
    "task_type",
    "base_model_name_or_path",
    "revision",
    "inference_mode",
    "lora_dropout",
    "target_modules",
    "exclude_modules",
    "modules_to_save",
    "layers_to_transform",
    "layers_pattern",
    "init_lora_weights",
    "auto_mapping",
    "peft_version",
)
# Every other key PEFT (0.2 to 0.21) writes, at the value that leaves the plain LoRA merge.
DEFAULTS: dict[str, Any] = {
    "use_dora": False,
    "lora_bias": False,
    "layer_replication": None,
    "trainable_token_indices": None,
    "target_parameters": None,
    "megatron_config": None,
    "megatron_core": "megatron.core",
    "loftq_config": {},
    "eva_config": None,
    "corda_config": None,
    "use_qalora": False,
    "qalora_group_size": 16,
    "alora_invocation_tokens": None,
    "arrow_config": None,
    "ensure_weight_tying": False,
    "kasa_config": None,
    "lora_ga_config": None,
    "monteclora_config": None,
    "use_bdlora": None,
    "velora_config": None,
    "runtime_config": {"ephemeral_gpu_offload": False},
    "merge_weights": False,
    "enable_lora": None,
}
NO_BIAS = "none"
# Chinese-LLaMA-Alpaca's extended vocabularies (docs/FORMAT.md section 10).
CHINESE_ROWS = {49953: "Chinese-LLaMA", 49954: "Chinese-Alpaca"}
HIDDEN_OF = {"7B": 4096, "13B": 5120, "33B": 6656}


@dataclass(frozen=True)
class Known:
    """A published adapter: its name, kind (``llama``, ``llama-plus``, ``alpaca``,
    ``alpaca-plus``, ``alpaca-pro``) and model size."""

    name: str
    kind: str
    size: str

    @property
    def needs_plus(self) -> bool:
        """Whether it is merged after the Chinese-LLaMA-Plus adapter of its size."""
        return self.kind in ("alpaca-plus", "alpaca-pro")


def _known() -> dict[str, Known]:
    table = (
        ("2a2c24d096f5d509f24946fdbd8c25e1ce4a0acb955902f7436d74c0c0379d86", "llama", "7B"),
        ("8c928db86b2a0cf73f019832f921eb7e1e069ca21441b4bfa12c4381c6cc46be", "llama-plus", "7B"),
        ("6a4ce789d219bde122f8d9a20371937f2aa2ee86a2311d9f5e303df2e774f9fc", "llama", "13B"),
        ("784fcff9c4bdf4e77d442a01158e121caf8fcce0f97ffb32396fe7a3617ee7e8", "llama-plus", "13B"),
        ("93a449bafb71ff1bb74a4a21e64e102e5078e5c3898eb40d013790072a0fa3de", "llama", "33B"),
        ("16f2544f4b5be9840dbb1a8071a9bc42627ed4232be3b0b600b43f7b4b5f08a7", "llama-plus", "33B"),
        ("0d9b6ed8e4a7d1ae590a16c89a452a488d66ff07e45487972f61c2b6e46e36de", "alpaca", "7B"),
        ("4ee0bf805c312a9a771624d481fbdb4485e1b0a70cd2a8da9f96137f177b795d", "alpaca-plus", "7B"),
        ("3cd2776908c3f5efe68bf6cf0248cb0e80fb7c55a52b8406325c9f0ca37b8594", "alpaca-pro", "7B"),
        ("cb8dda3c005f3343a0740dcd7237fbb600cb14b6bff9b6f3d488c086a2f08ada", "alpaca", "13B"),
        ("a1fcdcb6d7e1068f925fb36ec78632c76058ba12ba352bed4d44060b8e6f4706", "alpaca-plus", "13B"),
        ("f076b20fc2390ddbc35fd56d580d46ea834b33bbae34a4bb3cb7b571e60602e0", "alpaca-pro", "13B"),
        ("6b39da4c682e715a9de30b247b7e9b812d2d54f7d320ec9b452000a5cd4d178d", "alpaca", "33B"),
        ("411f5b9351abcc33c13a82bdd97ddcff81ad7993a8ddb83085b7ea97fad92fc7", "alpaca-plus", "33B"),
        ("0e7ba4951f605d2c0a7f0bcb983d7f6ed075c8dd23fbbcbc8a8c9643247212a3", "alpaca-pro", "33B"),
    )
    names = {
        "llama": "Chinese-LLaMA",
        "llama-plus": "Chinese-LLaMA-Plus",
        "alpaca": "Chinese-Alpaca",
        "alpaca-plus": "Chinese-Alpaca-Plus",
        "alpaca-pro": "Chinese-Alpaca-Pro",
    }
    return {sha: Known(f"{names[kind]}-{size}", kind, size) for sha, kind, size in table}


KNOWN = _known()
"""The published ``adapter_model.bin`` files by their SHA-256."""


@dataclass(frozen=True)
class AdapterConfig:
    """The figures of one adapter's config that decide its merge."""

    path: Path
    r: int
    alpha: float
    use_rslora: bool
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    bias: str

    def rank_and_scale(self, module: str) -> tuple[int, float]:
        """The rank and scale PEFT 0.21 gives ``module`` (``model.layers.0.self_attn.q_proj``):
        the first pattern key matching the end of its name, else ``r`` / ``lora_alpha``;
        scale alpha/r, or alpha/sqrt(r) under rslora."""
        rank = self.rank_pattern.get(_pattern_key(self.rank_pattern, module), self.r)
        alpha = self.alpha_pattern.get(_pattern_key(self.alpha_pattern, module), self.alpha)
        scale = alpha / math.sqrt(rank) if self.use_rslora else alpha / rank
        return rank, scale


def _pattern_key(patterns: dict[str, Any], module: str) -> str:
    """PEFT's rule: a key matches when the module's name ends with it after a dot (a regex)."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return module


def read_config(folder: Path) -> AdapterConfig:
    """The adapter's config, every key checked against the whitelist."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise InputError(
            f"holds no {CONFIG_NAME}, so it is not a PEFT adapter; --then takes LoRA adapter "
            "folders (merge a weight diff in a run of its own first)",
            folder,
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(
            f"cannot read the adapter's config ({exc}); download it again", path
        ) from exc
    if not isinstance(doc, dict):
        raise InputError("is not a JSON object; download it again", path)
    peft_type = doc.get("peft_type")
    if peft_type != "LORA":
        raise InputError(
            f"peft_type is {peft_type!r}, not 'LORA': only LoRA adapters can be merged into "
            "plain weights (prefix tuning, IA3, LLaMA-Adapter need PEFT at run time)",
            path,
        )
    for key, value in doc.items():
        if key in MATH_KEYS or key in DESCRIPTIVE_KEYS:
            continue
        if key not in DEFAULTS:
            if value in (None, False, {}, []):
                continue
            raise InputError(
                f"{key} = {json.dumps(value)} is a setting this version does not know; it may "
                "change the merge, so it is refused (a newer PEFT feature)",
                path,
            )
        if value != DEFAULTS[key]:
            raise InputError(
                f"{key} = {json.dumps(value)} cannot be merged into plain weights (only "
                f"{json.dumps(DEFAULTS[key])} can); merge this adapter with PEFT itself",
                path,
            )
    rank = doc.get("r", 8)
    alpha = doc.get("lora_alpha", 8)
    rank_pattern = doc.get("rank_pattern") or {}
    alpha_pattern = doc.get("alpha_pattern") or {}
    if not _whole(rank) or not _number(alpha):
        raise InputError(
            f"r {rank!r} / lora_alpha {alpha!r} are not a positive whole number and a number; "
            "download the config again",
            path,
        )
    if not isinstance(rank_pattern, dict) or not all(_whole(v) for v in rank_pattern.values()):
        raise InputError("rank_pattern is not a map of names to positive whole numbers", path)
    if not isinstance(alpha_pattern, dict) or not all(_number(v) for v in alpha_pattern.values()):
        raise InputError("alpha_pattern is not a map of names to numbers", path)
    bias = doc.get("bias", NO_BIAS)
    return AdapterConfig(
        path,
        rank,
        alpha,
        bool(doc.get("use_rslora", False)),
        rank_pattern,
        alpha_pattern,
        bias if isinstance(bias, str) else str(bias),
    )


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
