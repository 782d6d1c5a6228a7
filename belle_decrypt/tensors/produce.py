"""How the run hands each output tensor to the sink: whole, or as pieces.

An item is computed whole by the recipe (``Recovery._produce``: its inputs loaded, ``combine``
into the sink's buffer). When the recipe says an item is an input as it is
(:class:`~belle_decrypt.tensors.protocol.Forwards`: ``convert``) and that input's source can
give it in pieces (:class:`~belle_decrypt.tensors.protocol.Pieced`: Meta's folder), a sink
that takes pieces gets them instead, so that a joined tensor is never held whole: memory is a
few pieces, whatever the number of Meta's files. Pieces are given only when nothing needs the
whole tensor (no sum rule); a diff's pieces are checked for NaN and Inf one by one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from belle_decrypt.tensors.protocol import (
    DIFF,
    Forwards,
    Item,
    Piece,
    Pieced,
    Produce,
    Recipe,
    TakeBuffer,
    TensorSource,
)
from belle_decrypt.tensors.sources import check_finite

if TYPE_CHECKING:
    import torch


class Producer:
    """The run's :class:`~belle_decrypt.tensors.protocol.PiecedProduce`."""

    def __init__(
        self,
        whole: Produce,
        recipe: Recipe,
        sources: Mapping[str, TensorSource],
        check_diff: bool,
    ) -> None:
        self.whole = whole
        self.recipe = recipe
        self.sources = sources
        self.check_diff = check_diff

    def __call__(self, item: Item, out: torch.Tensor) -> torch.Tensor:
        """The item computed whole (into ``out``, or an input as it is)."""
        return self.whole(item, out)

    def pieces(self, item: Item, take: TakeBuffer) -> Iterator[Piece] | None:
        """The item as its source's pieces when it is an input as it is, the source gives
        pieces and no sum needs the whole tensor; else None."""
        if self.recipe.sum_rule is not None or not isinstance(self.recipe, Forwards):
            return None
        forwarded = self.recipe.forwarded(item)
        if forwarded is None:
            return None
        role, name = forwarded
        source = self.sources[role]
        if not isinstance(source, Pieced):
            return None
        if role == DIFF and self.check_diff:
            return self._checked(source, name, source.pieces(name, take))
        return source.pieces(name, take)

    @staticmethod
    def _checked(source: TensorSource, name: str, pieces: Iterator[Piece]) -> Iterator[Piece]:
        for piece in pieces:
            check_finite(source, name, piece[0])
            yield piece
