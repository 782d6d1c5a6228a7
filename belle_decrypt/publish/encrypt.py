"""The publisher's side: plain model files to `NAME.<sha256>.enc` files and a model-card manifest.

Each input is read once: the payload is XORed into a temporary file while its SHA-256 and md5
are computed, then the 32-byte header is written in front and the file renamed to its final name.
The `.enc` file's own md5 covers that header, so it is read back once for the manifest.
:func:`prepare_publish` checks everything before writing; :func:`encrypt_all` encrypts every
file (a failed one does not stop the others) and writes or updates `md5sums.txt`.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path

from belle_decrypt.checks.manifest import Manifest
from belle_decrypt.ground.cancel import CancelToken, check
from belle_decrypt.ground.errors import BelleError, InputError, ManifestError, OutputError
from belle_decrypt.ground.outcome import FileProgress, Notices, Outcome, Tally
from belle_decrypt.ground.states import FileState
from belle_decrypt.layouts.container import HEADER_SIZE, EncName
from belle_decrypt.layouts.headerless import TECHGPT
from belle_decrypt.layouts.seed import OPENBUDDY, read_seed
from belle_decrypt.streams import engine
from belle_decrypt.streams.engine import BUFFER_SIZE, xor_stream
from belle_decrypt.streams.hashing import md5_file
from belle_decrypt.streams.keystream import Key, Keystream
from belle_decrypt.streams.output import (
    AtomicFile,
    check_free_space,
    prepare_output_dir,
    remove_stale_temps,
    unreadable_existing,
)
from belle_decrypt.xor.detect import decrypted_name

MANIFEST_NAME = "md5sums.txt"
NAME_MAX = 255
ENC_NAME_EXTRA = 1 + 64 + 4  # ".<sha256 hex>.enc"


@dataclass(frozen=True)
class Publishing:
    """How encrypt lays a file out (docs/FORMAT.md): with the 32-byte header or none, its
    name from the plain name and SHA-256, and the keystream taken from the key."""

    header: bool
    name: Callable[[str, str], str]
    keystream: Callable[[Key], AbstractContextManager[Keystream]]


PUBLISHING = {
    "belle": Publishing(
        True, lambda name, hex_: EncName(name, hex_).encrypted_filename(), nullcontext
    ),
    "techgpt": Publishing(False, TECHGPT.encrypted_name, nullcontext),
    "openbuddy": Publishing(
        False, OPENBUDDY.encrypted_name, lambda key: nullcontext(read_seed(key))
    ),
}
"""The layouts ``encrypt --format`` writes."""


@dataclass(frozen=True)
class Encrypted:
    """One published file: its plain name and size, both md5 sums, where it was written."""

    source: Path
    target: Path
    status: FileState
    size: int
    sha256: str
    plain_md5: str
    enc_md5: str
    seconds: float


def sources(src: Path, out_dir: Path) -> list[Path]:
    """The files to encrypt, checked readable before anything is written: ``src`` itself, or
    every regular non-hidden file directly in it, smallest first."""
    try:
        if not src.exists():
            raise InputError(
                "no such file or folder; pass the model file or folder to publish", src
            )
        if src.is_dir():
            # The folders themselves, not their paths: a bind mount shows one under two paths.
            if out_dir.exists() and os.path.samefile(out_dir, src):
                raise InputError(
                    "the output folder is the source folder; choose another one", out_dir
                )
            files = [p for p in src.iterdir() if p.is_file() and not p.name.startswith(".")]
            if not files:
                raise InputError("holds no files to encrypt", src)
        elif src.is_file():
            files = [src]
        else:
            raise InputError("is not a regular file or folder", src)
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}; check its permissions", src) from exc
    for path in files:
        _check_publishable_name(path)
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise InputError(
                f"cannot read: {exc.strerror or exc}; check its permissions", path
            ) from exc
    return sorted(files, key=lambda p: (p.stat().st_size, p.name))


def _check_publishable_name(path: Path) -> None:
    """Refuse a name whose `.enc` decrypt would refuse, or that is too long once published."""
    try:
        EncName.parse(f"{path.name}.{'0' * 64}.enc")
    except InputError as exc:
        raise InputError(
            f"this name cannot be published, decrypt would refuse it ({exc.message})", path
        ) from None
    if len(os.fsencode(path.name)) + ENC_NAME_EXTRA > NAME_MAX:
        raise InputError(
            f"the name is too long to publish: NAME.<sha256>.enc must fit in {NAME_MAX} bytes; "
            "rename it",
            path,
        )


def previous_manifest(out_dir: Path, name: str = MANIFEST_NAME) -> Manifest | None:
    """The list ``name`` (md5sums.txt) already in ``out_dir`` (to update), read before anything
    is written."""
    target = out_dir / name
    if not target.exists():
        return None
    try:
        return Manifest.read(target)
    except ManifestError as exc:
        raise ManifestError(
            f"{exc.message}; this run would update it: fix it or move it away", target
        ) from None


def encrypt_file(
    source: Path,
    key: Key,
    out_dir: Path,
    *,
    force: bool = False,
    fsync: bool = True,
    on_progress: Callable[[int], None] | None = None,
    buffer_size: int = BUFFER_SIZE,
    cancel: CancelToken | None = None,
    publishing: Publishing = PUBLISHING["belle"],
) -> Encrypted:
    """Encrypt ``source`` into ``out_dir`` as `NAME.<sha256>.enc` (or the layout of
    ``publishing``), byte-identical to docs/FORMAT.md."""
    with suppress(OSError):  # unreadable: said below, when it is opened
        engine.prepare(source.stat().st_size)  # a numpy import is not this file's time
    started = time.monotonic()
    sha256, plain_md5 = hashlib.sha256(), hashlib.md5()
    atomic = AtomicFile(out_dir / f"{source.name}.enc", fsync=fsync)
    try:
        with (
            open(source, "rb", buffering=0) as src,
            publishing.keystream(key) as keystream,
            atomic as out,
        ):
            size = os.fstat(src.fileno()).st_size
            if publishing.header:
                out.write(bytes(HEADER_SIZE))
            xor_stream(
                src,
                out,
                keystream,
                size,
                hashers=(sha256, plain_md5),
                hash_output=False,
                on_progress=on_progress,
                buffer_size=buffer_size,
                dst_label=str(atomic.final),
                cancel=cancel,
            )
            if publishing.header:
                os.pwrite(out.fileno(), sha256.digest(), 0)
            target = out_dir / publishing.name(source.name, sha256.hexdigest())
            enc_md5 = md5_file(atomic.temp, cancel=cancel)
            status = status_against_existing(target, enc_md5, force)
            if status is FileState.ENCRYPTED:
                check(cancel)  # a cancelled run puts nothing new under a final name
                atomic.commit(target)
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
        enc_md5=enc_md5,
        seconds=time.monotonic() - started,
    )


def status_against_existing(target: Path, enc_md5: str, force: bool) -> FileState:
    """ENCRYPTED when the new file should be renamed into place, UNCHANGED to keep the old."""
    if not target.exists():
        return FileState.ENCRYPTED
    try:
        same = target.is_file() and md5_file(target) == enc_md5
    except OSError as exc:
        if force:
            return FileState.ENCRYPTED
        raise unreadable_existing(target, exc) from exc
    if same:
        return FileState.UNCHANGED
    if force and target.is_file():
        return FileState.ENCRYPTED
    raise OutputError(
        "exists and differs from the newly encrypted file; move it away or pass --force", target
    )


def manifest_lines(results: list[Encrypted], previous: Manifest | None = None) -> list[str]:
    """Model-card md5 lists: the `.enc` files ("after you clone"), then the decrypted files.

    Entries of a ``previous`` md5sums.txt (md5 or SHA-256) are kept for files this run did not
    write, so encrypting one file at a time builds up one manifest; a file encrypted again
    replaces its old entries.
    """
    enc = {(r.target.name, "md5"): r.enc_md5 for r in results}
    plain = {(r.source.name, "md5"): r.plain_md5 for r in results}
    written = {r.source.name for r in results}
    for entry in previous.entries if previous is not None else ():
        key = (entry.name, entry.algorithm)
        if not entry.encrypted:
            if entry.name not in written:
                plain.setdefault(key, entry.digest)
        elif decrypted_name(entry.base) not in written:
            enc.setdefault(key, entry.digest)
    return [
        f"{digest}  ./{name}"
        for group in (enc, plain)
        for (name, _), digest in sorted(group.items())
    ]


def write_manifest(
    out_dir: Path,
    results: list[Encrypted],
    previous: Manifest | None = None,
    *,
    fsync: bool = True,
) -> Path:
    """Write (or update ``previous``) `md5sums.txt` in ``out_dir`` atomically; return its path."""
    target = out_dir / MANIFEST_NAME
    atomic = AtomicFile(target, fsync=fsync)
    with atomic as out:
        text = "".join(line + "\n" for line in manifest_lines(results, previous))
        out.write(text.encode("utf-8", errors="surrogateescape"))
        atomic.commit()
    return target


@dataclass(frozen=True)
class Publish:
    """A checked encrypt run: the files with their sizes (smallest first), the open key, the
    md5sums.txt already in the output folder."""

    files: tuple[Path, ...]
    sizes: dict[Path, int]
    key: Key
    out_dir: Path
    previous: Manifest | None
    folder: bool
    publishing: Publishing = PUBLISHING["belle"]


@contextmanager
def prepare_publish(
    source: Path,
    key_file: Path,
    out_dir: Path,
    notices: Notices,
    publishing: Publishing = PUBLISHING["belle"],
) -> Iterator[Publish]:
    """Check everything before encrypt writes anything, and open the key: the files, an old
    md5sums.txt (its ignored lines are warnings), the key (long enough for the layout's
    keystream), the output folder (made; stale temporary files removed) and its free space.
    Raises a :class:`BelleError`."""
    files = sources(source, out_dir)
    previous = previous_manifest(out_dir)
    for ignored in previous.ignored if previous is not None else ():
        notices.warning(ignored.message)
    with Key(key_file) as key:
        with publishing.keystream(key):
            pass
        prepare_output_dir(out_dir)
        remove_stale_temps(out_dir)
        sizes = {path: path.stat().st_size for path in files}
        check_free_space(out_dir, sum(size + HEADER_SIZE for size in sizes.values()))
        yield Publish(tuple(files), sizes, key, out_dir, previous, source.is_dir(), publishing)


@dataclass
class PublishTally(Tally):
    """A :class:`Tally` with the manifest written (None when there was nothing to list)."""

    manifest: Path | None = None
    listed: int = 0


def publish_each(
    files: tuple[Path, ...],
    sizes: dict[Path, int],
    one: Callable[[Path, Callable[[int], None] | None], Encrypted],
    tally: Tally,
    file_progress: FileProgress | None = None,
    on_outcome: Callable[[Outcome[Encrypted]], None] | None = None,
) -> list[Encrypted]:
    """Run ``one`` (path, progress callback) on every file in turn: a failure is an outcome
    and the others go on. Returns the files written, for the manifest."""
    results: list[Encrypted] = []
    for path in files:
        context = (
            file_progress(path.name, sizes[path]) if file_progress is not None else nullcontext()
        )
        with context as progress:
            try:
                result = one(path, progress)
            except BelleError as exc:
                outcome: Outcome[Encrypted] = Outcome(path, None, exc)
            else:
                results.append(result)
                outcome = Outcome(path, result, None)
        tally.add(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    return results


def encrypt_all(
    publish: Publish,
    *,
    force: bool = False,
    fsync: bool = True,
    file_progress: FileProgress | None = None,
    on_outcome: Callable[[Outcome[Encrypted]], None] | None = None,
    cancel: CancelToken | None = None,
) -> PublishTally:
    """Encrypt every file of ``publish`` in turn (a failure is an outcome, the others go on),
    then write or update md5sums.txt with the files encrypted."""
    tally = PublishTally()

    def one(path: Path, progress: Callable[[int], None] | None) -> Encrypted:
        return encrypt_file(
            path,
            publish.key,
            publish.out_dir,
            force=force,
            fsync=fsync,
            on_progress=progress,
            cancel=cancel,
            publishing=publish.publishing,
        )

    results = publish_each(publish.files, publish.sizes, one, tally, file_progress, on_outcome)
    if results or publish.previous is not None:
        tally.manifest = write_manifest(publish.out_dir, results, publish.previous, fsync=fsync)
        tally.listed = len(results)
    return tally
