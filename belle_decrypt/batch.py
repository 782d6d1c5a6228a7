"""Decrypting a checked set of `.enc` files into one folder, as one run.

It adds to single-file decryption what a run over many files needs: each output checked against
the manifest's md5, a failure explained (broken download or wrong key), a stop after the first
two files fail with an unknown key, and a tally. It reports through callbacks and knows nothing
of the terminal.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from belle_decrypt import jobs
from belle_decrypt.container import EncFile
from belle_decrypt.decrypt import Result, decrypt_file
from belle_decrypt.diagnose import Diagnoser, Diagnosis
from belle_decrypt.errors import BelleError, DigestMismatch
from belle_decrypt.keystream import Key
from belle_decrypt.manifest import Manifest

Progress = Callable[[int], None]
FileProgress = Callable[[EncFile], AbstractContextManager[Progress | None]]


@dataclass(frozen=True)
class Settings:
    """How one run decrypts."""

    out_dir: Path
    force: bool = False
    fsync: bool = True
    keep_going: bool = False
    manifest: Manifest | None = None
    jobs: int | None = None


@dataclass(frozen=True)
class Outcome:
    """One file's end: a result, or the error that failed it (with its likely cause)."""

    enc: EncFile
    result: Result | None
    error: BelleError | None
    checked: str
    diagnosis: Diagnosis | None = None


@dataclass
class Tally:
    """How a run went."""

    decrypted: int = 0
    already_decrypted: int = 0
    failed: int = 0
    not_tried: int = 0
    stopped: str | None = None
    advice: str | None = None

    @property
    def ok(self) -> bool:
        """True when every file is decrypted and verified."""
        return self.failed == 0 and self.not_tried == 0


def manifest_check(manifest: Manifest | None, name: str) -> tuple[dict[str, str], str]:
    """The digests the manifest expects for the output ``name`` (by algorithm) and the words
    saying what was verified."""
    if manifest is None:
        return {}, "SHA-256 verified"
    expected = {entry.algorithm: entry.digest for entry in manifest.lookup(name)}
    if not expected and len(manifest.names_ending_with(name)) > 1:
        return {}, "SHA-256 verified; the manifest lists this name in several folders"
    if not expected:
        return {}, "SHA-256 verified, not in manifest"
    if "md5" in expected:
        return expected, "SHA-256 and md5 verified"
    return expected, "SHA-256 verified, as listed in the manifest"


def decrypt_one(
    enc: EncFile,
    key: Key,
    settings: Settings,
    diagnoser: Diagnoser,
    progress: Progress | None,
    inputs: Collection[Path] = (),
) -> Outcome:
    """Decrypt one file; a failure becomes an Outcome whose error names the likely cause.

    ``inputs`` are the run's input files, never to be replaced by an output.
    """
    expected, checked = manifest_check(settings.manifest, enc.enc_name.name)
    try:
        result = decrypt_file(
            enc,
            key,
            settings.out_dir,
            force=settings.force,
            fsync=settings.fsync,
            on_progress=progress,
            expected=expected,
            inputs=inputs,
        )
    except DigestMismatch as exc:
        diagnosis = diagnoser.explain(enc)
        return Outcome(enc, None, exc.with_hint(diagnosis.hint), checked, diagnosis)
    except BelleError as exc:
        return Outcome(enc, None, exc, checked)
    return Outcome(enc, result, None, checked)


class _Stop(Exception):
    """Raised from the result handler to stop a run after the first two files."""


def resolve_jobs(files: Sequence[EncFile], settings: Settings) -> int:
    """Files to decrypt at once: as asked, or from the cores, the hashes per file and sizes."""
    if settings.jobs is not None:
        return settings.jobs
    hashes = 2 if settings.manifest is not None else 1
    return jobs.default_jobs([enc.payload_size for enc in files], hashes_per_file=hashes)


def decrypt_all(
    files: Sequence[EncFile],
    key: Key,
    settings: Settings,
    diagnoser: Diagnoser,
    *,
    file_progress: FileProgress | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> Tally:
    """Decrypt ``files`` (several at once with ``settings.jobs``), reporting outcomes in order;
    stop after the first two when both show a wrong key.

    ``file_progress`` and the work run in worker threads when more than one job runs;
    ``on_outcome`` always runs in the calling thread.
    """
    tally = Tally()
    diagnoses: list[Diagnosis | None] = []
    inputs = frozenset(enc.path for enc in files)

    def work(enc: EncFile) -> Outcome:
        context = file_progress(enc) if file_progress is not None else nullcontext(None)
        with context as progress:
            return decrypt_one(enc, key, settings, diagnoser, progress, inputs)

    def handle(enc: EncFile, outcome: Outcome) -> None:
        diagnoses.append(outcome.diagnosis)
        if outcome.result is None:
            tally.failed += 1
        elif outcome.result.status == "already decrypted":
            tally.already_decrypted += 1
        else:
            tally.decrypted += 1
        if on_outcome is not None:
            on_outcome(outcome)
        first_two_done = len(diagnoses) == 2 < len(files)
        if first_two_done and not settings.keep_going and diagnoser.stop_early(diagnoses):
            raise _Stop()

    try:
        jobs.run(work, files, resolve_jobs(files, settings), on_result=handle)
    except _Stop:
        tally.not_tried = len(files) - len(diagnoses)
        tally.stopped = (
            f"stopped: the first two files both failed their checksum and the key "
            f"{diagnoser.key_path} is not the original LLaMA-7B consolidated.00.pth; "
            f"{tally.not_tried} more not tried; pass the right key, or --keep-going to try "
            "every file anyway"
        )
    if files and len(diagnoses) == len(files) and all(d is not None for d in diagnoses):
        tally.advice = diagnoser.damaged_key()
    return tally
