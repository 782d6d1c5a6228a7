"""md5 manifests as users really have them: `md5sum` output, or model-card text pasted as is.

A line is an entry when its first token is a 32-hex digest, then md5sum's separator, then
the name: all the rest of the line, whatever it holds (`<md5>  name`, `<md5> *name`, md5sum's
backslash-escaped form, or `MD5 (name) = <md5>` from `md5sum --tag`; a name may hold spaces
only in md5sum's own layouts). Stray characters around the entry (quote markers, list
bullets, backticks, table pipes, `./`, a Windows line end) are dropped. Lines without a
digest (the `md5sum ./*` command line, code fences, prose, blank lines) are skipped; a line
that holds a digest but is not an entry is kept in ``Manifest.ignored`` to be reported.
Names are kept as base names, since model cards list files without their folders.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from belle_decrypt.container import SUFFIX
from belle_decrypt.errors import ManifestError

# A digest-like token: a run of 32 or more hex digits standing alone.
_HEXRUN_RE = re.compile(r"(?<![0-9A-Za-z])[0-9A-Fa-f]{32,}(?![0-9A-Za-z])")
# An entry: junk without letters (`> `, `- `, `1. `, `| `, backticks, md5sum's `\\` escape
# marker), the digest as the first token, md5sum's separator, then the name: all the rest.
_ENTRY_RE = re.compile(
    r"^(?P<junk>[^A-Za-z0-9]*|[^A-Za-z]*?[^0-9A-Za-z])"
    r"(?P<md5>[0-9A-Fa-f]{32})"
    r"(?P<sep>[ \t|`*]+)(?P<name>.*)$"
)
# `md5sum --tag` (BSD) form: `MD5 (name) = digest`; the name may hold parentheses.
_TAG_RE = re.compile(r"^[^A-Za-z]*MD5 \((?P<name>.+)\) = (?P<md5>[0-9A-Fa-f]{32})[ \t|`'\"\r]*$")
# After the name: spaces, tabs, table pipes, backticks, quotes, the `\r` of a Windows line end.
_TRAILING_CHARS = " \t|`'\"\r"


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
    """The base name in ``raw`` (all the text after the separator), or None if it is none.

    A name with spaces in it counts only where the layout delimits it (``spaces_ok``):
    md5sum's two spaces or ` *` before the name, or the parentheses of the tag form.
    Elsewhere words after a digest are prose. ``escaped`` lines (md5sum's leading
    backslash) have their escapes undone; elsewhere a backslash is a Windows separator.
    """
    name = raw.rstrip(_TRAILING_CHARS)
    if not name or (not spaces_ok and any(ch.isspace() for ch in name)):
        return None
    if escaped:
        name = _unescape(name)
    elif any(ch in "\t\r\n" for ch in name):
        return None
    else:
        name = name.replace("\\", "/")
    name = name.rsplit("/", 1)[-1]
    if name in ("", ".", "..", "*"):
        return None
    return name


def has_digest(text: str) -> bool:
    """True when ``text`` holds a digest-like token (a run of 32 or more hex digits)."""
    return _HEXRUN_RE.search(text) is not None


@dataclass(frozen=True)
class ManifestEntry:
    """One file's expected md5, and where the manifest said so."""

    name: str
    md5: str
    source: str
    line: int

    @classmethod
    def from_line(cls, text: str, source: str, line: int) -> ManifestEntry | None:
        """The entry on one line of a manifest, or None when the line is not an entry."""
        tagged = _TAG_RE.match(text)
        if tagged is not None:
            name = _clean_name(tagged.group("name"), spaces_ok=True, escaped=False)
            md5 = tagged.group("md5").lower()
            return None if name is None else cls(name=name, md5=md5, source=source, line=line)
        match = _ENTRY_RE.match(text)
        if match is None:
            return None
        sep = match.group("sep")
        spaces_ok = sep in ("  ", " *", "\t")
        name = _clean_name(match.group("name"), spaces_ok, "\\" in match.group("junk"))
        if name is None:
            return None
        return cls(name=name, md5=match.group("md5").lower(), source=source, line=line)

    @property
    def encrypted(self) -> bool:
        """True for a downloaded `.enc` file (of any layout), False for a decrypted file."""
        return self.name.endswith(SUFFIX)

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
            f"{self.source}:{self.line}: holds a digest but is not an md5sum entry "
            f"(`<md5>  NAME`), ignored: {self.text.strip()}"
        )


