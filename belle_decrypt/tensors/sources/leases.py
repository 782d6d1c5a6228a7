"""Read leases on the input files, so that no input shrinks under a mapping (Linux)."""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from belle_decrypt.ground.errors import OutputError

try:
    import fcntl
except ImportError:  # not POSIX: no leases
    _F_SETLEASE = _F_GETLEASE = -1
else:
    _F_SETLEASE = getattr(fcntl, "F_SETLEASE", -1)  # Linux only
    _F_GETLEASE = getattr(fcntl, "F_GETLEASE", -1)


class ReadLeases:
    """Linux read leases on the open input files, so that no input shrinks under a mapping.

    While a read lease is held, the kernel makes another program's ``truncate`` or open for
    writing wait (up to ``/proc/sys/fs/lease-break-time``, 45 s by default; a non-blocking open
    fails instead) and sends this process SIGIO. The handler raises OutputError for the file
    whose lease is breaking, in the main thread, between two bytecodes: the run unwinds
    (temporary file removed), closes its inputs, which releases the leases, and the other
    program goes on. Leases need the main thread (signal handlers live there), a local file
    system, and the file's owner or CAP_LEASE; without them, ``WeightFolder.load``'s size
    check is what remains.
    """

    def __init__(self) -> None:
        self.files: dict[int, tuple[Path, str]] = {}
        self.previous: Any = None
        self.available = hasattr(signal, "SIGIO") and _F_SETLEASE >= 0

    def take(self, fd: int, file: Path, role: str) -> None:
        """Hold a read lease on ``fd`` if the system grants one (nothing happens otherwise)."""
        if not self.available or threading.current_thread() is not threading.main_thread():
            return
        if not self.files:
            self.previous = signal.signal(signal.SIGIO, self._breaking)
        try:
            fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_RDLCK)
        except OSError:  # open for writing elsewhere, a file system without leases, not ours
            if not self.files:
                self._restore()
            return
        self.files[fd] = (file, role)

    def release(self, fd: int) -> None:
        """Give up ``fd``'s lease (before it is closed); the handler goes with the last one."""
        if self.files.pop(fd, None) is None:
            return
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_UNLCK)
        if not self.files:
            self._restore()

    def _restore(self) -> None:
        signal.signal(signal.SIGIO, self.previous if self.previous is not None else signal.SIG_DFL)
        self.previous = None

    def _breaking(self, signum: int, frame: FrameType | None) -> None:
        for fd, (file, role) in list(self.files.items()):
            try:
                breaking = fcntl.fcntl(fd, _F_GETLEASE) != fcntl.F_RDLCK
            except OSError:
                continue
            if breaking:
                raise OutputError(
                    f"({role}) another program is truncating or rewriting it while it is "
                    "being read (it waits until this run stops); nothing was left under a "
                    "final name; once it is done, download the file again if it changed, then "
                    "run the same command again",
                    file,
                )
        if callable(self.previous):
            self.previous(signum, frame)


LEASES = ReadLeases()
"""The process's leases (one SIGIO handler for every input)."""
