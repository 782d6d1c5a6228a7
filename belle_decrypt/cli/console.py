"""What the command line shows: one-line messages, progress bars, summary lines, exit codes.

Every command's output goes through here: errors and warnings as one escaped line on stderr,
summary lines on stdout that do not garble the bars, the overall + per-file bars on stderr
(only for a person watching a terminal), and :func:`user_errors`, which turns library errors
and signals into one line and an exit code, never a traceback. The library knows none of it.
"""

from __future__ import annotations

import io
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import click

from belle_decrypt.ground import platform_io
from belle_decrypt.ground.cancel import removed_unfinished
from belle_decrypt.ground.errors import BelleError, ExitCode, ProblemsReported

if TYPE_CHECKING:
    from belle_decrypt.tensors.options import Outcome as Recovered
    from belle_decrypt.tensors.run import Recovery

PROG = "belle-decrypt"


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM so that `with` blocks clean up."""

    exit_code = ExitCode.SIGTERM
    word = "terminated"


class HungUp(Terminated):
    """Raised on SIGHUP (a closed terminal or ssh session), handled like SIGTERM."""

    exit_code = ExitCode.SIGHUP
    word = "hung up"


def _on_signal(signum: int, frame: FrameType | None) -> NoReturn:
    raise HungUp() if platform_io.is_hangup(signum) else Terminated()


# Control characters (a line break in a file name) shown escaped, so a message stays one line;
# the bytes of a name that is not UTF-8 (surrogate escapes, as Python reads a GBK name) shown as
# `\xNN`, since they cannot be written to a UTF-8 terminal.
_ESCAPES = (
    {i: f"\\x{i:02x}" for i in (*range(32), 127)}
    | {10: "\\n", 9: "\\t", 13: "\\r"}
    | {i: f"\\u{i:04x}" for i in range(0xD800, 0xE000)}
    | {0xDC00 + i: f"\\x{i:02x}" for i in range(0x80, 0x100)}
)


def one_line(text: str) -> str:
    """``text`` with control characters and undecodable bytes escaped; other characters
    (Chinese names) kept."""
    return text.translate(_ESCAPES)


def error(message: str) -> None:
    """One line on stderr (dropped if stderr is gone, as after a hang-up)."""
    with suppress(OSError):
        click.echo(f"{PROG}: error: {one_line(message)}", err=True)


def warn(message: str) -> None:
    """One warning line on stderr."""
    with suppress(OSError):
        click.echo(f"{PROG}: warning: {one_line(message)}", err=True)


def human_size(size: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def failure(exc: BaseException, writing: bool = False) -> tuple[str, ExitCode] | None:
    """The one line (empty when each problem was said already) and the exit code for ``exc``;
    None for what is not a failure to report (click's own exits)."""
    if isinstance(exc, ProblemsReported):
        return "", exc.exit_code
    if isinstance(exc, BelleError):
        return str(exc), exc.exit_code
    if isinstance(exc, OSError):  # a last resort: an I/O error the library did not word
        where = f"{exc.filename}: " if exc.filename is not None else ""
        after = "; nothing was left under a final name" if writing else ""
        return f"{where}{exc.strerror or exc}{after}", ExitCode.FAILED
    if isinstance(exc, KeyboardInterrupt):
        return _interrupted("interrupted", exc, writing), ExitCode.SIGINT
    if isinstance(exc, Terminated):
        return _interrupted(exc.word, exc, writing), exc.exit_code
    return None


def _interrupted(word: str, exc: BaseException, writing: bool) -> str:
    """What an interrupt did: the unfinished files removed, named only when there were any."""
    if not writing:
        return word
    again = "run the same command again to finish"
    removed = removed_unfinished(exc)
    if len(removed) == 1:
        return f"{removed[0]}: {word}; the unfinished file was removed; {again}"
    if removed:
        names = ", ".join(str(path) for path in removed)
        return f"{word}; the unfinished files {names} were removed; {again}"
    return f"{word}; {again}"


@contextmanager
def user_errors(writing: bool = False) -> Iterator[None]:
    """Map library errors and signals to one line and an exit code; never a traceback.

    SIGXFSZ is ignored (where it exists) so that a file-size limit (``ulimit -f``) makes
    write() fail with EFBIG, which is reported like any write error, instead of killing the
    process. ``writing`` commands say, when interrupted, which unfinished files were removed.
    """
    restore = platform_io.install_signal_handlers(_on_signal)
    try:
        yield
    except BaseException as exc:
        reported = failure(exc, writing)
        if reported is None:
            raise
        line, code = reported
        if line:
            error(line)
        sys.exit(code)
    finally:
        restore()


class EmptyPath(click.UsageError):
    """An empty path argument (`""`, an unset `$OUT`), which would mean the current folder:
    a usage error said in one line (exit 2)."""

    def show(self, file: Any = None) -> None:
        error(self.message)


class GivenPath(click.Path):
    """A path that is not empty; everything else about it is checked by the library, which
    says what is wrong in one line."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value:
            if isinstance(param, click.Option):
                what = param.opts[0]
            else:
                what = param.human_readable_name if param is not None else "a path"
            raise EmptyPath(f"{what}: the path is empty (an unset variable?); give a path", ctx)
        return super().convert(value, param, ctx)


def progress_enabled(quiet: bool) -> bool:
    """Bars only for a person watching a terminal."""
    return not quiet and sys.stderr.isatty()


def bar(total: int, desc: str, enabled: bool, position: int = 0, leave: bool = False) -> Any:
    """A byte-counting tqdm bar on stderr (a no-op one when not ``enabled``)."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        disable=not enabled,
        position=position,
        leave=leave,
        dynamic_ncols=True,
    )


