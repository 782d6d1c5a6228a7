"""The journal in OUT_DIR: what a run was asked to do and which shards it finished.

It records the inputs' fingerprints (path, size, modification time of every weight file of
both folders), the recipe and the output layout, and for each finished shard the identity of
the file it wrote (:class:`FileIdentity`) and the float32 sums of its tensors. A later run with
the same fingerprint keeps every shard whose file is still the one recorded, without reading
it, and computes only the others.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from belle_decrypt.ground.cancel import forget_removed
from belle_decrypt.ground.platform_io import open_regular
from belle_decrypt.streams.output import AtomicFile, WriteBehind

JOURNAL_NAME = ".belle-recover.json"
PENDING_PREFIX = ".belle-pending."
VERSION = 2
LEGACY = 1
"""Version 1 recorded a SHA-256 of each shard: such a journal of the same run is taken for the
names of the files it made, each with no identity (``"file": null``): they are not in the way,
and every shard is written again."""


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
    """The run's identity (``key``) and the finished shards: name -> {file, sums}."""

    path: Path
    key: dict[str, Any]
    shards: dict[str, dict[str, Any]] = field(default_factory=dict)
    complete: bool = False

    @classmethod
    def load(cls, out_dir: Path, key: dict[str, Any]) -> Journal:
        """The journal for ``key``; an absent, unreadable or different one, one that is not a
        regular file (a FIFO), or one with a damaged entry, starts afresh."""
        path = out_dir / JOURNAL_NAME
        journal = cls(path, key)
        try:
            fd = open_regular(path)  # a FIFO under the journal's name would block a read
            if fd is None:
                return journal
            with open(fd, encoding="utf-8") as handle:
                doc = json.loads(handle.read())
        except (OSError, ValueError):
            return journal
        if not isinstance(doc, dict) or doc.get("version") not in (VERSION, LEGACY):
            return journal
        if json.dumps(doc.get("key"), sort_keys=True) != json.dumps(key, sort_keys=True):
            return journal
        if doc.get("version") == LEGACY:
            names = doc.get("shards")
            if isinstance(names, dict):
                journal.shards = {name: {"file": None, "sums": []} for name in names}
            return journal
        shards = doc.get("shards")
        if not isinstance(shards, dict) or not all(map(_valid_entry, shards.values())):
            return journal
        journal.shards = shards
        journal.complete = doc.get("complete") is True
        return journal

    def record(self, name: str, file: FileIdentity, sums: list[float], *, fsync: bool) -> None:
        """Note a finished shard (its committed file) and save the journal atomically."""
        self.shards[name] = {"file": file.to_json(), "sums": sums}
        self.save(fsync=fsync)

    def made(self, name: str) -> bool:
        """Whether an earlier run of this journal wrote the shard ``name`` (a file under its
        name is then this run's to keep or replace, not in the way)."""
        return name in self.shards

    def vouched(self, name: str, out_dir: Path) -> FileIdentity | None:
        """The recorded identity of the shard ``name`` if a file in ``out_dir`` under its final
        or pending name still has it, else None (the shard is to be written)."""
        entry = self.shards.get(name)
        recorded = None if entry is None else FileIdentity.parse(entry["file"])
        if recorded is None:
            return None
        # The final name again last: another run into OUT_DIR may rename the pending file
        # between the two looks (a rename is a new identity: then the shard is computed).
        for candidate in (name, pending_name(name), name):
            if FileIdentity.of(out_dir / candidate) == recorded:
                return recorded
        return None

    def moved(self, name: str, file: FileIdentity) -> None:
        """Note a finished shard's file under its new name (a rename changes its change
        time); saved with the next save."""
        if name in self.shards:
            self.shards[name]["file"] = file.to_json()

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
    """Whether a finished shard's entry is ``{"file": identity or null, "sums": [numbers]}``
    (null: made by a version 1 run, to be written again)."""
    if not isinstance(entry, dict) or "file" not in entry:
        return False
    sums, file = entry.get("sums"), entry["file"]
    return (
        (file is None or FileIdentity.parse(file) is not None)
        and isinstance(sums, list)
        and all(isinstance(s, int | float) and not isinstance(s, bool) for s in sums)
    )


@dataclass(frozen=True)
class FileIdentity:
    """A committed file as the file system knows it: inode, size, modification and change
    times (nanoseconds).

    Whatever changes the file through the file system changes one of them: a write or a
    truncate (size, both times; ``touch -d`` restores the modification time, not the change
    time), a rename or a new link (change time), a copy or a replacement (inode). The shard
    was fsynced before it was recorded (unless --no-fsync), so a file that still matches is
    the one written, and a re-run keeps it without reading it; one that does not is computed
    again. Git's index trusts the same fields; the journal's input fingerprint trusts fewer.
    On Windows ``st_ctime`` is the creation time: there a rewrite that puts the modification
    time back is not seen.
    """

    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity | None:
        """The identity of the regular file at ``path`` (not followed through a link), or
        None if there is none."""
        try:
            info = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        return cls(info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)

    @classmethod
    def parse(cls, value: object) -> FileIdentity | None:
        """An identity from its journal form (four non-negative integers), else None."""
        if not isinstance(value, list) or len(value) != 4:
            return None
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value):
            return None
        return cls(*value)

    def to_json(self) -> list[int]:
        """The journal form: ``[inode, size, mtime_ns, ctime_ns]``."""
        return [self.inode, self.size, self.mtime_ns, self.ctime_ns]


def write_small_file(path: Path, data: bytes, *, fsync: bool) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename)."""
    atomic = AtomicFile(path, fsync=fsync)
    with atomic as handle:
        handle.write(data)
        atomic.commit()


class ShardWriter:
    """A file object that counts what goes through it on the way to ``handle``.

    Writes go through the engine's write-behind, which drops written pages from the page
    cache as it goes, so that a many-GB output does not push the inputs out of it.
    """

    def __init__(self, handle: BinaryIO, label: str) -> None:
        self.sink = WriteBehind(handle, label)
        self.count = 0
        self.failure: Exception | None = None

    def write(self, data: bytes | memoryview) -> int:
        """Write all of ``data``; a failure is kept, for a caller (torch.save) that wraps it
        in an error of its own."""
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
