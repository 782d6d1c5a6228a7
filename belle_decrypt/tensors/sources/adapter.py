"""PEFT LoRA adapter folders as a diff source (docs/FORMAT.md section 10).

An :class:`Adapter` is one folder, read and checked: its ``adapter_config.json`` (a whitelist,
:mod:`~belle_decrypt.tensors.sources.adapterconfig`), its ``adapter_model.safetensors`` or
``adapter_model.bin`` (a weights-only load), its LoRA pairs and the whole tensors it carries,
and its name when its SHA-256 is a published one. An :class:`AdapterChain` is the adapters of
one run in the order given (``recover A --then B``), one source to the pipeline: its tensors
are every adapter's, the second adapter's and later ones named ``NAME (adapter 2)``.
"""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from belle_decrypt.ground.cancel import Cancelled, CancelToken
from belle_decrypt.ground.errors import InputError
from belle_decrypt.streams.hashing import hash_file
from belle_decrypt.tensors.protocol import TensorInfo
from belle_decrypt.tensors.sources.adapterconfig import (
    CHINESE_ROWS,
    CONFIG_NAME,
    KNOWN,
    AdapterConfig,
    Known,
    read_config,
)
from belle_decrypt.tensors.sources.hfdir import WeightFolder

if TYPE_CHECKING:
    import torch

ADAPTER_SAFETENSORS = "adapter_model.safetensors"
ADAPTER_BIN = "adapter_model.bin"
PREFIX = "base_model.model."
EMBED = "model.embed_tokens.weight"
FLOATS = ("float16", "bfloat16", "float32")
TOKENIZER_FILES = ("tokenizer*", "special_tokens_map.json", "added_tokens.json")
"""The files that describe the tokenizer: the last adapter's that has them, else the base's."""


@dataclass(frozen=True)
class Lora:
    """One LoRA pair: the base tensor it changes, its A and B, rank and scale."""

    target: str
    a: TensorInfo
    b: TensorInfo
    embedding: bool
    rank: int
    scale: float

    @property
    def delta_shape(self) -> tuple[int, ...]:
        """The shape of the product as it is added to the weight."""
        if self.embedding:
            return (self.a.shape[1], self.b.shape[0])
        return (self.b.shape[0], self.a.shape[1])


class AdapterWeights(WeightFolder):
    """An adapter folder's one weight file, read as ``WeightFolder`` reads a model's."""

    def _open(self) -> None:
        entries = {p.name: p for p in self._list()}
        chosen = entries.get(ADAPTER_SAFETENSORS) or entries.get(ADAPTER_BIN)
        if chosen is None:
            raise self.fail(
                f"holds {CONFIG_NAME} but no {ADAPTER_SAFETENSORS} or {ADAPTER_BIN}: the "
                "download is incomplete; download the adapter's weights"
            )
        self.files = (chosen,)
        self.others = tuple(
            p for name, p in entries.items() if name not in (ADAPTER_SAFETENSORS, ADAPTER_BIN)
        )
        self._read_file(chosen)


