"""The per-file layout (docs/FORMAT.md section 7): OpenAssistant's and Pygmalion/Metharme's
`xor_codec.py` releases, a :class:`~belle_decrypt.layouts.protocol.Layout` whose key is a folder.

Each payload file is the XOR of a model file with the same-named file of a LLaMA converted to
the Hugging Face layout (the *base*), cut or zero-padded to the payload's length; a payload may
be a gzip stream of that XOR; `added_tokens.json` is plain. The keystream of a file is its base
file, read with pread; the base's digests are computed as it is read (same pass) and checked
against the card's base list (``--base-manifest``) before the output gets its final name, so a
base converted with another transformers version stops the run at the first (smallest) file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

from belle_decrypt.checks.keyid import KeyReport, KnownKey, llama_7b
from belle_decrypt.checks.manifest import Manifest
from belle_decrypt.ground import platform_io
from belle_decrypt.ground.errors import InputError, OutputError
from belle_decrypt.layouts.gzipped import (
    GZIP_MAGIC,
    NOT_GZIP,
    NOT_LISTED,
    GzipPayload,
    gzip_size,
    isize_allows,
    trailer_isize,
)
from belle_decrypt.layouts.protocol import Source
from belle_decrypt.streams.keystream import Key, Keystream

PLAIN_NAMES = frozenset({"added_tokens.json"})
"""Payload files that are plain: copied as they are."""
CLUTTER_NAMES = frozenset(
    {"README.md", ".gitattributes", "xor_codec.py", "md5sums.txt", "md5sums-decoded.txt"}
)
"""Hub files beside the payload that are not part of the model (LICENSE* and hidden files
too), and the two lists `encrypt --format perfile` writes beside the payloads."""
PINNED = (
    "the card pins the conversion (transformers commit and torch version, e.g. OpenAssistant's "
    "d04ec99bec8a0b432fc03ed60cea9a1a20ebaf3c with torch 1.13.1): convert LLaMA again with "
    "exactly those"
)
_COUNT_CHUNK = 1024 * 1024


def is_clutter(filename: str) -> bool:
    """A hub file that is not part of the model (README.md, .gitattributes and other hidden
    files, LICENSE*, the publisher's xor_codec.py) or one of encrypt's two md5 lists."""
    return filename in CLUTTER_NAMES or filename.startswith(("LICENSE", "."))


class BaseMismatch(OutputError):
    """A base file whose digest is not the card's: the wrong conversion (exit 1); the run
    stops, since every other file is keyed on the same conversion."""

    stops_run = True


@dataclass(frozen=True)
class PayloadFile:
    """One checked payload file: its base counterpart (None: plain, copied), its size, and
    how it is read (``raw_why``: why a payload starting with the gzip magic is read raw;
    ``from_trailer``: a gzip payload's size was taken from its trailer, not counted, so the
    decode checks it)."""

    path: Path
    layout: PerFileLayout = field(repr=False)
    base: Path | None
    payload_size: int
    compressed: bool
    file_size: int = 0
    raw_why: str | None = None
    from_trailer: bool = False

    @property
    def reading(self) -> str | None:
        """Which reading of a payload starting with the gzip magic is used (None: it does
        not start with it)."""
        if self.compressed:
            return "read as a gzip stream"
        return f"read as raw bytes ({self.raw_why})" if self.raw_why else None

    @property
    def other_reading(self) -> PayloadFile | None:
        """A gzip payload read as raw bytes instead: the one to try when the gzip reading
        does not match the manifest (the manifest's reading wins)."""
        if not self.compressed:
            return None
        return replace(
            self,
            compressed=False,
            payload_size=self.file_size,
            raw_why=NOT_LISTED,
            from_trailer=False,
        )

    @property
    def undecodable_reading(self) -> PayloadFile | None:
        """The raw reading of a gzip payload whose size came from its trailer: the one to use
        when the decode finds the stream damaged or not of that size (docs/FORMAT.md 7.2: not
        a whole gzip stream), as if its size had been counted first."""
        if not self.from_trailer:
            return None
        return replace(
            self,
            compressed=False,
            payload_size=self.file_size,
            raw_why=NOT_GZIP,
            from_trailer=False,
        )

    @property
    def output_name(self) -> str:
        """The decoded file has the payload's own name."""
        return self.path.name

    @property
    def payload_offset(self) -> int:
        """No header."""
        return 0

    @property
    def input_hashes(self) -> int:
        """Hashes of inputs the decode computes besides the output's: the base's, when the
        base list names it (for the default ``--jobs``)."""
        return 1 if self.layout.base_expected(self) else 0

    @property
    def inputs(self) -> tuple[Path, ...]:
        """Other files this one reads: its base (never to be replaced by an output)."""
        return (self.base,) if self.base is not None else ()

    @property
    def sha256(self) -> None:
        """The layout carries no checksum: the card's list (``--manifest``) is the check."""
        return None

    def open_payload(self) -> BinaryIO:
        """The payload's bytes from offset 0: the file itself, or its gzip stream decompressed."""
        if self.compressed:
            size = self.payload_size if self.from_trailer else None
            return GzipPayload(self.path, size)  # type: ignore[return-value]
        return open(self.path, "rb", buffering=0)


class BaseStream:
    """The keystream of one payload file: its base file from offset 0, zero past the base's
    end, hashed as it is read and checked against ``expected`` when the payload's last bytes
    are asked for (before the output can get its final name)."""

    def __init__(
        self,
        base: Path | None,
        payload_size: int,
        expected: Mapping[str, str] | None = None,
        decoded: Mapping[str, str] | None = None,
    ) -> None:
        """``decoded``: the decoded file's digests on the card, to tell swapped lists."""
        self.base = base
        self.payload_size = payload_size
        self.expected = dict(expected or {})
        self.decoded = dict(decoded or {})
        self._hashers = {name: hashlib.new(name) for name in self.expected}
        self._fd = -1
        self.size = 0
        self._hashed = 0
        if base is not None:
            try:
                fd = platform_io.open_regular(base)
            except OSError as exc:
                raise OutputError(
                    f"cannot read the base file: {exc.strerror or exc}; nothing written", base
                ) from exc
            if fd is None:
                raise OutputError("the base file is not a regular file; nothing written", base)
            self._fd = fd
            self.size = os.fstat(fd).st_size

    def close(self) -> None:
        """Release the base file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _pread_exact(self, view: memoryview, offset: int) -> None:
        done = 0
        while done < len(view):
            got = platform_io.pread_into(self._fd, view[done:], offset + done)
            if got == 0:
                raise OutputError(
                    "the base file shrank while it was being read; nothing written", self.base
                )
            done += got

    def _hash(self, view: memoryview, offset: int) -> None:
        if self._hashers and offset == self._hashed:
            for hasher in self._hashers.values():
                hasher.update(view)
            self._hashed += len(view)

    def fill(self, out: memoryview, offset: int) -> None:
        """The base's bytes at ``offset`` (zero past its end); at the payload's end, the rest
        of a longer base is hashed and the digests checked."""
        real = max(0, min(len(out), self.size - offset))
        if real:
            self._pread_exact(out[:real], offset)
            self._hash(out[:real], offset)
        if real < len(out):
            out[real:] = bytes(len(out) - real)
        if offset + len(out) >= self.payload_size:
            self.finish()

    def finish(self) -> None:
        """Hash what the payload did not cover and compare with the card's base digests."""
        if not self._hashers or self.base is None:
            return
        buffer = memoryview(bytearray(min(_COUNT_CHUNK * 8, max(self.size - self._hashed, 1))))
        while self._hashed < self.size:
            part = buffer[: min(len(buffer), self.size - self._hashed)]
            self._pread_exact(part, self._hashed)
            self._hash(part, self._hashed)
        for name, digest in self.expected.items():
            actual = self._hashers[name].hexdigest()
            if actual != digest:
                label = "SHA-256" if name == "sha256" else name
                if self.decoded.get(name) == actual:
                    raise BaseMismatch(
                        f"base file's {label} {actual} is the one --manifest lists for it: the "
                        "two lists are swapped; pass the card's base block with --base-manifest "
                        "and its decoded block with --manifest; nothing written",
                        self.base,
                    )
                raise BaseMismatch(
                    f"base file's {label} {actual} differs from the base manifest's {digest}: "
                    f"this is not the publisher's conversion; {PINNED}; nothing written",
                    self.base,
                )


def _check_readable(base: Path) -> int:
    """Refuse a base file that cannot be opened, before anything is written; its size."""
    try:
        fd = platform_io.open_regular(base)
    except OSError as exc:
        raise InputError(
            f"cannot read the base file: {exc.strerror or exc}; check its permissions", base
        ) from exc
    if fd is None:
        raise InputError("the base file is not a regular file (a FIFO or device?)", base)
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


class PerFileLayout:
    """The per-file layout as a :class:`~belle_decrypt.layouts.protocol.Layout`: every file in the
    payload folder but the hub's clutter is a payload keyed on ``base_dir``'s same-named file."""

    name = "perfile"
    pattern = "payload files named like the base's"
    skip_reason = "hub files, not part of the model"

    def __init__(
        self,
        base_dir: Path,
        base_manifest: Manifest | None = None,
        decoded_manifest: Manifest | None = None,
    ) -> None:
        """``decoded_manifest`` (the ``--manifest`` list) only tells swapped lists apart."""
        self.base_dir = base_dir
        self.base_manifest = base_manifest
        self.decoded_manifest = decoded_manifest

    @property
    def expected_key(self) -> KnownKey:
        """No key file: the base folder is given to the layout. The run never fingerprints a
        key for it; LLaMA-7B stands in to satisfy callers that ask."""
        return llama_7b()

    def key_warning(self, report: KeyReport, unverified: bool) -> str | None:
        """Never asked: a per-file run opens no key file."""
        return None

    def recognises(self, filename: str) -> bool:
        """Every file but the hub's clutter."""
        return not is_clutter(filename)

    def open(self, path: Path) -> PayloadFile:
        """Check a payload before anything is written: readable, its base present (unless
        plain). A gzip payload's size is its base file's when its trailer allows it (the decode
        then checks it); otherwise it is counted by decompressing the stream once, and a stream
        that does not decode cleanly to its end is read raw."""
        try:
            fd = platform_io.open_regular(path)
            if fd is None:
                raise InputError("is not a regular file (a FIFO or device?); remove it", path)
            try:
                size = os.fstat(fd).st_size
                head = platform_io.pread(fd, 64, 0)
            finally:
                os.close(fd)
        except OSError as exc:
            raise InputError(
                f"cannot read: {exc.strerror or exc}; check its permissions", path
            ) from exc
        if head.startswith(b"version https://git-lfs.github.com/spec/v1") and size <= 1024:
            raise InputError(
                "is a Git LFS pointer, not the data; run `git lfs pull` in the cloned "
                "repository (or download the file itself)",
                path,
            )
        base: Path | None = None
        base_size = 0
        if path.name not in PLAIN_NAMES:
            base = self.base_dir / path.name
            if not base.is_file():
                raise InputError(
                    f"has no base counterpart {base} (the base folder must hold the Hugging "
                    "Face conversion of LLaMA the card names); pass the right base folder",
                    path,
                )
            base_size = _check_readable(base)
        if head.startswith(GZIP_MAGIC):
            isize = trailer_isize(path) if base_size else None
            if isize is not None and isize_allows(isize, base_size):
                return PayloadFile(path, self, base, base_size, True, size, from_trailer=True)
            unpacked = gzip_size(path)
            if unpacked is not None:
                return PayloadFile(path, self, base, unpacked, True, size)
            return PayloadFile(path, self, base, size, False, size, NOT_GZIP)
        return PayloadFile(path, self, base, size, False, size)

    def base_expected(self, source: PayloadFile) -> dict[str, str]:
        """The card's base digests (by algorithm) for ``source``'s base file."""
        return _digests(self.base_manifest if source.base is not None else None, source)

    def own_keystream(self, source: Source) -> AbstractContextManager[Keystream]:
        """The same-named base file (zeros for a plain file), hashed against the base list."""
        if not isinstance(source, PayloadFile):
            raise TypeError("the per-file layout decodes only its own files")
        decoded = _digests(self.decoded_manifest, source)
        return _base_stream(source, self.base_expected(source), decoded)

    def keystream(self, source: Source, key: Key) -> AbstractContextManager[Keystream]:
        """The key file plays no part: see :meth:`own_keystream`."""
        return self.own_keystream(source)


def _digests(manifest: Manifest | None, source: PayloadFile) -> dict[str, str]:
    """The digests ``manifest`` lists for ``source``'s name, by algorithm."""
    entries = manifest.lookup(source.output_name) if manifest is not None else ()
    return {entry.algorithm: entry.digest for entry in entries}


@contextmanager
def _base_stream(
    source: PayloadFile, expected: Mapping[str, str], decoded: Mapping[str, str]
) -> Iterator[BaseStream]:
    stream = BaseStream(source.base, source.payload_size, expected, decoded)
    try:
        if source.payload_size == 0:  # the engine asks for no bytes: check the base now
            stream.finish()
        yield stream
    finally:
        stream.close()
