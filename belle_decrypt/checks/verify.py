"""`md5sum -c` for a folder against a model-card manifest, in parallel, every mismatch reported.

The manifest's entries fall into two groups, the downloaded `.enc` files and the decrypted
files. A group is checked when at least one of its files is in the folder, so one model card
checks the downloads before decrypting and the results after. Each file is read once and hashed
with the algorithms its entries use (md5, SHA-256 or both).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from belle_decrypt.checks.manifest import Manifest, ManifestEntry, no_cyclic_gc
from belle_decrypt.ground.cancel import CancelToken
from belle_decrypt.ground.errors import InputError, ManifestError
from belle_decrypt.ground.states import CheckStatus
from belle_decrypt.streams import jobs
from belle_decrypt.streams.hashing import NotRegularFile, hash_file

OK = CheckStatus.OK
FAILED = CheckStatus.FAILED
MISSING = CheckStatus.MISSING
ENCRYPTED = "encrypted"
DECRYPTED = "decrypted"


@dataclass(frozen=True)
class FileCheck:
    """One manifest entry's outcome; ``actual`` is None when the file is missing or unreadable."""

    name: str
    group: str
    algorithm: str
    expected: str
    actual: str | None
    status: CheckStatus
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "name": self.name,
            "group": self.group,
            "algorithm": self.algorithm,
            "expected": self.expected,
            "actual": self.actual,
            "status": self.status.value,
        }


@dataclass(frozen=True)
class ListedFile:
    """One listed name, the file it stands for in the folder (None: missing) and its entries."""

    name: str
    path: Path | None
    entries: tuple[ManifestEntry, ...]
    group: str = field(init=False)

    def __post_init__(self) -> None:
        # `encrypted` for a downloaded `.enc` file, else `decrypted`.
        object.__setattr__(self, "group", ENCRYPTED if self.entries[0].encrypted else DECRYPTED)


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

    def json_chunks(self) -> Iterator[str]:
        """``json.dumps(self.as_dict(), indent=2)`` and a line break, one file at a time
        (a manifest may list millions of files)."""
        if not self.files:
            yield json.dumps(self.as_dict(), indent=2) + "\n"
            return
        head = json.dumps({"folder": str(self.folder), "ok": self.ok}, indent=2)
        yield head[: -len("\n}")] + ',\n  "files": ['
        for number, check in enumerate(self.files):
            # json.dumps with indent runs in Python; its scalars alone run in C.
            fields = ",\n".join(
                f"      {json.dumps(k)}: {json.dumps(v)}" for k, v in check.as_dict().items()
            )
            yield ("\n    {\n" if number == 0 else ",\n    {\n") + fields + "\n    }"
        yield "\n  ]\n}\n"


def locate(
    folder: Path, manifest: Manifest, name: str, top: frozenset[str] | None = None
) -> Path | None:
    """The file in ``folder`` that the listed ``name`` stands for, or None when missing.

    ``name`` is a path relative to ``folder``; when it is not there, its last parts are
    tried (a card made with `md5sum dir/*` lists `dir/x`) as long as no other listed name
    ends with them. ``top``, the names directly in ``folder`` when known, saves looking up
    paths that cannot exist.
    """
    parts = name.split("/")
    root = os.fspath(folder)
    for start in range(len(parts)):
        rest = parts[start:]
        if ".." in rest or (top is not None and rest[0] not in top):
            continue
        path = os.path.join(root, *rest)
        if not os.path.lexists(path):
            continue
        if start and manifest.names_ending_with("/".join(rest)) != (name,):
            return None  # shorter parts would be as ambiguous
        return Path(path)
    return None


def files_to_check(folder: Path, manifest: Manifest) -> tuple[ListedFile, ...]:
    """The listed files of each group (downloads, decrypted files) with at least one file
    present in ``folder``."""
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "no such folder"
        raise ManifestError(f"{what}; pass the folder holding the listed files", folder)
    unlisted: OSError | None = None
    try:
        top: frozenset[str] | None = frozenset(os.listdir(folder))
    except OSError as exc:
        top, unlisted = None, exc  # look each path up instead
    with no_cyclic_gc():  # a manifest may list millions of files
        listed = [
            ListedFile(name, locate(folder, manifest, name, top), manifest.entries_for(name))
            for name in manifest.names
        ]
    present = {item.group for item in listed if item.path is not None}
    chosen = tuple(item for item in listed if item.group in present)
    if not chosen and unlisted is not None:
        raise InputError(
            f"cannot read the folder: {unlisted.strerror or unlisted}; check its permissions",
            folder,
        )
    if not chosen:
        sources = ", ".join(sorted({entry.source for entry in manifest.entries}))
        raise ManifestError(
            f"holds none of the {len(listed)} files listed in {sources}; pass the "
            "folder with the downloaded .enc files or the decrypted files",
            folder,
        )
    return chosen


def _judge(
    item: ListedFile,
    entry: ManifestEntry,
    actual: str | None,
    status: CheckStatus | None = None,
    detail: str = "",
) -> FileCheck:
    """One entry's outcome: ``status`` if given, else OK when ``actual`` is its digest."""
    if status is None:
        status = OK if actual == entry.digest else FAILED
    return FileCheck(item.name, item.group, entry.algorithm, entry.digest, actual, status, detail)


def _missing(item: ListedFile) -> list[FileCheck]:
    """A listed file that is not in the folder: each of its entries MISSING."""
    return [_judge(item, entry, None, MISSING) for entry in item.entries]


def _check_one(
    item: ListedFile,
    on_progress: Callable[[int], None] | None,
    cancel: CancelToken | None = None,
) -> list[FileCheck]:
    """Hash one file once, with every algorithm its entries use, and judge each entry."""
    assert item.path is not None
    algorithms = tuple(dict.fromkeys(entry.algorithm for entry in item.entries))
    try:
        digests = hash_file(item.path, algorithms, on_progress=on_progress, cancel=cancel)
    except NotRegularFile:  # a FIFO or /dev/zero would never end
        return [_judge(item, entry, None, FAILED, "not a regular file") for entry in item.entries]
    except OSError as exc:
        detail = f"cannot read: {exc.strerror or exc}"
        return [_judge(item, entry, None, FAILED, detail) for entry in item.entries]
    return [_judge(item, entry, digests[entry.algorithm]) for entry in item.entries]


def planned_bytes(files: tuple[ListedFile, ...]) -> int:
    """Bytes that verifying ``files`` will read (for a progress bar's total)."""
    total = 0
    for item in files:
        try:
            total += item.path.stat().st_size if item.path is not None else 0
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
    files: tuple[ListedFile, ...] | None = None,
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    cancel: CancelToken | None = None,
) -> VerifyReport:
    """Check every listed file of each group present in ``folder``; never stop at the first.

    ``on_progress(n)`` is called with bytes hashed, from worker threads, one call at a time.
    An interruption (Ctrl-C) cancels the hashes in flight, which stop within a chunk.
    """
    chosen = files if files is not None else files_to_check(folder, manifest)
    lock = threading.Lock()

    def progress(n: int) -> None:
        if on_progress is not None:
            with lock:
                on_progress(n)

    token = cancel if cancel is not None else CancelToken()
    present = [item for item in chosen if item.path is not None]
    hashed = iter(
        jobs.run(
            lambda item: _check_one(item, progress, token),
            present,
            workers or default_workers(),
            cancel=token,
        )
    )
    with no_cyclic_gc():  # a manifest may list millions of missing files
        checks = tuple(
            check
            for item in chosen
            for check in (next(hashed) if item.path is not None else _missing(item))
        )
    return VerifyReport(folder=folder, files=checks)
