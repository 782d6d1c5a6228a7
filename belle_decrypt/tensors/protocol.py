"""The seams of the tensor pipeline: what a source, a recipe and a sink promise it.

A *source* (:class:`TensorSource`) names and describes the tensors of one input folder and
loads one tensor at a time; a :class:`SourceKind` says which folders it reads and opens them.
A *recipe* (:class:`Recipe`) checks its inputs, plans the output tensors (:class:`Item`: a
name, a dtype, a shape, and the input tensors it reads) and computes each one. A *sink*
(:class:`Sink`) cuts the items into output files (:class:`Shard`) and writes each of them as a
stream; a sink whose format needs more than the items (GGUF: the config, the tokenizer, the q/k
layout) gets it through ``Sink.bind`` (a :class:`SinkContext`), and one that can read its file
back checks it in ``Sink.verify`` before the run commits it. :mod:`belle_decrypt.tensors.run`
drives them and owns everything they share: the
checks before writing, the journal and resume, free space, the manifest, the sum check,
progress, Ctrl-C and the atomic finish. Nothing here imports a concrete source, recipe or sink.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from belle_decrypt.ground.errors import InputError
from belle_decrypt.tensors.buffers import data_size

if TYPE_CHECKING:
    import torch

    from belle_decrypt.tensors.buffers import BufferPool, Scratch
    from belle_decrypt.tensors.journal import ShardWriter

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

    def plan(self, sources: Mapping[str, TensorSource]) -> list[Item]:
        """The output tensors in the order they are written; refuse what does not pair."""

    def combine(
        self, item: Item, tensors: Mapping[str, torch.Tensor], out: torch.Tensor, scratch: Scratch
    ) -> torch.Tensor:
        """The output tensor ``item`` from its inputs, computed into ``out`` (of the item's
        dtype and shape), or an input returned as it is. ``tensors`` holds the first input of
        each role by the role's name, and every input by ``"role:tensor name"`` (an item may
        read several tensors of one role: a LoRA merge reads each adapter's A and B)."""


@runtime_checkable
class ChainKind(SourceKind, Protocol):
    """A source kind that takes several folders in order as one diff (``recover A --then B``:
    PEFT adapters applied one after another); a kind without ``open_chain`` takes one."""

    def open_chain(self, paths: Sequence[Path], role: str) -> TensorSource:
        """Open and check the folders, in order, as one source."""


@runtime_checkable
class Described(Protocol):
    """A source that says what it is, one line per part (a chain: each adapter and what it
    was recognised as); ``recover`` prints them before it writes."""

    def describe(self) -> list[str]:
        """The lines."""


@runtime_checkable
class Checksummed(Protocol):
    """A source whose files carry published checksums (Meta's ``checklist.chk``): the run
    hashes them beside itself as it hashes ``--manifest``'s, before anything gets its name."""

    listed: list[tuple[Path, tuple[Any, ...]]]


@runtime_checkable
class Rotary(Protocol):
    """A source that can hand q and k in Meta's interleaved rotary layout instead of the
    Hugging Face one (Meta's folder: its own layout, nothing permuted). Only a run that passes
    every tensor through to a format stored in Meta's layout (GGUF) asks for it."""

    hf_layout: bool


@runtime_checkable
class MakesModelFiles(Protocol):
    """A recipe that decides the files describing the output itself, instead of copying the
    diff's config and tokenizer files (:mod:`~belle_decrypt.tensors.copies`): a LoRA merge
    writes the base's config with the merged vocabulary and the last adapter's tokenizer."""

    def model_files(
        self, sources: Mapping[str, TensorSource]
    ) -> tuple[list[Path], dict[str, bytes]]:
        """The files to copy as they are, and the files to write (name: bytes); both are
        checked for being in the way and counted for free space, and written at the finish."""


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
Piece = tuple["torch.Tensor", "torch.Tensor | None"]
"""A contiguous piece of a tensor's bytes, in order, and the byte buffer it was made in (taken
from the caller's ``take``; None: a view of a mapped input, nothing to give back)."""
TakeBuffer = Callable[[], "torch.Tensor"]
"""A free byte buffer (uint8) to make one piece in; its size bounds the piece."""


