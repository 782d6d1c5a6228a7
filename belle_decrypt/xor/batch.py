"""Decrypting a checked set of input files (of any layout) into one folder, as one run.

:func:`prepare_run` does every check before anything is written (the files, the manifests, the
key, the output folder and its free space, stale temporary files) and opens the key.
:func:`decrypt_all` adds to single-file decryption what a run over many files needs: each
output checked against the manifest's md5, a failure explained (broken download or wrong key),
a stop after the first two files fail with an unknown key, and a tally. Both report through
callbacks and know nothing of the terminal.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

from belle_decrypt.checks.keyid import identify
from belle_decrypt.checks.manifest import Manifest
from belle_decrypt.ground.cancel import CancelToken
from belle_decrypt.ground.errors import (
    BelleError,
    DigestMismatch,
    InputError,
    OutputError,
    ProblemsReported,
)
from belle_decrypt.ground.outcome import FileProgress, Notices, Outcome, Progress, Tally
from belle_decrypt.ground.states import FileState, Verified
from belle_decrypt.layouts.container import BELLE
from belle_decrypt.layouts.gzipped import DamagedGzip
from belle_decrypt.layouts.protocol import Layout, Source, input_paths, plan, skip_reason
from belle_decrypt.layouts.seed import is_copy
from belle_decrypt.streams import jobs
from belle_decrypt.streams.keystream import Key
from belle_decrypt.streams.output import check_free_space, prepare_output_dir, remove_stale_temps
from belle_decrypt.xor.decrypt import (
    Result,
    bytes_to_write,
    decrypt_file,
)
from belle_decrypt.xor.detect import default_layouts, run_layout, settle
from belle_decrypt.xor.diagnose import Diagnoser, Diagnosis

COPIED = {
    FileState.DECRYPTED: FileState.COPIED,
    FileState.ALREADY_DECRYPTED: FileState.ALREADY_COPIED,
}


@dataclass(frozen=True)
class Settings:
    """How one run decrypts."""

    out_dir: Path
    force: bool = False
    fsync: bool = True
    keep_going: bool = False
    manifest: Manifest | None = None
    jobs: int | None = None
    verify: bool = True
    """False (``--no-verify``): a file that carries no checksum and is not in the manifest is
    decrypted unverified instead of refused."""


@dataclass(frozen=True)
class Run:
    """A checked run, ready to start: its files (smallest first), the open key, how to run."""

    files: tuple[Source, ...]
    key: Key | None
    settings: Settings
    diagnoser: Diagnoser
    folder: bool
    """Whether the source is a folder (a tally is worth showing)."""


@contextmanager
def prepare_run(
    source: Path,
    key_file: Path | None,
    settings: Settings,
    manifests: Sequence[Path],
    notices: Notices,
    layouts: Sequence[Layout] | None = None,
    diagnoser: Diagnoser | None = None,
) -> Iterator[Run]:
    """Check everything before a run writes anything, and open the key for it.

    In this order: the files of ``source`` in the ``layouts`` (default: each file's layout
    detected; a folder mixing layouts refused; each unusable file reported, then exit 2 once
    the manifests and the key are checked too), the ``manifests`` (read into the run's
    settings; a file whose layout carries no checksum must be listed unless
    ``settings.verify`` is off), the key against the layout's (a warning, or a refusal where
    nothing would catch a wrong key), the output folder (made; stale temporary files removed),
    the skipped files, the free space. Raises a :class:`BelleError`.
    ``key_file`` is None for layouts whose key is a folder given to them (the per-file
    layout); they bring their own ``diagnoser``.
    """
    checked = settle(
        source,
        plan(source, layouts if layouts is not None else default_layouts()),
        settings.out_dir,
    )
    problems = list(checked.problems)
    for problem in problems:
        notices.problem(problem)
    manifest = Manifest.read_all(manifests) if manifests else settings.manifest
    for ignored in manifest.ignored if manifest is not None else ():
        notices.warning(ignored.message)
    unverifiable = _unverifiable(checked.files, manifest)
    for unchecked in unverifiable if settings.verify else ():
        problems.append(unchecked)
        notices.problem(unchecked)
    with Key(key_file) if key_file is not None else nullcontext(None) as key:
        if problems:
            raise ProblemsReported(len(problems))
        if key_file is not None:
            layout = run_layout(checked.files) or BELLE
            fingerprint = identify(key_file, inspect=False, expected=layout.expected_key)
            warning = layout.key_warning(fingerprint, unverified=bool(unverifiable))
            if warning is not None:
                notices.warning(warning)
            if diagnoser is None:
                diagnoser = Diagnoser(key_file, manifest, expected=layout.expected_key)
        out_dir = settings.out_dir
        prepare_output_dir(out_dir)
        remove_stale_temps(out_dir)
        _report_skipped(checked.skipped, skip_reason(layouts or ()), notices)
        check_free_space(out_dir, bytes_to_write(checked.files, out_dir))
        settings = replace(settings, manifest=manifest)
        settings = replace(settings, jobs=resolve_jobs(checked.files, settings))
        assert diagnoser is not None, "a run without a key file brings its diagnoser"
        yield Run(checked.files, key, settings, diagnoser, source.is_dir())


def _report_skipped(skipped: Sequence[Path], reason: str, notices: Notices) -> None:
    """Each skipped file on its line; a layout's hub files (several, one reason) once."""
    if reason == "not a .enc file" or len(skipped) < 2:
        for path in skipped:
            notices.skipped(path, reason)
    else:
        notices.skipped(Path(", ".join(path.name for path in skipped)), reason)


