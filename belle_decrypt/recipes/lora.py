"""PEFT LoRA adapters merged into a base, tensor by tensor (docs/FORMAT.md section 10).

The diff is an :class:`~belle_decrypt.tensors.sources.adapter.AdapterChain` (the adapters in
the order given). The recipe checks the chain (published adapters named, in order and for the
base's size; extended vocabularies never shrinking), plans every output tensor with its steps,
and computes each from the whole base tensor and each adapter in turn, rounded as PEFT 0.21
rounds (which is also Chinese-LLaMA-Alpaca's merge):

- a Linear layer: ``(w.float() + (B.float() @ A.float()) * scale).to(w.dtype)`` per adapter;
- embedding LoRA: ``w + ((B.float() @ A.float()).T * scale).to(w.dtype)``;
- a whole tensor an adapter carries replaces the current one (cast to the base's dtype),
  before that adapter's own products are added.

The output's config.json is the base's with ``vocab_size`` from the merged rows; the tokenizer
files are the last adapter's that has them, else the base's (:meth:`LoraRecipe.model_files`).
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from belle_decrypt.ground.errors import InputError
from belle_decrypt.ground.torchload import import_torch
from belle_decrypt.recipes.convert import meta_model_files
from belle_decrypt.tensors.buffers import Scratch
from belle_decrypt.tensors.llama import VOCAB_TENSORS, state_dict_key
from belle_decrypt.tensors.protocol import BASE, DIFF, Item, SourceKind, SumRule, TensorSource
from belle_decrypt.tensors.sources.adapter import (
    EMBED,
    FLOATS,
    Adapter,
    AdapterChain,
    tokenizer_file,
)
from belle_decrypt.tensors.sources.adapterconfig import HIDDEN_OF
from belle_decrypt.tensors.sources.meta import MetaFolder

if TYPE_CHECKING:
    import torch

FROM_BASE = ("generation_config.json",)
"""The base's files that describe the merged model besides config and tokenizer."""
WHOLE, LINEAR, EMBEDDING = "whole", "linear", "embedding"
ADD_BLOCK = 1 << 20
"""Elements of the float32 sum made at a time (4 MiB: a block that stays in the cache)."""


@dataclass(frozen=True)
class Step:
    """One change to a tensor: a whole replacement (``names``: the tensor), or one adapter's
    product (``names``: A and B, as the chain names them) with its scale."""

    kind: str
    names: tuple[str, ...]
    scale: float = 1.0


@dataclass(frozen=True)
class LoraItem(Item):
    """An output tensor and the steps that make it from the base's (or a replacement)."""

    steps: tuple[Step, ...] = ()


