"""`check-key` on Meta's folder: which model it is, each file against its checklists, and
what the folder is the key for (docs/FORMAT.md section 8)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from belle_decrypt.streams.hashing import hash_file
from belle_decrypt.tensors.listed import whose
from belle_decrypt.tensors.sources.meta import MetaFolder

# LLaMA's sizes by width (LLaMA-1 calls its 8192-wide model 65B, LLaMA-2 70B).
SIZES = {4096: "7B", 5120: "13B", 6656: "30B"}


@dataclass(frozen=True)
class FileCheck:
    """One file's digest against one list's."""

    path: Path
    algorithm: str
    expected: str
    actual: str
    listing: str

    @property
    def ok(self) -> bool:
        """Whether the digests agree."""
        return self.actual == self.expected


@dataclass(frozen=True)
class MetaReport:
    """What ``check-key`` says of Meta's folder."""

    folder: Path
    model: str
    checks: tuple[FileCheck, ...]
    key_for: str

    @property
    def ok(self) -> bool:
        """Every file checked, and every check agreed."""
        return bool(self.checks) and all(check.ok for check in self.checks)

    @property
    def verdict(self) -> str:
        """One line: the model and whether its files are Meta's."""
        if not self.checks:
            return f"is {self.model}, but nothing lists its files' checksums (no checklist.chk)"
        bad = sorted({check.path.name for check in self.checks if not check.ok})
        if bad:
            verb = "differs" if len(bad) == 1 else "differ"
            return f"is {self.model}, but {', '.join(bad)} {verb}: download it again"
        return f"is {self.model}: every file matches"


def model_name(folder: MetaFolder) -> str:
    """``LLaMA-1 7B``, ``LLaMA-2 70B``, or the width for a model of no known size."""
    dim = folder.params.dim
    size = SIZES.get(dim) or ({1: "65B", 2: "70B"}[folder.version] if dim == 8192 else None)
    name = f"LLaMA-{folder.version} {size}" if size else f"LLaMA-{folder.version} (dim {dim})"
    return f"{name}, {folder.dtype}, {len(folder.files)} file{'s' * (len(folder.files) != 1)}"


def check_meta(path: Path, on_progress: Callable[[int], None] | None = None) -> MetaReport:
    """Open Meta's folder (every structural check), then hash each listed file."""
    with MetaFolder.open_meta(path, "KEY_FILE") as folder:
        checks = []
        for file, entries in folder.listed:
            algorithms = sorted({entry.algorithm for entry in entries})
            actual = hash_file(file, algorithms, on_progress=on_progress)
            for entry in entries:
                checks.append(
                    FileCheck(
                        file,
                        entry.algorithm,
                        entry.digest,
                        actual[entry.algorithm],
                        whose(entry),
                    )
                )
        key_for = (
            "`recover` (as BASE_DIR) and `convert` take this folder"
            if folder.version == 1
            else "`convert` takes this folder (LLaMA-2 is no recipe's base)"
        )
        if folder.version == 1 and folder.params.dim == 4096 and len(folder.files) == 1:
            key_for += f"; BELLE's .enc files take {folder.files[0]} as KEY_FILE"
        return MetaReport(folder.path, model_name(folder), tuple(checks), key_for)
