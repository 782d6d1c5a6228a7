"""`convert HF_DIR OUT_DIR --to gguf`: a Hugging Face LLaMA folder (what `decrypt` or `recover`
made, or any converted LLaMA) as one GGUF file, read and written tensor by tensor.

The folder is opened as the pipeline's Hugging Face source and written by the GGUF sink
(:mod:`~belle_decrypt.tensors.sinks.ggufsink`) with the sink's own read-back check, under a
temporary name renamed only when the file is complete and checked.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from belle_decrypt.ground.cancel import CancelToken, check
from belle_decrypt.ground.errors import InputError, OutputError
from belle_decrypt.streams.output import (
    AtomicFile,
    check_free_space,
    prepare_output_dir,
    remove_stale_temps,
)
from belle_decrypt.tensors.buffers import BufferPool
from belle_decrypt.tensors.copies import describing
from belle_decrypt.tensors.journal import ShardWriter
from belle_decrypt.tensors.llama import state_dict_key
from belle_decrypt.tensors.protocol import DIFF, Item, Shard, SinkContext, TensorSource
from belle_decrypt.tensors.sinks.ggufsink import GGUF, GgufSink
from belle_decrypt.tensors.sources import open_source

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ConvertOptions:
    """What the user asked for besides the two folders."""

    to: str | None = GGUF
    gguf_type: str | None = None
    force: bool = False
    fsync: bool = True


@dataclass(frozen=True)
class Converted:
    """What a conversion wrote."""

    path: Path
    size: int
    seconds: float


class Conversion:
    """A checked conversion, ready to run; close it (or use ``with``) to release the input."""

    def __init__(
        self, source: TensorSource, sink: GgufSink, shard: Shard, out_dir: Path, fsync: bool
    ) -> None:
        self.source = source
        self.out_dir = out_dir
        self.sink = sink
        self.shard = shard
        self.fsync = fsync
        self.pool = BufferPool(max((item.nbytes for item in shard.items), default=0))

    @classmethod
    def prepare(cls, hf_dir: Path, out_dir: Path, options: ConvertOptions) -> Conversion:
        """Open and check the input and the output folder; raise before writing anything."""
        if options.to != GGUF:
            raise InputError(
                "is already in the Hugging Face layout (not Meta's consolidated.*.pth); pass "
                "--to gguf to write it as one GGUF file",
                hf_dir,
            )
        with contextlib.suppress(OSError):
            if os.path.samefile(out_dir, hf_dir):
                raise InputError("is also the input folder; pass a new output folder", hf_dir)
        source = open_source(hf_dir, "HF_DIR")
        try:
            sink = GgufSink()
            config_path = source.path / "config.json"
            files = {path.name: path for path in describing(source)}
            sink.bind(
                SinkContext(
                    out_dir, source.config, config_path, files, source.path, options.gguf_type
                )
            )
            names = sorted(source.tensors, key=state_dict_key)
            items = [
                Item(name, info.dtype, info.shape, ((DIFF, info),))
                for name, info in ((n, source.tensors[n]) for n in names)
            ]
            (shard,) = sink.plan(items)
            prepare_output_dir(out_dir)
            remove_stale_temps(out_dir)
            target = out_dir / shard.name
            if target.exists() and not options.force:
                raise OutputError(
                    "already exists; pass --force to replace it, or choose another output folder",
                    target,
                )
            check_free_space(out_dir, shard.size)
        except BaseException:
            source.close()
            raise
        return cls(source, sink, shard, out_dir, options.fsync)

    @property
    def path(self) -> Path:
        """The GGUF file's final name."""
        return self.out_dir / self.shard.name

    def __enter__(self) -> Conversion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the input files."""
        self.source.close()

    def run(
        self, advance: Callable[[int], None], *, cancel: CancelToken | None = None
    ) -> Converted:
        """Write, read back and rename the GGUF file; ``advance`` gets each tensor's bytes."""
        started = time.monotonic()
        path = self.path

        def on_bytes(count: int) -> None:
            advance(count)
            check(cancel)

        def produce(item: Item, out: torch.Tensor) -> torch.Tensor:
            return self.source.load(item.name)

        atomic = AtomicFile(path, fsync=self.fsync)
        with atomic as handle:
            out = ShardWriter(handle, str(path))
            try:
                self.sink.write(self.shard, out, produce, on_bytes, lambda item, t: None, self.pool)
                handle.flush()
            except OSError as exc:
                raise OutputError(
                    f"cannot write: {exc.strerror or exc}; nothing was left under a final name "
                    "(check the free space, then run the same command again)",
                    path,
                ) from exc
            self.sink.verify(self.shard, atomic.temp)
            atomic.commit()
        return Converted(path, out.count, time.monotonic() - started)