@dataclass(frozen=True)
class LoraRecipe:
    """The LoRA merge as a recipe; ``tail`` is the command line's BASE_DIR and OUT_DIR (a
    refusal says the command to run instead)."""

    tail: tuple[str, ...] = ()
    name: str = "lora"
    purpose: str = "PEFT LoRA adapters (adapter_config.json), merged as PEFT 0.21 merges them"
    dtype: str = "float16"
    expected_sum: float | None = None
    sum_tolerance: float = 0.0
    sum_rule: SumRule | None = None
    base_kinds: tuple[SourceKind, ...] = field(default=())

    def check(self, sources: Mapping[str, TensorSource]) -> None:
        """The chain's adapters named, in order, for the base's size; the base complete."""
        chain, base = _chain(sources), sources[BASE]
        if base.config is None:
            raise base.fail(
                "has no config.json: the merged model's config is the base's; pass the whole "
                "Hugging Face folder"
            )
        for adapter in chain.adapters:
            adapter.recognise()
        embed = base.tensors.get(EMBED)
        hidden = embed.shape[1] if embed is not None and len(embed.shape) == 2 else None
        for n, adapter in enumerate(chain.adapters):
            known = adapter.known
            if known is None:
                continue
            if hidden is not None and hidden != HIDDEN_OF[known.size]:
                raise adapter.fail(
                    f"is {known.name}, made for LLaMA-{known.size} (hidden size "
                    f"{HIDDEN_OF[known.size]}), but BASE_DIR's hidden size is {hidden}; pass "
                    f"LLaMA-{known.size}"
                )
            before = [a.known for a in chain.adapters[:n]]
            if known.needs_plus and not any(
                k is not None and k.kind == "llama-plus" and k.size == known.size for k in before
            ):
                plus = f"chinese-llama-plus-lora-{known.size.lower()}"
                raise adapter.fail(
                    f"is {known.name}, which is merged after Chinese-LLaMA-Plus-{known.size}: "
                    f"run `{self._command([plus, '--then', str(adapter.path)])}`"
                )
        carrying = [a for a in chain.adapters if a.rows is not None]
        for first, second in itertools.pairwise(carrying):
            if first.rows is not None and second.rows is not None and first.rows > second.rows:
                chain_args = [str(second.path), "--then", str(first.path)]
                raise first.fail(
                    f"carries a {first.rows}-row vocabulary but comes before {second.path} "
                    f"({second.rows} rows): the adapters are in the wrong order (LLaMA-Plus "
                    f"first, then Alpaca); run `{self._command(chain_args)}`"
                )

    def _command(self, chain: list[str]) -> str:
        return "belle-decrypt recover " + shlex.join([*chain, *self.tail])

    def plan(self, sources: Mapping[str, TensorSource]) -> list[Item]:
        """Every output tensor in state-dict order, with the base's dtype, its final shape
        and its steps; every adapter tensor fitted to the tensor it changes or replaces."""
        chain, base = _chain(sources), sources[BASE]
        shapes = {name: info.shape for name, info in base.tensors.items()}
        steps: dict[str, list[Step]] = {}
        for adapter in chain.adapters:
            for target, info in sorted(adapter.replaced.items()):
                old = _touched(adapter, base, shapes, target, info.name, info.file)
                grows = (
                    target in VOCAB_TENSORS
                    and len(info.shape) == len(old) == 2
                    and info.shape[1] == old[1]
                )
                if info.shape != old and not grows:
                    raise adapter.fail(
                        f"{info.name} is {list(info.shape)} but the base's {target} is "
                        f"{list(old)}: the adapter was made for another base (size or model)"
                    )
                shapes[target] = info.shape
                steps[target] = [Step(WHOLE, (adapter.name(info.name),))]
            for target, lora in sorted(adapter.loras.items()):
                old = _touched(adapter, base, shapes, target, lora.a.name, lora.a.file)
                if lora.delta_shape != tuple(old):
                    raise adapter.fail(
                        f"{target.removesuffix('.weight')}'s A {list(lora.a.shape)} and B "
                        f"{list(lora.b.shape)} do not fit the base's {list(old)}: the adapter "
                        "was made for another base (size or model)",
                        lora.a.file,
                    )
                names = (adapter.name(lora.a.name), adapter.name(lora.b.name))
                kind = EMBEDDING if lora.embedding else LINEAR
                steps.setdefault(target, []).append(Step(kind, names, lora.scale))
        head, embed = shapes.get("lm_head.weight"), shapes.get(EMBED)
        if head is not None and embed is not None and head[0] != embed[0]:
            raise chain.adapters[-1].fail(
                f"the merged embedding would have {embed[0]} rows but lm_head {head[0]}: the "
                "adapters resize one and not the other; check the order and the downloads"
            )
        items: list[Item] = []
        for name in sorted(base.tensors, key=state_dict_key):
            info, own = base.tensors[name], tuple(steps.get(name, ()))
            reads = [] if own and own[0].kind == WHOLE else [(BASE, info)]
            reads += [(DIFF, chain.tensors[n]) for step in own for n in step.names]
            items.append(LoraItem(name, info.dtype, shapes[name], tuple(reads), own))
        return items

    def combine(
        self, item: Item, tensors: Mapping[str, torch.Tensor], out: torch.Tensor, scratch: Scratch
    ) -> torch.Tensor:
        """The merged tensor, computed into ``out`` (the base's as it is when nothing
        changes it)."""
        tm = import_torch()
        steps = item.steps if isinstance(item, LoraItem) else ()
        current = tensors.get(BASE)
        dtype = str(out.dtype).removeprefix("torch.")
        for step in steps:
            if step.kind == WHOLE:
                whole = tensors[f"{DIFF}:{step.names[0]}"]
                if whole.dtype == out.dtype:
                    current = whole
                else:
                    out.copy_(whole)
                    current = out
                continue
            assert current is not None
            a, b = (tensors[f"{DIFF}:{n}"] for n in step.names)
            a32 = scratch.converted("a", a, "float32")
            b32 = scratch.converted("b", b, "float32")
            folded = folds_exactly(a, b, step.scale)
            if folded:
                a32.mul_(step.scale)
            product = scratch.empty("product", (b.shape[0], a.shape[1]), "float32")
            tm.matmul(b32, a32, out=product)
            if not folded:
                product.mul_(step.scale)
            if step.kind == EMBEDDING:
                cast = scratch.converted("cast", product.t(), dtype)
                tm.add(current, cast, out=out)
            else:
                add_rounded(current, product, out, scratch)
            current = out
        assert current is not None
        return current

    def model_files(
        self, sources: Mapping[str, TensorSource]
    ) -> tuple[list[Path], dict[str, bytes]]:
        """The last adapter's tokenizer files that has any (else the base's) and the base's
        generation config, copied; config.json written: the base's, ``vocab_size`` the rows."""
        chain, base = _chain(sources), sources[BASE]
        tokenizer = next((a.tokenizer for a in reversed(chain.adapters) if a.tokenizer), None)
        if tokenizer is None:
            tokenizer = [p for p in base.others if tokenizer_file(p)]
        copies = [
            *tokenizer,
            *(p for p in base.others if any(fnmatch.fnmatch(p.name, f) for f in FROM_BASE)),
        ]
        config: dict[str, Any] = dict(base.config or {})
        rows = next((a.rows for a in reversed(chain.adapters) if a.rows is not None), None)
        embed = base.tensors.get(EMBED)
        if rows is None and embed is not None:
            rows = embed.shape[0]
        if rows is not None:
            config["vocab_size"] = rows
        made = {"config.json": (json.dumps(config, indent=2) + "\n").encode()}
        if isinstance(base, MetaFolder):
            # Meta's folder has no HF files to copy: convert's, the tokenizer's unless an
            # adapter brings its own.
            meta_copies, meta_made = meta_model_files(base)
            own = any(a.tokenizer for a in chain.adapters)
            names = {"generation_config.json"} if own else set(meta_made) - {"config.json"}
            made.update({name: meta_made[name] for name in names})
            copies = tokenizer if own else meta_copies
        return copies, made


