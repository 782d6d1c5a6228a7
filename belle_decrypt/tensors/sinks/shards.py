"""Output shards planned up front from metadata, then written one tensor at a time.

A safetensors shard's header is known before any tensor is computed (names, dtypes, shapes,
offsets), so the file is written as a stream: header, then each tensor's bytes as soon as it
is computed. Memory is a few tensors, whatever the shard size. A ``--bin`` shard is one
``torch.save`` of a dict, so it holds one shard's tensors in memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import queue
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from belle_decrypt.ground.errors import InputError
from belle_decrypt.ground.torchload import import_torch
from belle_decrypt.tensors.buffers import BufferPool, one_thread, shaped, threads_beside_writer
from belle_decrypt.tensors.journal import ShardWriter
from belle_decrypt.tensors.protocol import Item, PiecedProduce, Produce, Shard, SinkContext

if TYPE_CHECKING:
    import torch

SAFETENSORS, BIN = "safetensors", "bin"
DEFAULT_MAX_SHARD = "2GB"
# Files a loader may take for the model's weights.
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "*.index.json")
# Bytes written between two progress reports and cancellation checks.
WRITE_CHUNK = 32 * 1024 * 1024
# A piece of a tensor given in pieces (Meta's joined slices), made and written one at a time:
# the memory a conversion holds besides the mapped files, whatever the number of Meta's files.
PIECE_SIZE = 4 * 1024 * 1024
# Tensors queued for the writing thread at most.
QUEUED = 4
# Room for a --bin shard's zip records and pickle beside its tensor data.
BIN_OVERHEAD = 64 * 1024
_DTYPE_NAMES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?[Bb])?\s*$", re.IGNORECASE)
# The largest file size a 64-bit file offset can give.
MAX_FILE_SIZE = 2**63 - 1
_UNITS = {"K": 10**3, "M": 10**6, "G": 10**9, "KI": 2**10, "MI": 2**20, "GI": 2**30}


def parse_size(text: str) -> int:
    """Bytes in a size as transformers reads it: ``2GB``, ``500MB``, ``10GiB`` (also
    ``10Gib``: the binary units ignore case), ``5Gb`` (a lower-case b after a decimal unit
    means bits), or a plain number of bytes. Exact for any number of digits."""
    match = _SIZE_RE.match(text)
    if match is None:
        raise InputError(
            f"--max-shard-size {text!r} is not a size; write it like 2GB, 500MB or 10GiB"
        )
    whole = match.group(1).split(".")[0].lstrip("0")
    if len(whole) > len(str(MAX_FILE_SIZE)) + 1:  # too large even in bits; never parsed
        raise _too_large(text)
    number, unit = Fraction(match.group(1)), match.group(2)
    if unit is not None:
        number *= _UNITS[unit[:-1].upper()]
        if unit.endswith("b") and unit[-2:-1].lower() != "i":
            number /= 8
    size = int(number)
    if size <= 0:
        raise InputError(f"--max-shard-size {text!r} must be more than 0 bytes")
    if size > MAX_FILE_SIZE:
        raise _too_large(text)
    return size


def _too_large(text: str) -> InputError:
    return InputError(
        f"--max-shard-size {text!r} is more than a file can hold; write it like 2GB, 500MB or 10GiB"
    )


def file_size(items: tuple[Item, ...], fmt: str) -> int:
    """A shard's file size (for --bin an upper estimate)."""
    data = sum(item.nbytes for item in items)
    if fmt == BIN:
        return data + BIN_OVERHEAD
    return 8 + len(safetensors_header(items)) + data


def plan_shards(items: list[Item], max_size: int, fmt: str) -> list[Shard]:
    """Cut ``items`` into shards as transformers does: a new shard when the next tensor would
    make this one larger than ``max_size`` (a larger tensor gets a shard of its own)."""
    groups: list[list[Item]] = [[]]
    size = 0
    for item in items:
        if groups[-1] and size + item.nbytes > max_size:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += item.nbytes
    count = len(groups)
    stem, ext = ("model", "safetensors") if fmt == SAFETENSORS else ("pytorch_model", "bin")
    return [
        Shard(
            f"{stem}.{ext}" if count == 1 else f"{stem}-{n:05d}-of-{count:05d}.{ext}",
            tuple(group),
            file_size(tuple(group), fmt),
        )
        for n, group in enumerate(groups, start=1)
    ]


def index_name(fmt: str) -> str:
    """The index file transformers reads for sharded weights of this format."""
    return "model.safetensors.index.json" if fmt == SAFETENSORS else "pytorch_model.bin.index.json"


