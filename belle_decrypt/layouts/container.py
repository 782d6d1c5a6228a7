"""The BELLE container (docs/FORMAT.md section 1), the first
:class:`~belle_decrypt.layouts.protocol.Layout`:
`NAME.<sha256 hex>.enc`, a 32-byte SHA-256 of the decrypted file, then the XORed payload,
keyed with 10 MiB pieces of the key file (:class:`~belle_decrypt.streams.keystream.Key`).
"""

from __future__ import annotations

import os
import re
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from belle_decrypt.checks.keyid import KeyReport, KnownKey, llama_7b, unexpected_key_warning
from belle_decrypt.checks.manifest import SUFFIX as SUFFIX
from belle_decrypt.ground import platform_io
from belle_decrypt.ground.errors import InputError
from belle_decrypt.streams.keystream import Key, Keystream
from belle_decrypt.streams.output import TEMP_PREFIX

if TYPE_CHECKING:
    from belle_decrypt.layouts.protocol import Source

HEADER_SIZE = 32
LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"
LFS_POINTER_MAX_SIZE = 1024

_NAME_RE = re.compile(r"(?P<name>.*)\.(?P<hex>[0-9a-f]{64})\.enc", re.DOTALL)


@dataclass(frozen=True)
class EncName:
    """The parts of an encrypted file's name: the decrypted name and the expected SHA-256."""

    name: str
    sha256_hex: str

    @classmethod
    def parse(cls, filename: str) -> EncName:
        """Split `NAME.<64 hex>.enc`; refuse names that would decrypt outside the folder."""
        if any(ord(char) < 32 or ord(char) == 127 for char in filename):
            raise InputError(
                "has control characters (a line break?) in its name; rename it",
                ascii(filename)[1:-1],
            )
        match = _NAME_RE.fullmatch(filename)
        if match is None:
            raise InputError(
                "not an encrypted file name (expected NAME.<64 lower-case hex>.enc)", filename
            )
        name = match.group("name")
        if not name:
            raise InputError(
                "would decrypt to an empty name; give it its published NAME.<sha256>.enc name",
                filename,
            )
        if name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
            raise InputError(f"would decrypt to the unsafe name {name!r}; rename it", filename)
        if name.startswith(TEMP_PREFIX):
            raise InputError(
                f"would decrypt to {name!r}, a name reserved for belle-decrypt's temporary "
                "files; give it its published NAME.<sha256>.enc name",
                filename,
            )
        return cls(name=name, sha256_hex=match.group("hex"))

    def encrypted_filename(self) -> str:
        """The `.enc` file name this pair stands for."""
        return f"{self.name}.{self.sha256_hex}{SUFFIX}"


def parse_name(filename: str, path: Path) -> EncName:
    """:meth:`EncName.parse`, the error naming ``path``."""
    try:
        return EncName.parse(filename)
    except InputError as exc:
        raise InputError(exc.message, path) from None


def read_head(path: Path, length: int) -> tuple[int, bytes]:
    """The size and first ``length`` bytes of an input file, checked before any writing: it
    exists, is a regular file (a FIFO must not hang), is readable, and is not a Git LFS
    pointer."""
    if not path.exists():
        raise InputError("no such file (or a broken symbolic link); check the path", path)
    if path.is_dir():
        raise InputError("is a folder, not an encrypted file; pass a .enc file", path)
    try:
        fd = platform_io.open_regular(path)
        if fd is None:
            raise InputError(
                "is not a regular file (a FIFO or device?); pass the downloaded .enc file", path
            )
        try:
            size = os.fstat(fd).st_size
            head = platform_io.pread(fd, max(length, len(LFS_POINTER_PREFIX)), 0)
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
    return size, head


def is_encrypted_name(filename: str) -> bool:
    """True for names of the form `NAME.<64 lower-case hex>.enc`."""
    return _NAME_RE.fullmatch(filename) is not None


def is_lfs_pointer(head: bytes, size: int) -> bool:
    """A Git LFS pointer is a small text file starting with the spec line, not the data."""
    return size <= LFS_POINTER_MAX_SIZE and head.startswith(LFS_POINTER_PREFIX)


@dataclass(frozen=True)
class EncFile:
    """An encrypted file on disk whose name, size and header have been checked."""

    path: Path
    enc_name: EncName
    size: int

    @property
    def layout(self) -> BelleContainer:
        """The layout this file is in."""
        return BELLE

    @property
    def output_name(self) -> str:
        """The decrypted file's name."""
        return self.enc_name.name

    @property
    def payload_offset(self) -> int:
        """The payload follows the 32-byte digest."""
        return HEADER_SIZE

    @property
    def payload_size(self) -> int:
        """Bytes of decrypted output."""
        return self.size - HEADER_SIZE

    @property
    def sha256(self) -> str:
        """The decrypted file's SHA-256, from the name (the header was checked against it)."""
        return self.enc_name.sha256_hex

    @classmethod
    def open(cls, path: Path) -> EncFile:
        """Check an `.enc` before any writing: name, readability, LFS pointer, size, header."""
        enc_name = parse_name(path.name, path)
        size, head = read_head(path, HEADER_SIZE)
        if size < HEADER_SIZE:
            raise InputError(
                f"is {size} bytes, shorter than the {HEADER_SIZE}-byte header; download it again",
                path,
            )
        header_hex = head[:HEADER_SIZE].hex()
        if header_hex != enc_name.sha256_hex:
            raise InputError(
                f"header digest {header_hex} disagrees with the name's {enc_name.sha256_hex}; "
                "the file is damaged or renamed: download it again",
                path,
            )
        return cls(path=path, enc_name=enc_name, size=size)


class KeyedOnLlama7B:
    """What the layouts keyed with 10 MiB pieces of LLaMA-7B (section 1.3) share."""

    @property
    def expected_key(self) -> KnownKey:
        """Meta's LLaMA-7B consolidated.00.pth."""
        return llama_7b()

    def recognises(self, filename: str) -> bool:
        """Every `*.enc` in a folder is taken as one (a malformed name is then refused)."""
        return filename.endswith(SUFFIX)

    def keystream(self, source: Source, key: Key) -> AbstractContextManager[Keystream]:
        """10 MiB pieces of the key file, whatever the file."""
        return nullcontext(key)

    def key_warning(self, report: KeyReport, unverified: bool) -> str | None:
        """Any key is tried: the file's SHA-256 (or the manifest's md5) tells if it was right."""
        return unexpected_key_warning(report)


class BelleContainer(KeyedOnLlama7B):
    """The BELLE container as a :class:`~belle_decrypt.layouts.protocol.Layout`."""

    name = "belle"
    pattern = "NAME.<sha256>.enc"

    def open(self, path: Path) -> EncFile:
        """See :meth:`EncFile.open`."""
        return EncFile.open(path)


BELLE = BelleContainer()
