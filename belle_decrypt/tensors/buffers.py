"""Reused memory for the recovered tensors, so that a 7B model is not 300 fresh allocations.

A fresh tensor costs its page faults (the kernel zeroes every page) as much as the
arithmetic itself; filling buffers that are already mapped is several times faster. The pool
hands out output buffers and takes them back once the writing thread has written them; the
scratch space holds the inputs converted to the recipe's dtype, used only while computing.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from belle_decrypt.ground.torchload import import_torch

if TYPE_CHECKING:
    import torch


def data_size(shape: tuple[int, ...], dtype: str) -> int:
    """Bytes of a tensor of ``shape`` and ``dtype`` (named as torch names it)."""
    count = 1
    for dim in shape:
        count *= dim
    sizes = {"float64": 8, "int64": 8, "float32": 4, "int32": 4, "float16": 2, "bfloat16": 2}
    return count * sizes.get(dtype, 2 if dtype == "int16" else 1)


def shaped(flat: torch.Tensor, shape: tuple[int, ...], dtype: str) -> torch.Tensor:
    """A tensor of ``shape`` and ``dtype`` over the start of the byte buffer ``flat``."""
    tm = import_torch()
    view: torch.Tensor = flat[: data_size(shape, dtype)].view(getattr(tm, dtype)).view(shape)
    return view


class BufferPool:
    """``count`` output buffers of ``size`` bytes each, allocated when first needed."""

    def __init__(self, size: int, count: int = 2) -> None:
        self.size = size
        self.unmade = count
        self.free: queue.Queue[torch.Tensor] = queue.Queue()

    def take(self, waiting_on: Callable[[], None] | None = None) -> torch.Tensor:
        """A free byte buffer; waits (in short steps, so Ctrl-C is seen) for one to come back.

        ``waiting_on`` is called at each step and raises when the worker that returns the
        buffers has died, so that its failure wakes the waiter instead of leaving it waiting.
        """
        if self.free.empty() and self.unmade > 0:
            self.unmade -= 1
            buffer: torch.Tensor = import_torch().empty(self.size, dtype=import_torch().uint8)
            return buffer
        while True:
            try:
                return self.free.get(timeout=0.1)
            except queue.Empty:
                if waiting_on is not None:
                    waiting_on()

    def give_back(self, buffer: torch.Tensor) -> None:
        """Return a buffer whose contents are no longer needed."""
        self.free.put(buffer)


class Scratch:
    """One growing byte buffer per use, for dtype conversions inside one computation."""

    def __init__(self) -> None:
        self.slots: dict[str, torch.Tensor] = {}

    def empty(self, slot: str, shape: tuple[int, ...], dtype: str) -> torch.Tensor:
        """A tensor of ``shape`` and ``dtype`` over the slot's reused memory (its contents
        undefined)."""
        needed = data_size(shape, dtype)
        flat = self.slots.get(slot)
        if flat is None or flat.numel() < needed:
            tm = import_torch()
            self.slots.pop(slot, None)
            flat = self.slots[slot] = tm.empty(needed, dtype=tm.uint8)
        return shaped(flat, shape, dtype)

    def converted(self, slot: str, tensor: torch.Tensor, dtype: str) -> torch.Tensor:
        """``tensor`` converted to ``dtype`` (exactly as ``.to`` does) in reused memory."""
        out = self.empty(slot, tuple(tensor.shape), dtype)
        out.copy_(tensor)
        return out


@contextlib.contextmanager
def _torch_threads(fewer: Callable[[int], int]) -> Iterator[None]:
    """torch's intra-op thread count set to ``fewer(count now)`` for the block, then back."""
    tm = import_torch()
    before = tm.get_num_threads()
    tm.set_num_threads(fewer(before))
    try:
        yield
    finally:
        tm.set_num_threads(before)


def one_thread() -> contextlib.AbstractContextManager[None]:
    """torch's worker threads off while bytes are only moved (Meta's slices joined in
    pieces): they would spin against the writing thread for the cores, several times slower
    than one thread copying (measured: a 7B conversion from 8 files 5.6 s against 12.6 s)."""
    return _torch_threads(lambda _: 1)


def threads_beside_writer() -> contextlib.AbstractContextManager[None]:
    """torch computes with one intra-op thread fewer (at least one) while the writing threads
    hash and write: on two cores, a second intra-op thread and the writer fight for one
    core, and every parallel region then waits for a thread the scheduler has put aside
    (the LoRA merge measured 2-5x slower under load, benchmarks/bench_lora.py)."""
    return _torch_threads(lambda before: max(1, before - 1))
