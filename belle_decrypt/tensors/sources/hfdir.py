"""A Hugging Face model folder, read safely: which weight files, what tensors, one at a time.

The folder may be a git clone, a hub-cache snapshot whose files are symbolic links to blobs,
or a plain folder; weights are ``*.safetensors`` (preferred when both are present, as
transformers does) or ``pytorch_model*.bin`` torch zip pickles, sharded or not, with or
without an index JSON. Names, dtypes and shapes are read without reading tensor data, and a
tensor is loaded only when asked for: safetensors through the ``safetensors`` package, torch
pickles mapped with ``weights_only=True`` so that no unpickling can run code.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import pickle
import stat
import struct
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from belle_decrypt.ground.errors import InputError, OutputError
from belle_decrypt.ground.torchload import import_torch
from belle_decrypt.layouts.container import LFS_POINTER_PREFIX, SUFFIX, is_lfs_pointer
from belle_decrypt.tensors.buffers import data_size
from belle_decrypt.tensors.protocol import TensorInfo
from belle_decrypt.tensors.sources.hubcache import snapshot
from belle_decrypt.tensors.sources.leases import LEASES

if TYPE_CHECKING:
    import torch

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
ZIP_MAGIC = b"PK\x03\x04"
# Every pickle of protocol 2 or later (torch's pre-1.6 format among them) starts so.
PICKLE_MAGIC = b"\x80"
CONVERT_HINT = (
    "convert it to the Hugging Face layout first (transformers' "
    "convert_llama_weights_to_hf.py --input_dir LLAMA_DIR --model_size 7B --output_dir BASE_DIR)"
)
# safetensors' dtype names and torch's, for the dtypes a checkpoint can hold.
SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


class WeightFolder:
    """The weight files of one model folder, opened for reading tensor by tensor.

    ``role`` names the folder in messages (``DIFF_DIR``, ``BASE_DIR``).
    """

    def __init__(self, path: Path, role: str) -> None:
        self.path = path
        self.role = role
        self.files: tuple[Path, ...] = ()
        self.others: tuple[Path, ...] = ()
        self.tensors: dict[str, TensorInfo] = {}
        self.config: dict[str, Any] | None = None
        self._handles: dict[Path, Any] = {}
        # Each weight file held open with its size when opened: see ``load``.
        self._held: dict[Path, tuple[int, int]] = {}

    @classmethod
    def open(cls, path: Path, role: str) -> WeightFolder:
        """List and open the weight files, check them, and read every tensor's metadata."""
        folder = cls(path, role)
        try:
            folder._open()
        except BaseException:
            folder.close()
            raise
        return folder

    def __enter__(self) -> WeightFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the open files and mappings."""
        self._handles.clear()
        for fd, _ in self._held.values():
            LEASES.release(fd)
            os.close(fd)
        self._held.clear()

    def fail(self, message: str, path: Path | None = None) -> InputError:
        """An InputError naming this folder's role and the file concerned."""
        return InputError(f"({self.role}) {message}", path or self.path)

    def _open(self) -> None:
        self.path = snapshot(self.path, self.fail)
        entries = self._list()
        safetensors = [p for p in entries if p.name.endswith(".safetensors")]
        bins = [
            p for p in entries if p.name.startswith("pytorch_model") and p.name.endswith(".bin")
        ]
        index_name = SAFETENSORS_INDEX if safetensors else BIN_INDEX
        candidates = safetensors or bins
        if not candidates:
            raise self._nothing_to_recover(entries)
        index = self.path / index_name
        if index.exists():
            weight_map = self._read_index(index, candidates)
            files = sorted({self.path / name for name in weight_map.values()})
            single = self.path / index_name.removesuffix(".index.json")
            if single in candidates and single not in files:
                raise self.fail(
                    f"is beside {index_name}, which lists other files: two downloads mixed "
                    "(transformers would load this one, the index names shards); keep one of "
                    "them",
                    single,
                )
        else:
            weight_map = None
            files = sorted(candidates)
        self.files = tuple(files)
        weights = {*files, index}
        self.others = tuple(
            p for p in entries if p not in weights and p not in safetensors and p not in bins
        )
        for file in files:
            self._read_file(file)
        if weight_map is not None:
            for name, shard in weight_map.items():
                info = self.tensors.get(name)
                if info is None or info.file.name != shard:
                    raise self.fail(
                        f"the index lists {name} in {shard} but that file does not hold it: "
                        "the shard is incomplete or from another download; download it again",
                        index,
                    )
        self.config = self._read_config()

    def _list(self) -> list[Path]:
        if not self.path.exists():
            raise self.fail("no such folder; pass the Hugging Face model folder")
        if not self.path.is_dir():
            raise self.fail("is a file; pass the folder that holds config.json and the weights")
        try:
            names = sorted(os.listdir(self.path))
        except OSError as exc:
            raise self.fail(
                f"cannot list the folder: {exc.strerror or exc}; check its permissions"
            ) from exc
        entries = []
        for name in names:
            entry = self.path / name
            if name.startswith(".") or entry.is_dir():
                continue
            self._check_entry(entry)
            entries.append(entry)
        return entries

    def _check_entry(self, entry: Path) -> None:
        """Refuse what cannot be read as a file: a broken link, a link loop, a FIFO, a device
        (reading a FIFO would wait forever for a writer)."""
        try:
            mode = entry.stat().st_mode
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self.fail(
                    "is a symbolic link loop; remove it or point it at the downloaded file", entry
                ) from exc
            raise self.fail(
                "is a broken link (a hub-cache blob that was never downloaded); download "
                "the model again",
                entry,
            ) from exc
        if not stat.S_ISREG(mode):
            raise self.fail(
                "is not a regular file (a FIFO, socket or device); remove it, or put the "
                "downloaded file in its place",
                entry,
            )

    def _nothing_to_recover(self, entries: list[Path]) -> InputError:
        names = [p.name for p in entries]
        if any(name.endswith(SUFFIX) for name in names):
            return self.fail(
                "holds .enc files: an encrypted (XOR) release, not a weight delta; decrypt it "
                "with `belle-decrypt decrypt` instead"
            )
        if any(name.startswith("consolidated.") and name.endswith(".pth") for name in names):
            return self.fail(f"holds Meta's original consolidated.*.pth checkpoint; {CONVERT_HINT}")
        return self.fail(
            "holds no model weights to recover (no pytorch_model*.bin or *.safetensors); "
            "pass the Hugging Face model folder"
        )

    def _read_index(self, index: Path, candidates: list[Path]) -> dict[str, str]:
        """The index's weight map, every file it names one of the folder's weight files."""
        try:
            doc = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise self.fail(f"cannot read the index: {exc}; download it again", index) from exc
        weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
        ):
            raise self.fail(
                "is not a weight index (a JSON object whose weight_map maps tensor names to "
                "file names); download it again",
                index,
            )
        names = {p.name for p in candidates}
        kind = "*.safetensors" if index.name == SAFETENSORS_INDEX else "pytorch_model*.bin"
        for shard in sorted(set(weight_map.values())):
            if shard in names:
                continue
            if shard in ("", ".", "..") or "/" in shard or os.sep in shard:
                raise self.fail(
                    f"the index lists {shard!r}, which is not a file name in this folder "
                    "(weights are read only from the model's own folder); download the index "
                    "again",
                    index,
                )
            if (self.path / shard).exists():
                raise self.fail(
                    f"the index lists {shard!r}, which is not one of the folder's {kind} "
                    "files; download the index again",
                    index,
                )
            raise self.fail(f"the index lists {shard}, which is missing; download it", index)
        return weight_map

    def _read_file(self, file: Path) -> None:
        try:
            with open(file, "rb") as handle:
                head = handle.read(len(LFS_POINTER_PREFIX))
            size = file.stat().st_size
        except OSError as exc:
            raise self.fail(f"cannot read: {exc.strerror or exc}", file) from exc
        if size == 0:
            raise self.fail(
                "is empty (0 bytes): the download did not finish; download it again", file
            )
        if is_lfs_pointer(head, size):
            raise self.fail(
                "is a Git LFS pointer, not the data; run `git lfs pull` in the cloned folder",
                file,
            )
        try:
            fd = os.open(file, os.O_RDONLY)
        except OSError as exc:
            raise self.fail(f"cannot read: {exc.strerror or exc}", file) from exc
        self._held[file] = (fd, os.fstat(fd).st_size)
        LEASES.take(fd, file, self.role)
        if file.name.endswith(".safetensors"):
            infos = self._read_safetensors(file)
        else:
            infos = self._read_pickle(file, head)
        for info in infos:
            if info.name in self.tensors:
                raise self.fail(
                    f"{info.name} is in both {self.tensors[info.name].file.name} and "
                    f"{file.name}: mixed downloads; keep one copy of the model",
                    file,
                )
            self.tensors[info.name] = info

    def _read_safetensors(self, file: Path) -> list[TensorInfo]:
        """Check the file with the safetensors package, then map it for reading in place."""
        from safetensors import safe_open

        unsupported: tuple[str, str] | None = None
        try:
            handle: Any = safe_open(str(file), framework="pt")
            infos = []
            for name in handle.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                piece = handle.get_slice(name)
                dtype = SAFETENSORS_DTYPES.get(piece.get_dtype())
                if dtype is None:
                    unsupported = (name, piece.get_dtype())
                    break
                infos.append(TensorInfo(name, dtype, tuple(piece.get_shape()), file))
            del handle
            if unsupported is None:
                self._handles[file] = _MappedSafetensors(file)
        except Exception as exc:
            raise self.fail(
                f"is not a readable safetensors file ({_first_line(exc)}): truncated or damaged; "
                "download it again",
                file,
            ) from exc
        if unsupported is not None:  # a well-formed file in a dtype no recipe reads
            raise self.fail(
                f"{unsupported[0]} is {unsupported[1]}, a dtype recover does not support (F64, "
                "F32, F16, BF16, integers and BOOL); use the release's float16 or float32 files",
                file,
            )
        return infos

    def _read_pickle(self, file: Path, head: bytes) -> list[TensorInfo]:
        if not head.startswith(ZIP_MAGIC):
            if not head.startswith(PICKLE_MAGIC):
                raise self.fail(
                    "is not a torch checkpoint (neither a zip archive nor a pickle; an error "
                    "page saved in its place?): damaged; download it again",
                    file,
                )
            raise self.fail(
                "is not a torch zip checkpoint (an old-style pickle, which cannot be read "
                "safely); save it again with a recent torch, or use the .safetensors files",
                file,
            )
        torch = import_torch()
        try:
            loaded = torch.load(file, mmap=True, weights_only=True, map_location="cpu")
        except Exception as exc:
            if isinstance(exc, pickle.UnpicklingError):
                raise self.fail(
                    "refused: it holds more than tensors (a weights_only load rejected it: "
                    f"{_first_line(exc)}); use a plain state-dict checkpoint or .safetensors",
                    file,
                ) from exc
            raise self.fail(
                f"cannot be read as a torch checkpoint ({_first_line(exc)}): truncated or "
                "damaged; download it again",
                file,
            ) from exc
        if not isinstance(loaded, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
        ):
            raise self.fail(
                "is not a plain state dict (a mapping of names to tensors); pass the model's "
                "pytorch_model*.bin files",
                file,
            )
        self._handles[file] = loaded
        return [
            TensorInfo(name, str(value.dtype).removeprefix("torch."), tuple(value.shape), file)
            for name, value in loaded.items()
        ]

    def _read_config(self) -> dict[str, Any] | None:
        path = self.path / "config.json"
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise self.fail(f"cannot read config.json: {exc}", path) from exc
        return doc if isinstance(doc, dict) else None

    def load(self, name: str) -> torch.Tensor:
        """The tensor ``name``: a read-only view of the mapped file, nothing copied.

        Reading a mapped page past the end of a file that shrank kills the process (SIGBUS).
        Where the system grants it, each input holds a read lease (``sources.leases``): another
        program's truncate or open for writing waits while this run stops with one line (exit
        1). Elsewhere the open file's size is checked here, before each tensor is read, which
        catches a truncation between two tensors.
        """
        info = self.tensors[name]
        self._check_size(info.file)
        handle = self._handles[info.file]
        try:
            if isinstance(handle, dict):
                tensor: torch.Tensor = handle[name]
            else:
                tensor = handle.tensor(info)
        except Exception as exc:
            raise self.fail(
                f"cannot read {name} ({_first_line(exc)}); download the file again", info.file
            ) from exc
        return tensor

    def _check_size(self, file: Path) -> None:
        """Raise OutputError if ``file`` (the very file opened, not its path) got shorter."""
        fd, size = self._held[file]
        now = os.fstat(fd).st_size
        if now < size:
            raise OutputError(
                f"({self.role}) shrank from {size:,} to {now:,} bytes while being read "
                "(another program truncated it); nothing was left under a final name; "
                "download it again, then run the same command again",
                file,
            )


