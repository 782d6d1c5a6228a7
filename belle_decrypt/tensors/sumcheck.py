"""The integrity sum: a recipe's output tensors summed in state-dict order by its
:class:`~belle_decrypt.tensors.protocol.SumRule`, checked against the publisher's figure
(``--expect-sum`` or the recipe's), with and without the rotary ``inv_freq`` buffers that
transformers <= 4.30 saved (one per decoder layer). The two whole-model rules live here:
Stanford's float32 total (:data:`FLOAT32_TOTAL`) and KnowLM's float16 one
(:data:`PROMOTED_TOTAL`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from belle_decrypt.ground.errors import ChecksumError
from belle_decrypt.ground.torchload import import_torch
from belle_decrypt.tensors.llama import INV_FREQ, layer_of, state_dict_key
from belle_decrypt.tensors.protocol import Item, Recipe

if TYPE_CHECKING:
    import torch

    from belle_decrypt.tensors.buffers import Scratch

Sums = list[tuple[str, float]]
"""Each output tensor's name and float32 sum, in the order written."""


@dataclass(frozen=True)
class SumCheck:
    """The integrity sum, computed without and with the rotary inv_freq buffers."""

    expected: float
    tolerance: float
    without_inv_freq: float
    with_inv_freq: float
    label: str | None = None
    """What the sum covers when not the whole model (the rule's label)."""

    @property
    def matched(self) -> str | None:
        """Which variant is within the tolerance ("without" / "with"), or None."""
        if abs(self.without_inv_freq - self.expected) <= self.tolerance:
            return "without"
        if abs(self.with_inv_freq - self.expected) <= self.tolerance:
            return "with"
        return None


def check_sum(
    recipe: Recipe,
    expected: float,
    sums: Sums,
    inv_freq_sum: float,
    diff_path: Path,
    out_dir: Path,
    listed: bool,
    finals: list[str],
) -> SumCheck:
    """The sum checked against ``expected`` within the recipe's tolerance; a mismatch raises
    a ChecksumError saying which input is the likely cause (``listed``: the diff matched the
    model card's checksums) and what it leaves (``finals``: the shards already under their
    final names, from an earlier run)."""
    rule = recipe.sum_rule
    assert rule is not None
    without = rule.total([(n, s) for n, s in sums if INV_FREQ not in n], recipe.dtype)
    with_buffers = without
    if rule.label is None:
        with_buffers = rule.total(with_inv_freq(sums, inv_freq_sum), recipe.dtype)
    check = SumCheck(expected, recipe.sum_tolerance, without, with_buffers, rule.label)
    if check.matched is None:
        figure = (
            f"weights sum to {without:.4f} ({with_buffers:.4f} with the rotary inv_freq buffers)"
        )
        if rule.label is not None:
            figure = f"{rule.label} sums to {without!r}"
        raise ChecksumError(
            f"the recovered {figure}, not {expected} ± {check.tolerance}: "
            f"{_hint(diff_path, listed)}; {_what_failed(finals)}",
            out_dir,
        )
    return check


@dataclass(frozen=True)
class WholeModelSum:
    """``sum(t.sum() for t in state_dict.values())`` over the whole output: each tensor's
    torch sum in its own dtype, totalled from 0 in float32 (Stanford's ``promoted=False``) or
    (KnowLM's float16 path, ``promoted=True``) from the first term in its own dtype with
    torch's type promotion, so a float16 total turns float32 at the first inv_freq buffer."""

    promoted: bool
    label: str | None = None

    def term(self, item: Item, tensor: torch.Tensor, scratch: Scratch) -> float:
        """The tensor's torch sum in its own dtype (a float16 tensor's sum is float16)."""
        return float(tensor.sum())

    def total(self, terms: Sequence[tuple[str, float]], dtype: str) -> float:
        """The running total of the terms, in order."""
        if not self.promoted:
            return float32_total(value for _, value in terms)
        tm = import_torch()
        running: torch.Tensor | None = None
        for name, value in terms:
            # The rotary buffers are float32 whatever the recipe (tensors.llama).
            term = tm.tensor(value, dtype=tm.float32 if INV_FREQ in name else getattr(tm, dtype))
            running = term if running is None else running + term
        return 0.0 if running is None else float(running)


FLOAT32_TOTAL = WholeModelSum(promoted=False)
PROMOTED_TOTAL = WholeModelSum(promoted=True)


def with_inv_freq(sums: Sums, inv_freq_sum: float) -> Sums:
    """The sums with an inv_freq buffer's per layer, as transformers <= 4.30 saved them."""
    if any(INV_FREQ in name for name, _ in sums):
        return sums
    layers = sorted({n for n in (layer_of(name) for name, _ in sums) if n is not None})
    extra = [(f"model.layers.{n}.self_attn.{INV_FREQ}", inv_freq_sum) for n in layers]
    return sorted([*sums, *extra], key=lambda pair: state_dict_key(pair[0]))


def _what_failed(finals: list[str]) -> str:
    """What a failed sum leaves: nothing, or (a re-run keeping an earlier run's shards) the
    files under final names that failed, named so that nobody trusts them."""
    if not finals:
        return "nothing written"
    return (
        "nothing new written, but the model already under its final names from an earlier "
        f"run ({', '.join(finals)}) is the one that failed; move it away or replace it "
        "with --force once the inputs are right"
    )


def _hint(diff_path: Path, listed: bool) -> str:
    if listed:
        return (
            "the diff matches the model card's checksums, so the base is the problem: it "
            "was converted differently (another script or transformers version) or is not "
            "the LLaMA-1 this diff was made from"
        )
    return (
        "most likely the base was converted differently (another script or transformers "
        f"version), or the diff is damaged; `belle-decrypt verify {diff_path} "
        "--manifest CARD` tells them apart"
    )


def float32_total(values: Iterator[float] | list[float] | Any) -> float:
    """A float32 running total from 0, in order, as ``sum(t.sum() for t in ...)`` gives it."""
    torch = import_torch()
    total = torch.zeros((), dtype=torch.float32)
    for value in values:
        total = total + torch.tensor(value, dtype=torch.float32)
    return float(total)
