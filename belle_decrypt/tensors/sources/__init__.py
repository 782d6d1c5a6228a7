"""The sources: kinds of input folder that name, describe and read tensors.

Adding a source (Meta's ``consolidated.*.pth`` folder, a PEFT adapter folder): write a module
here with a class that has the attributes of
:class:`~belle_decrypt.tensors.protocol.TensorSource` (``load`` maps one tensor at a time;
``fail`` names the folder's role in a one-line InputError) and a kind
(:class:`~belle_decrypt.tensors.protocol.SourceKind`) whose ``recognises`` looks only at names,
then put the kind in :data:`SOURCES` before the Hugging Face folder, which takes any folder.
The pipeline, the checks and the sinks do not change; tests/test_tensor_pipeline.py adds a toy
source this way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from belle_decrypt.tensors.protocol import SourceKind, TensorSource
from belle_decrypt.tensors.sources.hfdir import HfFolder

SOURCES: tuple[SourceKind, ...] = (HfFolder(),)
"""The kinds tried in order; the first that recognises a folder opens it."""


def open_source(path: Path, role: str, kinds: Sequence[SourceKind] = SOURCES) -> TensorSource:
    """The folder at ``path`` opened by the first of ``kinds`` that recognises it; ``role``
    names it in messages (DIFF_DIR, BASE_DIR)."""
    kind = next((kind for kind in kinds if kind.recognises(path)), kinds[-1])
    return kind.open(path, role)
