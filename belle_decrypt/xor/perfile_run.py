"""A per-file run (docs/FORMAT.md section 7): the checks before anything is written (the base
folder, the two lists kept apart, then everything a run checks), what a decoded file's failure
means, and which layout a `decrypt` without ``--format`` is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from pathlib import Path

from belle_decrypt.checks.keyid import is_meta_folder
from belle_decrypt.checks.manifest import Manifest
from belle_decrypt.ground.cancel import CancelToken
from belle_decrypt.ground.errors import InputError, ManifestClash, ManifestError
from belle_decrypt.ground.outcome import Notices
from belle_decrypt.layouts.gzipped import NOT_GZIP
from belle_decrypt.layouts.perfile import PINNED, PLAIN_NAMES, PayloadFile, PerFileLayout
from belle_decrypt.layouts.protocol import Source
from belle_decrypt.streams.hashing import hash_file
from belle_decrypt.xor.batch import Run, Settings, prepare_run
from belle_decrypt.xor.diagnose import Diagnoser, Diagnosis


def read_split_manifest(paths: Sequence[Path]) -> Manifest | None:
    """Read the manifests of one option; a card holding the base and decoded blocks under the
    same names (the same name with two different sums) is refused with a line saying to split
    it, never mixed."""
    if not paths:
        return None
    try:
        return Manifest.read_all(paths)
    except ManifestClash as exc:
        raise ManifestError(
            f"lists {exc.name!r} twice with different sums, as a card pasted whole does (its "
            "base block and its decoded block use the same names); split it: the base block "
            "into a file for --base-manifest, the decoded block for --manifest",
            ", ".join(str(path) for path in paths),
        ) from None


class PerFileDiagnoser(Diagnoser):
    """Explains a decoded file's md5 failure in the per-file layout: the base or the payload."""

    def __init__(self, layout: PerFileLayout, manifest: Manifest | None) -> None:
        super().__init__(layout.base_dir, manifest)
        self.layout = layout

    def explain(self, enc: Source, cancel: CancelToken | None = None) -> Diagnosis:
        """A payload that starts like gzip but is not a whole stream is a damaged download; a
        base that matched the card's base list leaves the payload download; otherwise the base
        conversion is the likely cause."""
        own = self._listed_as_payload(enc, cancel)
        if own is not None:
            return Diagnosis(
                False,
                f"the --manifest list gives this payload file's own {own}: it lists the payload "
                'files (md5sums.txt, "after you clone"), not the decoded ones; pass the decoded '
                "files' list (md5sums-decoded.txt, or the card's decoded block) with --manifest",
            )
        if isinstance(enc, PayloadFile) and enc.raw_why == NOT_GZIP:
            return Diagnosis(
                False,
                f"{NOT_GZIP} (a truncated download?), and read as raw bytes it does not match "
                f"the manifest either; download {enc.path.name} again",
            )
        if isinstance(enc, PayloadFile) and self.layout.base_expected(enc):
            return Diagnosis(
                False,
                f"the base {enc.base} matches the base manifest, so the payload is damaged; "
                f"download {enc.path.name} again",
            )
        if isinstance(enc, PayloadFile) and enc.base is None:
            return Diagnosis(False, f"it is copied as it is; download {enc.path.name} again")
        return Diagnosis(
            True,
            "the base is probably not the publisher's conversion, or the payload download is "
            f"damaged; pass the card's base list with --base-manifest to tell which; {PINNED}",
        )

    def _listed_as_payload(self, enc: Source, cancel: CancelToken | None) -> str | None:
        """The algorithm ("md5", "SHA-256") by which ``--manifest`` lists the payload file
        itself rather than its decoded file (the payload list passed for the decoded one)."""
        entries = self.manifest.lookup(enc.output_name) if self.manifest is not None else ()
        if not entries:
            return None
        try:
            actual = hash_file(
                enc.path, tuple(dict.fromkeys(entry.algorithm for entry in entries)), cancel=cancel
            )
        except OSError:
            return None  # unreadable now: the other explanations stand
        for entry in entries:
            if actual[entry.algorithm] == entry.digest:
                return "SHA-256" if entry.algorithm == "sha256" else entry.algorithm
        return None

    def stop_early(self, outcomes: Sequence[Diagnosis | None]) -> bool:
        """Never: the base manifest, when given, stops the run at the first wrong base file."""
        return False

    def damaged_key(self) -> str | None:
        """No key file here."""
        return None


