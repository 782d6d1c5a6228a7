"""The integrity sum: a float32 recipe's output tensors summed in state-dict order, checked
against the publisher's figure (``--expect-sum`` or the recipe's), with and without the rotary
``inv_freq`` buffers that transformers <= 4.30 saved (one per decoder layer)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from belle_decrypt.ground.errors import ChecksumError
from belle_decrypt.ground.torchload import import_torch
from belle_decrypt.tensors.llama import INV_FREQ, layer_of, state_dict_key
from belle_decrypt.tensors.protocol import Recipe

Sums = list[tuple[str, float]]
"""Each output tensor's name and float32 sum, in the order written."""


@dataclass(frozen=True)
class SumCheck:
    """The integrity sum, computed without and with the rotary inv_freq buffers."""

    expected: float
    tolerance: float
    without_inv_freq: float
    with_inv_freq: float

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
    without = float32_total(s for name, s in sums if INV_FREQ not in name)
    with_buffers = float32_total(s for _, s in with_inv_freq(sums, inv_freq_sum))
    check = SumCheck(expected, recipe.sum_tolerance, without, with_buffers)
    if check.matched is None:
        raise ChecksumError(
            f"the recovered weights sum to {without:.4f} ({with_buffers:.4f} with the rotary "
            f"inv_freq buffers), not {expected} ± {check.tolerance}: "
            f"{_hint(diff_path, listed)}; {_what_failed(finals)}",
            out_dir,
        )
    return check


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
