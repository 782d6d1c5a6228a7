"""Meta's own LLaMA download read as a Hugging Face model: a tensor source for every recipe.

A Meta folder holds ``consolidated.NN.pth`` (one model-parallel slice of each weight per
file), ``params.json`` and ``checklist.chk``, with ``tokenizer.model`` beside it or one level
up. :class:`MetaFolder` offers what the Hugging Face folder offers, under the HF names: each
tensor's joined shape and Meta's dtype, ``load(name)`` joining the slices from the mapped files
and applying the q/k permutation (one tensor at a time, never the whole model), ``pieces(name,
take)`` giving the same bytes a few MiB at a time (``convert``: no joined tensor held whole),
and the config an HF conversion would have. The files are mapped and leased as the Hugging
Face folder's are (:class:`~belle_decrypt.tensors.sources.hfdir.WeightFolder`). docs/FORMAT.md
section 8 states every rule used here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from belle_decrypt.checks.keyid import is_meta_folder
from belle_decrypt.checks.manifest import ManifestEntry
from belle_decrypt.ground.errors import InputError
from belle_decrypt.ground.torchload import import_torch
from belle_decrypt.tensors.listed import Listed
from belle_decrypt.tensors.llama import VOCAB_TENSORS, state_dict_key
from belle_decrypt.tensors.protocol import Piece, TakeBuffer, TensorInfo
from belle_decrypt.tensors.sources.hfdir import WeightFolder
from belle_decrypt.tensors.sources.leases import LEASES
from belle_decrypt.tensors.sources.metafiles import (
    CHECKLIST,
    FIRST_FILE,
    PARAMS,
    ROPE_FREQS,
    SHARD_RE,
    Params,
    check_small_files,
    expected_shapes,
    find_tokenizer,
    hf_name,
    listed_checksums,
    published_sha256,
    read_checklist,
    read_params,
    refuse_llama2_params,
    size_folder,
)
from belle_decrypt.tensors.sources.metapieces import joined_pieces

if TYPE_CHECKING:
    import torch

EMBED, META_EMBED = VOCAB_TENSORS[0], "tok_embeddings.weight"


@dataclass(frozen=True)
class Part:
    """Where one HF tensor comes from: Meta's name, the join dimension, the heads to permute."""

    meta: str
    dim: int | None
    heads: int