class _MappedSafetensors:
    """A safetensors file mapped read-only; tensors are views of the mapping (no copy).

    The safetensors package has checked the header against the file before this is made.
    """

    def __init__(self, file: Path) -> None:
        with open(file, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
            self.map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        self.start = 8 + length
        self.offsets = {
            name: int(meta["data_offsets"][0])
            for name, meta in header.items()
            if name != "__metadata__"
        }

    def tensor(self, info: TensorInfo) -> torch.Tensor:
        """The tensor ``info`` describes, viewing the mapped bytes."""
        tm = import_torch()
        dtype = getattr(tm, info.dtype)
        count = info.nbytes // data_size((), info.dtype)
        if count == 0:
            empty: torch.Tensor = tm.empty(info.shape, dtype=dtype)
            return empty
        with warnings.catch_warnings():  # read-only on purpose: inputs are never written
            warnings.filterwarnings("ignore", message="The given buffer is not writable")
            flat = tm.frombuffer(
                self.map, dtype=dtype, count=count, offset=self.start + self.offsets[info.name]
            )
        shaped: torch.Tensor = flat.view(info.shape)
        return shaped


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's text, for a one-line message."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


class HfFolder:
    """The Hugging Face folder as a :class:`~belle_decrypt.tensors.protocol.SourceKind`: it
    takes any folder (the last kind tried), and says what is wrong with one it cannot read."""

    name = "hf"

    def recognises(self, path: Path) -> bool:
        """Every folder: its own checks say what is wrong with one that is not."""
        return True

    def open(self, path: Path, role: str) -> WeightFolder:
        """The folder's weight files, opened and checked (see :class:`WeightFolder`)."""
        return WeightFolder.open(path, role)
