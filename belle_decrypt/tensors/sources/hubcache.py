"""A Hugging Face hub-cache root (``models--org--name``) given as a model folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from belle_decrypt.ground.errors import InputError


def snapshot(path: Path, fail: Callable[[str], InputError]) -> Path:
    """The folder to read: a hub-cache root (``models--org--name``, holding ``snapshots/``)
    stands for the snapshot its ``refs/main`` names, as huggingface_hub resolves it; any other
    folder is itself. ``fail`` makes the error for a root without a usable ``refs/main``."""
    snapshots = path / "snapshots"
    if not path.name.startswith("models--") or not snapshots.is_dir():
        return path
    try:
        ref = (path / "refs" / "main").read_text(encoding="utf-8").strip()
    except (OSError, ValueError):
        ref = ""
    if ref and "/" not in ref and ref not in (".", "..") and (snapshots / ref).is_dir():
        return snapshots / ref
    found = sorted(p for p in snapshots.iterdir() if p.is_dir())
    listed = ", ".join(str(p) for p in found) or f"{snapshots}/<hash>"
    raise fail(f"is a hub-cache folder without refs/main; pass one of its snapshots: {listed}")
