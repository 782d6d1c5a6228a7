"""The `belle-decrypt` command line: a thin click layer over the library.

It turns library errors into one line on stderr and an exit code: 0 success, 1 a file failed,
2 unusable input found before writing, 130/143 interrupted.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import click

from belle_decrypt import __version__
from belle_decrypt.errors import EXIT_FAILED, EXIT_USAGE, BelleError

if TYPE_CHECKING:
    from belle_decrypt.container import EncFile
    from belle_decrypt.keystream import Key

PROG = "belle-decrypt"
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM so that `with` blocks clean up."""


def _on_sigterm(signum: int, frame: FrameType | None) -> NoReturn:
    raise Terminated()


def error(message: str) -> None:
    """One line on stderr."""
    click.echo(f"{PROG}: error: {message}", err=True)


def human_size(size: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


@contextmanager
def user_errors() -> Iterator[None]:
    """Map library errors and signals to one line and an exit code; never a traceback."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    except BelleError as exc:
        error(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        error("interrupted; unfinished output removed, nothing left under a final name")
        sys.exit(EXIT_SIGINT)
    except Terminated:
        error("terminated; unfinished output removed, nothing left under a final name")
        sys.exit(EXIT_SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)


class DefaultToDecrypt(click.Group):
    """A group where `belle-decrypt ENC KEY OUT` means `belle-decrypt decrypt ENC KEY OUT`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        top_level = {*self.commands, *ctx.help_option_names, "--version"}
        if args and args[0] not in top_level:
            args = ["decrypt", *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(PROG, "ENC_FILE_OR_DIR KEY_FILE OUT_DIR [OPTIONS]")
        formatter.write_usage(PROG, "COMMAND [ARGS]...", prefix="   or: ")


@click.group(
    cls=DefaultToDecrypt,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name=PROG)
def cli() -> None:
    """Decrypt LLaMA XOR diffs (BELLE, point-alpaca, ...) fast, verified, and safely.

    \b
    Example, the upstream loop with belle-decrypt in place of decrypt.py:
      for f in enc/*; do belle-decrypt "$f" consolidated.00.pth out/; done
    or the whole folder at once:
      belle-decrypt enc/ consolidated.00.pth out/
    """


def progress_enabled(quiet: bool) -> bool:
    """Bars only for a person watching a terminal."""
    return not quiet and sys.stderr.isatty()


def _bar(total: int, desc: str, enabled: bool, position: int, leave: bool) -> Any:
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


def say(line: str, quiet: bool) -> None:
    """A summary line on stdout that does not garble progress bars."""
    if quiet:
        return
    from tqdm import tqdm

    tqdm.write(line, file=sys.stdout)


@cli.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("key_file", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("-q", "--quiet", is_flag=True, help="No progress bars and no summary lines.")
@click.option("--force", is_flag=True, help="Replace an existing output file that differs.")
@click.option(
    "--no-fsync",
    is_flag=True,
    help="Skip fsync of outputs and folder: faster, but a power cut may lose finished files.",
)
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Files to decrypt at once in folder form (default: from the cores and the files).",
)
def decrypt(
    source: Path,
    key_file: Path,
    out_dir: Path,
    quiet: bool,
    force: bool,
    no_fsync: bool,
    jobs: int | None,
) -> None:
    """Decrypt SOURCE (one NAME.<sha256>.enc file, or a folder of them) into OUT_DIR.

    KEY_FILE is Meta's original LLaMA-7B consolidated.00.pth. Each output is checked
    against the SHA-256 in its header before it appears under its final name.

    \b
    Example:
      belle-decrypt decrypt BELLE-7B-2M-enc/ llama/7B/consolidated.00.pth BELLE-7B-2M/
    """
    from belle_decrypt.decrypt import check_free_space, plan, prepare_output_dir
    from belle_decrypt.keystream import Key
    from belle_decrypt.output import remove_stale_temps

    with user_errors():
        checked = plan(source)
        for problem in checked.problems:
            error(str(problem))
        with Key(key_file) as key:
            if checked.problems:
                sys.exit(EXIT_USAGE)
            prepare_output_dir(out_dir)
            remove_stale_temps(out_dir)
            for path in checked.skipped:
                say(f"skipped            {path.name} (not a .enc file)", quiet)
            pending = [enc for enc in checked.files if not (out_dir / enc.enc_name.name).exists()]
            check_free_space(out_dir, sum(enc.payload_size for enc in pending))
            failures = _decrypt_all(
                checked.files,
                key,
                out_dir,
                quiet,
                force,
                not no_fsync,
                folder=source.is_dir(),
                jobs=jobs,
            )
        if failures:
            sys.exit(EXIT_FAILED)


def _decrypt_all(
    files: Sequence[EncFile],
    key: Key,
    out_dir: Path,
    quiet: bool,
    force: bool,
    fsync: bool,
    *,
    folder: bool,
    jobs: int | None = None,
) -> int:
    """Decrypt the files (``jobs`` at once), one line each; return how many failed."""
    from belle_decrypt import jobs as parallel
    from belle_decrypt.decrypt import Result, decrypt_file

    if jobs is None:
        jobs = parallel.default_jobs([enc.payload_size for enc in files])
    enabled = progress_enabled(quiet)
    counts = {"decrypted": 0, "already decrypted": 0, "failed": 0}
    total = sum(enc.payload_size for enc in files)
    lock = threading.Lock()
    with _bar(total, "all files", enabled and folder, 0, True) as overall:

        def one(enc: EncFile) -> Result | BelleError:
            # With several jobs only the overall bar is drawn.
            with _bar(
                enc.payload_size,
                enc.enc_name.name,
                enabled and jobs == 1,
                1 if folder else 0,
                not folder,
            ) as bar:

                def advance(n: int) -> None:
                    with lock:
                        bar.update(n)
                        overall.update(n)

                try:
                    return decrypt_file(
                        enc, key, out_dir, force=force, fsync=fsync, on_progress=advance
                    )
                except BelleError as exc:
                    return exc

        def report(enc: EncFile, result: Result | BelleError) -> None:
            if isinstance(result, BelleError):
                counts["failed"] += 1
                error(str(result))
                return
            counts[result.status] += 1
            rate = result.size / result.seconds if result.seconds > 0 else 0.0
            say(
                f"{result.status:<18} {result.target.name}  {human_size(result.size)}"
                f" in {result.seconds:.1f} s ({human_size(rate)}/s), SHA-256 verified",
                quiet,
            )

        parallel.run(one, files, jobs, on_result=report)
    if folder:
        say(
            f"{counts['decrypted']} decrypted, {counts['already decrypted']} already decrypted, "
            f"{counts['failed']} failed",
            quiet,
        )
    return counts["failed"]


def main() -> None:
    """Console-script entry point."""
    cli(prog_name=PROG)
