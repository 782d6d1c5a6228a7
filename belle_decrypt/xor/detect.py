"""Which XOR layout a file is in, from its name (and, for one name, its size), with no flag.

The rules (docs/FORMAT.md section 6), for a name ending in `.enc`:

- `NAME.<64 lower-case hex>.enc` is the BELLE container, except that the placeholder hex of
  TechGPT (the SHA-256 of nothing) means headerless unless the file is exactly the 32-byte
  container of an empty file;
- a last part of 32 or more hex digits that is not 64 lower-case ones is a damaged or renamed
  file: refused, never taken for the next case;
- any other `NAME.enc` is OpenBuddy's 16 MiB seed.

A run decrypts one release: :func:`settle` refuses a folder whose files are in different
layouts, and gives an OpenBuddy folder's plain model files to the run to copy.
``--format`` replaces detection by one layout (:func:`layouts_for`).
"""

from __future__ import annotations

import os
import stat
from contextlib import AbstractContextManager
from pathlib import Path

from belle_decrypt.ground.errors import InputError
from belle_decrypt.layouts.container import BELLE, HEADER_SIZE, SUFFIX, KeyedOnLlama7B
from belle_decrypt.layouts.headerless import EMPTY_SHA256, TECHGPT, is_hex_run
from belle_decrypt.layouts.protocol import Layout, Plan, Source
from belle_decrypt.layouts.seed import OPENBUDDY, PLAIN_COPY, is_copy
from belle_decrypt.streams.keystream import Key, Keystream

LAYOUTS: dict[str, Layout] = {"belle": BELLE, "techgpt": TECHGPT, "openbuddy": OPENBUDDY}
"""The layouts ``--format`` can name."""
TITLES = {"belle": "BELLE", "techgpt": "TechGPT", "openbuddy": "OpenBuddy"}


def _is_empty_container(path: Path) -> bool:
    """True when ``path`` is exactly the 32-byte BELLE container of an empty file."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode) or info.st_size != HEADER_SIZE:  # a FIFO: no read
            return False
        with open(path, "rb") as handle:
            return handle.read(HEADER_SIZE + 1) == bytes.fromhex(EMPTY_SHA256)
    except OSError:
        return False  # the layout's own checks say what is wrong


def _hex_part(filename: str) -> str | None:
    """The last dot-separated part before `.enc` when it looks like a checksum."""
    last = filename.removesuffix(SUFFIX).rsplit(".", 1)[-1]
    return last if is_hex_run(last) else None


def detect(path: Path) -> Layout:
    """The layout of the `.enc` file at ``path``, by the rules of the module docstring."""
    hex_part = _hex_part(path.name)
    if hex_part is None:
        return OPENBUDDY
    if len(hex_part) != 64 or hex_part != hex_part.lower():
        raise InputError(
            f"its name ends in a {len(hex_part)}-digit hex run where NAME.<sha256>.enc has 64 "
            "lower-case digits: the file is damaged or renamed; download it again (or give it "
            "its published name)",
            path,
        )
    if hex_part == EMPTY_SHA256 and not _is_empty_container(path):
        return TECHGPT
    return BELLE


class Detect(KeyedOnLlama7B):
    """Every XOR layout at once: each `.enc` file is opened by the layout :func:`detect` finds
    (a run asks the files' own layouts for their key, not this one)."""

    name = "detect"
    pattern = "*.enc"

    def open(self, path: Path) -> Source:
        """Open ``path`` in its own layout (the source says which)."""
        if not path.name.endswith(SUFFIX):
            return BELLE.open(path)  # says what an encrypted name looks like
        return detect(path).open(path)

    def keystream(self, source: Source, key: Key) -> AbstractContextManager[Keystream]:
        """The keystream of the source's own layout."""
        return source.layout.keystream(source, key)


DETECT = Detect()


def layouts_for(format_name: str | None) -> tuple[Layout, ...]:
    """The layouts of a run: detection, or the one ``--format`` names."""
    return (DETECT,) if format_name is None else (LAYOUTS[format_name],)


def run_layout(files: tuple[Source, ...]) -> Layout | None:
    """The layout of a settled run's encrypted files (copies ride along), None if none."""
    return next((source.layout for source in files if not is_copy(source)), None)


def _mixed(source: Path, files: tuple[Source, ...]) -> InputError | None:
    """A problem naming one file of each layout when ``files`` are not all in one."""
    first: dict[str, Source] = {}
    for found in files:
        first.setdefault(found.layout.name, found)
    if len(first) < 2:
        return None
    each = ", ".join(
        f"{found.path.name} is {TITLES.get(name, name)} ({found.layout.pattern})"
        for name, found in first.items()
    )
    return InputError(
        f"mixes layouts: {each}; put each release in a folder of its own (nothing was written)",
        source,
    )


def settle(source: Path, checked: Plan, out_dir: Path | None = None) -> Plan:
    """Refuse a folder mixing layouts; in an OpenBuddy folder, the plain model files the run
    will copy (not hub clutter) join the files.

    Decrypted in place (``out_dir`` the folder itself, as OpenBuddy's script works) the plain
    files are already where they belong, and `NAME` beside `NAME.enc` is that file's output.
    Into another folder, `NAME` beside `NAME.enc` is refused: it is what an interrupted
    in-place run leaves, and copying it would put a partial file in the way of the output."""
    problem = _mixed(source, checked.files)
    if problem is not None:
        return Plan(checked.files, checked.skipped, (*checked.problems, problem))
    if run_layout(checked.files) is not OPENBUDDY or not source.is_dir():
        return checked
    in_place = out_dir is not None and _same_folder(source, out_dir)
    outputs = {found.output_name: found.path.name for found in checked.files}
    files = list(checked.files)
    skipped: list[Path] = []
    problems = list(checked.problems)
    for path in checked.skipped:
        if not PLAIN_COPY.recognises(path.name) or (in_place and path.name not in outputs):
            skipped.append(path)
            continue
        if path.name in outputs:
            if not in_place:
                problems.append(
                    InputError(
                        f"is beside {outputs[path.name]}, which decrypts to it: the unfinished "
                        "output of a decryption in this folder? remove it from this folder and "
                        f"run again ({outputs[path.name]} gives it)",
                        path,
                    )
                )
            continue
        try:
            files.append(PLAIN_COPY.open(path))
        except InputError as exc:
            problems.append(exc)
    files.sort(key=lambda found: (found.payload_size, found.path.name))
    return Plan(tuple(files), tuple(skipped), tuple(problems))


def _same_folder(a: Path, b: Path) -> bool:
    """Whether two paths name the same existing folder."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def decrypted_name(enc_filename: str) -> str:
    """What an encrypted file of any layout decrypts to (for manifests written by encrypt)."""
    hex_part = _hex_part(enc_filename)
    name = enc_filename.removesuffix(SUFFIX)
    return name[: -len(hex_part) - 1] if hex_part is not None else name


def default_layouts() -> tuple[Layout, ...]:
    """The layouts a run knows without options: every XOR layout, told apart by name and
    size (:data:`DETECT`)."""
    return (DETECT,)