def folds_exactly(a: torch.Tensor, b: torch.Tensor, scale: float) -> bool:
    """Whether ``(B @ (A * scale))`` is ``(B @ A) * scale`` bit for bit, whatever order the
    matrix product sums in: true for float16 A and B and a scale 2**k, -64 <= k <= 64.

    Multiplying by 2**k is exact and commutes with every float32 rounding while no value
    leaves the normal range. Products of float16 values are exact in float32 and multiples of
    2**-48, so every partial sum is 0 or at least 2**-48 in magnitude, and below
    rank * 2**33 (rank < 2**16 here): scaled by 2**k they stay normal. One pass over the
    product saved (the usual scales, alpha/r = 2, 4, 1/4, are powers of two)."""
    mantissa, exponent = math.frexp(scale)
    return (
        mantissa == 0.5
        and -64 <= exponent - 1 <= 64
        and a.dtype == b.dtype == import_torch().float16
        and a.shape[0] < 1 << 16
    )


def add_rounded(
    current: torch.Tensor, product: torch.Tensor, out: torch.Tensor, scratch: Scratch
) -> None:
    """``out = (current.float() + product)`` rounded to ``out``'s dtype, as PEFT's in-place
    ``w += d32`` rounds (docs/FORMAT.md section 10), a block of rows at a time: the float32
    sum of a block stays in the cache and the whole tensor's is never made (each element
    alone decides its result, so the blocks change no bit)."""
    rows = max(1, ADD_BLOCK // max(1, current.shape[1]))
    for start in range(0, current.shape[0], rows):
        stop = min(start + rows, current.shape[0])
        total = scratch.empty("total", (stop - start, current.shape[1]), "float32")
        total.copy_(current[start:stop])  # w.float()
        total.add_(product[start:stop])
        out[start:stop].copy_(total)


def _chain(sources: Mapping[str, TensorSource]) -> AdapterChain:
    diff = sources[DIFF]
    if not isinstance(diff, AdapterChain):
        raise diff.fail("is not a PEFT adapter (no adapter_config.json); leave --recipe out")
    return diff


def _touched(
    adapter: Adapter,
    base: TensorSource,
    shapes: dict[str, tuple[int, ...]],
    target: str,
    name: str,
    file: Path,
) -> tuple[int, ...]:
    """The tensor ``target``'s shape at this point of the chain, after refusing a target the
    base lacks or one that is not a floating-point weight."""
    info = base.tensors.get(target)
    if info is None:
        raise adapter.fail(
            f"{name} changes {target}, which the base does not have: the adapter was made for "
            "another architecture, or a base shard is missing",
            file,
        )
    if info.dtype not in FLOATS:
        raise adapter.fail(f"changes {target}, which is {info.dtype} in the base")
    return shapes[target]


def lora_recipe(name: str | None, diff_dir: Path, tail: Sequence[str]) -> LoraRecipe:
    """The recipe for an adapter folder; a ``--recipe`` is for weight diffs and refused."""
    if name is not None:
        raise InputError(
            f"--recipe {name} is for weight diffs, but DIFF_DIR is a LoRA adapter (it holds "
            "adapter_config.json); leave --recipe out",
            diff_dir,
        )
    return LoraRecipe(tuple(tail))
