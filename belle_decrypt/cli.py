"""The `belle-decrypt` command line: a thin click layer over the library.

It turns library errors into one line on stderr and an exit code: 0 success, 1 a file failed,
2 unusable input found before writing, 130/143 interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import click

from belle_decrypt import __version__
from belle_decrypt.errors import EXIT_FAILED, EXIT_USAGE, BelleError, InputError, ManifestError

if TYPE_CHECKING:
    from belle_decrypt.batch import Outcome, Settings, Tally
    from belle_decrypt.container import EncFile
    from belle_decrypt.diagnose import Diagnoser
    from belle_decrypt.keystream import Key
    from belle_decrypt.manifest import Manifest

PROG = "belle-decrypt"
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


EXIT_SIGHUP = 129
# Arguments are checked by the library, which says what is wrong in one line.
PATH = click.Path(path_type=Path, readable=False)


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM so that `with` blocks clean up."""

    exit_code = EXIT_SIGTERM
    word = "terminated"


class HungUp(Terminated):
    """Raised on SIGHUP (a closed terminal or ssh session), handled like SIGTERM."""

    exit_code = EXIT_SIGHUP
    word = "hung up"


def _on_signal(signum: int, frame: FrameType | None) -> NoReturn:
    raise HungUp() if signum == signal.SIGHUP else Terminated()


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


def warn_ignored(manifest: Manifest | None) -> None:
    """A warning for each manifest line that holds a digest but is not an entry."""
    for ignored in manifest.ignored if manifest is not None else ():
        warn(ignored.message)


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


