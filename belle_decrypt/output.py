"""Safe output: write to a hidden temporary file beside the target, verify, then rename.

A file under its final name is always complete and verified. Temporary files are named
``.belle-tmp.<pid>.<token>.<name>`` so that a later run can recognise ours and remove the ones
whose process has ended.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

TEMP_PREFIX = ".belle-tmp."
_TEMP_RE = re.compile(r"^\.belle-tmp\.(?P<pid>\d+)\.[0-9a-f]{8}\.")
_NAME_KEEP = 120


def temp_name(final_name: str, pid: int | None = None) -> str:
    """A hidden name marking the file as ours and naming the writing process."""
    owner = os.getpid() if pid is None else pid
    return f"{TEMP_PREFIX}{owner}.{secrets.token_hex(4)}.{final_name[:_NAME_KEEP]}"


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicFile:
    """A context manager yielding a temporary file that becomes ``final`` only on ``commit``.

    Leaving the block without ``commit`` (an error, a signal) removes the temporary file.
    """

    def __init__(self, final: Path, *, fsync: bool = True) -> None:
        self.final = final
        self.fsync = fsync
        self.temp = final.parent / temp_name(final.name)
        self._handle: BinaryIO | None = None
        self._committed = False

    def __enter__(self) -> BinaryIO:
        fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._handle = os.fdopen(fd, "wb", buffering=0)
        return self._handle

    def commit(self, final: Path | None = None) -> None:
        """Flush, fsync, rename into place and fsync the folder.

        ``final`` names the target when it is known only at the end (an encrypted file's name
        holds the digest of its contents); it must be in the same folder.
        """
        assert self._handle is not None
        if final is not None:
            self.final = final
        self._handle.flush()
        if self.fsync:
            os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self.temp, self.final)
        self._committed = True
        if self.fsync:
            fsync_dir(self.final.parent)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None and not self._handle.closed:
            self._handle.close()
        if not self._committed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.temp)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove our temporary files in ``folder`` whose writing process has ended."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        match = _TEMP_RE.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        pid = int(match.group("pid"))
        if pid == os.getpid() or _process_alive(pid):
            continue
        try:
            os.unlink(entry.path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            continue
        removed.append(Path(entry.path))
    return removed
