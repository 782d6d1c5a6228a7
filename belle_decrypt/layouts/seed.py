"""OpenBuddy's 16 MiB seed (docs/FORMAT.md section 5) and the plain files copied beside it.

`NAME.enc` has no header; its keystream is the key file's first 16 MiB (the seed) repeated end
to end. Only the seed matters, so the key is checked by the md5 of its first 16 MiB (refused
under ``--no-verify`` when it differs, since nothing else would catch it). OpenBuddy's script
decrypts in place and the model is loaded from that folder, so the folder's plain model files
(config, tokenizer, generation settings) are copied to the output folder by the run, as a
:class:`PlainCopy` layout whose keystream is zeros. A copy is read once: its SHA-256 is taken
as it is copied, and the file's identity (inode, size, modification and change times) taken when
it was checked must be the same after the copy, so a file changed meanwhile never gets a final
name (:meth:`PlainFile.check_unchanged`).
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from belle_decrypt.checks.keyid import KeyReport, KnownKey, llama_7b_seed, unexpected_key_warning
from belle_decrypt.ground.errors import InputError, OutputError
from belle_decrypt.layouts.container import SUFFIX
from belle_decrypt.layouts.headerless import open_headerless
from belle_decrypt.streams.hashing import hash_file
from belle_decrypt.streams.keystream import KEY_HINT, Key, Keystream

if TYPE_CHECKING:
    from belle_decrypt.layouts.protocol import Source

SEED_SIZE = 16 * 1024 * 1024
CLUTTER_PREFIXES = ("readme", "license", "licence")
"""Files of a model-hub folder that are not part of the model (compared in lower case)."""
CLUTTER_NAMES = ("md5sums.txt",)
"""The md5 list `belle-decrypt encrypt` writes beside the files: the card's, not the model's."""


class SeedStream:
    """A seed repeated end to end (copied into each buffer: 16 MiB are kept in memory)."""

    def __init__(self, seed: memoryview) -> None:
        if not len(seed):
            raise ValueError("the seed is empty")
        self.seed = seed.toreadonly()

    def fill(self, out: memoryview, offset: int) -> None:
        """Write the keystream for payload ``offset .. offset+len(out)`` into ``out``."""
        period = len(self.seed)
        pos = 0
        while pos < len(out):
            phase = (offset + pos) % period
            step = min(len(out) - pos, period - phase)
            out[pos : pos + step] = self.seed[phase : phase + step]
            pos += step


def read_seed(key: Key) -> SeedStream:
    """The seed keystream of ``key``: its first 16 MiB, read once."""
    if key.size < SEED_SIZE:
        raise InputError(
            f"the key is {key.size:,} bytes, shorter than the 16 MiB seed; {KEY_HINT}", key.path
        )
    seed = bytearray(SEED_SIZE)
    key.read(memoryview(seed), 0)
    return SeedStream(memoryview(seed))


class OpenBuddy:
    """The 16 MiB seed layout: `NAME.enc` decrypts to `NAME`."""

    name = "openbuddy"
    pattern = "NAME.enc"

    @property
    def expected_key(self) -> KnownKey:
        """The first 16 MiB of LLaMA-7B consolidated.00.pth."""
        return llama_7b_seed()

    def recognises(self, filename: str) -> bool:
        """Every `*.enc`."""
        return filename.endswith(SUFFIX)

    def open(self, path: Path) -> Source:
        """Check the file; it decrypts to its name without `.enc`."""
        if not path.name.endswith(SUFFIX):
            raise InputError("not an encrypted file name (expected NAME.enc)", path)
        return open_headerless(path, self, path.name.removesuffix(SUFFIX))

    def keystream(self, source: Source, key: Key) -> AbstractContextManager[Keystream]:
        """The key's first 16 MiB, repeated."""
        return nullcontext(read_seed(key))

    def key_warning(self, report: KeyReport, unverified: bool) -> str | None:
        """Refuse a key shorter than the seed, and a wrong seed that no md5 would catch."""
        if report.is_expected:
            return None
        if report.size < SEED_SIZE:
            raise InputError(f"{report.verdict}; {KEY_HINT}", report.path)
        if unverified:
            raise InputError(
                f"{report.verdict}; with --no-verify nothing would catch the wrong seed: pass "
                "LLaMA-7B consolidated.00.pth, or the model card's md5 list with --manifest",
                report.path,
            )
        return unexpected_key_warning(report, "check-key --format openbuddy")

    def encrypted_name(self, plain_name: str, sha256_hex: str) -> str:
        """`encrypt --format openbuddy`: `NAME.enc`."""
        return plain_name + SUFFIX


