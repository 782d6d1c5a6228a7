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
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import click

from belle_decrypt import platform_io
from belle_decrypt.cancel import removed_unfinished
from belle_decrypt.errors import BelleError, ExitCode, ProblemsReported
from belle_decrypt.states import Verified

if TYPE_CHECKING:
    from belle_decrypt.basecheck import BaseReport
    from belle_decrypt.batch import Run
    from belle_decrypt.decrypt import Result
    from belle_decrypt.encrypt import Encrypted, Publish, PublishTally
    from belle_decrypt.keyid import KeyReport
    from belle_decrypt.outcome import Outcome, Tally
    from belle_decrypt.perfile_publish import PerFilePublish
    from belle_decrypt.recover.run import Outcome as Recovered
    from belle_decrypt.verify import VerifyReport

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
    """Standard output's descriptor, where a reader that has gone (EPIPE) makes the rest of
    the output go nowhere instead of failing the command."""

    def write(self, data: Any, /) -> int:
        size = memoryview(data).nbytes
        try:
            return super().write(data) or 0
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.fileno())
            os.close(devnull)
            return size


def keep_going_without_stdout_reader() -> None:
    """Make stdout swallow output once its reader has gone (`| head -0`, `| head -1`).

    The command then does all its work and exits with its real status (0 when all is OK),
    whatever it prints and whenever: click's own --help included, and the last flush at exit.
    Called once, by the entry point; stdout keeps its encoding and buffering.
    """
    old = sys.stdout
    if old is None:
        return
    try:
        fd = old.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (captured): nothing to guard
    old.flush()
    raw = _StdoutFile(fd, "w", closefd=False)
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(raw),
        encoding=old.encoding,
        errors=old.errors,
        line_buffering=bool(old.line_buffering),
    )


