"""Checksum manifests as users really have them: `md5sum`, `sha256sum` or `rhash` output, or
model-card text pasted as is.

A line is an entry when its first token is a digest (32 hex: md5, 64 hex: SHA-256), then
md5sum's separator, then the name: all the rest of the line, whatever it holds (`<md5>  name`,
`<sha256> *name`, md5sum's backslash-escaped form, or the tag form `MD5 (name) = <md5>` /
`SHA256 (name) = <sha256>`; a name may hold spaces only in md5sum's own layouts). Stray
characters around the entry (quote markers, list bullets, backticks, table pipes, a Windows line
end) are dropped. Lines without a digest (the `md5sum ./*` command line, code fences, prose,
blank lines) are skipped; a line that holds a digest but is not an entry is kept in
``Manifest.ignored`` to be reported.

Names are paths relative to the folder checked, as `md5sum -c` reads them (`7B/config.json` and
`13B/config.json` are two files; `./` is dropped). A card made with `md5sum dir/*` lists names
with a folder the checked folder does not have: such a name still matches by its last parts
(its base name) where no other listed name ends the same way. Manifests are read line by line,
as bytes; names that are not UTF-8 (GBK names from Chinese Windows) are kept as the file system
gives them to Python (surrogate escapes), so they match the files they name.
"""

from __future__ import annotations

import codecs
import gc
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

from belle_decrypt.ground.errors import ManifestClash, ManifestError

SUFFIX = ".enc"
"""The suffix of a downloaded encrypted file, in every XOR layout."""

# The digest algorithms a manifest may use, by the length of their hex digest.
ALGORITHM_BY_LENGTH = {32: "md5", 64: "sha256"}
# A manifest naming standard input (click's convention).
STDIN = "-"

# A digest-like token: a run of 32 or more hex digits standing alone.
_HEXRUN_RE = re.compile(r"(?<![0-9A-Za-z])[0-9A-Fa-f]{32,}(?![0-9A-Za-z])")
# An entry: junk without letters (`> `, `- `, `1. `, `| `, backticks, md5sum's `\\` escape
# marker), the digest as the first token, md5sum's separator, then the name: all the rest.
_ENTRY_RE = re.compile(
    r"^(?P<junk>[^A-Za-z0-9]*|[^A-Za-z]*?[^0-9A-Za-z])"
    r"(?P<digest>[0-9A-Fa-f]{64}|[0-9A-Fa-f]{32})"
    r"(?P<sep>[ \t|`*]+)(?P<name>.*)$"
)
# The tag (BSD) form of `md5sum --tag`, `sha256sum --tag` and `rhash --bsd`:
# `MD5 (name) = digest`, `SHA256 (name) = digest`; the name may hold parentheses.
_TAG_RE = re.compile(
    r"^[^A-Za-z]*(?P<tag>MD5|SHA-?256) \((?P<name>.+)\) = "
    r"(?P<digest>[0-9A-Fa-f]{64}|[0-9A-Fa-f]{32})[ \t|`'\"\r]*$"
)
_TAG_ALGORITHMS = {"MD5": "md5", "SHA256": "sha256", "SHA-256": "sha256"}
# After the name: spaces, tabs, table pipes, backticks, quotes, the `\r` of a Windows line end.
_TRAILING_CHARS = " \t|`'\"\r"
_SPACE_RE = re.compile(r"\s")
_LINE_BREAK_RE = re.compile(r"[\t\r\n]")
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def _unescape(name: str) -> str:
    """Undo md5sum's escaping of a name (a line starting with a backslash)."""
    out = []
    chars = iter(name)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            out.append({"n": "\n", "r": "\r", "\\": "\\"}.get(nxt, "\\" + nxt))
        else:
            out.append(ch)
    return "".join(out)


def _clean_name(raw: str, spaces_ok: bool, escaped: bool) -> str | None:
    """The relative path in ``raw`` (all the text after the separator), or None if it is none.

    A name with spaces in it counts only where the layout delimits it (``spaces_ok``):
    md5sum's two spaces or ` *` before the name, or the parentheses of the tag form.
    Elsewhere words after a digest are prose. ``escaped`` lines (md5sum's leading
    backslash) have their escapes undone; elsewhere a backslash is a Windows separator.
    Empty and `.` parts are dropped, so `./a.bin`, `a.bin` and `/home/me/a.bin`'s last
    part compare as paths.
    """
    name = raw.rstrip(_TRAILING_CHARS)
    if not name or (not spaces_ok and _SPACE_RE.search(name)):
        return None
    if escaped:
        name = _unescape(name)
    elif _LINE_BREAK_RE.search(name):
        return None
    else:
        name = name.replace("\\", "/")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if not parts or parts[-1] in ("..", "*"):
        return None
    return "/".join(parts)


