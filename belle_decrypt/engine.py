"""Streaming XOR: read a chunk, XOR it with the keystream in place on torch uint8 tensors,
feed the plaintext to the hashes, write it. Memory is a few fixed buffers, whatever the size."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from belle_decrypt.errors import OutputError
from belle_decrypt.keystream import Key
from belle_decrypt.torchload import import_torch

if TYPE_CHECKING:
    import torch

BUFFER_SIZE = 8 * 1024 * 1024


class Hasher(Protocol):
    """What the engine needs of a hashlib object."""

    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...


class _XorBuffers:
    """A data buffer and a keystream buffer with torch views made once."""

    def __init__(self, size: int) -> None:
        tm = import_torch()

        self.data = bytearray(size)
        self.keystream = bytearray(size)
        self._data_t: torch.Tensor = tm.frombuffer(self.data, dtype=tm.uint8)
        self._key_t: torch.Tensor = tm.frombuffer(self.keystream, dtype=tm.uint8)
        self._torch: Any = tm

    def xor(self, length: int) -> None:
        """data[:length] ^= keystream[:length], in place."""
        data = self._data_t[:length]
        self._torch.bitwise_xor(data, self._key_t[:length], out=data)


def _read_exact(src: BinaryIO, view: memoryview, label: str) -> None:
    done = 0
    while done < len(view):
        try:
            got = src.readinto(view[done:])  # type: ignore[attr-defined]
        except OSError as exc:
            raise OutputError(
                f"cannot read: {exc.strerror or exc}; nothing written", label
            ) from exc
        if not got:
            raise OutputError("the file ended early (it changed while being read)", label)
        done += got


def _write_all(dst: BinaryIO, view: memoryview, label: str) -> None:
    done = 0
    while done < len(view):
        try:
            got = dst.write(view[done:])
        except OSError as exc:
            raise OutputError(
                f"cannot write: {exc.strerror or exc}; nothing written (check the free space "
                "and permissions of the output folder)",
                label,
            ) from exc
        done += got if got is not None else len(view) - done


def xor_stream(
    src: BinaryIO,
    dst: BinaryIO,
    key: Key,
    length: int,
    *,
    hashers: Sequence[Hasher] = (),
    hash_output: bool = True,
    on_progress: Callable[[int], None] | None = None,
    buffer_size: int = BUFFER_SIZE,
    dst_label: str = "output",
) -> None:
    """XOR ``length`` bytes of ``src`` with the keystream from payload offset 0 into ``dst``.

    ``hashers`` see the plaintext: the output when decrypting (``hash_output``), the input when
    encrypting. ``src`` must be positioned at the first payload byte.
    """
    if length == 0:
        return
    buffers = _XorBuffers(min(buffer_size, length))
    data = memoryview(buffers.data)
    keystream = memoryview(buffers.keystream)
    src_label = str(getattr(src, "name", "input"))
    done = 0
    while done < length:
        n = min(len(data), length - done)
        chunk = data[:n]
        _read_exact(src, chunk, src_label)
        key.fill(keystream[:n], done)
        if not hash_output:
            for hasher in hashers:
                hasher.update(chunk)
        buffers.xor(n)
        if hash_output:
            for hasher in hashers:
                hasher.update(chunk)
        _write_all(dst, chunk, dst_label)
        done += n
        if on_progress is not None:
            on_progress(n)
