"""A GGUF file (what llama.cpp and ollama run) as the output of a run, written tensor by tensor.

``bind`` takes the model's config, the tokenizer's files and the q/k layout from the run;
``plan`` maps the output tensors to llama.cpp's names and types, reads the figures and the
tokenizer (``tokenizer.model``) and refuses what a llama GGUF cannot hold, all before anything
is written. ``write`` streams the file with the ``gguf`` package's writer: header, metadata
and every tensor's info first, then each tensor's data as soon as it is computed (the writer's
``add_tensor`` would keep every array until the end). ``verify`` reads the file back with
``gguf``'s reader before the run commits it (docs/FORMAT.md section 9).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from belle_decrypt.ground.errors import InputError, OutputError
from belle_decrypt.tensors.buffers import BufferPool, shaped
from belle_decrypt.tensors.protocol import Item, Produce, Shard, SinkContext
from belle_decrypt.tensors.sinks.gguf_model import (
    ALIGNMENT,
    F16,
    FILE_TYPES,
    GGUF_TYPES,
    Q8_0,
    Figures,
    encoded,
    figures,
    file_name,
    gguf_name,
    kind,
    mapped,
    numpy_dtype,
    stored_shape,
    stored_size,
)
from belle_decrypt.tensors.sinks.gguf_vocab import TOKENIZER_MODEL, Vocab, read_vocab

if TYPE_CHECKING:
    import numpy as np
    import torch

    from belle_decrypt.tensors.journal import ShardWriter

GGUF = "gguf"
WRITE_CHUNK = 32 * 1024 * 1024
"""Bytes handed to the writer at a time."""
HEADER_ROOM = 64 * 1024
"""Room for the header and the model's metadata keys besides the tokenizer's."""


@dataclass(frozen=True)
class Planned:
    """One GGUF tensor: its name and kind, and how many heads to un-permute it by (q and k
    from the Hugging Face layout; None: written as it is)."""

    name: str
    shape: tuple[int, ...]
    kind: str
    heads: int | None

    @property
    def nbytes(self) -> int:
        """Bytes of its data in the file."""
        return stored_size(self.shape, self.kind)


class GgufSink:
    """One ``NAME-<type>.gguf`` file in OUT_DIR (a protocol ``Sink``)."""

    fmt = GGUF
    weight_files: tuple[str, ...] = ()
    self_contained = True

    def __init__(self) -> None:
        self.context: SinkContext | None = None
        self.gguf_type = F16
        self.planned: dict[str, Planned] = {}
        self.figures: Figures | None = None
        self.vocab = Vocab()

    def bind(self, context: SinkContext) -> None:
        """Take the config, the tokenizer's files, the q/k layout and ``--gguf-type``."""
        gguf_type = context.output_type or F16
        if gguf_type not in GGUF_TYPES:
            raise InputError(f"--gguf-type {gguf_type!r} is not one of {', '.join(GGUF_TYPES)}")
        self.context, self.gguf_type = context, gguf_type

    def plan(self, items: list[Item]) -> list[Shard]:
        """One file of every item llama.cpp has a name for (the rotary buffers left out)."""
        context = self.context
        if context is None:
            raise AssertionError("GgufSink.plan before bind")
        shapes = mapped({item.name: item.shape for item in items}, context.config_path.parent)
        self.figures = fig = figures(shapes, context.config or {}, context.config_path)
        if TOKENIZER_MODEL not in context.files:
            raise InputError(
                "has no tokenizer.model (nor has any input folder): a GGUF file carries its "
                "tokenizer; put the release's tokenizer.model in it",
                context.folder,
            )
        self.vocab = read_vocab(context.files, fig.vocab_size, context.folder)
        kept = []
        for item in items:
            name = gguf_name(item.name)
            if name is None:
                continue
            heads = None
            if context.hf_layout and name.endswith(("attn_q.weight", "attn_k.weight")):
                heads = fig.head_count if "attn_q" in name else fig.head_count_kv
            self.planned[item.name] = Planned(
                name, item.shape, kind(item.shape, self.gguf_type), heads
            )
            kept.append(item)
        name = file_name(context.out_dir, self.gguf_type)
        return [Shard(name, tuple(kept), self._size())]

    def _size(self) -> int:
        """The file's size, at most: header, metadata, tensor infos and aligned data."""
        tokens = sum(len(t.encode()) + 8 + 4 + 4 for t in self.vocab.tokens)
        infos = sum(len(t.name) + 4 + 8 * len(t.shape) + 4 + 8 for t in self.planned.values())
        data = sum(-(-t.nbytes // ALIGNMENT) * ALIGNMENT for t in self.planned.values())
        return HEADER_ROOM + tokens + infos + ALIGNMENT + data

    def index(self, shards: list[Shard]) -> tuple[str, bytes] | None:
        """None: the GGUF file is the whole model."""
        return None

    def overhead(self, shards: list[Shard]) -> int:
        """Nothing besides the file."""
        return 0

    def write(
        self,
        shard: Shard,
        out: ShardWriter,
        produce: Produce,
        on_bytes: Callable[[int], None],
        on_tensor: Callable[[Item, torch.Tensor], None],
        pool: BufferPool,
    ) -> None:
        """Header, metadata and tensor infos through gguf's writer, then each tensor's data,
        aligned as the infos say, as soon as it is computed (one tensor in memory)."""
        from gguf import GGUFWriter
        from gguf.gguf_writer import WriterState

        writer = GGUFWriter(None, "llama")
        self._add_metadata(writer, shard)
        # The writer streams to any file object it is given; here, the run's hashing one.
        writer.fout = [out]  # type: ignore[list-item]
        writer.state = WriterState.EMPTY
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for item in shard.items:
            planned = self.planned[item.name]
            flat = pool.take()
            try:
                tensor = produce(item, shaped(flat, item.shape, item.dtype))
                if tuple(tensor.shape) != item.shape:
                    raise AssertionError(f"{item.name}: computed {list(tensor.shape)}")
                on_tensor(item, tensor)
                data = encoded(tensor, planned.kind, planned.heads, lambda: on_bytes(0))
                del tensor
                writer.write_padding(out, out.count)  # type: ignore[arg-type]
                for piece in _chunks(data):
                    out.write(piece)
                del data
            finally:
                pool.give_back(flat)
            on_bytes(planned.nbytes)

    def _add_metadata(self, writer: Any, shard: Shard) -> None:
        """The model's figures, the tokenizer, and every tensor's info (no data yet)."""
        from gguf import GGML_QUANT_VERSION, GGMLQuantizationType

        fig = self.figures
        if fig is None:
            raise AssertionError("GgufSink.write before plan")
        writer.add_name(Path(shard.name).stem)
        writer.add_file_type(FILE_TYPES[self.gguf_type])
        if self.gguf_type == Q8_0:
            writer.add_quantization_version(GGML_QUANT_VERSION)
        writer.add_vocab_size(fig.vocab_size)
        writer.add_context_length(fig.context_length)
        writer.add_embedding_length(fig.embedding_length)
        writer.add_block_count(fig.block_count)
        writer.add_feed_forward_length(fig.feed_forward_length)
        writer.add_rope_dimension_count(fig.rope_dimension_count)
        writer.add_head_count(fig.head_count)
        writer.add_head_count_kv(fig.head_count_kv)
        writer.add_layer_norm_rms_eps(fig.rms_epsilon)
        if fig.rope_theta is not None:
            writer.add_rope_freq_base(fig.rope_theta)
        vocab = self.vocab
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(vocab.tokens)
        writer.add_token_scores(vocab.scores)
        writer.add_token_types(vocab.types)
        for special, token_id in vocab.special.items():
            getattr(writer, f"add_{special}_token_id")(token_id)
        writer.add_add_bos_token(vocab.add_bos)
        writer.add_add_eos_token(vocab.add_eos)
        for item in shard.items:
            tensor = self.planned[item.name]
            raw = GGMLQuantizationType.Q8_0 if tensor.kind == Q8_0 else None
            writer.add_tensor_info(
                tensor.name,
                stored_shape(tensor.shape, tensor.kind),
                numpy_dtype(tensor.kind),
                tensor.nbytes,
                raw_dtype=raw,
            )

    def verify(self, shard: Shard, path: Path) -> None:
        """Read the file back with ``gguf``'s reader: every planned tensor there, in full."""
        from gguf import GGUFReader

        final = path.parent / shard.name
        try:
            reader = GGUFReader(path)
            names = [t.name for t in reader.tensors]
            ends = [int(t.data_offset) + int(t.n_bytes) for t in reader.tensors]
        except (OSError, ValueError) as exc:
            raise OutputError(
                f"the written file does not read back ({exc}); nothing was left under a final "
                "name (check the disk, then run the same command again)",
                final,
            ) from exc
        planned = [self.planned[item.name].name for item in shard.items]
        if names != planned or max(ends, default=0) > path.stat().st_size:
            raise OutputError(
                "the written file reads back incomplete; nothing was left under a final name "
                "(check the disk, then run the same command again)",
                final,
            )


def _chunks(data: np.ndarray[Any, Any]) -> Iterator[memoryview]:
    """The array's bytes in pieces of at most :data:`WRITE_CHUNK`."""
    view = memoryview(data.reshape(-1).view("uint8").data)
    for start in range(0, len(view), WRITE_CHUNK):
        yield view[start : start + WRITE_CHUNK]