class MetaFolder(WeightFolder):
    """Meta's files of one model size, opened and checked, read tensor by tensor.

    Everything that can be wrong with the folder is found by ``open`` (exit 2): a missing
    file, a gap in the numbering, a file that is not a torch checkpoint, slices that do not add
    up, a replicated tensor that differs between files.
    """

    def __init__(self, path: Path, role: str) -> None:
        super().__init__(path, role)
        self.tokenizer = path / "tokenizer.model"
        self.version = 1
        self.dtype = "float16"
        self.params = Params(0, 0, 0, 0, 0.0, 1, None)
        self.parts: dict[str, Part] = {}
        self.checklist: dict[str, ManifestEntry] = {}
        self.listed: list[Listed] = []
        """Each weight file's checksums to check while it is read (checklist.chk's md5,
        Meta's published SHA-256 where the file is known)."""
        self.hf_layout = True
        """q and k permuted to the Hugging Face layout as they are loaded (False: Meta's
        layout as it is, for a conversion straight to GGUF: protocol.Rotary)."""
        self._slices: list[dict[str, torch.Tensor]] = []

    @classmethod
    def open_meta(
        cls,
        path: Path,
        role: str,
        *,
        size: str | None = None,
        version: int | None = None,
        verify: bool = True,
    ) -> MetaFolder:
        """Find, open and check the folder (``size``: a size folder under ``path``;
        ``version``: LLaMA-1 or 2 as given, not told from the tensors; ``verify``: params.json
        and tokenizer.model checked against their checklists, and :attr:`listed` filled)."""
        folder = cls(size_folder(path, size, role) if size is not None else path, role)
        try:
            folder._open_meta(version, verify)
        except BaseException:
            folder.close()
            raise
        return folder

    @classmethod
    def open_embedding(cls, path: Path, role: str) -> MetaFolder:
        """Only the embedding of LLaMA-7B, under its HF name (BiLLa's base, docs/FORMAT.md
        3.8): Meta's folder of one ``consolidated.00.pth``, or a single torch checkpoint file
        holding Meta's or the HF embedding. Nothing else of the folder is read or checked."""
        folder = cls(path, role)
        try:
            folder._open_embedding()
        except BaseException:
            folder.close()
            raise
        return folder

    def __enter__(self) -> MetaFolder:
        return self

    def _open(self) -> None:
        self._open_meta(None, True)

    def close(self) -> None:
        """Drop the mapped files and their leases."""
        self._slices.clear()
        super().close()

    def require_llama1(self) -> None:
        """Refuse LLaMA-2 as a recipe's base: every additive release was made from LLaMA-1."""
        if self.version != 1:
            raise self.fail(
                f"is LLaMA-2 ({self.dtype} tensors), but these diffs were made against "
                "LLaMA-1; pass Meta's LLaMA-1 folder"
            )

    def _open_meta(self, version: int | None, verify: bool) -> None:
        if not self.path.is_dir():
            raise self.fail("no such folder; pass Meta's size folder (7B/, llama-2-13b/, ...)")
        self.params = read_params(self.path / PARAMS, self.fail)
        self.tokenizer = find_tokenizer(self.path, self.fail)
        self.checklist = read_checklist(self.path / CHECKLIST, self.fail)
        self.files = self._shards()
        if verify:
            check_small_files(self.path, self.tokenizer, self.checklist, self.fail)
        for file in self.files:
            self._slices.append(self._map(file))
        self._map_names()
        self.dtype = self._dtype()
        grouped = self.params.n_kv_heads != self.params.n_heads
        self.version = version or (2 if self.dtype == "bfloat16" or grouped else 1)
        self._check_replicas()
        vocab = self.tensors["model.embed_tokens.weight"].shape[0]
        self.config = self.params.config(self.version, vocab, self.dtype)
        self.others = (self.tokenizer,)
        if verify:
            published = published_sha256(self.params, self.version, vocab, len(self.files))
            self.listed = listed_checksums(self.files, self.checklist, published)

    def _open_embedding(self) -> None:
        file = self.path
        if not file.is_file():
            found = sorted(self.path.glob("consolidated.*.pth"))
            if len(found) != 1:
                raise self.fail(
                    f"holds {len(found)} consolidated.*.pth files: BiLLa was made from "
                    f"LLaMA-7B (one file); pass LLaMA-7B's folder or its {FIRST_FILE}"
                )
            file = found[0]
            refuse_llama2_params(self.path / PARAMS, self.fail)
        self._check_entry(file)
        self._read_file(file)
        info = self.tensors.get(META_EMBED) or self.tensors.get(EMBED)
        if info is None:
            raise self.fail(
                f"holds neither {META_EMBED} (Meta's) nor {EMBED}: pass LLaMA-7B's "
                f"{FIRST_FILE} or its Hugging Face folder",
                file,
            )
        if info.dtype == "bfloat16":
            raise self.fail(
                f"its {info.name} is bfloat16: this is LLaMA-2, but BiLLa was made from "
                "LLaMA-1 (float16); pass LLaMA-1 7B",
                file,
            )
        handle = self._handles.pop(file)
        tensor = handle[info.name] if isinstance(handle, dict) else handle.tensor(info)
        self._slices = [{info.name: tensor}]
        self.parts = {EMBED: Part(info.name, None, 0)}
        self.tensors = {EMBED: TensorInfo(EMBED, info.dtype, info.shape, file)}
        self.files, self.dtype = (file,), info.dtype

    def _shards(self) -> tuple[Path, ...]:
        numbers = {}
        for name in os.listdir(self.path):
            match = SHARD_RE.match(name)
            if match is not None:
                numbers[int(match.group(1))] = self.path / name
        for name in sorted(n for n in self.checklist if SHARD_RE.match(n)):
            if not (self.path / name).exists():
                raise self.fail(
                    f"{CHECKLIST} lists {name}, which is missing: download it", self.path / name
                )
        if not numbers:
            raise self.fail("holds no consolidated.NN.pth files: download them")
        for number in range(max(numbers) + 1):
            if number not in numbers:
                raise self.fail(
                    f"consolidated.{number:02d}.pth is missing (the files are numbered from 00 "
                    "without a gap): download it",
                    self.path / f"consolidated.{number:02d}.pth",
                )
        return tuple(numbers[n] for n in sorted(numbers))

    def _map(self, file: Path) -> dict[str, torch.Tensor]:
        """One file mapped (weights_only) and leased, as the Hugging Face folder's ``.bin``."""
        self._check_entry(file)
        try:
            with open(file, "rb") as handle:
                head = handle.read(8)
            fd = os.open(file, os.O_RDONLY)
        except OSError as exc:
            raise self.fail(f"cannot read: {exc.strerror or exc}", file) from exc
        self._held[file] = (fd, os.fstat(fd).st_size)
        LEASES.take(fd, file, self.role)
        self._read_pickle(file, head)
        mapped: dict[str, torch.Tensor] = self._handles.pop(file)
        return mapped

    def _map_names(self) -> None:
        """Every file's names, Meta's table, and the joined shapes checked against params."""
        first = self._slices[0]
        for number, handle in enumerate(self._slices[1:], start=1):
            if set(handle) != set(first):
                extra = sorted(set(handle) ^ set(first))[0]
                raise self.fail(
                    f"holds other tensors than {self.files[0].name} ({extra}): a file of "
                    "another model; download it again",
                    self.files[number],
                )
        parts: dict[str, Part] = {}
        for name in first:
            if name == ROPE_FREQS:
                continue
            found = hf_name(name)
            if found is None:
                raise self.fail(
                    f"holds {name}, which is not a LLaMA tensor: not Meta's file", self.files[0]
                )
            hf, dim = found
            heads = 0
            if hf.endswith("q_proj.weight"):
                heads = self.params.n_heads
            elif hf.endswith("k_proj.weight"):
                heads = self.params.n_kv_heads
            parts[hf] = Part(name, dim, heads)
        vocab_part = parts.get("model.embed_tokens.weight")
        vocab = int(first[vocab_part.meta].shape[0]) if vocab_part is not None else 0
        wanted = expected_shapes(self.params, vocab)
        missing = sorted(set(wanted) - set(parts), key=state_dict_key)
        if missing:
            raise self.fail(
                f"has no tensor for {missing[0]} ({PARAMS} says {self.params.n_layers} layers): "
                "the files are of another model; download them again",
                self.files[0],
            )
        for hf in sorted(parts, key=state_dict_key):
            self.parts[hf] = parts[hf]
            shape = self._joined_shape(parts[hf])
            if shape != wanted.get(hf):
                raise self.fail(
                    f"{parts[hf].meta} joins to {list(shape)}, but {PARAMS} gives "
                    f"{list(wanted.get(hf, ()))}: the slices do not add up (a file missing or "
                    "of another model); download the folder again",
                    self.files[-1],
                )
            self.tensors[hf] = TensorInfo(hf, "", shape, self.files[0])
        for part in self.parts.values():
            rows = [handle[part.meta].shape[0] for handle in self._slices]
            if part.heads and any(r % self.params.head_dim for r in rows):
                raise self.fail(
                    f"{part.meta}'s slices are not whole attention heads: not Meta's slicing; "
                    "download the folder again",
                    self.files[0],
                )

    def _joined_shape(self, part: Part) -> tuple[int, ...]:
        shapes = [tuple(handle[part.meta].shape) for handle in self._slices]
        first = shapes[0]
        for number, shape in enumerate(shapes):
            # Meta's slices are equal parts of the whole
            if shape != first or (part.dim is not None and part.dim >= len(shape)):
                raise self.fail(
                    f"{part.meta} has shape {list(shape)} here but {list(first)} in "
                    f"{self.files[0].name}: the slices do not add up (a file of another model); "
                    "download it again",
                    self.files[number],
                )
        if part.dim is None:
            return first
        joined = list(first)
        joined[part.dim] = sum(shape[part.dim] for shape in shapes)
        return tuple(joined)

    def _dtype(self) -> str:
        dtypes = {
            str(t.dtype).removeprefix("torch.")
            for handle in self._slices
            for name, t in handle.items()
            if name != ROPE_FREQS  # a computed buffer, dropped
        }
        if len(dtypes) != 1 or not dtypes <= {"float16", "bfloat16"}:
            raise self.fail(
                f"holds tensors of {', '.join(sorted(dtypes))}: LLaMA-1 is float16 and LLaMA-2 "
                "bfloat16 throughout; download the folder again",
                self.files[0],
            )
        dtype = dtypes.pop()
        self.tensors = {
            name: TensorInfo(name, dtype, info.shape, info.file)
            for name, info in self.tensors.items()
        }
        return dtype

    def _check_replicas(self) -> None:
        """Replicated tensors (the norms) must be equal in every file: else a file is corrupt
        or from another download, and that file is named."""
        tm = import_torch()
        names = [part.meta for part in self.parts.values() if part.dim is None]
        if ROPE_FREQS in self._slices[0]:
            names.append(ROPE_FREQS)
        for name in names:
            first = self._slices[0][name]
            for number, handle in enumerate(self._slices[1:], start=1):
                if not tm.equal(handle[name], first):
                    raise self.fail(
                        f"{name} differs from {self.files[0].name}'s, but every file holds the "
                        "same copy: this file is corrupt or from another download; download it "
                        "again",
                        self.files[number],
                    )

    def load(self, name: str) -> torch.Tensor:
        """The HF tensor ``name``: Meta's slices joined (q and k permuted from Meta's
        interleaved rotary pairs to HF's halves, unless :attr:`hf_layout` is False), in a new
        tensor. Only elements move: the bits are Meta's. A tensor that needs neither
        (replicated, or the only file's unpermuted) is the mapped one itself. Each file's size
        is checked first, as the Hugging Face folder's ``load`` does."""
        tm = import_torch()
        info, part = self.tensors[name], self.parts[name]
        for file in self.files:
            self._check_size(file)
        slices = [handle[part.meta] for handle in self._slices]
        permuted = bool(part.heads) and self.hf_layout
        if part.dim is None or (len(slices) == 1 and not permuted):
            return slices[0]
        out: torch.Tensor = tm.empty(info.shape, dtype=getattr(tm, info.dtype))
        try:
            if permuted:
                half = self.params.head_dim // 2
                start = 0
                for piece in slices:
                    rows, cols = piece.shape
                    heads = rows // (2 * half)
                    target = out[start : start + rows].view(heads, 2, half, cols)
                    target.copy_(piece.view(heads, half, 2, cols).transpose(1, 2))
                    start += rows
            else:
                tm.cat(slices, dim=part.dim, out=out)
        except RuntimeError as exc:
            raise self._damaged(part, exc) from exc
        return out

    def _damaged(self, part: Part, exc: RuntimeError) -> InputError:
        """The line for a tensor torch could not read from the mapped files."""
        return self.fail(
            f"cannot read {part.meta} ({str(exc).splitlines()[0]}): truncated or damaged; "
            "download it again",
            self.files[0],
        )

    def pieces(self, name: str, take: TakeBuffer) -> Iterator[Piece]:
        """The HF tensor ``name``'s bytes in order (q and k as :attr:`hf_layout` says), a few
        MiB at a time, never joined whole (a :class:`~belle_decrypt.tensors.protocol.Pieced` source;
        :func:`~belle_decrypt.tensors.sources.metapieces.joined_pieces` says how). Each file's
        size is checked before each piece."""
        info, part = self.tensors[name], self.parts[name]
        slices = [handle[part.meta] for handle in self._slices]
        heads = self.params.head_dim if part.heads and self.hf_layout else 0
        try:
            yield from joined_pieces(slices, part.dim, heads, info, take, self._check_sizes)
        except RuntimeError as exc:
            raise self._damaged(part, exc) from exc

    def _check_sizes(self) -> None:
        for file in self.files:
            self._check_size(file)


