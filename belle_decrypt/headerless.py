"""Headerless files (docs/FORMAT.md sections 3 and 4): no header, nothing to check them by.

TechGPT's `NAME.<placeholder hex>.enc` and OpenBuddy's `NAME.enc` carry no digest: byte 0 of the
file is byte 0 of the payload and the decrypted size is the file size. The run checks each
output against the model card's md5 (``--manifest``) instead. This module has what both share:
the :class:`Headerless` source and the checks made before anything is written; the
TechGPT layout itself, keyed like the BELLE container; and ``encrypt``'s side of both.
"""

from __future__ import annotations

import hashlib
import os
import re
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from belle_decrypt import platform_io
from belle_decrypt.container import LFS_POINTER_PREFIX, SUFFIX, EncName, is_lfs_pointer
from belle_decrypt.errors import InputError
from belle_decrypt.keyid import KeyReport, KnownKey, llama_7b, unexpected_key_warning
from belle_decrypt.keystream import Key, Keystream

if TYPE_CHECKING:
    from belle_decrypt.layout import Layout, Source

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
"""The hex every TechGPT file name carries: the SHA-256 of nothing, a placeholder."""


@dataclass(frozen=True)
class Headerless:
    """A checked file with no header: the whole file is the payload."""

    path: Path
    layout: Layout
    output_name: str
    payload_size: int
    payload_offset: int = 0
    sha256: str | None = None


def open_headerless(path: Path, layout: Layout, output_name: str) -> Headerless:
    """Check a headerless file before any writing (readable, a regular file, not a Git LFS
    pointer) and return it as a source decrypting to ``output_name``."""
    checked = EncName.parse(f"{output_name}.{EMPTY_SHA256}{SUFFIX}").name  # the name's rules
    if not path.exists():
        raise InputError("no such file (or a broken symbolic link); check the path", path)
    if path.is_dir():
        raise InputError("is a folder, not an encrypted file; pass a .enc file", path)
    try:
        fd = platform_io.open_regular(path)  # a FIFO under an .enc name must not hang
        if fd is None:
            raise InputError(
                "is not a regular file (a FIFO or device?); pass the downloaded .enc file", path
            )
        try:
            size = os.fstat(fd).st_size
            head = platform_io.pread(fd, len(LFS_POINTER_PREFIX), 0)
        finally:
            os.close(fd)
    except OSError as exc:
        raise InputError(
            f"cannot read: {exc.strerror or exc}; check the file's permissions", path
        ) from exc
    if is_lfs_pointer(head, size):
        raise InputError(
            "is a Git LFS pointer, not the data; run `git lfs pull` in the cloned repository "
            "(or download the file itself)",
            path,
        )
    return Headerless(path=path, layout=layout, output_name=checked, payload_size=size)


def parse_hex_name(path: Path) -> EncName:
    """`NAME.<64 hex>.enc` split, with the same refusals as the BELLE container's names."""
    try:
        return EncName.parse(path.name)
    except InputError as exc:
        raise InputError(exc.message, path) from None


class TechGPT:
    """Headerless BELLE (docs/FORMAT.md section 3): `NAME.<64 hex>.enc` whose whole content is
    the payload, keyed with 10 MiB pieces of LLaMA-7B like the container."""

    name = "techgpt"
    pattern = f"NAME.{EMPTY_SHA256[:8]}….enc"

    @property
    def expected_key(self) -> KnownKey:
        """Meta's LLaMA-7B consolidated.00.pth, as for the container."""
        return llama_7b()

    def recognises(self, filename: str) -> bool:
        """Every `*.enc` in a folder is taken as one under ``--format techgpt``."""
        return filename.endswith(SUFFIX)

    def open(self, path: Path) -> Source:
        """Check the name (the hex in it is not a checksum) and the file."""
        return open_headerless(path, self, parse_hex_name(path).name)

    def keystream(self, source: Source, key: Key) -> AbstractContextManager[Keystream]:
        """The BELLE container's keystream: 10 MiB pieces of the key file."""
        return nullcontext(key)

    def key_warning(self, report: KeyReport, unverified: bool) -> str | None:
        """Any key is tried, as for the container (the manifest's md5 tells)."""
        return unexpected_key_warning(report)

    def encrypted_name(self, plain_name: str, sha256_hex: str) -> str:
        """`encrypt --format techgpt`: every file gets the placeholder hex."""
        return f"{plain_name}.{EMPTY_SHA256}{SUFFIX}"


TECHGPT = TechGPT()


def is_hex_run(text: str) -> bool:
    """True for 32 or more hex digits (either case): a checksum-like name part."""
    return len(text) >= 32 and re.fullmatch(r"[0-9A-Fa-f]+", text) is not None