class Adapter:
    """One adapter folder, read and checked; ``position`` is its place in the chain (1, 2...)."""

    def __init__(self, path: Path, position: int) -> None:
        self.path = path
        self.position = position
        self.role = "ADAPTER_DIR" if position == 1 else f"ADAPTER_DIR {position}"
        self.config: AdapterConfig = read_config(path)
        # Only an adapter_model.bin is ever recognised by its hash: begin hashing it at once,
        # beside the weights' load (torch's import the first time).
        bin_only = not (path / ADAPTER_SAFETENSORS).exists() and (path / ADAPTER_BIN).is_file()
        self.digest = FileDigest(path / ADAPTER_BIN) if bin_only else None
        self.loras: dict[str, Lora] = {}
        self.replaced: dict[str, TensorInfo] = {}
        self.known: Known | None = None
        try:
            self.weights = AdapterWeights.open(path, self.role)
        except BaseException:
            self.close_digest()
            raise
        try:
            self._sort_tensors()
        except BaseException:
            self.close()
            raise

    @property
    def file(self) -> Path:
        """The weight file read."""
        return self.weights.files[0]

    @property
    def rows(self) -> int | None:
        """Rows of the embedding the adapter carries whole, if it does."""
        info = self.replaced.get(EMBED)
        return info.shape[0] if info is not None else None

    @property
    def tokenizer(self) -> list[Path]:
        """The tokenizer files in the adapter's folder."""
        return [p for p in self.weights.others if tokenizer_file(p)]

    @property
    def label(self) -> str:
        """How the summary names it: the folder, and what it was recognised as."""
        if self.known is not None:
            return f"{self.path} ({self.known.name}, by its published SHA-256)"
        rows = self.rows
        if rows in CHINESE_ROWS:
            return f"{self.path} ({CHINESE_ROWS[rows]}, by its {rows}-row embedding)"
        return f"{self.path} ({len(self.loras)} LoRA pairs, {len(self.replaced)} whole tensors)"

    def name(self, tensor: str) -> str:
        """The chain's name of one of this adapter's tensors."""
        return tensor if self.position == 1 else f"{tensor} (adapter {self.position})"

    def fail(self, message: str, path: Path | None = None) -> InputError:
        """An InputError naming this adapter's role and the file concerned."""
        return InputError(f"({self.role}) {message}", path or self.file)

    def _sort_tensors(self) -> None:
        """Every tensor is a LoRA A/B, a whole tensor, or refused."""
        pairs: dict[str, dict[str, TensorInfo]] = {}
        for name, info in self.weights.tensors.items():
            rest = name.removeprefix(PREFIX)
            if rest == name:
                raise self.fail(
                    f"{name} is not a PEFT adapter tensor (they start with {PREFIX}); pass the "
                    "adapter folder as PEFT saved it"
                )
            if "lora_magnitude_vector" in rest:
                raise self.fail(
                    f"{name} is a DoRA magnitude: DoRA is not a plain product; merge it with PEFT"
                )
            if rest.endswith(".bias"):
                raise self.fail(
                    f"{name} is a bias tensor (bias {self.config.bias!r}): LLaMA has no biases "
                    "to merge it into; merge it with PEFT"
                )
            for suffix, part in (
                (".lora_A.weight", "A"),
                (".lora_B.weight", "B"),
                (".lora_embedding_A", "EA"),
                (".lora_embedding_B", "EB"),
            ):
                if rest.endswith(suffix):
                    pairs.setdefault(rest.removesuffix(suffix), {})[part] = info
                    break
            else:
                if not rest.endswith(".weight"):
                    raise self.fail(f"{name} is not a LoRA or weight tensor; merge it with PEFT")
                target = rest.removesuffix(".base_layer.weight").removesuffix(".weight")
                self.replaced[target + ".weight"] = info
        if not pairs:
            raise self.fail(
                "holds no LoRA tensors at all (like the few-hundred-byte file a broken "
                "PEFT/transformers pair saved for alpaca-lora); download the adapter again or "
                "ask its publisher for a good file"
            )
        for module, parts in sorted(pairs.items()):
            self.loras[module + ".weight"] = self._pair(module, parts)

    def _pair(self, module: str, parts: dict[str, TensorInfo]) -> Lora:
        embedding = "EA" in parts or "EB" in parts
        a = parts.get("EA" if embedding else "A")
        b = parts.get("EB" if embedding else "B")
        if a is None or b is None or len(parts) != 2:
            raise self.fail(
                f"{module} has {sorted(parts)} of its LoRA pair, not A and B: the file is "
                "incomplete; download it again"
            )
        rank, scale = self.config.rank_and_scale(module)
        for info in (a, b):
            if info.dtype not in FLOATS or len(info.shape) != 2:
                raise self.fail(f"{info.name} is {info.dtype} {list(info.shape)}, not a matrix")
        if a.shape[0] != rank or b.shape[1] != rank:
            raise self.fail(
                f"{module}'s A is {list(a.shape)} and B {list(b.shape)}, but the config gives "
                f"it rank {rank}: the config is not this adapter's; download both again",
                self.config.path,
            )
        return Lora(module + ".weight", a, b, embedding, rank, scale)

    def recognise(self) -> None:
        """Name the adapter when its ``adapter_model.bin`` has a published SHA-256 (all of
        them carry a Chinese-LLaMA-Alpaca vocabulary: no other adapter is hashed)."""
        if self.known is None and self.file.name == ADAPTER_BIN and self.rows in CHINESE_ROWS:
            digest = self.digest
            sha256 = digest.result() if digest is not None else hash_sha256(self.file)
            self.known = KNOWN.get(sha256)
        self.close_digest()

    def close_digest(self) -> None:
        """Stop the hashing begun at the start if it still runs (its result is not needed)."""
        if self.digest is not None:
            self.digest.stop()

    def close(self) -> None:
        """Stop the hashing and release the weight file."""
        self.close_digest()
        self.weights.close()


