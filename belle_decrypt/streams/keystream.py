"""Keystreams: what the engine XORs with, pulled by payload offset (:class:`Keystream`).

:class:`Key` is the keystream of docs/FORMAT.md section 1: the key file cut into 10 MiB pieces,
repeated piece by piece. Payload piece ``i`` is XORed with key piece ``i mod n``; a short last
key piece is tiled end to end to cover a whole payload piece. The keystream is read with
``pread`` into the caller's buffer (:meth:`Key.fill`), so memory stays flat whatever the key's
size; only a short last piece is kept (read once). The key is never mapped: a key file
truncated under a mapping kills the process with SIGBUS (Python cannot recover from a fault on
a mapped page), while a read that comes up short is one clear error ("the key file shrank").
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import TracebackType
from typing import Protocol

from belle_decrypt.ground import platform_io
from belle_decrypt.ground.errors import InputError, OutputError

PIECE_SIZE = 10 * 1024 * 1024


KEY_HINT = "pass LLaMA-7B consolidated.00.pth"


class Keystream(Protocol):
    """The bytes a payload is XORed with, by payload offset. The engine asks for them in
    order, buffer by buffer, from one thread per stream; one keystream may serve several
    streams at once (``--jobs``), so implementations read with pread, not seek + read, and never
    hand out a mapping of a file that may shrink (a fault there cannot be recovered from)."""

    def fill(self, out: memoryview, offset: int) -> None:
        """Write the keystream for payload bytes ``offset .. offset+len(out)`` into ``out``."""


def check_key_file(path: Path) -> int:
    """Refuse a key that cannot be the LLaMA file, before it is opened (a FIFO would hang);
    return its size."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InputError(f"key file not found; {KEY_HINT}", path) from None
    except OSError as exc:
        raise InputError(
            f"cannot read the key: {exc.strerror or exc}; check its permissions", path
        ) from exc
    if stat.S_ISDIR(info.st_mode):
        raise InputError(
            "the key is a folder; pass the file itself (LLaMA-7B consolidated.00.pth)", path
        )
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"the key is not a regular file (a FIFO or device?); {KEY_HINT}", path)
    if info.st_size == 0:
        raise InputError(f"the key file is empty; {KEY_HINT}", path)
    return info.st_size


class Key:
    """An open key file that fills buffers with the keystream for any payload offset."""

    def __init__(self, path: Path, piece_size: int = PIECE_SIZE) -> None:
        if piece_size <= 0:
            raise ValueError("piece_size must be positive")
        self.path = path
        self.piece_size = piece_size
        check_key_file(path)
        try:
            fd = platform_io.open_regular(path)
        except OSError as exc:
            raise InputError(
                f"cannot read the key: {exc.strerror or exc}; check its permissions", path
            ) from exc
        size = os.fstat(fd).st_size if fd is not None else 0
        if fd is None or size == 0:  # replaced meanwhile
            if fd is not None:
                os.close(fd)
            raise InputError(f"the key changed while it was opened; {KEY_HINT}", path)
        self._fd = fd
        self.size = size
        self.piece_count = -(-self.size // piece_size)
        self._short: memoryview | None = None

    def close(self) -> None:
        """Release the file descriptor."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Key:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def read(self, view: memoryview, offset: int) -> None:
        """Fill ``view`` with the key file's own bytes from ``offset`` (not the keystream)."""
        self._pread_exact(view, offset)

    def _pread_exact(self, view: memoryview, offset: int) -> None:
        done = 0
        while done < len(view):
            got = platform_io.pread_into(self._fd, view[done:], offset + done)
            if got == 0:
                raise OutputError("the key file shrank while it was being read", self.path)
            done += got

    def _short_last_piece(self) -> memoryview:
        """The last key piece when it is shorter than a piece (read once, at most a piece)."""
        if self._short is None:
            start = (self.piece_count - 1) * self.piece_size
            piece = memoryview(bytearray(self.size - start))
            self._pread_exact(piece, start)
            self._short = piece
        return self._short

    def _fill_tiled(self, out: memoryview, within: int) -> None:
        """``out`` = the short last piece repeated end to end, from byte ``within`` of the tiling.

        One copy of the piece, then doubling copies inside ``out``: no tiled piece is kept.
        """
        short = self._short_last_piece()
        period = len(short)
        phase = within % period
        head = min(len(out), period - phase)
        out[:head] = short[phase : phase + head]
        filled = head
        if filled < len(out):
            step = min(len(out) - filled, period)
            out[filled : filled + step] = short[:step]
            filled += step
        while filled < len(out):  # out[head:filled] is a whole number of periods
            step = min(len(out) - filled, filled - head)
            out[filled : filled + step] = out[head : head + step]
            filled += step

    def fill(self, out: memoryview, offset: int) -> None:
        """Write the keystream for payload bytes ``offset .. offset+len(out)`` into ``out``."""
        size, piece = self.size, self.piece_size
        pos = 0
        while pos < len(out):
            index, within = divmod(offset + pos, piece)
            start = (index % self.piece_count) * piece
            length = min(len(out) - pos, piece - within)
            if size - start >= piece:
                self._pread_exact(out[pos : pos + length], start + within)
            else:
                self._fill_tiled(out[pos : pos + length], within)
            pos += length