@dataclass(frozen=True)
class Manifest:
    """The entries of one or more manifests, one per file name, in the order first listed."""

    entries: tuple[ManifestEntry, ...]
    ignored: tuple[IgnoredLine, ...] = ()
    _by_name: dict[str, ManifestEntry] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {entry.name: entry for entry in self.entries})

    @classmethod
    def from_entries(
        cls, entries: Iterable[ManifestEntry], ignored: Iterable[IgnoredLine] = ()
    ) -> Manifest:
        """Keep one entry per name; raise one ManifestError naming every contradicting line."""
        by_name: dict[str, list[ManifestEntry]] = {}
        for entry in entries:
            by_name.setdefault(entry.name, []).append(entry)
        conflicts = []
        for name, listed in by_name.items():
            if len({entry.md5 for entry in listed}) > 1:
                lines = ", ".join(f"{entry.where} ({entry.md5})" for entry in listed)
                conflicts.append(f"{name} has different md5 sums at {lines}")
        if conflicts:
            raise ManifestError("; ".join(conflicts) + "; keep the entry that matches your release")
        return cls(entries=tuple(listed[0] for listed in by_name.values()), ignored=tuple(ignored))

    @classmethod
    def parse(cls, text: str, source: str = "<manifest>") -> Manifest:
        """Every entry in ``text``; other lines holding a digest are kept in ``ignored``."""
        entries: list[ManifestEntry] = []
        ignored: list[IgnoredLine] = []
        for number, line in enumerate(text.splitlines(), start=1):
            entry = ManifestEntry.from_line(line, source, number)
            if entry is not None:
                entries.append(entry)
            elif has_digest(line):
                ignored.append(IgnoredLine(source, number, line))
        return cls.from_entries(entries, ignored)

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """Parse the manifest file at ``path``; refuse one that lists no md5 entry at all."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ManifestError(f"cannot read the manifest: {exc.strerror or exc}", path) from exc
        manifest = cls.parse(decode_text(data), str(path))
        if not manifest.entries:
            raise ManifestError(
                "lists no md5 entries (expected lines like `<32 hex md5>  FILE`)", path
            )
        return manifest

    @classmethod
    def read_all(cls, paths: Iterable[Path]) -> Manifest:
        """Read and merge several manifests (a repeated --manifest option)."""
        merged = cls(entries=())
        for path in paths:
            merged = merged.merge(cls.read(path))
        return merged

    def merge(self, other: Manifest) -> Manifest:
        """Both manifests' entries; a name with two different md5 sums is an error."""
        return Manifest.from_entries(
            (*self.entries, *other.entries), (*self.ignored, *other.ignored)
        )

    def get(self, name: str) -> ManifestEntry | None:
        """The entry for the file called ``name``, if listed."""
        return self._by_name.get(name)

    @property
    def encrypted(self) -> tuple[ManifestEntry, ...]:
        """Entries for downloaded `.enc` files."""
        return tuple(entry for entry in self.entries if entry.encrypted)

    @property
    def decrypted(self) -> tuple[ManifestEntry, ...]:
        """Entries for decrypted files."""
        return tuple(entry for entry in self.entries if not entry.encrypted)


def decode_text(data: bytes) -> str:
    """Text of a pasted file: UTF-16 with a byte-order mark (Windows editors), else UTF-8."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    return data.decode("utf-8-sig", errors="replace")
