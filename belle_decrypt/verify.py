"""`md5sum -c` for a folder against a model-card manifest, in parallel, every mismatch reported.

The manifest's entries fall into two groups, the downloaded `.enc` files and the decrypted
files. A group is checked when at least one of its files is in the folder, so one model card
checks the downloads before decrypting and the results after.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from belle_decrypt import jobs
from belle_decrypt.cancel import CancelToken
from belle_decrypt.errors import InputError, ManifestError
from belle_decrypt.hashing import NotRegularFile, md5_file
from belle_decrypt.manifest import Manifest, ManifestEntry
from belle_decrypt.states import CheckStatus

OK = CheckStatus.OK
FAILED = CheckStatus.FAILED
MISSING = CheckStatus.MISSING
ENCRYPTED = "encrypted"
DECRYPTED = "decrypted"


@dataclass(frozen=True)
class FileCheck:
    """One listed file's outcome; ``actual`` is None when it is missing or unreadable."""

    name: str
    group: str
    expected: str
    actual: str | None
    status: CheckStatus
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "name": self.name,
            "group": self.group,
            "expected": self.expected,
            "actual": self.actual,
            "status": self.status.value,
        }


@dataclass(frozen=True)
class VerifyReport:
    """Every listed file of every checked group, in manifest order."""

    folder: Path
    files: tuple[FileCheck, ...]

    @property
    def ok(self) -> bool:
        """True when every checked file is OK."""
        return all(check.status == OK for check in self.files)

    def count(self, status: CheckStatus) -> int:
        """How many files have ``status``."""
        return sum(1 for check in self.files if check.status == status)

    @property
    def groups(self) -> tuple[str, ...]:
        """The groups checked."""
        return tuple(dict.fromkeys(check.group for check in self.files))

    def as_dict(self) -> dict[str, Any]:
        """The JSON document of `verify --json`."""
        return {
            "folder": str(self.folder),
            "ok": self.ok,
            "files": [check.as_dict() for check in self.files],
        }


def _group(entry: ManifestEntry) -> str:
    return ENCRYPTED if entry.encrypted else DECRYPTED


def entries_to_check(folder: Path, manifest: Manifest) -> tuple[ManifestEntry, ...]:
    """The entries of each group with at least one file present in ``folder``."""
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "no such folder"
        raise ManifestError(f"{what}; pass the folder holding the listed files", folder)
    chosen: list[ManifestEntry] = []
    try:
        for group in (manifest.encrypted, manifest.decrypted):
            if any((folder / entry.name).exists() for entry in group):
                chosen.extend(group)
    except OSError as exc:
        raise InputError(
            f"cannot read the folder: {exc.strerror or exc}; check its permissions", folder
        ) from exc
    if not chosen:
        sources = ", ".join(sorted({entry.source for entry in manifest.entries}))
        raise ManifestError(
            f"holds none of the {len(manifest.entries)} files listed in {sources}; pass the "
            "folder with the downloaded .enc files or the decrypted files",
            folder,
        )
    return tuple(chosen)


def _check_one(
    folder: Path,
    entry: ManifestEntry,
    on_progress: Callable[[int], None] | None,
    cancel: CancelToken | None = None,
) -> FileCheck:
    path = folder / entry.name
    group = _group(entry)
    try:
        if not path.exists():
            return FileCheck(entry.name, group, entry.md5, None, MISSING)
        actual = md5_file(path, on_progress=on_progress, cancel=cancel)
    except NotRegularFile:  # a FIFO or /dev/zero would never end
        return FileCheck(entry.name, group, entry.md5, None, FAILED, "not a regular file")
    except OSError as exc:
        return FileCheck(
            entry.name, group, entry.md5, None, FAILED, f"cannot read: {exc.strerror or exc}"
        )
    return FileCheck(entry.name, group, entry.md5, actual, OK if actual == entry.md5 else FAILED)


def planned_bytes(folder: Path, entries: tuple[ManifestEntry, ...]) -> int:
    """Bytes that verifying ``entries`` will read (for a progress bar's total)."""
    total = 0
    for entry in entries:
        try:
            total += (folder / entry.name).stat().st_size
        except OSError:
            continue
    return total


def default_workers() -> int:
    """Parallel hashes: a few, bounded by the CPUs (disks rarely gain beyond that)."""
    return max(1, min(4, os.cpu_count() or 1))


def verify_folder(
    folder: Path,
    manifest: Manifest,
    *,
    entries: tuple[ManifestEntry, ...] | None = None,
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    cancel: CancelToken | None = None,
) -> VerifyReport:
    """Check every listed file of each group present in ``folder``; never stop at the first.

    ``on_progress(n)`` is called with bytes hashed, from worker threads, one call at a time.
    An interruption (Ctrl-C) cancels the hashes in flight, which stop within a chunk.
    """
    chosen = entries if entries is not None else entries_to_check(folder, manifest)
    lock = threading.Lock()

    def progress(n: int) -> None:
        if on_progress is not None:
            with lock:
                on_progress(n)

    token = cancel if cancel is not None else CancelToken()
    checks = jobs.run(
        lambda entry: _check_one(folder, entry, progress, token),
        chosen,
        workers or default_workers(),
        cancel=token,
    )
    return VerifyReport(folder=folder, files=tuple(checks))
