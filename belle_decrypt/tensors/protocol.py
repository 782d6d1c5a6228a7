"""The seams of the tensor pipeline: what a source, a recipe and a sink promise it.

A *source* (:class:`TensorSource`) names and describes the tensors of one input folder and
loads one tensor at a time; a :class:`SourceKind` says which folders it reads and opens them.
A *recipe* (:class:`Recipe`) checks its inputs, plans the output tensors (:class:`Item`: a
name, a dtype, a shape, and the input tensors it reads) and computes each one. A *sink*
(:class:`Sink`) cuts the items into output files (:class:`Shard`) and writes each of them as a
stream. :mod:`belle_decrypt.tensors.run` drives them and owns everything they share: the
checks before writing, the journal and resume, free space, the manifest, the sum check,
progress, Ctrl-C and the atomic finish. Nothing here imports a concrete source, recipe or sink.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from belle_decrypt.ground.errors import InputError
from belle_decrypt.tensors.buffers import data_size

if TYPE_CHECKING:
    import torch

    from belle_decrypt.tensors.buffers import BufferPool, Scratch
    from belle_decrypt.tensors.journal import HashingWriter

DIFF, BASE = "diff", "base"
"""The roles of recover's two inputs (DIFF_DIR and BASE_DIR), as recipes name them."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's name, dtype (torch's name, e.g. ``float16``), shape and file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path

    @property
    def nbytes(self) -> int:
        """Bytes of its data."""
        return data_size(self.shape, self.dtype)


@dataclass(frozen=True)
class Item:
    """One output tensor: its name, dtype and shape, and the input tensors it is computed
    from, as (role, tensor) pairs in the order they are loaded."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    reads: tuple[tuple[str, TensorInfo], ...]

    @property
    def nbytes(self) -> int:
        """Bytes of the output tensor's data."""
        return data_size(self.shape, self.dtype)

    def input(self, role: str) -> TensorInfo | None:
        """The input tensor read from the source of ``role``, if any."""
        return next((info for name, info in self.reads if name == role), None)


@dataclass(frozen=True)
class Shard:
    """One output file as a sink plans it: its name, its tensors in order, its size."""

    name: str
    items: tuple[Item, ...]
    size: int
    """The file's size in bytes (for a format written in one piece, an upper estimate)."""

    @property
    def data_size(self) -> int:
        """Bytes of tensor data."""
        return sum(item.nbytes for item in self.items)


class TensorSource(Protocol):
    """One opened input folder: its tensors by name, loaded one at a time."""

    @property
    def path(self) -> Path: ...
    @property
    def files(self) -> tuple[Path, ...]:
        """The weight files read (fingerprinted by the journal, hashed against a manifest)."""

    @property
    def others(self) -> tuple[Path, ...]:
        """The folder's other files (config and tokenizer files are copied from the diff)."""

    @property
    def tensors(self) -> dict[str, TensorInfo]: ...
    @property
    def config(self) -> dict[str, Any] | None:
        """The folder's config.json, when it has one."""

    def load(self, name: str) -> torch.Tensor:
        """The tensor ``name``, read from its file (mapped, never all files at once)."""

    def fail(self, message: str, path: Path | None = None) -> InputError:
        """An InputError naming this folder's role (DIFF_DIR, BASE_DIR) and the file."""

    def close(self) -> None:
        """Release the files."""


class SourceKind(Protocol):
    """A kind of input folder (a Hugging Face folder, ...)."""

    @property
    def name(self) -> str: ...

    def recognises(self, path: Path) -> bool:
        """Whether ``path`` is a folder of this kind (a cheap look at its names)."""

    def open(self, path: Path, role: str) -> TensorSource:
        """Open and check the folder; raise an InputError saying what is wrong."""


class Recipe(Protocol):
    """How the output tensors are made from the inputs (docs/FORMAT.md section 3)."""

    @property
    def name(self) -> str: ...
    @property
    def purpose(self) -> str: ...
    @property
    def dtype(self) -> str:
        """The arithmetic's dtype (the sum rule's terms are in it, ``SumRule.total``)."""

    @property
    def expected_sum(self) -> float | None:
        """The publisher's integrity figure (the sum of every output tensor), or None."""

    @property
    def sum_tolerance(self) -> float: ...
    @property
    def sum_rule(self) -> SumRule | None:
        """How the output is summed for the integrity check (None: the recipe has no sum and
        ``--expect-sum`` is refused)."""

    @property
    def base_kinds(self) -> tuple[SourceKind, ...]:
        """Source kinds tried for BASE_DIR before the pipeline's own: a recipe that needs
        only part of a base (BiLLa: the embedding) may read a folder no other recipe can."""

    def check(self, sources: Mapping[str, TensorSource]) -> None:
        """Refuse inputs this recipe cannot use (the wrong model, the folders swapped)."""

    def generated(self, sources: Mapping[str, TensorSource]) -> dict[str, bytes]:
        """Files the run makes from the inputs rather than copies (name: bytes; ``convert``:
        config.json and the tokenizer files from Meta's). They are checked for being in the
        way and counted in the free space as the copies are, written at the finish with them,
        and take the place of a copied file of the same name. Most recipes make none: {}."""

    def plan(self, sources: Mapping[str, TensorSource]) -> list[Item]:
        """The output tensors in the order they are written; refuse what does not pair."""

    def combine(
        self, item: Item, tensors: Mapping[str, torch.Tensor], out: torch.Tensor, scratch: Scratch
    ) -> torch.Tensor:
        """The output tensor ``item`` from its inputs (by role), computed into ``out`` (of the
        item's dtype and shape), or an input returned as it is."""


class SumRule(Protocol):
    """How a publisher's integrity figure is taken from the output tensors (docs/FORMAT.md
    section 3): one term per tensor as it is written (kept in the journal, so a re-run need
    not read its kept shards again), then a total over the terms in state-dict order."""

    @property
    def label(self) -> str | None:
        """What the sum covers when it is not the whole model (the sum line says it); None:
        the whole model, checked without and with the rotary inv_freq buffers."""

    def term(self, item: Item, tensor: torch.Tensor, scratch: Scratch) -> float:
        """The term of one output tensor, computed as it is written (``scratch`` still holds
        the arithmetic's intermediate buffers)."""

    def total(self, terms: Sequence[tuple[str, float]], dtype: str) -> float:
        """The total of the named terms of a recipe of arithmetic dtype ``dtype``."""


ChooseRecipe = Callable[[str | None, Path], tuple[Recipe, str | None]]
"""The recipe for a ``--recipe`` name (None: recognised from the diff's folder), and the
release name it was recognised from (None: given)."""
Produce = Callable[[Item, "torch.Tensor"], "torch.Tensor"]
"""Computes an item's output tensor into the given buffer (or returns an input as it is)."""


class Sink(Protocol):
    """An output format: how items are cut into files and how one file is written."""

    @property
    def fmt(self) -> str:
        """The format's name (``--bin``: bin), recorded in the journal."""

    @property
    def weight_files(self) -> Sequence[str]:
        """Name patterns of files a loader may take for weights (stale ones are in the way)."""

    def plan(self, items: list[Item]) -> list[Shard]:
        """Cut the items into output files, in order."""

    def index(self, shards: list[Shard]) -> tuple[str, bytes] | None:
        """The file written last that names the shards (None: no such file)."""

    def overhead(self, shards: list[Shard]) -> int:
        """Bytes written besides the shards, for the free-space check."""

    def write(
        self,
        shard: Shard,
        out: HashingWriter,
        produce: Produce,
        on_bytes: Callable[[int], None],
        on_tensor: Callable[[Item, torch.Tensor], None],
        pool: BufferPool,
    ) -> None:
        """Compute each tensor of ``shard`` with ``produce`` and write the file to ``out``."""