def human_size(size: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _where(exc: BaseException) -> str:
    """``"<file>: "`` when an interrupt was tagged with the file being written, else ``""``."""
    return f"{exc.args[0]}: " if exc.args and isinstance(exc.args[0], str) else ""


@contextmanager
def user_errors(writing: bool = False) -> Iterator[None]:
    """Map library errors and signals to one line and an exit code; never a traceback.

    SIGXFSZ is ignored so that a file-size limit (``ulimit -f``) makes write() fail with EFBIG,
    which is reported like any write error, instead of killing the process. SIGINT raises
    KeyboardInterrupt inside the block (the entry point ends the process at once outside it).
    ``writing`` commands say, when interrupted, that the unfinished file was removed.
    """
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    previous[signal.SIGXFSZ] = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # KeyboardInterrupt while working
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    after = (
        "; the unfinished file was removed; run the same command again to finish" if writing else ""
    )
    try:
        yield
    except BelleError as exc:
        error(str(exc))
        sys.exit(exc.exit_code)
    except OSError as exc:  # a last resort: an I/O error the library did not word
        where = f"{exc.filename}: " if exc.filename is not None else ""
        error(f"{where}{exc.strerror or exc}; nothing was left under a final name")
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt as exc:
        error(f"{_where(exc)}interrupted{after}")
        sys.exit(EXIT_SIGINT)
    except Terminated as exc:
        error(f"{_where(exc)}{exc.word}{after}")
        sys.exit(exc.exit_code)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
    or the whole folder at once, checked against the model card's md5 list:
      belle-decrypt enc/ consolidated.00.pth out/ --manifest md5.txt
    and in CI:
      belle-decrypt verify out/ --manifest md5.txt --json
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


class _Bars:
    """An overall bar (folder form only) and a bar per file, advanced together.

    ``advance`` may be called from several threads (``--jobs``).
    """

    def __init__(self, total: int, folder: bool, enabled: bool) -> None:
        self.folder, self.enabled = folder, enabled
        self.overall = _bar(total, "all files", enabled and folder, 0, True)
        self.lock = threading.Lock()

    def __enter__(self) -> _Bars:
        return self

    def __exit__(self, *exc: object) -> None:
        self.overall.close()

    @contextmanager
    def file(self, size: int, name: str, shown: bool = True) -> Iterator[Callable[[int], None]]:
        """A bar for one file (``shown`` False: only the overall bar moves)."""
        folder = self.folder
        with _bar(size, name, self.enabled and shown, int(folder), not folder) as bar:

            def advance(n: int) -> None:
                with self.lock:
                    bar.update(n)
                    self.overall.update(n)

            yield advance


def say(line: str, quiet: bool) -> None:
    """A summary line on stdout that does not garble progress bars.

    If the reader of stdout has gone (`| head -1`), the rest of the lines go nowhere and the
    work goes on.
    """
    if quiet:
        return
    from tqdm import tqdm

    try:
        tqdm.write(one_line(line), file=sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


MANIFEST_HELP = (
    "An md5 or SHA-256 list (md5sum / sha256sum output or the model card's text pasted as is; "
    "- reads standard input); repeatable."
)


@cli.command()
@click.argument("source", type=PATH)
@click.argument("key_file", type=PATH)
@click.argument("out_dir", type=PATH)
@click.option(
    "--manifest",
    "manifests",
    multiple=True,
    type=PATH,
    help=MANIFEST_HELP + " Each output's md5 must match its entry.",
)
@click.option(
    "--keep-going",
    is_flag=True,
    help="Go on even when the first two files fail their checksum with an unknown key.",
)
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Files to decrypt at once in folder form (default: from the cores and the files).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars and no summary lines.")
@click.option("--force", is_flag=True, help="Replace an existing output file that differs.")
@click.option(
    "--no-fsync",
    is_flag=True,
    help="Skip fsync of outputs and folder: faster, but a power cut may lose finished files.",
)
def decrypt(
    source: Path,
    key_file: Path,
    out_dir: Path,
    manifests: tuple[Path, ...],
    keep_going: bool,
    jobs: int | None,
    quiet: bool,
    force: bool,
    no_fsync: bool,
) -> None:
    """Decrypt SOURCE (one NAME.<sha256>.enc file, or a folder of them) into OUT_DIR.

    KEY_FILE is Meta's original LLaMA-7B consolidated.00.pth. Each output is checked
    against the SHA-256 in its header (and, with --manifest, against the model card's md5)
    before it appears under its final name. A failure says whether the download is broken
    or the key is wrong.

    \b
    Example:
      belle-decrypt decrypt BELLE-7B-2M-enc/ llama/7B/consolidated.00.pth BELLE-7B-2M/ \\
          --manifest model-card-md5.txt
    """
    from belle_decrypt.batch import Settings
    from belle_decrypt.decrypt import (
        bytes_to_write,
        check_free_space,
        plan,
        prepare_output_dir,
    )
    from belle_decrypt.diagnose import Diagnoser
    from belle_decrypt.keyid import identify
    from belle_decrypt.keystream import Key
    from belle_decrypt.manifest import Manifest
    from belle_decrypt.output import remove_stale_temps

    with user_errors(writing=True):
        checked = plan(source)
        for problem in checked.problems:
            error(str(problem))
        manifest = Manifest.read_all(manifests) if manifests else None
        warn_ignored(manifest)
        with Key(key_file) as key:
            if checked.problems:
                sys.exit(EXIT_USAGE)
            fingerprint = identify(key_file, inspect=False)
            if not fingerprint.is_expected:
                warn(
                    f"{key_file}: {fingerprint.verdict}; decrypting anyway (see "
                    f"`{PROG} check-key {key_file}`)"
                )
            prepare_output_dir(out_dir)
            remove_stale_temps(out_dir)
            for path in checked.skipped:
                say(f"skipped            {path.name} (not a .enc file)", quiet)
            check_free_space(out_dir, bytes_to_write(checked.files, out_dir))
            settings = Settings(
                out_dir=out_dir,
                force=force,
                fsync=not no_fsync,
                keep_going=keep_going,
                manifest=manifest,
                jobs=jobs,
            )
            tally = _decrypt_all(
                checked.files, key, settings, Diagnoser(key_file, manifest), source.is_dir(), quiet
            )
        if not tally.ok:
            sys.exit(EXIT_FAILED)


def _decrypt_all(
    files: Sequence[EncFile],
    key: Key,
    settings: Settings,
    diagnoser: Diagnoser,
    folder: bool,
    quiet: bool,
) -> Tally:
    """Run the batch with progress bars and one line per file, then the tally for a folder.

    With several jobs at once only the overall bar is drawn.
    """
    from belle_decrypt.batch import decrypt_all, resolve_jobs

    settings = replace(settings, jobs=resolve_jobs(files, settings))
    total = sum(enc.payload_size for enc in files)
    with _Bars(total, folder, progress_enabled(quiet)) as bars:

        @contextmanager
        def file_progress(enc: EncFile) -> Iterator[Callable[[int], None]]:
            name = enc.enc_name.name
            with bars.file(enc.payload_size, name, shown=settings.jobs == 1) as advance:
                try:
                    yield advance
                except (KeyboardInterrupt, Terminated) as exc:  # name the file in the message
                    raise type(exc)(str(settings.out_dir / name)) from None

        def report(outcome: Outcome) -> None:
            if outcome.error is not None:
                error(str(outcome.error))
                return
            result = outcome.result
            assert result is not None
            rate = result.size / result.seconds if result.seconds > 0 else 0.0
            say(
                f"{result.status:<18} {result.target.name}  {human_size(result.size)}"
                f" in {result.seconds:.1f} s ({human_size(rate)}/s), {outcome.checked}",
                quiet,
            )

        tally = decrypt_all(
            files, key, settings, diagnoser, file_progress=file_progress, on_outcome=report
        )
    if tally.stopped is not None:
        error(tally.stopped)
    if tally.advice is not None:
        warn(tally.advice)
    if folder:
        say(
            f"{tally.decrypted} decrypted, {tally.already_decrypted} already decrypted, "
            f"{tally.failed} failed",
            quiet,
        )
    return tally


@cli.command()
@click.argument("folder", type=PATH)
@click.option(
    "--manifest",
    "manifests",
    multiple=True,
    required=True,
    type=PATH,
    help=MANIFEST_HELP,
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Files hashed at once [default: up to 4].",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar; print only files not OK.")
def verify(
    folder: Path, manifests: tuple[Path, ...], as_json: bool, jobs: int | None, quiet: bool
) -> None:
    """Check the files in FOLDER against md5 or SHA-256 manifests, like `md5sum -c`.

    The manifest's .enc entries are checked when any of them is in FOLDER, and so are its
    decrypted-file entries: the same model card checks the downloads before decrypting and
    the results after. Every listed file of a checked group is reported OK, FAILED or
    MISSING; other files in FOLDER are ignored. Exit 0 when all are OK, 1 when any is
    FAILED or MISSING, 2 when a manifest cannot be read or lists nothing in FOLDER.

    \b
    Example:
      belle-decrypt verify BELLE-7B-2M-enc/ --manifest model-card-md5.txt
      belle-decrypt verify BELLE-7B-2M/ --manifest model-card-md5.txt --json | jq .ok
    """
    from belle_decrypt.manifest import Manifest
    from belle_decrypt.verify import (
        FAILED,
        MISSING,
        OK,
        files_to_check,
        planned_bytes,
        verify_folder,
    )

    with user_errors():
        try:
            manifest = Manifest.read_all(manifests)
            warn_ignored(manifest)
            files = files_to_check(folder, manifest)
        except ManifestError as exc:
            if as_json:
                doc = {"folder": str(folder), "ok": False, "error": str(exc), "files": []}
                click.echo(json.dumps(doc, indent=2))
            raise
        total = planned_bytes(files)
        with _bar(total, "verifying", progress_enabled(quiet), 0, False) as bar:
            report = verify_folder(
                folder, manifest, files=files, workers=jobs, on_progress=bar.update
            )
    if as_json:
        echo_batched(report.json_chunks())
    else:

        def text_lines() -> Iterator[str]:
            for check in report.files:
                if check.status == OK and quiet:
                    continue
                line = f"{check.name}: {check.status}"
                if check.status == FAILED:
                    mismatch = f"{check.algorithm} {check.actual}, expected {check.expected}"
                    line += f" ({check.detail or mismatch})"
                yield one_line(line) + "\n"
            if not quiet:
                yield (
                    f"{report.count(OK)} OK, {report.count(FAILED)} FAILED, "
                    f"{report.count(MISSING)} MISSING ({' and '.join(report.groups)} files)\n"
                )

        echo_batched(text_lines())
    if not report.ok:
        bad = len(report.files) - report.count(OK)
        error(
            f"{folder}: {bad} of {len(report.files)} listed files FAILED or MISSING; "
            "download (or decrypt) those files again"
        )
        sys.exit(EXIT_FAILED)


@cli.command("check-key")
@click.argument("key_file", type=PATH)
@click.option("--full", is_flag=True, help="Hash the whole file and compare with every LLaMA file.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar; print only the verdict.")
def check_key(key_file: Path, full: bool, quiet: bool) -> None:
    """Say whether KEY_FILE is Meta's original LLaMA-7B consolidated.00.pth, and if not, what.

    Instantly from its size and the md5 of its first 16 MiB; with --full from the md5 of
    the whole file, compared with every known LLaMA file. A checkpoint is described (layers,
    hidden size, vocabulary) so a LLaMA-13B file or a Hugging Face shard is named as such.
    Exit 0 when it is the LLaMA-7B file, 1 when not.

    \b
    Example:
      belle-decrypt check-key llama/7B/consolidated.00.pth --full
    """
    from belle_decrypt import keyid

    with user_errors():
        size = 0
        with suppress(OSError):  # identify() says what is wrong with the path
            size = key_file.stat().st_size
        with _bar(size if full else 0, "md5", progress_enabled(quiet) and full, 0, False) as bar:
            report = keyid.identify(key_file, full=full, on_progress=bar.update)
    expected = keyid.LLAMA_7B
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
        for label, value in lines:
            click.echo(one_line(f"{label + ':':<21}{value}"))
    click.echo(one_line(f"{'verdict:':<21}{report.path} {report.verdict}"))
    sys.exit(0 if report.is_expected else EXIT_FAILED)


@cli.command()
@click.argument("source", type=PATH)
@click.argument("key_file", type=PATH)
@click.argument("out_dir", type=PATH)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars and no summary lines.")
@click.option("--force", is_flag=True, help="Replace an existing .enc file that differs.")
@click.option("--no-fsync", is_flag=True, help="Skip fsync: faster, less safe on power loss.")
def encrypt(
    source: Path, key_file: Path, out_dir: Path, quiet: bool, force: bool, no_fsync: bool
) -> None:
    """Encrypt SOURCE (a model file, or every non-hidden file in a folder) for publishing.

    Each file becomes NAME.<sha256>.enc in OUT_DIR, in the format BELLE and others use, and
    OUT_DIR/md5sums.txt lists the md5 of the .enc files ("after you clone") and of the plain
    files ("after you decrypt"), ready for the model card and for --manifest / verify.

    \b
    Example:
      belle-decrypt encrypt my-finetune/ llama/7B/consolidated.00.pth my-finetune-enc/
    """
    from belle_decrypt.container import HEADER_SIZE
    from belle_decrypt.decrypt import check_free_space, prepare_output_dir
    from belle_decrypt.encrypt import encrypt_file, previous_manifest, sources, write_manifest
    from belle_decrypt.keystream import Key
    from belle_decrypt.output import remove_stale_temps

    with user_errors(writing=True):
        files = sources(source, out_dir)
        previous = previous_manifest(out_dir)
        warn_ignored(previous)
        with Key(key_file) as key:
            prepare_output_dir(out_dir)
            remove_stale_temps(out_dir)
            sizes = {path: path.stat().st_size for path in files}
            check_free_space(out_dir, sum(size + HEADER_SIZE for size in sizes.values()))
            results, failed = [], 0
            with _Bars(sum(sizes.values()), source.is_dir(), progress_enabled(quiet)) as bars:
                for path in files:
                    with bars.file(sizes[path], path.name) as advance:
                        try:
                            result = encrypt_file(
                                path,
                                key,
                                out_dir,
                                force=force,
                                fsync=not no_fsync,
                                on_progress=advance,
                            )
                        except BelleError as exc:
                            failed += 1
                            error(str(exc))
                            continue
                    results.append(result)
                    say(
                        f"{result.status:<10} {result.target.name}  {human_size(result.size)}",
                        quiet,
                    )
            if results or previous is not None:
                manifest = write_manifest(out_dir, results, previous, fsync=not no_fsync)
                say(f"wrote      {manifest} (md5 of {len(results)} .enc and plain files)", quiet)
        if failed:
            sys.exit(EXIT_FAILED)


@cli.command()
@click.option(
    "--keep",
    type=click.Path(path_type=Path, file_okay=False),
    help="Build the example in this (new or empty) folder and keep it.",
)
def demo(keep: Path | None) -> None:
    """Show the whole flow on a small built-in example: no network, no LLaMA file.

    It makes a random stand-in key and a plain model with a real torch checkpoint, encrypts
    it as a publisher would, then runs what you would run: decrypt the folder against the
    md5 list, verify, and load the checkpoint. It cleans up unless --keep is given.

    \b
    Example:
      belle-decrypt demo --keep belle-demo/
    """
    import tempfile

    started = time.monotonic()
    with user_errors(writing=True):
        if keep is None:
            with tempfile.TemporaryDirectory(prefix="belle-demo-") as folder:
                _demo_steps(Path(folder))
            where = "removed the example (keep it with --keep DIR)"
        else:
            if keep.exists() and any(keep.iterdir()):
                raise InputError("is not empty; give --keep a new or empty folder", keep)
            keep.mkdir(parents=True, exist_ok=True)
            _demo_steps(keep)
            where = f"the example is in {keep}"
        click.echo(f"\nDone in {time.monotonic() - started:.1f} s; {where}.")


def _demo_steps(folder: Path) -> None:
    """Build the release in ``folder`` and run the user's commands on it, from inside it."""
    from belle_decrypt.demo import CHECKPOINT, build_release, check_checkpoint

    click.echo(f"{PROG} demo: a synthetic release in {folder} (no network, no LLaMA file)\n")
    release = build_release(folder)
    model, key = release.model.name, release.key.name
    enc, out, card = f"{model}-enc", f"{model}-out", f"{model}-enc/md5sums.txt"
    files = ", ".join(sorted(p.name for p in release.model.iterdir()))
    click.echo(
        f"1. A random stand-in for Meta's key ({release.key.stat().st_size:,} bytes: one "
        f"10 MiB piece and a short one) and a plain model: {files}."
    )
    previous = Path.cwd()
    os.chdir(folder)
    try:
        _demo_run(
            "2. The publisher encrypts it and writes the md5 list:", ["encrypt", model, key, enc]
        )
        _demo_run(
            "3. You decrypt the folder, each file checked against the md5 list "
            "(the demo key is not LLaMA-7B, so decrypt warns about it):",
            [enc, key, out, "--manifest", card],
        )
        _demo_run(
            "4. You verify the results, as a CI script would:", ["verify", out, "--manifest", card]
        )
        count = check_checkpoint(Path(out) / CHECKPOINT, Path(model) / CHECKPOINT)
    finally:
        os.chdir(previous)
    click.echo(
        f"\n5. torch loads the decrypted {CHECKPOINT}: {count} tensors, equal to the original."
    )
    click.echo(
        "\nWith real files:\n"
        f"  {PROG} check-key llama/7B/consolidated.00.pth\n"
        f"  {PROG} BELLE-7B-2M-enc/ llama/7B/consolidated.00.pth BELLE-7B-2M/ --manifest md5.txt\n"
        f"  {PROG} verify BELLE-7B-2M/ --manifest md5.txt"
    )


def _demo_run(title: str, args: list[str]) -> None:
    """Print a step and its command line, then run it through the real command group."""
    click.echo(f"\n{title}\n$ {PROG} {' '.join(args)}")
    try:
        cli.main(args=args, prog_name=PROG, standalone_mode=False)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise BelleError(f"the demo step `{PROG} {' '.join(args)}` failed") from exc


def main() -> None:
    """Console-script entry point."""
    cli(prog_name=PROG)
