"""Headerless files (docs/FORMAT.md sections 4 and 5): no header, nothing to check them by.

TechGPT's `NAME.<placeholder hex>.enc` and OpenBuddy's `NAME.enc` carry no digest: byte 0 of the
file is byte 0 of the payload and the decrypted size is the file size. The run checks each
output against the model card's md5 (``--manifest``) instead. This module has what both share:
the :class:`Headerless` source and the checks made before anything is written. The TechGPT
layout itself is here too, keyed like the BELLE container.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from belle_decrypt.layouts.container import SUFFIX, KeyedOnLlama7B, parse_name, read_head

if TYPE_CHECKING:
    from belle_decrypt.layouts.protocol import Layout, Source

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
    checked = parse_name(f"{output_name}.{EMPTY_SHA256}{SUFFIX}", path).name  # the name rules
    size, _ = read_head(path, 0)
    return Headerless(path=path, layout=layout, output_name=checked, payload_size=size)


class TechGPT(KeyedOnLlama7B):
    """Headerless BELLE (docs/FORMAT.md section 4): `NAME.<64 hex>.enc` whose whole content is
    the payload, keyed with 10 MiB pieces of LLaMA-7B like the container."""

    name = "techgpt"
    pattern = f"NAME.{EMPTY_SHA256[:8]}….enc"

    def open(self, path: Path) -> Source:
        """Check the name (the hex in it is not a checksum) and the file."""
        return open_headerless(path, self, parse_name(path.name, path).name)

    def encrypted_name(self, plain_name: str, sha256_hex: str) -> str:
        """`encrypt --format techgpt`: every file gets the placeholder hex."""
        return f"{plain_name}.{EMPTY_SHA256}{SUFFIX}"


TECHGPT = TechGPT()


def is_hex_run(text: str) -> bool:
    """True for 32 or more hex digits (either case): a checksum-like name part."""
    return len(text) >= 32 and re.fullmatch(r"[0-9A-Fa-f]+", text) is not None
