"""Decrypting one checked input file (of any layout) into an output folder, verified."""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from belle_decrypt.ground.cancel import CancelToken, check
from belle_decrypt.ground.errors import (
    BelleError,
    ChecksumError,
    DigestMismatch,
    InputError,
    OutputError,
)
from belle_decrypt.ground.states import FileState
from belle_decrypt.layouts.protocol import FolderKeyed, OwnPayload, Source
from belle_decrypt.layouts.seed import PlainFile, is_copy
from belle_decrypt.streams import engine
from belle_decrypt.streams.engine import BUFFER_SIZE, xor_stream
from belle_decrypt.streams.hashing import hash_file
from belle_decrypt.streams.keystream import KEY_HINT, Key, Keystream
from belle_decrypt.streams.output import AtomicFile, unreadable_existing

WRONG_KEY_HINT = (
    "the key is probably not the original LLaMA-7B consolidated.00.pth (or the download is damaged)"
)


@dataclass(frozen=True)
class Result:
    """One file's outcome."""

    source: Path
    target: Path
    status: FileState
    size: int
    sha256: str | None
    """The decrypted file's SHA-256, when the layout carries one to check."""
    seconds: float
    md5: str | None = None
    """The decrypted file's md5, when a manifest asked for it."""


def bytes_to_write(files: Sequence[Source], out_dir: Path) -> int:
    """Decrypted bytes still to write: files whose output exists at the right size are done."""
    needed = 0
    for enc in files:
        try:
            done = (out_dir / enc.output_name).stat().st_size == enc.payload_size
        except OSError:
            done = False
        if not done:
            needed += enc.payload_size
    return needed


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _label(algorithm: str) -> str:
    return "SHA-256" if algorithm == "sha256" else algorithm


def _check_listed(
    enc: Source, found: Mapping[str, str], expected: Mapping[str, str], path: Path, done: str
) -> None:
    """Raise when a digest the manifest lists differs from the one computed."""
    for algorithm, digest in expected.items():
        if found[algorithm] == digest:
            continue
        if enc.sha256 is None:  # the manifest is the only check: a failure to diagnose
            raise DigestMismatch(
                found[algorithm], digest, WRONG_KEY_HINT, enc.path, _label(algorithm)
            )
        mismatch = f"{_label(algorithm)} {found[algorithm]} differs from the manifest's {digest}"
        if is_copy(enc):
            raise ChecksumError(
                f"{mismatch}; it is copied as it is, so this file is not the one the card lists; "
                f"{done}: download it again, or check that the manifest is for this release",
                path,
            )
        raise ChecksumError(
            f"{mismatch} although the SHA-256 in the name matches; {done}: check that the "
            "manifest is for this release",
            path,
        )


def _refuse_own_files(enc: Source, target: Path, key: Key | None, inputs: Collection[Path]) -> None:
    """Refuse to replace the key, this file's input or any other input of the same run."""
    owned = [(enc.path, "the encrypted file")]
    if key is not None:
        owned.append((key.path, "the key file"))
    owned += [(path, "an input of this run") for path in inputs if path != enc.path]
    for own, what in owned:
        if _same_file(target, own):
            raise OutputError(
                f"is {what} itself and would be replaced; choose another output folder", target
            )


def _existing_matches(
    enc: Source,
    target: Path,
    force: bool,
    key: Key | None,
    expected: Mapping[str, str] | None = None,
    cancel: CancelToken | None = None,
    inputs: Collection[Path] = (),
) -> dict[str, str] | None:
    """The digests of ``target`` (its sha256, and those the manifest lists) when it already
    holds this file's decrypted bytes, None when it must be (re)written; raise if a different
    file is in the way. A file whose layout carries no SHA-256 is recognised by the ``expected``
    digests alone (never without one). With ``force`` a file that differs, or that cannot be
    read, is to be replaced."""
    if not target.exists() and not target.is_symlink():
        return None
    if target.is_dir():
        raise OutputError("a folder is in the way of the output file; move it away", target)
    _refuse_own_files(enc, target, key, inputs)
    expected = expected or {}
    carried = ("sha256",) if enc.sha256 is not None else ()
    algorithms = tuple(dict.fromkeys((*carried, *expected)))  # only what is checked
    try:
        info = target.stat()
        whole = stat.S_ISREG(info.st_mode) and info.st_size == enc.payload_size
        if whole and not algorithms:  # nothing to check it by (--no-verify): decrypt and compare
            if _same_as_fresh(enc, key, target, cancel):
                return {}
            _refuse_unless(force, target)
            return None
        digests = hash_file(target, algorithms, chunk=BUFFER_SIZE, cancel=cancel) if whole else {}
    except FileNotFoundError:
        digests = {}  # a broken symbolic link: in the way, but nothing to read
    except OSError as exc:
        if force:
            return None
        raise unreadable_existing(target, exc) from exc
    if enc.sha256 is not None and digests.get("sha256") == enc.sha256:
        _check_listed(enc, digests, expected, target, "left as it is")
        return digests
    listed_match = all(digests.get(name) == digest for name, digest in expected.items())
    if enc.sha256 is None and expected and listed_match:
        return digests
    _refuse_unless(force, target)
    return None


def _refuse_unless(force: bool, target: Path) -> None:
    """Refuse the different file in the way of ``target``, unless told to replace it."""
    if force:
        return
    raise OutputError(
        "exists and differs from what this file decrypts to; move it away or pass --force "
        "to replace it",
        target,
    )


