"""The seam between file layouts and the decrypt path: what a layout says about its files.

A *layout* is one way publishers lay out an encrypted release (docs/FORMAT.md has each one).
The decrypt path (plan, batch, decrypt, engine) knows layouts only through :class:`Layout` and
the :class:`Source` records it opens; the engine only pulls bytes from a
:class:`~belle_decrypt.streams.keystream.Keystream`. A layout answers four questions:

- which file names are its own, and what each decrypts to (:meth:`Layout.recognises`,
  :attr:`Source.output_name`);
- whether a header is read and what it says (:meth:`Layout.open` checks it before anything is
  written; :attr:`Source.payload_offset` is where the payload starts);
- which keystream applies, by payload offset (:meth:`Layout.keystream`);
- what verification the file carries: an expected SHA-256 (:attr:`Source.sha256`), or None, in
  which case the run requires the model card's md5 for it (``--manifest``, or ``--no-verify``);
- which key it needs (:attr:`Layout.expected_key`) and what to do when the key given is not
  that one (:meth:`Layout.key_warning`: warn, or refuse where nothing would catch it).

The BELLE container (:class:`belle_decrypt.layouts.container.BelleContainer`) is the first
one; the headerless BELLE files of TechGPT and OpenBuddy's 16 MiB seed follow
(:mod:`belle_decrypt.layouts.headerless`, :mod:`belle_decrypt.layouts.seed`), and
:mod:`belle_decrypt.xor.detect` (a layer above the layouts; this module imports none of them)
tells them apart by name and size when no ``--format`` is given.

Adding a layout
---------------
1. Write a class with the attributes and methods of :class:`Layout` (options, such as a base
   folder or which key file to use, are arguments of its constructor) and a frozen dataclass
   for its files with the properties of :class:`Source`. ``open`` raises
   :class:`~belle_decrypt.ground.errors.InputError` with one line saying what is wrong and what
   to do.
2. Give it a keystream: any object with ``fill(out, offset)``
   (:class:`~belle_decrypt.streams.keystream.Keystream`), which writes the keystream for payload
   bytes ``offset .. offset+len(out)`` into ``out`` (a 16 MiB seed repeated: copy from the seed
   at ``offset % seed``; a same-named base file: pread at ``offset`` and zero the rest past
   its end; never a mapping of a file that may shrink). ``keystream(source, key)`` returns a
   context manager, so a per-file keystream can open and close its own file. A layout whose key
   is a folder (the per-file layout) also has ``own_keystream(source)`` (:class:`FolderKeyed`):
   a run of it opens no key file. A source whose payload needs decoding (gzip) also has
   ``open_payload`` (:class:`OwnPayload`).
3. Say which key it needs (``expected_key``, a :class:`~belle_decrypt.checks.keyid.KnownKey`: the
   run fingerprints the key against it) and what a different key means (``key_warning``:
   usually :func:`~belle_decrypt.checks.keyid.unexpected_key_warning`; refuse where no checksum
   would catch it).
4. Put an instance in the list passed to :func:`plan` (and to ``batch.prepare_run``), before the
   layouts whose names it must win over; the command line builds that list from its options
   (:func:`belle_decrypt.xor.detect.layouts_for`; detection in :mod:`belle_decrypt.xor.detect`
   when a name is enough to tell). A run takes one layout per folder (``detect.settle``).
5. Describe it in docs/FORMAT.md and test it against an independent reference in tests/.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from belle_decrypt.checks.keyid import KeyReport, KnownKey
from belle_decrypt.ground.errors import InputError
from belle_decrypt.streams.keystream import Key, Keystream
from belle_decrypt.streams.output import TEMP_PREFIX


class Source(Protocol):
    """One checked input file of some layout."""

    @property
    def path(self) -> Path: ...

    @property
    def layout(self) -> Layout: ...

    @property
    def output_name(self) -> str:
        """The name of the decrypted file (in the output folder)."""

    @property
    def payload_offset(self) -> int:
        """Bytes of header before the payload (0: no header)."""

    @property
    def payload_size(self) -> int:
        """Bytes of payload: the decrypted file's size."""

    @property
    def sha256(self) -> str | None:
        """The decrypted file's SHA-256 (hex) that the file carries, or None if none."""