def has_digest(text: str) -> bool:
    """True when ``text`` holds a digest-like token (a run of 32 or more hex digits)."""
    return _HEXRUN_RE.search(text) is not None


def ends_with(name: str, suffix: str) -> bool:
    """True when the path ``name`` ends with the whole parts of ``suffix``."""
    return name == suffix or name.endswith("/" + suffix)


class ManifestEntry(NamedTuple):
    """One file's expected digest, and where the manifest said so.

    ``name`` is the path relative to the folder checked (`/`-separated, no `./`);
    ``algorithm`` is `md5` or `sha256`; ``digest`` is lower-case hex. A named tuple: a
    manifest may list millions of files, and tuples are the cheapest to build.
    """

    name: str
    algorithm: str
    digest: str
    source: str
    line: int

    @classmethod
    def from_line(cls, text: str, source: str, line: int) -> ManifestEntry | None:
        """The entry on one line of a manifest, or None when the line is not an entry."""
        tagged = _TAG_RE.match(text)
        if tagged is not None:
            algorithm = _TAG_ALGORITHMS[tagged.group("tag")]
            digest = tagged.group("digest").lower()
            name = _clean_name(tagged.group("name"), spaces_ok=True, escaped=False)
            if name is None or ALGORITHM_BY_LENGTH[len(digest)] != algorithm:
                return None
            return cls(name, algorithm, digest, source, line)
        match = _ENTRY_RE.match(text)
        if match is None:
            return None
        sep = match.group("sep")
        spaces_ok = sep in ("  ", " *", "\t")
        name = _clean_name(match.group("name"), spaces_ok, "\\" in match.group("junk"))
        if name is None:
            return None
        digest = match.group("digest").lower()
        return cls(name, ALGORITHM_BY_LENGTH[len(digest)], digest, source, line)

    @property
    def base(self) -> str:
        """The file's own name, without its folders."""
        return self.name.rsplit("/", 1)[-1]

    @property
    def encrypted(self) -> bool:
        """True for a downloaded `.enc` file (of any layout), False for a decrypted file."""
        return self.base.endswith(SUFFIX)

    @property
    def where(self) -> str:
        """`file:line`, for messages."""
        return f"{self.source}:{self.line}"


@dataclass(frozen=True)
class IgnoredLine:
    """A line that holds a digest-like token but is not an entry: reported, never dropped."""

    source: str
    line: int
    text: str

    @property
    def message(self) -> str:
        """One line for stderr."""
        return (
            f"{self.source}:{self.line}: holds a digest but is not a checksum entry "
            f"(`<md5 or sha256>  NAME`), ignored: {self.text.strip()}"
        )


class _Collector:
    """Entries gathered one at a time, one per name and algorithm; contradictions noted."""

    def __init__(self) -> None:
        self.by_name: dict[str, tuple[ManifestEntry, ...]] = {}
        self.ignored: list[IgnoredLine] = []
        self.clashes: dict[tuple[str, str], list[ManifestEntry]] = {}

    def add(self, entry: ManifestEntry) -> None:
        listed = self.by_name.get(entry.name, ())
        same = next((e for e in listed if e.algorithm == entry.algorithm), None)
        if same is None:
            self.by_name[entry.name] = (*listed, entry)
        elif same.digest != entry.digest:
            self.clashes.setdefault((entry.name, entry.algorithm), [same]).append(entry)

    def manifest(self) -> Manifest:
        """The manifest; one ManifestError naming every contradicting line."""
        if self.clashes:
            conflicts = [
                f"{name} has different {algorithm} sums at "
                + ", ".join(f"{entry.where} ({entry.digest})" for entry in listed)
                for (name, algorithm), listed in self.clashes.items()
            ]
            raise ManifestClash(
                "; ".join(conflicts) + "; keep the entry that matches your release",
                next(iter(self.clashes))[0],
            )
        return Manifest(self.by_name, self.ignored)


@contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """Pause the cycle collector while millions of entries (which form no cycles) are built:
    it would rescan them all again and again, tripling the time of a large manifest."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Manifest:
    """The entries of one or more manifests, one per file name and algorithm, in the order
    first listed."""

    def __init__(
        self,
        by_name: dict[str, tuple[ManifestEntry, ...]] | None = None,
        ignored: Iterable[IgnoredLine] = (),
    ) -> None:
        self._by_name = by_name if by_name is not None else {}
        self.ignored = tuple(ignored)
        self._by_base: dict[str, tuple[str, ...]] | None = None

    @classmethod
    def from_entries(
        cls, entries: Iterable[ManifestEntry], ignored: Iterable[IgnoredLine] = ()
    ) -> Manifest:
        """Keep one entry per name and algorithm; raise one ManifestError naming every
        contradicting line."""
        collector = _Collector()
        for entry in entries:
            collector.add(entry)
        collector.ignored.extend(ignored)
        return collector.manifest()

    @classmethod
    def parse_lines(cls, lines: Iterable[str], source: str = "<manifest>") -> Manifest:
        """Every entry in ``lines``; other lines holding a digest are kept in ``ignored``."""
        collector = _Collector()
        for number, line in enumerate(lines, start=1):
            entry = ManifestEntry.from_line(line, source, number)
            if entry is not None:
                collector.add(entry)
            elif has_digest(line):
                collector.ignored.append(IgnoredLine(source, number, line))
        return collector.manifest()

    @classmethod
    def parse(cls, text: str, source: str = "<manifest>") -> Manifest:
        """Every entry in ``text`` (see ``parse_lines``)."""
        return cls.parse_lines(text.split("\n"), source)

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """Parse the manifest file at ``path`` (`-`: standard input) line by line; refuse one
        that lists no entry at all."""
        source = "standard input" if str(path) == STDIN else str(path)
        try:
            with no_cyclic_gc():
                if str(path) == STDIN:
                    if sys.stdin is None:  # started with standard input closed
                        raise ManifestError(
                            "is closed; pipe the manifest in or name its file", source
                        )
                    manifest = cls.parse_lines(read_lines(sys.stdin.buffer), source)
                else:
                    with open(path, "rb") as handle:
                        manifest = cls.parse_lines(read_lines(handle), source)
        except OSError as exc:
            raise ManifestError(f"cannot read the manifest: {exc.strerror or exc}", source) from exc
        if not manifest.names:
            raise ManifestError(
                "lists no checksum entries (expected lines like `<md5 or sha256 hex>  FILE`)",
                source,
            )
        return manifest

    @classmethod
    def read_all(cls, paths: Iterable[Path]) -> Manifest:
        """Read and merge several manifests (a repeated --manifest option)."""
        merged = cls()
        for path in paths:
            merged = merged.merge(cls.read(path))
        return merged

    def merge(self, other: Manifest) -> Manifest:
        """Both manifests' entries; a name with two different digests of one algorithm is an
        error."""
        if not self._by_name:
            return Manifest(other._by_name, (*self.ignored, *other.ignored))
        return Manifest.from_entries(
            (*self.entries, *other.entries), (*self.ignored, *other.ignored)
        )

    @property
    def entries(self) -> tuple[ManifestEntry, ...]:
        """Every entry, in the order first listed."""
        return tuple(entry for listed in self._by_name.values() for entry in listed)

    @property
    def names(self) -> tuple[str, ...]:
        """The listed names, in the order first listed."""
        return tuple(self._by_name)

    def entries_for(self, name: str) -> tuple[ManifestEntry, ...]:
        """The entries listed under exactly ``name``."""
        return self._by_name.get(name, ())

    def names_ending_with(self, suffix: str) -> tuple[str, ...]:
        """The listed names whose last parts are ``suffix``."""
        if self._by_base is None:  # built on first use: most lookups are exact
            by_base: dict[str, list[str]] = {}
            with no_cyclic_gc():
                for name in self._by_name:
                    by_base.setdefault(name.rsplit("/", 1)[-1], []).append(name)
            self._by_base = {base: tuple(names) for base, names in by_base.items()}
        base = suffix.rsplit("/", 1)[-1]
        return tuple(name for name in self._by_base.get(base, ()) if ends_with(name, suffix))

    def lookup(self, relative: str) -> tuple[ManifestEntry, ...]:
        """The entries for the file at path ``relative`` in the folder checked: listed under
        that path, or under a longer one ending with it when no other listed name does."""
        exact = self._by_name.get(relative)
        if exact is not None:
            return exact
        names = self.names_ending_with(relative)
        return self._by_name[names[0]] if len(names) == 1 else ()


def read_lines(handle: BinaryIO) -> Iterator[str]:
    """The lines of a pasted file, one at a time: UTF-16 with a byte-order mark (Windows
    editors), else UTF-8 (a UTF-8 byte-order mark dropped; bytes that are not UTF-8 kept as
    surrogate escapes, as Python names such files)."""
    first = handle.readline()
    if first.startswith(_UTF16_BOMS):
        decoder = codecs.getincrementaldecoder("utf-16")(errors="replace")
        pending = decoder.decode(first)
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            pending += decoder.decode(chunk)
            *lines, pending = pending.split("\n")
            yield from lines
        yield pending + decoder.decode(b"", final=True)
        return
    if first.startswith(codecs.BOM_UTF8):
        first = first[len(codecs.BOM_UTF8) :]
    yield _decode_line(first)
    for raw in handle:
        yield _decode_line(raw)


def _decode_line(raw: bytes) -> str:
    return raw.rstrip(b"\n").decode("utf-8", errors="surrogateescape")
