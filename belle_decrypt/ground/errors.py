"""The one exception family the library raises; the CLI maps it to a message and an exit code."""

from __future__ import annotations

from enum import IntEnum
from pathlib import Path


class ExitCode(IntEnum):
    """Every exit status of the command line, in one place."""

    OK = 0
    FAILED = 1
    """A file failed its check or could not be written."""
    USAGE = 2
    """Unusable input (arguments, files, manifests), found before anything is written."""
    SIGHUP = 129
    SIGINT = 130
    SIGTERM = 143


EXIT_FAILED = ExitCode.FAILED
EXIT_USAGE = ExitCode.USAGE


class BelleError(Exception):
    """A failure a user can cause or fix: one line of text, the file concerned, an exit code."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, path: Path | str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = Path(path) if path is not None else None

    def __str__(self) -> str:
        if self.path is None:
            return self.message
        return f"{self.path}: {self.message}"


class InputError(BelleError):
    """Unusable input, found before anything is written (exit 2)."""

    exit_code = ExitCode.USAGE


class ProblemsReported(InputError):
    """Unusable inputs, each already reported on its own (nothing more to print; exit 2)."""

    def __init__(self, count: int) -> None:
        super().__init__(f"{count} unusable input{'s' if count != 1 else ''}")


class ChecksumError(BelleError):
    """The decrypted bytes do not match the SHA-256 (or md5) they must have (exit 1)."""


class OutputError(BelleError):
    """A file could not be read or written, or a different file is in the way (exit 1)."""


class ManifestError(BelleError):
    """An md5 manifest that cannot be read, lists nothing usable, or contradicts itself (exit 2)."""

    exit_code = ExitCode.USAGE


class ManifestClash(ManifestError):
    """Manifests that list one name twice with different sums of the same algorithm (exit 2);
    ``name`` is the first such name."""

    def __init__(self, message: str, name: str) -> None:
        super().__init__(message)
        self.name = name


class DigestMismatch(ChecksumError):
    """Decrypted bytes whose digest is not the one the file (or, for a layout that carries
    none, the manifest) says; ``hint`` says the likely cause."""

    def __init__(
        self, actual: str, expected: str, hint: str, path: Path | str, algorithm: str = "SHA-256"
    ) -> None:
        super().__init__(
            f"decrypted {algorithm} {actual} does not match {expected}: {hint}; nothing written",
            path,
        )
        self.actual = actual
        self.expected = expected
        self.hint = hint
        self.algorithm = algorithm

    def with_hint(self, hint: str) -> DigestMismatch:
        """The same failure explained differently."""
        assert self.path is not None
        return DigestMismatch(self.actual, self.expected, hint, self.path, self.algorithm)
