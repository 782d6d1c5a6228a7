"""The one exception family the library raises; the CLI maps it to a message and an exit code."""

from __future__ import annotations

from pathlib import Path

EXIT_FAILED = 1
EXIT_USAGE = 2


class BelleError(Exception):
    """A failure a user can cause or fix: one line of text, the file concerned, an exit code."""

    exit_code = EXIT_FAILED

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

    exit_code = EXIT_USAGE


class ChecksumError(BelleError):
    """The decrypted bytes do not match the SHA-256 (or md5) they must have (exit 1)."""


class OutputError(BelleError):
    """A file could not be read or written, or a different file is in the way (exit 1)."""


class ManifestError(BelleError):
    """An md5 manifest that cannot be read, lists nothing usable, or contradicts itself (exit 2)."""

    exit_code = EXIT_USAGE


class DigestMismatch(ChecksumError):
    """Decrypted bytes whose SHA-256 is not the one in the name; ``hint`` says the likely cause."""

    def __init__(self, actual: str, expected: str, hint: str, path: Path | str) -> None:
        super().__init__(
            f"decrypted SHA-256 {actual} does not match {expected}: {hint}; nothing written", path
        )
        self.actual = actual
        self.expected = expected
        self.hint = hint

    def with_hint(self, hint: str) -> DigestMismatch:
        """The same failure explained differently."""
        assert self.path is not None
        return DigestMismatch(self.actual, self.expected, hint, self.path)
