"""What a run over many files reports: one Outcome per file and a Tally, for decrypt and
encrypt alike. Progress is reported through callbacks; nothing here knows the terminal."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from belle_decrypt.ground.errors import BelleError
from belle_decrypt.ground.states import FileState, Verified

Progress = Callable[[int], None]
"""Called with the number of bytes just done."""
FileProgress = Callable[[str, int], AbstractContextManager[Progress | None]]
"""Opens the progress of one file, given its (output) name and size in bytes."""


@dataclass(frozen=True)
class Diagnosis:
    """The likely cause of one failure, as a hint to append to its message."""

    wrong_key: bool
    hint: str


class FileResult(Protocol):
    """What every per-file result carries."""

    @property
    def target(self) -> Path: ...
    @property
    def status(self) -> FileState: ...
    @property
    def size(self) -> int: ...
    @property
    def seconds(self) -> float: ...


R = TypeVar("R", bound=FileResult)


class Notices(Protocol):
    """Where the checks before a run report what is not an error of the whole run, in order."""

    def problem(self, error: BelleError) -> None:
        """One input cannot be used; the run stops (exit 2) once all are reported."""

    def warning(self, text: str) -> None:
        """Something the user should know; the run goes on."""

    def skipped(self, path: Path, why: str) -> None:
        """A file of the source folder left out of the run."""


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """One file's end: a result, or the error that failed it (with its likely cause)."""

    source: Path
    result: R | None
    error: BelleError | None
    checked: Verified | None = None
    diagnosis: Diagnosis | None = None
    note: str | None = None
    """How the file was read, when that was a choice (a payload starting like gzip)."""


@dataclass
class Tally:
    """How a run went: files by end state, failures, files not tried and why."""

    done: Counter[FileState] = field(default_factory=Counter)
    failed: int = 0
    not_tried: int = 0
    stopped: str | None = None
    unverified: int = 0
    """Files that ended well with no checksum to check them by (``--no-verify``)."""
    advice: str | None = None
    """A warning about the run as a whole (every file failed although the key looked right)."""

    def add(self, outcome: Outcome[R]) -> None:
        """Count one file's outcome."""
        if outcome.result is None:
            self.failed += 1
        else:
            self.done[outcome.result.status] += 1
            if outcome.checked in (Verified.NOTHING, Verified.SAME_AS_FRESH):
                self.unverified += 1

    @property
    def decrypted(self) -> int:
        return self.done[FileState.DECRYPTED]

    @property
    def already_decrypted(self) -> int:
        return self.done[FileState.ALREADY_DECRYPTED]

    @property
    def copied(self) -> int:
        """Plain files copied, or found copied already."""
        return self.done[FileState.COPIED] + self.done[FileState.ALREADY_COPIED]

    @property
    def ok(self) -> bool:
        """True when every file ended well."""
        return self.failed == 0 and self.not_tried == 0
