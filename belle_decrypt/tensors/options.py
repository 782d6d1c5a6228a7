"""What ``recover`` is asked (:class:`Options`) and what a run did (:class:`Outcome`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from belle_decrypt.checks.manifest import Manifest
from belle_decrypt.ground.errors import InputError
from belle_decrypt.tensors.sinks.shards import BIN, SAFETENSORS, parse_size
from belle_decrypt.tensors.sumcheck import SumCheck

KEPT, WRITTEN = "kept", "written"


@dataclass(frozen=True)
class Options:
    """What the user asked for besides the three folders."""

    recipe: str | None = None
    fmt: str = SAFETENSORS
    max_shard_size: int = field(default_factory=lambda: parse_size("2GB"))
    force: bool = False
    fsync: bool = True
    manifest: Manifest | None = None
    expect_sum: float | None = None
    allow_nonfinite: bool = False

    @classmethod
    def parse(
        cls,
        *,
        recipe: str | None,
        as_bin: bool,
        max_shard_size: str,
        manifests: tuple[Path, ...],
        expect_sum: float | None,
        force: bool,
        no_fsync: bool,
        allow_nonfinite: bool = False,
    ) -> Options:
        """The options as the command line gives them: the manifests read, the size parsed."""
        if expect_sum is not None and not math.isfinite(expect_sum):
            raise InputError(
                f"--expect-sum {expect_sum} is not a finite number; pass the figure the "
                "release's card gives, like 50637.1836"
            )
        return cls(
            recipe=recipe,
            fmt=BIN if as_bin else SAFETENSORS,
            max_shard_size=parse_size(max_shard_size),
            force=force,
            fsync=not no_fsync,
            manifest=Manifest.read_all(manifests) if manifests else None,
            expect_sum=expect_sum,
            allow_nonfinite=allow_nonfinite,
        )


@dataclass(frozen=True)
class ShardResult:
    """One output shard: recovered now, or kept from an earlier run after verifying it."""

    name: str
    status: str
    size: int


@dataclass(frozen=True)
class Outcome:
    """What a run did."""

    out_dir: Path
    shards: tuple[ShardResult, ...]
    copied: tuple[str, ...]
    sum_check: SumCheck | None
    manifest_checked: int
    seconds: float

    @property
    def written(self) -> int:
        """Bytes of shards written by this run."""
        return sum(s.size for s in self.shards if s.status == WRITTEN)