def _unverifiable(files: Sequence[Source], manifest: Manifest | None) -> list[InputError]:
    """A problem for each file that carries no checksum and has no md5 in the manifest."""
    return [
        InputError(
            f"carries no checksum and no manifest lists {enc.output_name!r}; pass the model "
            "card's md5 list with --manifest"
            if manifest is None
            else f"carries no checksum and the --manifest list does not name "
            f"{enc.output_name!r}; pass the card's list of the decrypted files with "
            "--manifest, or --no-verify to decrypt it unchecked",
            enc.path,
        )
        for enc in files
        if not carries_sha256(enc) and (manifest is None or not manifest.lookup(enc.output_name))
    ]


def carries_sha256(enc: Source) -> bool:
    """Whether ``enc`` is checked by a SHA-256 of its own (a plain copy's is taken as it is
    copied: asking for it beforehand would read the file twice)."""
    return is_copy(enc) or enc.sha256 is not None


def manifest_check(manifest: Manifest | None, enc: Source) -> tuple[dict[str, str], Verified]:
    """The digests the manifest expects for ``enc``'s output (by algorithm: the output's path
    relative to OUT_DIR) and what will have been verified."""
    entries = manifest.lookup(enc.output_name) if manifest is not None else ()
    expected = {entry.algorithm: entry.digest for entry in entries}
    if not carries_sha256(enc):
        if not expected:
            return expected, Verified.NOTHING
        return expected, Verified.MD5 if "md5" in expected else Verified.SHA256_AS_LISTED
    if manifest is None:
        return expected, Verified.SHA256
    if not expected and len(manifest.names_ending_with(enc.output_name)) > 1:
        return expected, Verified.SHA256_LISTED_IN_SEVERAL_FOLDERS
    if not expected:
        return expected, Verified.SHA256_NOT_IN_MANIFEST
    if "md5" in expected:
        return expected, Verified.SHA256_AND_MD5
    return expected, Verified.SHA256_AS_LISTED


def decrypt_one(
    enc: Source,
    key: Key | None,
    settings: Settings,
    diagnoser: Diagnoser,
    progress: Progress | None,
    cancel: CancelToken | None = None,
    inputs: Collection[Path] = (),
) -> Outcome[Result]:
    """Decrypt one file; a failure becomes an Outcome whose error names the likely cause.

    ``inputs`` are the run's input files, never to be replaced by an output.
    """
    expected, checked = manifest_check(settings.manifest, enc)
    # A file that reads two ways (a per-file payload starting like gzip) is read the other way
    # when this one fails the manifest, or differs from an output already there.
    other: Source | None = getattr(enc, "other_reading", None) if expected else None
    existed = other is not None and (settings.out_dir / enc.output_name).exists()
    try:
        result = decrypt_file(
            enc,
            key,
            settings.out_dir,
            force=settings.force,
            fsync=settings.fsync,
            on_progress=progress,
            expected=expected,
            cancel=cancel,
            inputs=inputs,
        )
    except DigestMismatch as exc:
        if other is not None:
            retried = decrypt_one(other, key, settings, diagnoser, progress, cancel, inputs)
            if retried.error is None:
                return retried
        diagnosis = diagnoser.explain(enc, cancel)
        return Outcome(enc.path, None, exc.with_hint(diagnosis.hint), checked, diagnosis)
    except BelleError as exc:
        undecodable: Source | None = getattr(enc, "undecodable_reading", None)
        if undecodable is not None and _damaged_gzip(exc):
            # Its size came from its trailer and the stream is not a whole one of that size:
            # read raw, as if its size had been counted first (docs/FORMAT.md 7.2).
            return decrypt_one(undecodable, key, settings, diagnoser, progress, cancel, inputs)
        if other is not None and existed and isinstance(exc, OutputError):
            retried = decrypt_one(other, key, settings, diagnoser, progress, cancel, inputs)
            if retried.error is None:
                return retried
        return Outcome(enc.path, None, exc, checked)
    if is_copy(enc):
        result = replace(result, status=COPIED[result.status])
    elif checked is Verified.NOTHING and result.status is FileState.ALREADY_DECRYPTED:
        checked = Verified.SAME_AS_FRESH
    return Outcome(enc.path, result, None, checked, note=getattr(enc, "reading", None))