def index_document(shards: list[Shard]) -> bytes:
    """The index JSON mapping every tensor to its shard."""
    weight_map = {item.name: shard.name for shard in shards for item in shard.items}
    doc = {
        "metadata": {"total_size": sum(shard.data_size for shard in shards)},
        "weight_map": dict(sorted(weight_map.items())),
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


@dataclass(frozen=True)
class ShardSink:
    """Safetensors shards (or ``--bin`` torch pickles) as transformers saves them, with the
    index JSON when there are several (a :class:`~belle_decrypt.tensors.protocol.Sink`)."""

    fmt: str
    max_size: int
    weight_files: tuple[str, ...] = WEIGHT_FILES
    self_contained: bool = False

    def bind(self, context: SinkContext) -> None:
        """Nothing: shards need only the items."""

    def verify(self, shard: Shard, path: Path) -> None:
        """Nothing: the journalled identity of its file is what a re-run keeps a shard by."""

    def plan(self, items: list[Item]) -> list[Shard]:
        """Shards of at most ``max_size`` bytes of tensor data (see :func:`plan_shards`)."""
        return plan_shards(items, self.max_size, self.fmt)

    def index(self, shards: list[Shard]) -> tuple[str, bytes] | None:
        """The index transformers reads, for more than one shard."""
        return (index_name(self.fmt), index_document(shards)) if len(shards) > 1 else None

    def overhead(self, shards: list[Shard]) -> int:
        """Bytes written besides the shards, for the free-space check (the index)."""
        return len(index_document(shards))

    def write(
        self,
        shard: Shard,
        out: ShardWriter,
        produce: Produce,
        on_bytes: Callable[[int], None],
        on_tensor: Callable[[Item, torch.Tensor], None],
        pool: BufferPool,
    ) -> None:
        """Write one shard as a stream (see :func:`write_shard`)."""
        write_shard(shard, self.fmt, out, produce, on_bytes, on_tensor, pool)


def safetensors_header(items: tuple[Item, ...]) -> bytes:
    """The JSON header, padded with spaces to 8 bytes as the safetensors package does."""
    doc: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for item in items:
        doc[item.name] = {
            "dtype": _DTYPE_NAMES[item.dtype],
            "shape": list(item.shape),
            "data_offsets": [offset, offset + item.nbytes],
        }
        offset += item.nbytes
    header = json.dumps(doc, separators=(",", ":")).encode()
    return header + b" " * (-len(header) % 8)


def tensor_chunks(tensor: torch.Tensor) -> Iterator[memoryview]:
    """A contiguous tensor's bytes, in pieces of at most WRITE_CHUNK, without copying."""
    nbytes = tensor.numel() * tensor.element_size()
    if nbytes == 0:
        return
    raw = (ctypes.c_char * nbytes).from_address(tensor.data_ptr())
    view = memoryview(raw).cast("B")
    for start in range(0, nbytes, WRITE_CHUNK):
        yield view[start : start + WRITE_CHUNK]


def write_shard(
    shard: Shard,
    fmt: str,
    out: ShardWriter,
    produce: Produce,
    on_bytes: Callable[[int], None],
    on_tensor: Callable[[Item, torch.Tensor], None],
    pool: BufferPool,
) -> None:
    """Compute each tensor of ``shard`` with ``produce`` and write the file to ``out``.

    ``on_tensor`` sees every recovered tensor (the integrity sum); ``on_bytes`` is called after
    each tensor or piece (a place to stop on Ctrl-C). Safetensors shards are computed into
    ``pool``'s buffers and written by a thread; an item ``produce`` gives as pieces
    (:class:`~belle_decrypt.tensors.protocol.PiecedProduce`: only when nothing needs the whole
    tensor) is written piece by piece from a few small buffers. A --bin shard needs its own
    tensors for torch.save.
    """
    tm = import_torch()
    if fmt == BIN:
        state = {}
        for item in shard.items:
            fresh = tm.empty(item.shape, dtype=getattr(tm, item.dtype))
            state[item.name] = _computed(item, produce(item, fresh), on_tensor)
            on_bytes(item.nbytes)
        try:
            tm.save(state, out)
        except RuntimeError:
            if out.failure is not None:  # torch's C++ writer wraps the write error
                raise out.failure from None
            raise
        return
    header = safetensors_header(shard.items)
    out.write(len(header).to_bytes(8, "little"))
    out.write(header)
    writer = BackgroundWriter(out)
    pieced = produce if isinstance(produce, PiecedProduce) else None
    small = BufferPool(PIECE_SIZE, 1)
    try:
        with threads_beside_writer():
            for item in shard.items:
                parts = pieced.pieces(item, partial(small.take, writer.check)) if pieced else None
                if parts is not None:
                    _write_pieces(item, parts, writer, small, on_bytes)
                    continue
                flat = pool.take(writer.check)
                tensor = _computed(
                    item, produce(item, shaped(flat, item.shape, item.dtype)), on_tensor
                )
                if tensor.data_ptr() != flat.data_ptr():  # an input written as it is
                    pool.give_back(flat)
                    writer.put((tensor, None))
                else:
                    writer.put((tensor, partial(pool.give_back, flat)))
                del tensor
                on_bytes(item.nbytes)
            writer.close()
    finally:
        writer.abort()


def _write_pieces(
    item: Item,
    parts: Iterator[tuple[torch.Tensor, torch.Tensor | None]],
    writer: BackgroundWriter,
    pool: BufferPool,
    on_bytes: Callable[[int], None],
) -> None:
    """Write an item's pieces as they are made, in this thread, each buffer back to ``pool``
    once written; they must add up to the item's bytes in its dtype.

    The writing thread is drained first (the file's order). Pieces are only moved bytes: a
    piece made here is still in this core's cache for its write, where the writing thread
    reads it from another core's (measured on 8 layers: 3.1-3.3 s and 1.5-1.8 s of system
    time against 3.4-3.9 s and 2.5-2.9 s through the thread)."""
    writer.drain()
    done = 0
    with one_thread():
        for tensor, buffer in parts:
            if str(tensor.dtype) != f"torch.{item.dtype}" or not tensor.is_contiguous():
                raise AssertionError(f"{item.name}: a piece of {tensor.dtype}, not contiguous")
            count = tensor.numel() * tensor.element_size()
            done += count
            for chunk in tensor_chunks(tensor):
                writer.out.write(chunk)
            del tensor
            if buffer is not None:
                pool.give_back(buffer)
            del buffer
            on_bytes(count)
    if done != item.nbytes:
        raise AssertionError(f"{item.name}: pieces of {done} bytes, not {item.nbytes}")


Job = tuple["torch.Tensor", Callable[[], None] | None]
"""A tensor to write and what to call once it is written (its buffer back to a pool)."""


class BackgroundWriter:
    """Writes each tensor in a thread of its own while the main thread computes the next.

    torch's arithmetic and write() both release the GIL, so the two overlap. Each job is a
    tensor and what to call once it is written (its buffer back to a pool), also when that
    failed. An error in the thread (a full disk) is raised in the main thread at the next
    ``put``, ``close``, or wait for a buffer (``check``).
    """

    def __init__(self, out: ShardWriter) -> None:
        self.out = out
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=QUEUED)
        self.thread = threading.Thread(target=self._work, name="recover-write", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            tensor, written = job
            del job
            try:
                for piece in tensor_chunks(tensor):
                    if self.stopping.is_set():
                        return
                    self.out.write(piece)
            except BaseException as exc:
                self.error = exc
                return
            finally:
                del tensor
                if written is not None:
                    written()
                self.jobs.task_done()

    def check(self) -> None:
        """Raise the thread's error, or say that it stopped, if it did."""
        if self.error is not None:
            raise self.error
        if not self.thread.is_alive():
            raise OSError("the writing thread stopped")

    def put(self, job: Job | None) -> None:
        """Queue a tensor to write and what to call once it is written (None: the end) once
        the thread has room; waits in short steps so that Ctrl-C is seen."""
        while True:
            self.check()
            try:
                self.jobs.put(job, timeout=0.1)
                return
            except queue.Full:
                continue

    def drain(self) -> None:
        """Wait (in short steps, so that Ctrl-C is seen) until every queued tensor is
        written; raise the thread's error."""
        with self.jobs.all_tasks_done:
            while self.jobs.unfinished_tasks:
                self.check()
                self.jobs.all_tasks_done.wait(0.1)
        self.check()

    def close(self) -> None:
        """Wait until every queued tensor is written; raise the thread's error."""
        self.put(None)
        while self.thread.is_alive():
            self.thread.join(0.1)
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        """Stop the thread (after an error or an interrupt here) and wait for it."""
        self.stopping.set()
        while self.thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self.jobs.get_nowait()
            with contextlib.suppress(queue.Full):
                self.jobs.put_nowait(None)
            self.thread.join(0.1)


def _computed(
    item: Item, tensor: torch.Tensor, on_tensor: Callable[[Item, torch.Tensor], None]
) -> torch.Tensor:
    """The recovered tensor, checked and made contiguous, after ``on_tensor`` has seen it."""
    tensor = _checked(item, tensor).contiguous()
    on_tensor(item, tensor)
    return tensor


def _checked(item: Item, tensor: torch.Tensor) -> torch.Tensor:
    """The tensor, after making sure it is what the header promised."""
    if tuple(tensor.shape) != item.shape or str(tensor.dtype) != f"torch.{item.dtype}":
        raise AssertionError(f"{item.name}: computed {tensor.dtype} {list(tensor.shape)}")
    return tensor