class ConsoleNotices:
    """The checks before a run, reported as lines (:class:`belle_decrypt.outcome.Notices`)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def problem(self, exc: BelleError) -> None:
        error(str(exc))

    def warning(self, text: str) -> None:
        warn(text)

    def skipped(self, path: Path, why: str) -> None:
        say(f"skipped            {path.name} ({why})", self.quiet)


def decrypt_run(run: Run, quiet: bool) -> Tally:
    """Run the batch with progress bars and one line per file, then the tally for a folder.

    With several jobs at once only the overall bar is drawn.
    """
    from belle_decrypt.batch import decrypt_all

    settings = run.settings
    total = sum(enc.payload_size for enc in run.files)
    with Bars(total, run.folder, progress_enabled(quiet)) as bars:

        @contextmanager
        def file_progress(name: str, size: int) -> Iterator[Callable[[int], None]]:
            with bars.file(size, name, shown=settings.jobs == 1) as advance:
                yield advance

        def report(outcome: Outcome[Result]) -> None:
            if outcome.error is not None:
                error(str(outcome.error))
                return
            result, checked = outcome.result, outcome.checked
            assert result is not None and checked is not None
            rate = result.size / result.seconds if result.seconds > 0 else 0.0
            state = result.status.value
            if checked is Verified.NOTHING:
                state += " (not verified)"
            say(
                f"{state:<18} {result.target.name}  {human_size(result.size)}"
                f" in {result.seconds:.1f} s ({human_size(rate)}/s), {checked.value}",
                quiet,
            )

        tally = decrypt_all(
            run.files,
            run.key,
            settings,
            run.diagnoser,
            file_progress=file_progress,
            on_outcome=report,
        )
    if tally.stopped is not None:
        error(tally.stopped)
    if tally.advice is not None:
        warn(tally.advice)
    copied = f"{tally.copied} copied, " if tally.copied else ""
    unverified = f" ({tally.unverified} not verified)" if tally.unverified else ""
    if run.folder:
        say(
            f"{tally.decrypted} decrypted, {tally.already_decrypted} already decrypted, "
            f"{copied}{tally.failed} failed{unverified}",
            quiet,
        )
    if tally.unverified:
        warn(
            f"{tally.unverified} file{'s' if tally.unverified != 1 else ''} not verified "
            "(--no-verify, no checksum in the files or the manifest); check them against the "
            "model card's md5 list: belle-decrypt verify OUT_DIR --manifest CARD"
        )
    return tally


def encrypt_run(
    publish: Publish | PerFilePublish, quiet: bool, *, force: bool, fsync: bool
) -> PublishTally:
    """Encrypt with progress bars and one line per file, then say which manifest was written."""
    from belle_decrypt.encrypt import encrypt_all
    from belle_decrypt.perfile_publish import DECODED_LIST, PerFilePublish, encode_all

    total = sum(publish.sizes.values())
    with Bars(total, publish.folder, progress_enabled(quiet)) as bars:

        def report(outcome: Outcome[Encrypted]) -> None:
            if outcome.error is not None:
                error(str(outcome.error))
                return
            result = outcome.result
            assert result is not None
            say(f"{result.status.value:<10} {result.target.name}  {human_size(result.size)}", quiet)

        def file_progress(name: str, size: int) -> AbstractContextManager[Callable[[int], None]]:
            return bars.file(size, name)

        if isinstance(publish, PerFilePublish):
            tally = encode_all(
                publish, force=force, fsync=fsync, file_progress=file_progress, on_outcome=report
            )
        else:
            tally = encrypt_all(
                publish, force=force, fsync=fsync, file_progress=file_progress, on_outcome=report
            )
    if tally.manifest is not None and isinstance(publish, PerFilePublish):
        decoded = tally.manifest.parent / DECODED_LIST
        say(f"wrote      {tally.manifest} (md5 of {tally.listed} payload files)", quiet)
        say(f"wrote      {decoded} (md5 of {tally.listed} decoded files)", quiet)
    elif tally.manifest is not None:
        say(f"wrote      {tally.manifest} (md5 of {tally.listed} .enc and plain files)", quiet)
    return tally


def verify_lines(report: VerifyReport, quiet: bool) -> Iterator[str]:
    """`verify`'s text output, each line with its line break: one per listed file's entry
    (only those not OK with ``quiet``), then the count."""
    from belle_decrypt.states import CheckStatus

    for check in report.files:
        if check.status is CheckStatus.OK and quiet:
            continue
        line = f"{check.name}: {check.status.value}"
        if check.status is CheckStatus.FAILED:
            mismatch = f"{check.algorithm} {check.actual}, expected {check.expected}"
            line += f" ({check.detail or mismatch})"
        yield one_line(line) + "\n"
    if not quiet:
        yield (
            f"{report.count(CheckStatus.OK)} OK, {report.count(CheckStatus.FAILED)} FAILED, "
            f"{report.count(CheckStatus.MISSING)} MISSING ({' and '.join(report.groups)} files)\n"
        )


def echo_batched(pieces: Iterable[str]) -> None:
    """Write ``pieces`` (each ending with its own line break) to stdout a few thousand at a
    time: a report may have millions of lines, and each echo flushes."""
    batch: list[str] = []
    for piece in pieces:
        batch.append(piece)
        if len(batch) == 4096:
            click.echo("".join(batch), nl=False)
            batch.clear()
    if batch:
        click.echo("".join(batch), nl=False)


def check_key_run(
    key_file: Path,
    quiet: bool,
    *,
    full: bool = False,
    format_name: str = "belle",
    base_manifests: Sequence[Path] = (),
) -> bool:
    """`check-key`: the key file's verdict against ``format_name``'s key (with a bar when
    hashing it whole), or a base folder's (:func:`base_run`), printed; True when it is what
    is needed."""
    from belle_decrypt import keyid
    from belle_decrypt.detect import LAYOUTS

    # isdir never raises: identify() says what is wrong with an unreadable path
    if format_name == "perfile" or os.path.isdir(key_file) or base_manifests:
        return base_run(key_file, base_manifests, quiet)
    expected = LAYOUTS[format_name].expected_key
    size = 0
    with suppress(OSError):  # identify() says what is wrong with the path
        size = key_file.stat().st_size
    with bar(size if full else 0, "md5", progress_enabled(quiet) and full) as hashing:
        report = keyid.identify(key_file, full=full, expected=expected, on_progress=hashing.update)
    for line in key_lines(report, quiet):
        click.echo(line)
    return report.is_expected


def base_run(folder: Path, manifests: Sequence[Path], quiet: bool) -> bool:
    """`check-key` on a base folder: its look, its files against the card's base list (with a
    bar), printed; True when it is a converted LLaMA matching the list."""
    from belle_decrypt.basecheck import check_base
    from belle_decrypt.perfile_run import read_split_manifest

    manifest = read_split_manifest(manifests)
    with bar(0, "md5", progress_enabled(quiet) and manifest is not None) as hashing:
        report = check_base(folder, manifest, on_progress=hashing.update)
    for line in base_lines(report, quiet):
        click.echo(line)
    return report.ok


def base_lines(report: BaseReport, quiet: bool) -> list[str]:
    """`check-key`'s output for a base folder: what it holds, the base list's lines as
    `verify` prints them, then the verdict."""
    lines = [] if quiet else [("folder", str(report.folder)), *report.findings]
    text = [one_line(f"{label + ':':<21}{value}") for label, value in lines]
    if report.listed is not None:
        text += [line.rstrip("\n") for line in verify_lines(report.listed, quiet)]
    return [*text, one_line(f"{'verdict:':<21}{report.folder} {report.verdict}")]


def key_lines(report: KeyReport, quiet: bool) -> list[str]:
    """`check-key`'s output: what was measured against LLaMA-7B's values, then the verdict."""
    from belle_decrypt.keyid import LLAMA_7B as expected

    lines: list[tuple[str, str]] = []
    if not quiet:
        lines = [
            ("file", str(report.path)),
            ("size", f"{report.size:,} bytes (LLaMA-7B: {expected.size or 0:,})"),
            ("md5 of first 16 MiB", f"{report.head_md5} (LLaMA-7B: {expected.head_md5})"),
        ]
        if report.md5 is not None:
            lines.append(("md5 of whole file", f"{report.md5} (LLaMA-7B: {expected.md5})"))
        checkpoint = report.checkpoint.describe() if report.checkpoint else "not readable as one"
        lines.append(("checkpoint", checkpoint))
    lines.append(("verdict", f"{report.path} {report.verdict}"))
    return [one_line(f"{label + ':':<21}{value}") for label, value in lines]


def recover_run(
    diff_dir: Path, base_dir: Path, out_dir: Path, quiet: bool, **arguments: Any
) -> Recovered:
    """Check, then recover with a bar per shard and an overall one, then the summary;
    ``arguments`` are the command line's options (see ``recover.run.Options.parse``)."""
    from belle_decrypt.recover.run import Options, Recovery

    options = Options.parse(**arguments)
    for ignored in options.manifest.ignored if options.manifest is not None else ():
        warn(ignored.message)
    with Recovery.prepare(diff_dir, base_dir, out_dir, options) as job:
        how = f"recognised from {job.recognised}" if job.recognised else "given"
        say(f"recipe     {job.recipe.name} ({how})", quiet)
        with Bars(job.total_size, True, progress_enabled(quiet)) as bars:
            outcome = job.run(
                lambda name, size: bars.file(size, name),
                on_shard=lambda shard: say(
                    f"{shard.status:<10} {shard.name}  {human_size(shard.size)}", quiet
                ),
            )
    if outcome.copied:
        say(f"copied     {', '.join(outcome.copied)}", quiet)
    if outcome.manifest_checked:
        say(
            f"manifest   {outcome.manifest_checked} diff files match the manifest's checksums",
            quiet,
        )
    check = outcome.sum_check
    if check is not None:
        value = check.without_inv_freq if check.matched == "without" else check.with_inv_freq
        what = f"{check.matched} the rotary inv_freq buffers"
        if check.of_embedding:
            what = "the embedding alone"
        say(f"sum        {value:.4f} matches {check.expected} ({what})", quiet)
    say(
        f"recovered  {out_dir}: {len(outcome.shards)} shard{'s' * (len(outcome.shards) != 1)}, "
        f"{human_size(outcome.written)} written in {outcome.seconds:.1f} s",
        quiet,
    )
    return outcome