def _damaged_gzip(exc: BaseException) -> bool:
    """Whether ``exc`` comes from a gzip payload that does not decode cleanly to its size."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, DamagedGzip):
            return True
        cause = cause.__cause__
    return False


class _Stop(Exception):
    """Raised from the result handler to stop a run (after the first two files, or at a
    failure that dooms every other file)."""


def resolve_jobs(files: Sequence[Source], settings: Settings) -> int:
    """Files to decrypt at once: as asked, or from the cores, the hashes per file and sizes."""
    if settings.jobs is not None:
        return settings.jobs
    carried = any(carries_sha256(enc) for enc in files)  # headerless files: the md5 alone
    hashes = 2 if settings.manifest is not None and carried else 1
    # A source may hash its inputs too (the per-file layout's base, against its list).
    hashes += max((int(getattr(enc, "input_hashes", 0)) for enc in files), default=0)
    return jobs.default_jobs([enc.payload_size for enc in files], hashes_per_file=hashes)


def decrypt_all(
    files: Sequence[Source],
    key: Key | None,
    settings: Settings,
    diagnoser: Diagnoser,
    *,
    file_progress: FileProgress | None = None,
    on_outcome: Callable[[Outcome[Result]], None] | None = None,
    cancel: CancelToken | None = None,
) -> Tally:
    """Decrypt ``files`` (several at once with ``settings.jobs``), reporting outcomes in order;
    stop after the first two when both show a wrong key.

    ``file_progress`` and the work run in worker threads when more than one job runs;
    ``on_outcome`` always runs in the calling thread.
    """
    tally = Tally()
    diagnoses: list[Diagnosis | None] = []
    token = cancel if cancel is not None else CancelToken()
    inputs = frozenset(path for enc in files for path in input_paths(enc))
    doomed: list[BelleError] = []

    def work(enc: Source) -> Outcome[Result]:
        context = (
            file_progress(enc.output_name, enc.payload_size)
            if file_progress is not None
            else nullcontext(None)
        )
        with context as progress:
            return decrypt_one(enc, key, settings, diagnoser, progress, token, inputs)

    def handle(enc: Source, outcome: Outcome[Result]) -> None:
        diagnoses.append(outcome.diagnosis)
        tally.add(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
        error = outcome.error
        stops = error is not None and bool(getattr(error, "stops_run", False))
        if error is not None and stops and len(diagnoses) < len(files) and not settings.keep_going:
            doomed.append(error)
            raise _Stop()
        first_two_done = len(diagnoses) == 2 < len(files)
        if first_two_done and not settings.keep_going and diagnoser.stop_early(diagnoses):
            raise _Stop()

    try:
        jobs.run(work, files, resolve_jobs(files, settings), cancel=token, on_result=handle)
    except _Stop:
        tally.not_tried = len(files) - len(diagnoses)
        tally.stopped = (
            f"stopped at {doomed[0].path.name if doomed[0].path else 'a file'}: every other "
            f"file needs the same base; {tally.not_tried} more not tried; fix the base, or "
            "pass --keep-going to try every file anyway"
            if doomed
            else f"stopped: the first two files both failed their checksum and the key "
            f"{diagnoser.key_path} is not the original LLaMA-7B consolidated.00.pth; "
            f"{tally.not_tried} more not tried; pass the right key, or --keep-going to try "
            "every file anyway"
        )
    if files and len(diagnoses) == len(files) and all(d is not None for d in diagnoses):
        tally.advice = diagnoser.damaged_key()
    return tally
