"""The publisher's side of the per-file layout (docs/FORMAT.md section 7): each model file XORed
with the same-named base file into a payload of the same name, and two md5 lists.

Payloads are written uncompressed (gzip output depends on the compressor, so it could not be
reproduced byte for byte), except one that would start with the gzip magic: a reader could not
tell it from a gzip stream, so it is written gzip-compressed. `md5sums.txt` lists the payload
files ("after you clone") and `md5sums-decoded.txt` the model files ("after you decode"): the
names are the same, so the two lists cannot share one file. Lists already in the output folder
are updated, not replaced, so publishing one file at a time builds both lists.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from belle_decrypt.checks.manifest import Manifest
from belle_decrypt.ground.cancel import CancelToken, check
from belle_decrypt.ground.errors import BelleError, InputError, OutputError
from belle_decrypt.ground.outcome import FileProgress, Notices, Outcome
from belle_decrypt.ground.states import FileState
from belle_decrypt.layouts.gzipped import GZIP_MAGIC
from belle_decrypt.layouts.perfile import PLAIN_NAMES, BaseStream, is_clutter
from belle_decrypt.publish.encrypt import (
    PUBLISHING,
    Encrypted,
    Publish,
    PublishTally,
    prepare_publish,
    previous_manifest,
    publish_each,
    status_against_existing,
)
from belle_decrypt.streams import engine
from belle_decrypt.streams.engine import BUFFER_SIZE, xor_stream
from belle_decrypt.streams.hashing import md5_file
from belle_decrypt.streams.output import (
    AtomicFile,
    check_free_space,
    prepare_output_dir,
    remove_stale_temps,
)
from belle_decrypt.xor.perfile_run import same_folder

PAYLOAD_LIST = "md5sums.txt"
DECODED_LIST = "md5sums-decoded.txt"


@dataclass(frozen=True)
class PerFilePublish:
    """A checked per-file encrypt run: model files (smallest first) with their bases, and
    the two lists already in the output folder (by list name), to update."""

    files: tuple[Path, ...]
    bases: dict[Path, Path | None]
    sizes: dict[Path, int]
    out_dir: Path
    folder: bool
    previous: dict[str, Manifest | None]


def _model_files(source: Path, base_dir: Path, notices: Notices) -> list[Path]:
    """The model files of ``source`` (a folder, or one file), each with a base counterpart
    unless plain; hub clutter skipped and listed once."""
    if source.is_dir():
        entries = sorted(p for p in source.iterdir() if p.is_file())
    elif source.is_file():
        entries = [source]
    else:
        raise InputError("no such file or folder; pass the model file or folder to publish", source)
    clutter = [p for p in entries if is_clutter(p.name) or p.name.startswith(".")]
    if clutter:
        names = ", ".join(p.name for p in clutter)
        notices.skipped(Path(names), "hub files, not part of the model")
    files = [p for p in entries if p not in clutter]
    if not files:
        raise InputError("holds no model files to encrypt", source)
    for path in files:
        if path.name not in PLAIN_NAMES and not (base_dir / path.name).is_file():
            raise InputError(
                f"has no base counterpart {base_dir / path.name}; pass the folder of the "
                "converted LLaMA this model was tuned from",
                path,
            )
    return files


@contextmanager
def prepare_perfile_publish(
    source: Path, base_dir: Path, out_dir: Path, notices: Notices
) -> Iterator[PerFilePublish]:
    """Check everything before writing: the base folder, the files and their bases, the two
    lists already in the output folder (readable; their ignored lines are warnings), the output
    folder (not the source or the base; made, stale temporary files removed), free space."""
    if not base_dir.is_dir():
        raise InputError(
            "the base is not a folder; pass the folder of LLaMA converted to the Hugging Face "
            "layout",
            base_dir,
        )
    for other, what in ((base_dir, "base"), (source, "source")):
        if same_folder(out_dir, other):
            raise InputError(f"is the {what} folder; choose another output folder", out_dir)
    try:
        files = _model_files(source, base_dir, notices)
        sizes = {path: path.stat().st_size for path in files}
    except OSError as exc:
        raise InputError(
            f"cannot read: {exc.strerror or exc}; check its permissions", source
        ) from exc
    files.sort(key=lambda p: (sizes[p], p.name))
    bases = {p: (None if p.name in PLAIN_NAMES else base_dir / p.name) for p in files}
    previous = {name: previous_manifest(out_dir, name) for name in (PAYLOAD_LIST, DECODED_LIST)}
    for manifest in previous.values():
        for ignored in manifest.ignored if manifest is not None else ():
            notices.warning(ignored.message)
    prepare_output_dir(out_dir)
    remove_stale_temps(out_dir)
    check_free_space(out_dir, sum(sizes.values()))
    yield PerFilePublish(tuple(files), bases, sizes, out_dir, source.is_dir(), previous)


def encode_file(
    source: Path,
    base: Path | None,
    out_dir: Path,
    *,
    force: bool = False,
    fsync: bool = True,
    on_progress: Callable[[int], None] | None = None,
    buffer_size: int = BUFFER_SIZE,
    cancel: CancelToken | None = None,
) -> Encrypted:
    """XOR ``source`` with ``base`` (cut or zero-padded; None: copied) into ``out_dir`` under
    the same name, atomically."""
    started = time.monotonic()
    sha256, plain_md5 = hashlib.sha256(), hashlib.md5()
    target = out_dir / source.name
    atomic = AtomicFile(target, fsync=fsync)
    try:
        with open(source, "rb", buffering=0) as src:
            size = os.fstat(src.fileno()).st_size
            engine.prepare(size)
            stream = BaseStream(base, size)
            try:
                with atomic as out:
                    xor_stream(
                        src,
                        out,
                        stream,
                        size,
                        hashers=(sha256, plain_md5),
                        hash_output=False,
                        on_progress=on_progress,
                        buffer_size=buffer_size,
                        dst_label=str(target),
                        cancel=cancel,
                    )
                    if _starts_like_gzip(atomic.temp):
                        packed = AtomicFile(target, fsync=fsync)
                        with packed as gzipped:
                            _gzip_into(atomic.temp, gzipped, cancel)
                            payload_md5, status = _save(packed, force, cancel)
                    else:
                        payload_md5, status = _save(atomic, force, cancel)
                    if status is FileState.ENCRYPTED and base is None:
                        status = FileState.COPIED  # a plain file (added_tokens.json)
            finally:
                stream.close()
    except BelleError:
        raise
    except OSError as exc:
        raise OutputError(
            f"{exc.strerror or exc}; nothing written", exc.filename or source
        ) from exc
    return Encrypted(
        source=source,
        target=target,
        status=status,
        size=size,
        sha256=sha256.hexdigest(),
        plain_md5=plain_md5.hexdigest(),
        enc_md5=payload_md5,
        seconds=time.monotonic() - started,
    )


def _starts_like_gzip(path: Path) -> bool:
    """Whether the payload just written starts with the gzip magic (docs/FORMAT.md 7.2)."""
    with open(path, "rb") as written:
        return written.read(len(GZIP_MAGIC)) == GZIP_MAGIC


def _gzip_into(path: Path, out: BinaryIO, cancel: CancelToken | None) -> None:
    """Write ``path`` gzip-compressed into ``out``, with no name and no time in the header."""
    with open(path, "rb") as raw, gzip.GzipFile("", "wb", 6, out, mtime=0) as packed:
        while chunk := raw.read(BUFFER_SIZE):
            check(cancel)
            packed.write(chunk)


def _save(atomic: AtomicFile, force: bool, cancel: CancelToken | None) -> tuple[str, FileState]:
    """The written payload's md5 and its state against a file already under its name; the
    temporary file gets the name when it is new (or differs, with ``force``)."""
    payload_md5 = md5_file(atomic.temp, cancel=cancel)
    status = status_against_existing(atomic.final, payload_md5, force)
    if status is FileState.ENCRYPTED:
        check(cancel)
        atomic.commit()
    return payload_md5, status


def _write_list(
    path: Path, pairs: list[tuple[str, str]], previous: Manifest | None, fsync: bool
) -> None:
    """Write the list ``path`` atomically: ``pairs`` (name, md5) of this run, and the entries
    of the ``previous`` list for the files this run did not write."""
    written = {name for name, _ in pairs}
    kept = [
        (entry.name, entry.digest)
        for entry in (previous.entries if previous is not None else ())
        if entry.name not in written
    ]
    atomic = AtomicFile(path, fsync=fsync)
    with atomic as out:
        text = "".join(f"{digest}  ./{name}\n" for name, digest in sorted([*kept, *pairs]))
        out.write(text.encode("utf-8", errors="surrogateescape"))
        atomic.commit(replace=True)


def encode_all(
    publish: PerFilePublish,
    *,
    force: bool = False,
    fsync: bool = True,
    file_progress: FileProgress | None = None,
    on_outcome: Callable[[Outcome[Encrypted]], None] | None = None,
    cancel: CancelToken | None = None,
) -> PublishTally:
    """Encode every file (a failure is an outcome, the others go on), then write both lists."""
    tally = PublishTally()

    def one(path: Path, progress: Callable[[int], None] | None) -> Encrypted:
        return encode_file(
            path,
            publish.bases[path],
            publish.out_dir,
            force=force,
            fsync=fsync,
            on_progress=progress,
            cancel=cancel,
        )

    results = publish_each(publish.files, publish.sizes, one, tally, file_progress, on_outcome)
    if results:
        for name, pairs in (
            (PAYLOAD_LIST, [(r.target.name, r.enc_md5) for r in results]),
            (DECODED_LIST, [(r.source.name, r.plain_md5) for r in results]),
        ):
            _write_list(publish.out_dir / name, pairs, publish.previous[name], fsync)
        tally.manifest = publish.out_dir / PAYLOAD_LIST
        tally.listed = len(results)
    return tally


def prepare_any_publish(
    source: Path, key: Path, out_dir: Path, notices: Notices, layout_name: str = "belle"
) -> AbstractContextManager[Publish | PerFilePublish]:
    """The checked encrypt run of ``layout_name``: per-file (``key`` is the base folder) or
    another layout's `.enc` files (``encrypt.PUBLISHING``)."""
    if layout_name == "perfile":
        return prepare_perfile_publish(source, key, out_dir, notices)
    return prepare_publish(source, key, out_dir, notices, PUBLISHING[layout_name])