@runtime_checkable
class Pieced(Protocol):
    """A source that can give a tensor as pieces of its bytes in order instead of whole
    (Meta's folder: slices joined and q/k permuted a few MiB at a time), so that a sink that
    writes the pieces as they come never holds the joined tensor."""

    def pieces(self, name: str, take: TakeBuffer) -> Iterator[Piece]:
        """The tensor ``name``'s bytes as pieces, each made in a buffer from ``take`` or a
        view of the mapped file."""


@runtime_checkable
class Forwards(Protocol):
    """A recipe some of whose output tensors are an input as it is (``convert``): those may
    be written as their source's pieces, never whole."""

    def forwarded(self, item: Item) -> tuple[str, str] | None:
        """The role and name of the input ``item`` is as it is, or None (computed)."""


@runtime_checkable
class PiecedProduce(Protocol):
    """A :data:`Produce` that can also give an item as pieces (the run's, for a recipe that
    :class:`Forwards` an input of a :class:`Pieced` source); a sink may use either."""

    def __call__(self, item: Item, out: torch.Tensor) -> torch.Tensor: ...

    def pieces(self, item: Item, take: TakeBuffer) -> Iterator[Piece] | None:
        """The item's bytes as pieces, or None: only whole, through ``__call__``."""


@dataclass(frozen=True)
class SinkContext:
    """What a sink may need besides the items (:meth:`Sink.bind`), gathered by the run."""

    out_dir: Path
    config: dict[str, Any] | None
    """The model's config.json: the diff's, else the base's (None: neither has one)."""
    config_path: Path
    """Where ``config`` was read (messages name it)."""
    files: Mapping[str, Path | bytes]
    """The files describing the output by name (``tokenizer.model``, ``added_tokens.json``,
    ...): a file's path, or the bytes a recipe made (:class:`MakesModelFiles`); the same
    files a Hugging Face output gets beside its shards (``tensors.copies.described``)."""
    folder: Path
    """The folder a refusal about them names (DIFF_DIR, or convert's input)."""
    output_type: str | None = None
    """The element type asked for (``--gguf-type``); None: the format's default."""
    hf_layout: bool = True
    """Whether q and k come in the Hugging Face rotary layout (False: Meta's interleaved one,
    as a source reading Meta's files hands them when asked: :class:`Rotary`)."""


class Sink(Protocol):
    """An output format: how items are cut into files and how one file is written."""

    @property
    def fmt(self) -> str:
        """The format's name (``--bin``: bin), recorded in the journal."""

    @property
    def weight_files(self) -> Sequence[str]:
        """Name patterns of files a loader may take for weights (stale ones are in the way)."""

    @property
    def self_contained(self) -> bool:
        """Whether the file carries the model's config and tokenizer (GGUF): then none of the
        config and tokenizer files are copied beside it."""

    def bind(self, context: SinkContext) -> None:
        """Take what the format needs besides the items; called once before ``plan``, it may
        refuse the run (an InputError) before anything is written."""

    def plan(self, items: list[Item]) -> list[Shard]:
        """Cut the items into output files, in order."""

    def index(self, shards: list[Shard]) -> tuple[str, bytes] | None:
        """The file written last that names the shards (None: no such file)."""

    def overhead(self, shards: list[Shard]) -> int:
        """Bytes written besides the shards, for the free-space check."""

    def write(
        self,
        shard: Shard,
        out: ShardWriter,
        produce: Produce,
        on_bytes: Callable[[int], None],
        on_tensor: Callable[[Item, torch.Tensor], None],
        pool: BufferPool,
    ) -> None:
        """Compute each tensor of ``shard`` with ``produce`` and write the file to ``out``."""

    def verify(self, shard: Shard, path: Path) -> None:
        """Read the written file back at ``path`` (its temporary name, flushed) before the run
        commits it; raise an OutputError when it does not read back whole."""
