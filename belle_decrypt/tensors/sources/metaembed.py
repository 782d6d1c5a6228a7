"""Meta's LLaMA checkpoint read for its embedding alone (docs/FORMAT.md section 3, 3.8).

BiLLa's base needs only ``tok_embeddings.weight``: this source opens Meta's folder (one
``consolidated.00.pth``: LLaMA-7B) or a single torch checkpoint file holding Meta's or the
Hugging Face embedding, and shows that one tensor under its Hugging Face name. It is the only
place that reads Meta's layout; a full Meta source (every tensor renamed) would take its place.
Recipes offer it through their ``base_kinds``; it is not among the pipeline's own sources.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from belle_decrypt.tensors.llama import VOCAB_TENSORS
from belle_decrypt.tensors.protocol import TensorInfo
from belle_decrypt.tensors.sources.hfdir import WeightFolder

EMBED = VOCAB_TENSORS[0]
META_EMBED = "tok_embeddings.weight"
META_FILE = "consolidated.00.pth"
# LLaMA-2's params.json says norm_eps 1e-05 (LLaMA-1: 1e-06); its weights are bfloat16.
LLAMA2_NORM_EPS = 1e-05


class EmbeddingOnly(WeightFolder):
    """A checkpoint of which only the embedding is read, mapped like a folder's ``.bin``."""

    def _open(self) -> None:
        file = self.path
        if not self.path.is_file():
            pieces = sorted(self.path.glob("consolidated.*.pth"))
            if len(pieces) != 1:
                raise self.fail(
                    f"holds {len(pieces)} consolidated.*.pth files: BiLLa was made from "
                    f"LLaMA-7B (one file); pass LLaMA-7B's folder or its {META_FILE}"
                )
            file = pieces[0]
            self._check_llama2_params(self.path / "params.json")
        self._check_entry(file)
        self._read_file(file)
        info = self.tensors.get(META_EMBED) or self.tensors.get(EMBED)
        if info is None:
            raise self.fail(
                f"holds neither {META_EMBED} (Meta's) nor {EMBED}: pass LLaMA-7B's "
                f"{META_FILE} or its Hugging Face folder",
                file,
            )
        if info.dtype == "bfloat16":
            raise self.fail(
                f"its {info.name} is bfloat16: this is LLaMA-2, but BiLLa was made from "
                "LLaMA-1 (float16); pass LLaMA-1 7B",
                file,
            )
        handle = self._handles[file]
        self._handles[file] = {EMBED: handle[info.name]}
        self.tensors = {EMBED: TensorInfo(EMBED, info.dtype, info.shape, file)}
        self.files = (file,)

    def _check_llama2_params(self, params: Path) -> None:
        if not params.is_file():
            return
        try:
            doc: Any = json.loads(params.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise self.fail(f"cannot read params.json: {exc}", params) from exc
        if isinstance(doc, dict) and doc.get("norm_eps") == LLAMA2_NORM_EPS:
            raise self.fail(
                "params.json says norm_eps 1e-05: this is LLaMA-2, but BiLLa was made from "
                "LLaMA-1 (1e-06); pass LLaMA-1 7B",
                params,
            )


class MetaEmbedding:
    """The :class:`~belle_decrypt.tensors.protocol.SourceKind` of :class:`EmbeddingOnly`:
    a single file, or a folder with ``consolidated.*.pth`` files."""

    name = "meta-embedding"

    def recognises(self, path: Path) -> bool:
        """A file, or a folder holding Meta's ``consolidated.*.pth``."""
        return path.is_file() or (path.is_dir() and any(path.glob("consolidated.*.pth")))

    def open(self, path: Path, role: str) -> EmbeddingOnly:
        """The checkpoint's embedding, opened and checked."""
        opened = EmbeddingOnly.open(path, role)
        assert isinstance(opened, EmbeddingOnly)
        return opened