class Layout(Protocol):
    """One way of laying out encrypted files (see the module docstring)."""

    @property
    def name(self) -> str:
        """A short identifier ("belle")."""

    @property
    def pattern(self) -> str:
        """How its file names look, for messages ("NAME.<sha256>.enc")."""

    def recognises(self, filename: str) -> bool:
        """Whether a file of this name in a folder is this layout's to open (or to refuse
        with a reason); other files are skipped."""

    def open(self, path: Path) -> Source:
        """Check the file (name, readability, size, header) before anything is written."""

    def keystream(self, source: Source, key: Key) -> AbstractContextManager[Keystream]:
        """The keystream for ``source``'s payload, from the run's key file."""

    @property
    def expected_key(self) -> KnownKey:
        """The key file this layout is keyed on (what the fingerprint is compared with)."""

    def key_warning(self, report: KeyReport, unverified: bool) -> str | None:
        """A warning when ``report`` (the key's fingerprint against :attr:`expected_key`) says
        it is not that key, or None; raise InputError to refuse it. ``unverified``: some file
        of the run has no checksum to catch a wrong key (``--no-verify``)."""


@runtime_checkable
class FolderKeyed(Protocol):
    """A layout whose key is a folder given to its constructor (the per-file layout): a run of
    it opens no key file and asks it for each file's keystream here."""

    def own_keystream(self, source: Source) -> AbstractContextManager[Keystream]:
        """The keystream for ``source``'s payload."""


@runtime_checkable
class OwnPayload(Protocol):
    """A source whose payload is not simply its file's bytes from ``payload_offset`` (a gzip
    stream, say): it opens a binary stream of the payload itself, positioned at its start."""

    def open_payload(self) -> BinaryIO:
        """The payload's bytes, from the first."""


def input_paths(source: Source) -> tuple[Path, ...]:
    """The files a source reads: its own, and any a layout names in an ``inputs`` attribute
    (the per-file layout's base file); no output may replace one of them."""
    extra: tuple[Path, ...] = tuple(getattr(source, "inputs", ()))
    return (source.path, *extra)


def skip_reason(layouts: Sequence[Layout]) -> str:
    """Why files no layout recognises are skipped, in words for the user (a layout may say
    with a ``skip_reason`` attribute)."""
    reasons = [str(getattr(layout, "skip_reason", "")) for layout in layouts]
    return next((reason for reason in reasons if reason), "not a .enc file")


@dataclass(frozen=True)
class Plan:
    """What a source path holds: checked files (smallest first), skipped files, problems."""

    files: tuple[Source, ...]
    skipped: tuple[Path, ...]
    problems: tuple[InputError, ...]

    def by_layout(self) -> dict[str, tuple[Source, ...]]:
        """The files grouped by their layout's name."""
        groups: dict[str, list[Source]] = {}
        for source in self.files:
            groups.setdefault(source.layout.name, []).append(source)
        return {name: tuple(files) for name, files in groups.items()}


def _layout_for(filename: str, layouts: Sequence[Layout]) -> Layout | None:
    return next((layout for layout in layouts if layout.recognises(filename)), None)


def plan(source: Path, layouts: Sequence[Layout]) -> Plan:
    """Check one file, or every file directly in a folder that a layout recognises, before
    anything is written. A single file is opened by the first layout that recognises its name
    (or the first layout, which then says what is wrong with the name)."""
    layouts = tuple(layouts)
    if not source.exists():
        raise InputError(
            "no such file or folder; pass a downloaded .enc file or its folder", source
        )
    if not source.is_dir():
        opener = _layout_for(source.name, layouts) or layouts[0]
        return Plan(files=(opener.open(source),), skipped=(), problems=())
    files: list[Source] = []
    skipped: list[Path] = []
    problems: list[InputError] = []
    try:
        entries = sorted(source.iterdir())
    except OSError as exc:
        raise InputError(
            f"cannot list the folder: {exc.strerror or exc}; check its permissions", source
        ) from exc
    for path in entries:
        if path.is_dir() or path.name.startswith(TEMP_PREFIX):
            continue
        layout = _layout_for(path.name, layouts)
        if layout is None:
            skipped.append(path)
            continue
        try:
            files.append(layout.open(path))
        except InputError as exc:
            problems.append(exc)
    if not files and not problems:
        patterns = " or ".join(layout.pattern for layout in layouts)
        raise InputError(f"holds no {patterns} files; pass the folder of .enc files", source)
    first_by_name: dict[str, Source] = {}
    for found in files:
        other = first_by_name.setdefault(found.output_name, found)
        if other is not found:
            problems.append(
                InputError(
                    f"decrypts to {found.output_name!r} like {other.path.name}; keep only one "
                    "of them in the folder",
                    found.path,
                )
            )
    files.sort(key=lambda found: (found.payload_offset + found.payload_size, found.path.name))
    return Plan(files=tuple(files), skipped=tuple(skipped), problems=tuple(problems))
