"""The sources: kinds of input folder that name, describe and read tensors.

Adding a source (Meta's ``consolidated.*.pth`` folder, a PEFT adapter folder): write a module
here with a class that has the attributes of
:class:`~belle_decrypt.tensors.protocol.TensorSource` (``load`` maps one tensor at a time;
``fail`` names the folder's role in a one-line InputError) and a kind
(:class:`~belle_decrypt.tensors.protocol.SourceKind`) whose ``recognises`` looks only at names,
then put the kind in :data:`SOURCES` before the Hugging Face folder, which takes any folder.
The pipeline, the checks and the sinks do not change; tests/test_tensor_pipeline.py adds a toy
source this way. Every diff tensor a source gives is checked for NaN and infinite values
(:func:`check_finite`) by the pipeline, whatever its source.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from belle_decrypt.ground.errors import InputError
from belle_decrypt.ground.torchload import import_torch
from belle_decrypt.tensors.protocol import ChainKind, SourceKind, TensorSource
from belle_decrypt.tensors.sources.adapter import AdapterKind
from belle_decrypt.tensors.sources.hfdir import HfFolder
from belle_decrypt.tensors.sources.meta import MetaKind

if TYPE_CHECKING:
    import torch

SOURCES: tuple[SourceKind, ...] = (AdapterKind(), MetaKind(), HfFolder())
"""The kinds tried in order; the first that recognises a folder opens it."""
FINITE_STEP = 1 << 24
"""Elements checked for NaN/Inf at a time (a 16 MiB mask at most, whatever the tensor)."""


def open_source(
    path: Path, role: str, kinds: Sequence[SourceKind] = SOURCES, more: Sequence[Path] = ()
) -> TensorSource:
    """The folder at ``path`` opened by the first of ``kinds`` that recognises it; ``role``
    names it in messages (DIFF_DIR, BASE_DIR). ``more``: folders that follow it in one chain
    (``--then``), which only a :class:`~belle_decrypt.tensors.protocol.ChainKind` takes."""
    kind = next((kind for kind in kinds if kind.recognises(path)), kinds[-1])
    if not more:
        return kind.open(path, role)
    if not isinstance(kind, ChainKind):
        raise InputError(
            f"({role}) is not a PEFT adapter (no adapter_config.json), and --then only chains "
            "LoRA adapters; recover a weight diff in a run of its own",
            path,
        )
    return kind.open_chain([path, *more], role)


def check_finite(source: TensorSource, name: str, tensor: torch.Tensor) -> None:
    """Refuse a diff tensor holding NaN or infinite values: no published diff or adapter has
    any, so they mean damage, and the sum would carry them silently into the model."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return
    tm = import_torch()
    # One vectorised pass and no mask: a NaN makes both ends NaN, an infinity is an end. Only
    # a damaged tensor pays for the count.
    lowest, highest = tm.aminmax(tensor)
    if math.isfinite(float(lowest)) and math.isfinite(float(highest)):
        return
    flat, bad = tensor.reshape(-1), 0
    for start in range(0, flat.numel(), FINITE_STEP):  # a mask of one step, not the tensor's
        bad += int((~tm.isfinite(flat[start : start + FINITE_STEP])).sum())
    if bad:
        values = "value" if bad == 1 else "values"
        raise source.fail(
            f"{name} holds {bad:,} NaN or infinite {values}: the diff is damaged (no published "
            "diff has any); download it again, or pass --allow-nonfinite to recover it as it "
            "is; nothing was left under a final name",
            source.tensors[name].file,
        )