def _keystream(enc: Source, key: Key | None) -> AbstractContextManager[Keystream]:
    """The keystream of ``enc``: from the key file, or from its layout's own folder."""
    if isinstance(enc.layout, FolderKeyed):
        return enc.layout.own_keystream(enc)
    if key is None:
        raise InputError(f"needs a key file; {KEY_HINT}", enc.path)
    return enc.layout.keystream(enc, key)


def _open_payload(enc: Source) -> BinaryIO:
    """``enc``'s file opened at its payload (a gzip payload decompressed)."""
    if isinstance(enc, OwnPayload):
        return enc.open_payload()
    src = open(enc.path, "rb", buffering=0)  # noqa: SIM115 (the caller closes it)
    src.seek(enc.payload_offset)
    return src


class _Compare:
    """A stand-in hasher that compares the plaintext with an existing file, in order."""

    def __init__(self, existing: BinaryIO) -> None:
        self.existing = existing
        self.same = True

    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        if self.same:
            self.same = self.existing.read(len(data)) == data


def _same_as_fresh(enc: Source, key: Key | None, target: Path, cancel: CancelToken | None) -> bool:
    """Whether ``target`` holds what decrypting ``enc`` gives now: for a file with no checksum
    anywhere (``--no-verify``), a fresh decryption is the only thing to compare it with."""
    with (
        open(target, "rb") as existing,
        _open_payload(enc) as src,
        open(os.devnull, "wb") as sink,
        _keystream(enc, key) as keystream,
    ):
        compare = _Compare(existing)
        xor_stream(
            src,
            sink,
            keystream,
            enc.payload_size,
            hashers=(compare,),
            dst_label=str(target),
            cancel=cancel,
        )
    return compare.same


def decrypt_file(
    enc: Source,
    key: Key | None,
    out_dir: Path,
    *,
    force: bool = False,
    fsync: bool = True,
    on_progress: Callable[[int], None] | None = None,
    buffer_size: int = BUFFER_SIZE,
    expected: Mapping[str, str] | None = None,
    cancel: CancelToken | None = None,
    inputs: Collection[Path] = (),
) -> Result:
    """Decrypt ``enc`` with its layout's keystream from ``key`` into ``out_dir``; the final
    name appears only once the SHA-256 the file carries matches (and the digests a manifest
    lists, ``expected`` by algorithm, match: computed in the same pass). ``cancel`` stops the
    re-hash of an existing output or the XOR within a buffer. No file in ``inputs`` (the run's
    other inputs) is ever replaced."""
    started = time.monotonic()
    target = out_dir / enc.output_name
    expected = expected or {}
    existing = _existing_matches(enc, target, force, key, expected, cancel, inputs)
    if existing is not None:
        return Result(
            source=enc.path,
            target=target,
            status=FileState.ALREADY_DECRYPTED,
            size=enc.payload_size,
            sha256=existing.get("sha256"),
            seconds=time.monotonic() - started,
            md5=existing.get("md5"),
        )
    engine.prepare(enc.payload_size)
    started = time.monotonic()  # a numpy import is not this file's time
    status = FileState.DECRYPTED
    # A plain copy is hashed as it is copied, and checked unchanged after (read once).
    copy = enc if isinstance(enc, PlainFile) else None
    carried = None if copy is not None else enc.sha256
    # Only what is checked: a headerless file with an md5 entry costs one hash, not two.
    wants_sha256 = copy is not None or carried is not None or "sha256" in expected
    digest = hashlib.sha256() if wants_sha256 else None
    extra = {name: hashlib.new(name) for name in expected if name != "sha256"}
    hashers = tuple(hasher for hasher in (digest, *extra.values()) if hasher is not None)
    atomic = AtomicFile(target, fsync=fsync)
    try:
        src_handle = _open_payload(enc)
    except OSError as exc:
        raise OutputError(
            f"cannot read: {exc.strerror or exc}; nothing written (check the file's permissions)",
            enc.path,
        ) from exc
    try:
        with (
            src_handle as src,
            _keystream(enc, key) as keystream,
            atomic as out,
        ):
            xor_stream(
                src,
                out,
                keystream,
                enc.payload_size,
                hashers=hashers,
                on_progress=on_progress,
                buffer_size=buffer_size,
                dst_label=str(target),
                cancel=cancel,
            )
            actual = digest.hexdigest() if digest is not None else None
            if copy is not None:
                copy.check_unchanged()
            elif carried is not None and actual != carried:
                assert actual is not None
                raise DigestMismatch(actual, carried, WRONG_KEY_HINT, enc.path)
            found = {name: h.hexdigest() for name, h in extra.items()}
            if actual is not None:
                found["sha256"] = actual
            _check_listed(enc, found, expected, enc.path, "nothing written")
            check(cancel)  # a cancelled run puts nothing new under a final name
            try:
                atomic.commit(replace=force)
            except FileExistsError:
                # Something appeared under the final name meanwhile (another run, the user):
                # kept; this run succeeded only if it is exactly right.
                if _existing_matches(enc, target, False, key, expected, cancel, inputs) is None:
                    raise OutputError(
                        "changed while being written; run the same command again", target
                    ) from None
                status = FileState.ALREADY_DECRYPTED
    except BelleError:
        raise
    except OSError as exc:
        label = exc.filename if exc.filename is not None else target
        raise OutputError(f"{exc.strerror or exc}; nothing written", label) from exc
    return Result(
        source=enc.path,
        target=target,
        status=status,
        size=enc.payload_size,
        sha256=actual,
        seconds=time.monotonic() - started,
        md5=found.get("md5"),
    )