def same_folder(a: Path, b: Path) -> bool:
    """Whether two paths name the same existing folder."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


@contextmanager
def prepare_perfile_run(
    source: Path,
    base_dir: Path,
    settings: Settings,
    manifests: Sequence[Path],
    base_manifests: Sequence[Path],
    notices: Notices,
) -> Iterator[Run]:
    """Check a per-file run before anything is written: the base folder, both lists (each
    refused when it holds a whole card's two blocks), then everything
    :func:`~belle_decrypt.xor.batch.prepare_run` checks."""
    if not base_dir.is_dir():
        raise InputError(
            "the base is not a folder; pass the folder of LLaMA converted to the Hugging Face "
            "layout",
            base_dir,
        )
    if is_meta_folder(base_dir):
        raise InputError(
            "is Meta's original download (consolidated.*.pth): a per-file XOR release needs "
            "the publisher's byte-identical Hugging Face conversion the card names, which "
            "`belle-decrypt convert` does not reproduce; pass that converted folder",
            base_dir,
        )
    for other, what in ((base_dir, "base"), (source, "payload")):
        if same_folder(settings.out_dir, other):
            raise InputError(
                f"is the {what} folder; choose another output folder", settings.out_dir
            )
    manifest = read_split_manifest(manifests)
    base_manifest = read_split_manifest(base_manifests)
    plain = sorted(name for name in PLAIN_NAMES if base_manifest and base_manifest.lookup(name))
    if plain:
        raise InputError(
            f"the list given with --base-manifest names {plain[0]}, which no base holds: it is "
            "the card's decoded block; pass the card's base block with --base-manifest and its "
            "decoded block with --manifest",
            ", ".join(str(path) for path in base_manifests),
        )
    layout = PerFileLayout(base_dir, base_manifest, manifest)
    settings = replace(settings, manifest=manifest)
    diagnoser = PerFileDiagnoser(layout, manifest)
    with prepare_run(source, None, settings, (), notices, (layout,), diagnoser) as run:
        if layout.base_manifest is not None:
            for found in run.files:
                if (
                    isinstance(found, PayloadFile)
                    and found.base
                    and not layout.base_expected(found)
                ):
                    notices.warning(
                        f"{found.base}: not in the base manifest; this base file is not checked"
                    )
        yield run


def is_per_file_run(source: Path, key: Path) -> bool:
    """Whether a run with no ``--format`` is per-file: its key is a folder and its source is
    not a BELLE release (`.enc` files), for which a folder key is a mistake to explain."""
    if not os.path.isdir(key):  # never raises: an unreadable key is said by the run
        return False
    if os.path.isdir(source):
        try:
            return not any(path.name.endswith(".enc") for path in source.iterdir())
        except OSError:
            return True  # the run says what is wrong with the folder
    return not source.name.endswith(".enc")


def prepare_decrypt(
    source: Path,
    key: Path,
    out_dir: Path,
    notices: Notices,
    *,
    manifests: Sequence[Path] = (),
    base_manifests: Sequence[Path] = (),
    format_name: str | None = None,
    force: bool = False,
    no_fsync: bool = False,
    keep_going: bool = False,
    jobs: int | None = None,
    no_verify: bool = False,
) -> AbstractContextManager[Run]:
    """The checked run of `decrypt SOURCE KEY OUT_DIR` with its options: per-file when
    ``format_name`` says so or the key is a folder (:func:`is_per_file_run`), the default
    layouts (or the one ``format_name`` names) otherwise."""
    settings = Settings(out_dir, force, not no_fsync, keep_going, jobs=jobs, verify=not no_verify)
    perfile = format_name == "perfile" or (format_name is None and is_per_file_run(source, key))
    if perfile:
        return prepare_perfile_run(source, key, settings, manifests, base_manifests, notices)
    if base_manifests:
        raise InputError("--base-manifest is for the per-file layout (KEY_FILE a folder)")
    from belle_decrypt.xor.detect import layouts_for

    return prepare_run(source, key, settings, manifests, notices, layouts_for(format_name))
