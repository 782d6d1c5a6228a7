"""What ``recover`` is asked (:class:`Options`) and what a run did (:class:`Outcome`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from belle_decrypt.checks.manifest import Manifest
from belle_decrypt.ground.errors import InputError
from belle_decrypt.tensors.listed import Hashed
from belle_decrypt.tensors.sinks.ggufsink import GGUF
from belle_decrypt.tensors.sinks.shards import BIN, DEFAULT_MAX_SHARD, SAFETENSORS, parse_size
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
    output_type: str | None = None
    """The element type asked for (``--gguf-type``); None: the format's default."""
    head_start: Hashed | None = field(default=None, compare=False)
    """Checksums begun before the run (:mod:`~belle_decrypt.tensors.headstart`), if any."""

    @classmethod
    def parse(
        cls,
        *,
        recipe: str | None,
        as_bin: bool,
        max_shard_size: str | None,
        manifests: tuple[Path, ...],
        expect_sum: float | None,
        force: bool,
        no_fsync: bool,
        allow_nonfinite: bool = False,
        to: str | None = None,
        gguf_type: str | None = None,
    ) -> Options:
        """The options as the command line gives them: the manifests read, the size parsed;
        ``--to gguf`` takes neither ``--bin`` nor ``--max-shard-size`` (one GGUF file)."""
        if to == GGUF and (as_bin or max_shard_size is not None):
            option = "--bin" if as_bin else "--max-shard-size"
            raise InputError(
                f"{option} shapes Hugging Face shards; --to gguf writes one GGUF file instead: "
                f"leave {option} out"
            )
        if to != GGUF and gguf_type is not None:
            raise InputError("--gguf-type applies to --to gguf only; add --to gguf or leave it out")
        if expect_sum is not None and not math.isfinite(expect_sum):
            raise InputError(
                f"--expect-sum {expect_sum} is not a finite number; pass the figure the "
                "release's card gives, like 50637.1836"
            )
        return cls(
            recipe=recipe,
            fmt=GGUF if to == GGUF else BIN if as_bin else SAFETENSORS,
            max_shard_size=parse_size(max_shard_size or DEFAULT_MAX_SHARD),
            force=force,
            fsync=not no_fsync,
            manifest=Manifest.read_all(manifests) if manifests else None,
            expect_sum=expect_sum,
            allow_nonfinite=allow_nonfinite,
            output_type=gguf_type,
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