def hash_sha256(path: Path, cancel: CancelToken | None = None) -> str:
    """The file's SHA-256."""
    return hash_file(path, ("sha256",), cancel=cancel)["sha256"]


class FileDigest:
    """One file's SHA-256, computed in a thread started at once (hashlib releases the GIL, so
    it runs beside whatever the main thread does); :meth:`result` waits for it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cancel = CancelToken()
        self.sha256: str | None = None
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._work, name="adapter-sha256", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        try:
            self.sha256 = hash_sha256(self.path, self.cancel)
        except Cancelled:
            return
        except BaseException as exc:  # raised in the main thread, by result()
            self.failure = exc

    def result(self) -> str:
        """The digest; an error reading the file is raised here, as a hash in this thread
        would raise it. Waits in short steps, so that Ctrl-C is seen."""
        while self.thread.is_alive():
            self.thread.join(0.1)
        if self.failure is not None:
            raise self.failure
        if self.sha256 is None:  # stopped before: hash here
            return hash_sha256(self.path)
        return self.sha256

    def stop(self) -> None:
        """Stop hashing (within a chunk) and wait for the thread."""
        self.cancel.cancel()
        while self.thread.is_alive():
            self.thread.join(0.1)


def tokenizer_file(path: Path) -> bool:
    """Whether ``path`` is one of the files that describe a tokenizer."""
    return any(fnmatch.fnmatch(path.name, pattern) for pattern in TOKENIZER_FILES)


class AdapterChain:
    """The adapters of one run in order, as one :class:`~belle_decrypt.tensors.protocol.
    TensorSource` (the diff): the journal fingerprints and ``--manifest`` hashes every
    adapter's files, and each adapter tensor is loaded (and checked for NaN) by its chain name."""

    def __init__(self, adapters: list[Adapter]) -> None:
        self.adapters = adapters
        self.path = adapters[0].path
        self.files = tuple(p for a in adapters for p in (a.path / CONFIG_NAME, a.file))
        self.others = tuple(p for a in adapters for p in a.weights.others if p.name != CONFIG_NAME)
        self.config: dict[str, Any] | None = None
        self.tensors: dict[str, TensorInfo] = {}
        self._owners: dict[str, tuple[Adapter, str]] = {}
        for adapter in adapters:
            for name, info in adapter.weights.tensors.items():
                chained = adapter.name(name)
                self.tensors[chained] = TensorInfo(chained, info.dtype, info.shape, info.file)
                self._owners[chained] = (adapter, name)

    def load(self, name: str) -> torch.Tensor:
        """The tensor of the adapter that holds it."""
        adapter, own = self._owners[name]
        return adapter.weights.load(own)

    def fail(self, message: str, path: Path | None = None) -> InputError:
        """An InputError naming the adapter whose file ``path`` is (the first by default)."""
        owner = next((a for a in self.adapters if path in (a.file, a.path)), self.adapters[0])
        return owner.fail(message, path)

    def describe(self) -> list[str]:
        """One line per adapter, in order: what it is."""
        return [adapter.label for adapter in self.adapters]

    def close(self) -> None:
        """Release every adapter's file."""
        for adapter in self.adapters:
            adapter.close()


class AdapterKind:
    """A folder holding ``adapter_config.json``; several in order make one chain."""

    name = "peft-lora"

    def recognises(self, path: Path) -> bool:
        """Whether the folder holds ``adapter_config.json``."""
        return (path / CONFIG_NAME).is_file()

    def open(self, path: Path, role: str) -> AdapterChain:
        """The one adapter, as a chain of one."""
        return self.open_chain([path], role)

    def open_chain(self, paths: Sequence[Path], role: str) -> AdapterChain:
        """The adapters in the order given, each read and checked."""
        adapters: list[Adapter] = []
        try:
            for position, folder in enumerate(paths, start=1):
                if not folder.is_dir():
                    raise InputError("is not a folder; pass the adapter's folder", folder)
                adapters.append(Adapter(folder, position))
        except BaseException:
            for adapter in adapters:
                adapter.close()
            raise
        return AdapterChain(adapters)
