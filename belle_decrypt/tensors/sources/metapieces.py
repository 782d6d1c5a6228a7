"""Meta's slices of one tensor joined piece by piece: the bytes of the joined (and, for q and
k, permuted) tensor in order, a few MiB at a time, never the whole tensor (docs/FORMAT.md
section 8 has the slicing and the permutation; :mod:`~belle_decrypt.tensors.sources.meta`
opens the files).

A column join (the embedding, ``wo``, ``w2``) is given as blocks of whole rows, each row the
slices' rows side by side; q and k as blocks of each slice's rows in HF's order; every other
tensor (a row join, a replicated norm, a single file's tensor) as its slices copied in blocks.
Each block is made in a buffer the caller gives (its size bounds the block), also where the
mapped slice could be written as it is: write() from the mapping faults its pages in inside the
kernel's copy, slower than this copy into memory that stays in the CPU's cache for the write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from belle_decrypt.ground.torchload import import_torch
from belle_decrypt.tensors.protocol import Piece, TakeBuffer, TensorInfo

if TYPE_CHECKING:
    import torch


def joined_pieces(
    slices: Sequence[torch.Tensor],
    dim: int | None,
    head_dim: int,
    info: TensorInfo,
    take: TakeBuffer,
    before_each: Callable[[], None],
) -> Iterator[Piece]:
    """The tensor ``info`` joined from Meta's ``slices`` on ``dim`` (None: replicated, the
    first is it), its rows permuted per head of ``head_dim`` rows (0: not q or k), as pieces
    made in buffers from ``take``; ``before_each`` runs before each piece is read (the files'
    size check)."""
    tm = import_torch()
    if dim is None:
        slices = slices[:1]
    dtype, cols = getattr(tm, info.dtype), info.shape[-1]
    row_bytes = cols * slices[0].element_size()
    if head_dim:
        for piece in slices:
            order = permuted_rows(piece.shape[0], head_dim)
            for start, block, buffer in row_blocks(piece.shape[0], row_bytes, take):
                before_each()
                rows = order[start : start + block.numel() // row_bytes]
                yield tm.index_select(piece, 0, rows, out=_rows(block, dtype, cols)), buffer
    elif dim == 1 and len(slices) > 1:
        for start, block, buffer in row_blocks(info.shape[0], row_bytes, take):
            before_each()
            end = start + block.numel() // row_bytes
            sides = [piece[start:end] for piece in slices]
            yield tm.cat(sides, dim=1, out=_rows(block, dtype, cols)), buffer
    else:
        for piece in slices:
            flat = piece.contiguous().view(-1)
            for start, block, buffer in row_blocks(flat.numel(), flat.element_size(), take):
                before_each()
                out = block.view(dtype)
                yield out.copy_(flat[start : start + out.numel()]), buffer


def permuted_rows(rows: int, head_dim: int) -> torch.Tensor:
    """The rows of one slice of q or k in HF's order: each head's interleaved rotary pairs
    (rows 0, 1, 2, 3, ...) become its halves (rows 0, 2, ..., then 1, 3, ...)."""
    order: torch.Tensor = (
        import_torch().arange(rows).view(-1, head_dim // 2, 2).transpose(1, 2).reshape(-1)
    )
    return order


def row_blocks(
    rows: int, row_bytes: int, take: TakeBuffer
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Rows ``0..rows`` of ``row_bytes`` each in blocks: each block's first row, its bytes
    (as many whole rows as a buffer from ``take`` holds) and that buffer."""
    start = 0
    while start < rows:
        buffer = take()
        count = min(rows - start, buffer.numel() // row_bytes)
        if count == 0:
            raise AssertionError(f"a buffer of {buffer.numel()} bytes holds no row of {row_bytes}")
        yield start, buffer[: count * row_bytes], buffer
        start += count


def _rows(block: torch.Tensor, dtype: torch.dtype, cols: int) -> torch.Tensor:
    """A byte block seen as whole rows of ``cols`` elements of ``dtype``."""
    rows: torch.Tensor = block.view(dtype).view(-1, cols)
    return rows
