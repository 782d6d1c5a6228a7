"""Every operating-system-specific call of belle-decrypt, each behind a capability flag.

Linux is where the tool is tested for real. Elsewhere a capability may be missing; each
function below then falls back to something plain and still correct (output stays byte-exact):

=====================  ==========================================  ============================
capability             used for                                    without it
=====================  ==========================================  ============================
``HAS_SIGHUP``         a closed terminal stops a run cleanly       no handler (the OS default)
``HAS_SIGXFSZ``        ``ulimit -f`` fails a write instead of      no handler
                       killing the process
``HAS_MMAP``           the keystream mapped from the key file      copied with reads instead
``HAS_PREADV``         reads at an offset into a buffer            ``os.pread`` and a copy
``HAS_PREAD``          reads at an offset (threads share a file)   seek + read under a lock
``HAS_NONBLOCK``       opening a FIFO under a key or .enc name     stat first, refuse
                       does not hang                               non-regular files
``HAS_FADVISE``        the write-behind drops written pages        the page cache is left alone
``CAN_FSYNC_DIR``      a rename survives a power cut               the folder is not synced
``CAN_PROBE_PIDS``     removing temporary files of ended runs      foreign temporary files kept
                       (:class:`PidOwnership`)
``HAS_AFFINITY``       the CPUs this process may use               ``os.cpu_count()``
=====================  ==========================================  ============================

``O_DIRECT`` is not used: the write-behind (``posix_fadvise``) gives the page-cache relief
without its alignment rules. Tests switch each flag off with ``monkeypatch`` to exercise the
fallbacks; they are read at call time for that reason.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import signal
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

HAS_SIGHUP = hasattr(signal, "SIGHUP")
HAS_SIGXFSZ = hasattr(signal, "SIGXFSZ")
HAS_MMAP = hasattr(mmap, "MAP_SHARED") and hasattr(mmap, "PROT_READ")
HAS_PREADV = hasattr(os, "preadv")
HAS_PREAD = hasattr(os, "pread")
HAS_NONBLOCK = hasattr(os, "O_NONBLOCK")
HAS_FADVISE = hasattr(os, "posix_fadvise") and hasattr(os, "POSIX_FADV_DONTNEED")
CAN_FSYNC_DIR = os.name == "posix"
CAN_PROBE_PIDS = os.name == "posix"  # os.kill(pid, 0) elsewhere may end the process
HAS_AFFINITY = hasattr(os, "sched_getaffinity")

SignalHandler = Callable[[int, FrameType | None], Any]
_seek_lock = threading.Lock()


# --- signals -------------------------------------------------------------------------------


def install_signal_handlers(on_terminate: SignalHandler) -> Callable[[], None]:
    """Send SIGTERM (and SIGHUP where it exists) to ``on_terminate``; ignore SIGXFSZ where it
    exists, so that a file-size limit makes write() fail with EFBIG instead of killing the
    process; make SIGINT raise KeyboardInterrupt (unless it is ignored, as under nohup), since
    the entry point ends the process at once outside these handlers. Return a function that
    puts the previous handlers back."""
    previous: dict[int, Any] = {signal.SIGTERM: signal.signal(signal.SIGTERM, on_terminate)}
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    if HAS_SIGHUP:
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_terminate)
    if HAS_SIGXFSZ:
        previous[signal.SIGXFSZ] = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


def is_hangup(signum: int) -> bool:
    """Whether ``signum`` is SIGHUP (never, where there is none)."""
    return HAS_SIGHUP and signum == signal.SIGHUP


# --- reading -------------------------------------------------------------------------------


def pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Read up to ``len(view)`` bytes at ``offset`` into ``view``; return the count (0 at the
    end). Safe from several threads on one descriptor."""
    if HAS_PREADV:
        return os.preadv(fd, [view], offset)
    if HAS_PREAD:
        data = os.pread(fd, len(view), offset)
    else:
        with _seek_lock:
            os.lseek(fd, offset, os.SEEK_SET)
            data = os.read(fd, len(view))
    view[: len(data)] = data
    return len(data)


def pread(fd: int, size: int, offset: int) -> bytes:
    """Up to ``size`` bytes at ``offset`` (one read; fewer at the end of the file)."""
    buf = bytearray(size)
    got = pread_into(fd, memoryview(buf), offset)
    return bytes(buf[:got])


def open_regular(path: Path) -> int | None:
    """A read-only descriptor for ``path``, or None when it is not a regular file (a FIFO
    or device), without hanging on a FIFO. Raises OSError as the file system does."""
    if HAS_NONBLOCK:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    else:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        fd = os.open(path, os.O_RDONLY)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def mapped(fd: int, start: int, length: int) -> Iterator[memoryview | None]:
    """A read-only view of ``length`` bytes of ``fd`` from ``start``, mapped (no copy), or
    None where mapping is unavailable or fails (the caller then reads instead).

    Release every export of the view (tensors made from it) before the block ends.
    """
    if not HAS_MMAP:
        yield None
        return
    aligned = start - start % mmap.ALLOCATIONGRANULARITY
    try:
        mapping = mmap.mmap(
            fd,
            start - aligned + length,
            flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
            prot=mmap.PROT_READ,
            offset=aligned,
        )
    except (OSError, ValueError):
        yield None
        return
    try:
        with memoryview(mapping) as whole, whole[start - aligned :] as view:
            yield view
    finally:
        mapping.close()


# --- writing -------------------------------------------------------------------------------


def regular_file_fd(handle: Any) -> int | None:
    """The descriptor of ``handle`` when it is a regular file, else None."""
    try:
        fd = int(handle.fileno())
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except (AttributeError, OSError, ValueError):
        return None


def drop_cache(fd: int, offset: int, length: int) -> None:
    """Tell the kernel the range is written and will not be read again (start its writeback,
    or drop it once clean); a no-op where there is no posix_fadvise."""
    if HAS_FADVISE:
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a no-op where folders cannot be opened or synced."""
    if not CAN_FSYNC_DIR:
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


# --- temporary-file ownership --------------------------------------------------------------


class PidOwnership:
    """Who owns a temporary file: the writing process, named by its pid in the file's name.

    A writer marks its files with :meth:`tag` and calls :meth:`claim` right after creating one;
    a later run removes a file only when :meth:`is_stale` says its owner has ended. Another
    scheme (an exclusive lock held on the file for its life, visible across PID namespaces)
    replaces this class without touching its callers.
    """

    pattern = r"\d+"
    """What :meth:`tag` looks like inside a temporary file's name (a regex)."""

    def tag(self) -> str:
        """This process's mark in the names of the temporary files it writes."""
        return str(os.getpid())

    def claim(self, fd: int, path: Path) -> None:
        """Mark the new temporary file ``path`` (open as ``fd``) as this process's; a pid in
        its name is all this scheme needs."""

    def is_stale(self, tag: str, path: Path) -> bool:
        """Whether the owner of ``path``, tagged ``tag``, has ended, so the file can go.
        False whenever that cannot be known: a live run's file is never removed."""
        if not CAN_PROBE_PIDS or not tag.isdigit():
            return False
        pid = int(tag)
        if pid == os.getpid():
            return False
        return not _process_alive(pid)


OWNERSHIP = PidOwnership()
"""The ownership scheme of temporary files in use."""


def _process_alive(pid: int) -> bool:
    """Whether ``pid`` names a running process (a zombie, killed but not reaped, has ended)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, OSError):
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")


# --- CPUs ----------------------------------------------------------------------------------


def available_cores() -> int:
    """CPUs this process may run on."""
    if HAS_AFFINITY:
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
