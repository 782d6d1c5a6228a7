"""The journal in OUT_DIR: what a run was asked to do and which shards it finished.

It records the inputs' fingerprints (path, size, modification time of every weight file of
both folders), the recipe and the output layout, and for each finished shard its SHA-256 and
the float32 sums of its tensors. A later run with the same fingerprint keeps every shard whose
bytes still hash to the recorded SHA-256 and computes only the others.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from belle_decrypt.ground.cancel import forget_removed
from belle_decrypt.streams.output import AtomicFile, WriteBehind

JOURNAL_NAME = ".belle-recover.json"
PENDING_PREFIX = ".belle-pending."
VERSION = 1


def pending_name(final_name: str) -> str:
    """The hidden name a finished shard has until the whole run is verified."""
    return PENDING_PREFIX + final_name


def fingerprint(files: list[Path]) -> list[list[object]]:
    """Path, size and modification time of each file (followed through links)."""
    rows: list[list[object]] = []
    for path in files:
        stat = path.stat()
        rows.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    return rows


@dataclass
class Journal:
    """The run's identity (``key``) and the finished shards: name -> {sha256, sums}."""

    path: Path
    key: dict[str, Any]
    shards: dict[str, dict[str, Any]] = field(default_factory=dict)
    complete: bool = False

    @classmethod
    def load(cls, out_dir: Path, key: dict[str, Any]) -> Journal:
        """The journal for ``key``; an absent, unreadable or different one, or one with a
        damaged entry, starts afresh."""
        path = out_dir / JOURNAL_NAME
        journal = cls(path, key)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return journal
        if not isinstance(doc, dict) or doc.get("version") != VERSION:
            return journal
        if json.dumps(doc.get("key"), sort_keys=True) != json.dumps(key, sort_keys=True):
            return journal
        shards = doc.get("shards")
        if not isinstance(shards, dict) or not all(map(_valid_entry, shards.values())):
            return journal
        journal.shards = shards
        journal.complete = doc.get("complete") is True
        return journal

    def record(self, name: str, sha256: str, sums: list[float], *, fsync: bool) -> None:
        """Note a finished shard and save the journal atomically."""
        self.shards[name] = {"sha256": sha256, "sums": sums}
        self.save(fsync=fsync)

    def forget(self, name: str) -> None:
        """Drop a shard whose file no longer matches (saved with the next record)."""
        self.shards.pop(name, None)

    def save(self, *, fsync: bool) -> None:
        """Write the journal atomically."""
        doc = {
            "version": VERSION,
            "key": self.key,
            "shards": self.shards,
            "complete": self.complete,
        }
        try:
            write_small_file(self.path, (json.dumps(doc, indent=1) + "\n").encode(), fsync=fsync)
        except BaseException as exc:  # an interrupt: the journal is no unfinished output
            forget_removed(exc, self.path)
            raise

    def remove(self) -> None:
        """Delete the journal (a run that failed its final check keeps nothing)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _valid_entry(entry: object) -> bool:
    """Whether a finished shard's entry is ``{"sha256": 64 hex digits, "sums": [numbers]}``."""
    if not isinstance(entry, dict):
        return False
    digest, sums = entry.get("sha256"), entry.get("sums")
    return (
        isinstance(digest, str)
        and re.fullmatch(r"[0-9a-f]{64}", digest) is not None
        and isinstance(sums, list)
        and all(isinstance(s, int | float) and not isinstance(s, bool) for s in sums)
    )


def write_small_file(path: Path, data: bytes, *, fsync: bool) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename)."""
    atomic = AtomicFile(path, fsync=fsync)
    with atomic as handle:
        handle.write(data)
        atomic.commit()


class HashingWriter:
    """A file object that hashes what goes through it (SHA-256) on the way to ``handle``.

    Writes go through the engine's write-behind, which drops written pages from the page
    cache as it goes, so that a many-GB output does not push the inputs out of it.
    """

    def __init__(self, handle: BinaryIO, label: str) -> None:
        self.sink = WriteBehind(handle, label)
        self.sha256 = hashlib.sha256()
        self.count = 0
        self.failure: Exception | None = None

    def write(self, data: bytes | memoryview) -> int:
        """Write all of ``data`` and hash it; a failure is kept, for a caller (torch.save)
        that wraps it in an error of its own."""
        self.hash(data)
        return self.write_unhashed(data)

    def hash(self, data: bytes | memoryview) -> None:
        """Hash ``data`` without writing it: a thread may hash a piece while another writes
        it with :meth:`write_unhashed`, as long as every piece is hashed in file order."""
        self.sha256.update(memoryview(data))

    def write_unhashed(self, data: bytes | memoryview) -> int:
        """Write all of ``data`` (hashed by :meth:`hash`); a failure is kept, as by write."""
        view = memoryview(data)
        try:
            self.sink.write(view)
        except Exception as exc:
            self.failure = exc
            raise
        self.count += len(view)
        return len(view)

    def flush(self) -> None:
        """Nothing is buffered here."""