class MetaKind:
    """Meta's folder as a :class:`~belle_decrypt.tensors.protocol.SourceKind`."""

    name = "meta"

    def recognises(self, path: Path) -> bool:
        """A folder of ``consolidated.NN.pth`` files, or with a params.json and no HF weights."""
        return path.is_dir() and is_meta_folder(path)

    def open(self, path: Path, role: str) -> MetaFolder:
        """The folder opened and checked (see :class:`MetaFolder`); as DIFF_DIR, refused."""
        if role == "DIFF_DIR":
            raise InputError(
                f"({role}) holds Meta's original consolidated.*.pth checkpoint; that is LLaMA "
                "itself, not a diff: pass it as BASE_DIR (recover reads Meta's files), or "
                "convert it with `belle-decrypt convert LLAMA_DIR OUT_DIR`",
                path,
            )
        return MetaFolder.open_meta(path, role)


class MetaEmbedding:
    """:meth:`MetaFolder.open_embedding` as a
    :class:`~belle_decrypt.tensors.protocol.SourceKind`: a single file, or a folder with
    ``consolidated.*.pth`` files. Not among the pipeline's own kinds: BiLLa's recipes offer it
    through their ``base_kinds``."""

    name = "meta-embedding"

    def recognises(self, path: Path) -> bool:
        """A file, or a folder holding Meta's ``consolidated.*.pth``."""
        return path.is_file() or (path.is_dir() and any(path.glob("consolidated.*.pth")))

    def open(self, path: Path, role: str) -> MetaFolder:
        """The checkpoint's embedding, opened and checked."""
        return MetaFolder.open_embedding(path, role)
