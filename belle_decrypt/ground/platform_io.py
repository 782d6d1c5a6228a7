"""Every operating-system-specific call of belle-decrypt, each behind a capability flag.

Linux is where the tool is tested for real. Elsewhere a capability may be missing; each
function below then falls back to something plain and still correct (output stays byte-exact):

=====================  ==========================================  ============================
capability             used for                                    without it
=====================  ==========================================  ============================
``HAS_SIGHUP``         a closed terminal stops a run cleanly       no handler (the OS default)
``HAS_SIGXFSZ``        ``ulimit -f`` fails a write instead of      no handler
                       killing the process
``HAS_PREADV``         reads at an offset into a buffer            ``os.pread`` and a copy
``HAS_PREAD``          reads at an offset (threads share a file)   seek + read under a lock
``HAS_NONBLOCK``       opening a FIFO under a key or .enc name     stat first, refuse
                       does not hang                               non-regular files
``HAS_FADVISE``        the write-behind drops written pages        the page cache is left alone
``CAN_FSYNC_DIR``      a rename survives a power cut               the folder is not synced
``HAS_FLOCK``          a temporary file is owned by its run for    the writer's pid is probed
                       its whole life (an exclusive lock, seen     (``CAN_PROBE_PIDS``): right
                       by every process on the kernel, in any      within one PID namespace only
                       PID namespace): only files nobody holds
                       are removed (:class:`LockOwnership`)
``CAN_PROBE_PIDS``     removing temporary files of ended runs      foreign temporary files kept
                       where locks are missing (:class:`PidOwnership`)
``HAS_AFFINITY``       the CPUs this process may use               ``os.cpu_count()``
=====================  ==========================================  ============================

Locks are those of ``flock(2)``: every process on one kernel sees them, whatever its PID
namespace (containers sharing a volume). Over NFS, Linux passes them to the server's lock
manager; a mount without lock support (``nolock``) keeps them local to each client, so runs on
two machines sharing such a folder must not write into it at once. Where a file system refuses
locks (ENOLCK, EOPNOTSUPP), the pid in the name is probed instead.

``O_DIRECT`` is not used: the write-behind (``posix_fadvise``) gives the page-cache relief
without its alignment rules. Tests switch each flag off with ``monkeypatch`` to exercise the
fallbacks; they are read at call time for that reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

if sys.platform != "win32":
    import fcntl

HAS_SIGHUP = hasattr(signal, "SIGHUP")
HAS_SIGXFSZ = hasattr(signal, "SIGXFSZ")
HAS_PREADV = hasattr(os, "preadv")
HAS_PREAD = hasattr(os, "pread")
HAS_NONBLOCK = hasattr(os, "O_NONBLOCK")
HAS_FADVISE = hasattr(os, "posix_fadvise") and hasattr(os, "POSIX_FADV_DONTNEED")
CAN_FSYNC_DIR = os.name == "posix"
HAS_FLOCK = sys.platform != "win32"
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


class Hold:
    """A run's hold on one of its temporary files, kept until :meth:`release` (after the file
    is renamed into place or removed): a lock on a descriptor of its own, or nothing where the
    pid in the file's name is the mark."""

    def __init__(self, fd: int | None = None) -> None:
        self._fd = fd

    def release(self) -> None:
        """Let go of the file; safe to call twice."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class PidOwnership:
    """Who owns a temporary file: the writing process, named by its pid in the file's name.

    A writer marks its files with :meth:`tag` and calls :meth:`claim` right after creating one;
    a later run calls :meth:`remove_if_stale`, which removes a file only when its owner has
    ended. A pid is only meaningful in the writer's PID namespace: :class:`LockOwnership` is
    used wherever locks exist, this where they do not.
    """

    pattern = r"\d+"
    """What :meth:`tag` looks like inside a temporary file's name (a regex)."""

    def tag(self) -> str:
        """This process's mark in the names of the temporary files it writes."""
        return str(os.getpid())

    def claim(self, fd: int, path: Path) -> Hold | None:
        """Own the new temporary file ``path`` (open as ``fd``) before anything is written to
        it; None when it was removed meanwhile (make another). A pid in its name is all this
        scheme needs."""
        return Hold()

    def remove_if_stale(self, tag: str, path: Path) -> bool:
        """Remove ``path``, tagged ``tag``, when no live run owns it; return whether removed.
        Never one of this process's own."""
        if not self.is_stale(tag):
            return False
        os.unlink(path)
        return True

    def is_stale(self, tag: str) -> bool:
        """Whether the process tagged ``tag`` has ended, as seen from this PID namespace. False
        whenever that cannot be known: a live run's file is never removed."""
        if not CAN_PROBE_PIDS or not tag.isdigit():
            return False
        pid = int(tag)
        if pid == os.getpid():
            return False
        return not _process_alive(pid)


_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS)


class LockOwnership(PidOwnership):
    """A temporary file is owned by an exclusive ``flock`` that its run holds for the file's
    whole life. Every process on the kernel sees the lock, whatever its PID namespace (two
    containers sharing a volume), so a file is stale exactly when its lock can be taken. The
    lock is taken before anything is written, then ``path`` is checked to still name the
    locked file: another run may have found it unlocked in between and removed it.

    Without locks (``HAS_FLOCK`` off, or a file system refusing them: ENOLCK, EOPNOTSUPP) it
    falls back to the pid (:class:`PidOwnership`). The tag stays the pid, so that this
    process's own files are always skipped.
    """

    def claim(self, fd: int, path: Path) -> Hold | None:
        if not HAS_FLOCK:
            return super().claim(fd, path)
        holder = os.dup(fd)  # the lock lives as long as this descriptor, past closing ``fd``
        try:
            fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a run that found it unlocked holds it, to remove it
            os.close(holder)
            return None
        except OSError as exc:
            os.close(holder)
            if exc.errno in _NO_LOCKS:
                return super().claim(fd, path)
            raise
        if not _names(path, holder):
            os.close(holder)
            return None
        return Hold(holder)

    def remove_if_stale(self, tag: str, path: Path) -> bool:
        if not HAS_FLOCK:
            return super().remove_if_stale(tag, path)
        if tag == self.tag():
            return False
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # its run is live, in this container or another
            except OSError as exc:
                return exc.errno in _NO_LOCKS and super().remove_if_stale(tag, path)
            if not _names(path, fd):
                return False
            os.unlink(path)  # while holding the lock: its writer cannot take it meanwhile
            return True
        finally:
            os.close(fd)


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        named = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


OWNERSHIP: PidOwnership = LockOwnership()
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
