"""Each command's run as the user sees it: bars, one line per file, the summary and verdict
lines, from the library's results (messages, bars and exit codes are :mod:`console`'s)."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from belle_decrypt.cli.console import (
    Bars,
    bar,
    error,
    human_size,
    one_line,
    progress_enabled,
    run_tensors,
    say,
    warn,
)
from belle_decrypt.ground.errors import BelleError
from belle_decrypt.ground.states import Verified

if TYPE_CHECKING:
    from belle_decrypt.checks.keyid import KeyReport
    from belle_decrypt.checks.verify import VerifyReport
    from belle_decrypt.ground.outcome import Outcome, Tally
    from belle_decrypt.publish.encrypt import Encrypted, Publish, PublishTally
    from belle_decrypt.publish.perfile_publish import PerFilePublish
    from belle_decrypt.tensors.options import Outcome as Recovered
    from belle_decrypt.xor.basecheck import BaseReport
    from belle_decrypt.xor.batch import Run
    from belle_decrypt.xor.decrypt import Result


def decrypt_run(run: Run, quiet: bool) -> Tally:
    """Run the batch with progress bars and one line per file, then the tally for a folder.

    With several jobs at once only the overall bar is drawn.
    """
    from belle_decrypt.xor.batch import decrypt_all

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
            note = f"; {outcome.note}" if outcome.note else ""
            say(
                f"{state:<18} {result.target.name}  {human_size(result.size)}"
                f" in {result.seconds:.1f} s ({human_size(rate)}/s), {checked.value}{note}",
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
    from belle_decrypt.publish.encrypt import encrypt_all
    from belle_decrypt.publish.perfile_publish import DECODED_LIST, PerFilePublish, encode_all

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
    from belle_decrypt.ground.states import CheckStatus

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
    folder: bool = False,
) -> bool:
    """`check-key`: the key file's verdict against ``format_name``'s key (with a bar when
    hashing it whole), or a base folder's (:func:`base_run`; ``folder``: the path was given
    as one), printed; True when it is what is needed."""
    from belle_decrypt.checks import keyid
    from belle_decrypt.xor.detect import LAYOUTS

    if os.path.isdir(key_file) and keyid.is_meta_folder(key_file) and not base_manifests:
        from belle_decrypt.cli.convert import meta_run

        return meta_run(key_file, quiet)
    # isdir never raises: identify() says what is wrong with an unreadable path
    if folder or format_name == "perfile" or os.path.isdir(key_file) or base_manifests:
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
    from belle_decrypt.xor.basecheck import check_base
    from belle_decrypt.xor.perfile_run import read_split_manifest

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
    from belle_decrypt.checks.keyid import LLAMA_7B as expected

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
    diff_dir: Path,
    base_dir: Path,
    out_dir: Path,
    quiet: bool,
    then: tuple[Path, ...] = (),
    **arguments: Any,
) -> Recovered:
    """Check, then recover with a bar per shard and an overall one, then the summary;
    ``then``: adapters chained after DIFF_DIR; ``arguments`` are the command line's options
    (see ``tensors.options.Options.parse``)."""
    from belle_decrypt.recipes.catalogue import choose
    from belle_decrypt.tensors.headstart import plan_recover
    from belle_decrypt.tensors.options import Options

    options = Options.parse(**arguments)
    for ignored in options.manifest.ignored if options.manifest is not None else ():
        warn(ignored.message)
    try:  # Meta's folder is hashed as a base only by a recipe that reads all of it (not BiLLa)
        whole_base = not choose(options.recipe, diff_dir)[0].base_kinds
    except (BelleError, OSError, RuntimeError):
        whole_base = False  # prepare says why, in its own order
    # The checksums begin while torch is imported (by the imports and prepare below).
    with plan_recover(diff_dir, then, base_dir, options.manifest, whole_base) as head_start:
        from belle_decrypt.tensors.protocol import Described
        from belle_decrypt.tensors.run import Recovery

        options = dataclasses.replace(options, head_start=head_start)
        chooser = functools.partial(
            choose, expect_sum=options.expect_sum is not None, tail=(str(base_dir), str(out_dir))
        )
        with Recovery.prepare(diff_dir, base_dir, out_dir, options, chooser, then=then) as job:
            for warning in job.warnings:
                warn(warning)
            how = f"recognised from {job.recognised}" if job.recognised else "given"
            say(f"recipe     {job.recipe.name} ({how})", quiet)
            for line in job.diff.describe() if isinstance(job.diff, Described) else ():
                say(f"adapter    {line}", quiet)
            outcome = run_tensors(job, quiet)
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
        if check.label is not None:
            what = f"the {check.label} alone"
        say(f"sum        {value:.4f} matches {check.expected} ({what})", quiet)
    say(
        f"recovered  {out_dir}: {len(outcome.shards)} shard{'s' * (len(outcome.shards) != 1)}, "
        f"{human_size(outcome.written)} written in {outcome.seconds:.1f} s",
        quiet,
    )
    return outcome
