"""What happened to a file, as enums: compared by identity, shown by ``.value``."""

from __future__ import annotations

from enum import Enum


class FileState(Enum):
    """How a file of a decrypt or encrypt run ended (failures are errors, not states)."""

    DECRYPTED = "decrypted"
    ALREADY_DECRYPTED = "already decrypted"
    """The output was there already with the right bytes; left as it is."""
    ENCRYPTED = "encrypted"
    UNCHANGED = "unchanged"
    """encrypt made the same `.enc` file that was there already; left as it is."""


class Verified(Enum):
    """What a decrypted file was checked against."""

    SHA256 = "SHA-256 verified"
    SHA256_NOT_IN_MANIFEST = "SHA-256 verified, not in manifest"
    SHA256_AND_MD5 = "SHA-256 and md5 verified"
    SHA256_AS_LISTED = "SHA-256 verified, as listed in the manifest"
    """The manifest lists a SHA-256 (no md5) for the file."""
    SHA256_LISTED_IN_SEVERAL_FOLDERS = (
        "SHA-256 verified; the manifest lists this name in several folders"
    )
    MD5 = "md5 verified"
    """A layout that carries no checksum, checked against the manifest."""
    NOTHING = "not verified (no checksum in the file or the manifest)"
    """Only for library callers that skip the run's checks: a run refuses such a file."""


class CheckStatus(Enum):
    """One listed file's result in `verify`, as md5sum -c words it."""

    OK = "OK"
    FAILED = "FAILED"
    MISSING = "MISSING"