class Bars:
    """An overall bar (folder form only) and a bar per file, advanced together.

    ``advance`` may be called from several threads (``--jobs``).
    """

    def __init__(self, total: int, folder: bool, enabled: bool) -> None:
        self.folder, self.enabled = folder, enabled
        self.overall = bar(total, "all files", enabled and folder, 0, True)
        self.lock = threading.Lock()

    def __enter__(self) -> Bars:
        return self

    def __exit__(self, *exc: object) -> None:
        self.overall.close()

    @contextmanager
    def file(self, size: int, name: str, shown: bool = True) -> Iterator[Callable[[int], None]]:
        """A bar for one file (``shown`` False: only the overall bar moves)."""
        folder = self.folder
        with bar(size, name, self.enabled and shown, int(folder), not folder) as file_bar:

            def advance(n: int) -> None:
                with self.lock:
                    file_bar.update(n)
                    self.overall.update(n)

            yield advance


def say(line: str, quiet: bool) -> None:
    """A summary line on stdout that does not garble progress bars."""
    if quiet:
        return
    from tqdm import tqdm

    tqdm.write(one_line(line), file=sys.stdout)
    sys.stdout.flush()


class _StdoutFile(io.FileIO):
    """Standard output's descriptor, where a write that cannot be done makes the rest of the
    output go nowhere instead of failing the command: a reader that has gone (EPIPE) silently,
    a full device or another write error (and a stdout that was closed, ``lost``) with one
    warning line on stderr."""

    def __init__(self, fd: int, lost: str | None = None) -> None:
        super().__init__(fd, "w", closefd=False)
        self.lost = lost

    def write(self, data: Any, /) -> int:
        size = memoryview(data).nbytes
        if self.lost is not None:
            warn(
                f"could not write to standard output ({self.lost}); its lines are dropped, "
                "the command goes on"
            )
            self.lost = None
            return size
        try:
            return super().write(data) or 0
        except BrokenPipeError:
            _to_devnull(self.fileno())
        except OSError as exc:
            _to_devnull(self.fileno())
            self.lost = exc.strerror or str(exc)
            return self.write(data)
        return size


def _to_devnull(fd: int) -> None:
    """Point ``fd`` at the null device (output to it then goes nowhere)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    if devnull != fd:
        os.dup2(devnull, fd)
        os.close(devnull)


def keep_going_without_stdout_reader() -> None:
    """Make stdout swallow output it cannot write: its reader gone (`| head -0`), a full device
    (`>/dev/full`), or stdout closed (`>&-`).

    The command then does all its work and exits with its real status (0 when all is OK),
    whatever it prints and whenever: click's own --help included, and the last flush at exit.
    Output lost to anything but a gone reader is said once on stderr. A closed descriptor 1 is
    taken by the null device first, so no file the command opens can get it. Called once, by
    the entry point; stdout keeps its encoding and buffering.
    """
    old = sys.stdout
    lost = None
    if old is None:
        try:
            os.fstat(1)
        except OSError:
            _to_devnull(1)
            lost = "it is closed"
        else:
            return  # descriptor 1 is there but Python did not open it: leave it alone
        encoding, errors, line_buffering = None, None, False
    else:
        try:
            if old.fileno() != 1:
                return  # not the process's stdout (captured): nothing to guard
        except (AttributeError, OSError, ValueError):
            return
        old.flush()
        encoding, errors, line_buffering = old.encoding, old.errors, bool(old.line_buffering)
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(_StdoutFile(1, lost)),
        encoding=encoding,
        errors=errors,
        line_buffering=line_buffering,
    )


class ConsoleNotices:
    """The checks before a run, reported as lines
    (:class:`belle_decrypt.ground.outcome.Notices`)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def problem(self, exc: BelleError) -> None:
        error(str(exc))

    def warning(self, text: str) -> None:
        warn(text)

    def skipped(self, path: Path, why: str) -> None:
        say(f"skipped            {path.name} ({why})", self.quiet)


def run_tensors(job: Recovery, quiet: bool) -> Recovered:
    """Run a prepared tensor pipeline (recover, convert) with a bar per file and an overall
    one, and a line per file as it is written or kept."""
    with Bars(job.total_size, True, progress_enabled(quiet)) as bars:
        return job.run(
            lambda name, size: bars.file(size, name),
            on_shard=lambda shard: say(
                f"{shard.status:<10} {shard.name}  {human_size(shard.size)}", quiet
            ),
        )
