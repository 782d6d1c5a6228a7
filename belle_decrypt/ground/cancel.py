"""Cancellation passed down explicitly: a token that every long loop checks.

A run makes one :class:`CancelToken` and hands it to whatever it starts (the XOR stream, a
file hash, the parallel md5s of verify, a diagnosis). When one part fails, or the user presses
Ctrl-C while workers run, the run calls :meth:`CancelToken.cancel`; each loop sees it at its
next buffer (a few milliseconds) and raises :class:`Cancelled`. Nothing is process-wide: the
next run makes a fresh token, so the library runs again in the same process after a cancel.
"""

from __future__ import annotations

import threading
from pathlib import Path


class Cancelled(Exception):
    """A loop stopped because its token was cancelled (another file failed, or the user
    interrupted a run with several jobs)."""


class CancelToken:
    """A thread-safe, one-way flag: once cancelled it stays cancelled."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask every loop holding this token to stop."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if the token was cancelled."""
        if self._event.is_set():
            raise Cancelled("cancelled")

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds or until cancelled; return whether it is cancelled."""
        return self._event.wait(timeout)


def check(token: CancelToken | None) -> None:
    """:meth:`CancelToken.check` for an optional token."""
    if token is not None:
        token.check()


_REMOVED = "belle_removed_unfinished"


def note_removed(exc: BaseException, final: Path) -> None:
    """Record on ``exc``, on its way up, that the unfinished file meant to become ``final``
    was removed (so that an interrupt's message says so only when it is true)."""
    setattr(exc, _REMOVED, (*removed_unfinished(exc), final))


def removed_unfinished(exc: BaseException) -> tuple[Path, ...]:
    """The files whose unfinished temporary file was removed while ``exc`` went up."""
    return tuple(getattr(exc, _REMOVED, ()))


def forget_removed(exc: BaseException, final: Path) -> None:
    """Drop ``final`` from what ``exc`` says was removed: a file of the tool's own
    bookkeeping, which a user must not take for an unfinished output."""
    setattr(exc, _REMOVED, tuple(p for p in removed_unfinished(exc) if p != final))


def carry_removed(source: BaseException, target: BaseException) -> None:
    """Add what ``source`` (a worker's error) removed to ``target`` (the error raised)."""
    if source is not target:
        for final in removed_unfinished(source):
            note_removed(target, final)


__all__ = [
    "CancelToken",
    "Cancelled",
    "carry_removed",
    "check",
    "forget_removed",
    "note_removed",
    "removed_unfinished",
]