OPENBUDDY = OpenBuddy()


class ZeroStream:
    """Zeros: XOR with it copies."""

    def fill(self, out: memoryview, offset: int) -> None:
        """Zero ``out``."""
        out[:] = bytes(len(out))


def is_clutter(filename: str) -> bool:
    """Hidden files (`.gitattributes`), `README*`, `LICENSE*` and `md5sums.txt`: not copied."""
    lower = filename.lower()
    return filename.startswith(".") or lower.startswith(CLUTTER_PREFIXES) or lower in CLUTTER_NAMES


def _identity(info: os.stat_result) -> tuple[int, ...]:
    """What changes when a file is replaced or written to (the change time even when the
    modification time is set back)."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


@dataclass(frozen=True)
class PlainFile:
    """A plain file to copy, with its identity when checked."""

    path: Path
    layout: PlainCopy = field(repr=False)
    output_name: str
    payload_size: int
    identity: tuple[int, ...] = field(repr=False)
    payload_offset: int = 0

    @cached_property
    def sha256(self) -> str:
        """The file's SHA-256, read when asked (to recognise an existing copy); a copy takes
        it in its own pass instead (see :meth:`check_unchanged`)."""
        try:
            return hash_file(self.path, ("sha256",))["sha256"]
        except OSError as exc:
            raise OutputError(
                f"cannot read: {exc.strerror or exc}; check the file's permissions", self.path
            ) from exc

    def check_unchanged(self) -> None:
        """Refuse a copy when the file is no longer the one checked (written to, replaced,
        grown or shrunk since): what was read may mix two versions."""
        try:
            now = _identity(os.stat(self.path))
        except OSError as exc:
            raise OutputError(
                f"cannot read: {exc.strerror or exc}; nothing written", self.path
            ) from exc
        if now != self.identity:
            raise OutputError(
                "changed while being copied; nothing written; run the same command again",
                self.path,
            )


class PlainCopy:
    """A plain model file of an OpenBuddy folder, copied as it is (read once: hashed as it is
    copied, and refused if it changed since it was checked)."""

    name = "copy"
    pattern = "NAME (a plain model file)"

    @property
    def expected_key(self) -> KnownKey:
        """Unused (the key plays no part in a copy): the seed of the files it rides with."""
        return llama_7b_seed()

    def recognises(self, filename: str) -> bool:
        """Files that are not encrypted and not hub clutter."""
        return not filename.endswith(SUFFIX) and not is_clutter(filename)

    def open(self, path: Path) -> PlainFile:
        """Check the file and note its identity (the copy must end with the same)."""
        source = open_headerless(path, self, path.name)
        try:
            info = os.stat(path)
        except OSError as exc:
            raise InputError(
                f"cannot read: {exc.strerror or exc}; check the file's permissions", path
            ) from exc
        if info.st_size != source.payload_size:
            raise InputError("changed while being checked; run the same command again", path)
        return PlainFile(path, self, source.output_name, source.payload_size, _identity(info))

    def keystream(self, source: Source, key: Key) -> AbstractContextManager[Keystream]:
        """Zeros."""
        return nullcontext(ZeroStream())

    def key_warning(self, report: KeyReport, unverified: bool) -> str | None:
        """The key plays no part in a copy."""
        return None


PLAIN_COPY = PlainCopy()


def is_copy(source: Source) -> bool:
    """True for a plain file the run copies rather than decrypts."""
    return source.layout is PLAIN_COPY
