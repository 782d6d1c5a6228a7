"""Why did a file fail its checksum: a broken download or the wrong key?

Only run on failure. When a manifest lists the `.enc` file, its md5 settles it: a mismatch
means the download is broken; a match means the key is wrong. Without an entry, the key's
fingerprint is the best evidence.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from belle_decrypt.checks.keyid import KeyReport, KnownKey, identify
from belle_decrypt.checks.manifest import Manifest
from belle_decrypt.ground.cancel import CancelToken
from belle_decrypt.ground.outcome import Diagnosis as Diagnosis
from belle_decrypt.layouts.protocol import Source
from belle_decrypt.streams.hashing import hash_file


class Diagnoser:
    """Explains checksum failures for one key and one (optional) manifest; several threads
    (``--jobs``) may ask at once."""

    def __init__(
        self,
        key_path: Path,
        manifest: Manifest | None = None,
        *,
        expected: KnownKey | None = None,
        known: Sequence[KnownKey] | None = None,
    ) -> None:
        self.key_path = key_path
        self.manifest = manifest
        self._expected = expected
        self._known = known
        self._report: KeyReport | None = None
        self._lock = threading.Lock()

    def key_report(self) -> KeyReport:
        """The key's fingerprint verdict with its checkpoint description (computed once: the
        first thread to ask computes it, the others wait for it)."""
        with self._lock:
            if self._report is None:
                self._report = identify(
                    self.key_path, inspect=True, expected=self._expected, known=self._known
                )
            return self._report

    def explain(self, enc: Source, cancel: CancelToken | None = None) -> Diagnosis:
        """Say whether ``enc``'s failure is its download or the key, and what to do."""
        key = self.key_report()
        key_says = f"{key.path} {key.verdict}"
        entries = self.manifest.lookup(enc.path.name) if self.manifest is not None else ()
        if entries:
            algorithms = tuple(dict.fromkeys(entry.algorithm for entry in entries))
            try:
                actual = hash_file(enc.path, algorithms, cancel=cancel)
            except OSError as exc:
                return Diagnosis(
                    False, f"cannot read it to check its checksum: {exc.strerror or exc}"
                )
            for entry in entries:
                if actual[entry.algorithm] != entry.digest:
                    return Diagnosis(
                        False,
                        f"broken download: its {entry.algorithm} {actual[entry.algorithm]} "
                        f"differs from {entry.digest} ({entry.where}); download "
                        f"{enc.path.name} again",
                    )
            entry = entries[0]
            intact = (
                f"the download is intact ({entry.algorithm} matches {entry.where}), so the key "
                "is wrong"
            )
            if key.is_expected:
                return Diagnosis(
                    True,
                    f"{intact}: {key_says}, but it must differ later on; check it with "
                    f"`belle-decrypt check-key {key.path} --full`",
                )
            return Diagnosis(True, f"{intact}: {key_says}")
        if key.is_expected:
            return Diagnosis(
                False,
                f"{key_says}, so the download is probably damaged; download {enc.path.name} "
                "again (pass the model card's md5 list with --manifest to tell for sure)",
            )
        return Diagnosis(True, f"the key is probably wrong: {key_says}")

    def damaged_key(self) -> str | None:
        """When every file of a run failed its checksum although the key passed the instant
        check: the key may be damaged past its first 16 MiB; what to run before downloading
        everything again. None when the key failed that check or was hashed whole, or when
        only its first 16 MiB are used (the 16 MiB seed: nothing past them can be at fault)."""
        key = self.key_report()
        seed_only = self._expected is not None and self._expected.head_only
        if not key.is_expected or key.md5 is not None or seed_only:
            return None
        return (
            f"every file failed its checksum, yet {key.path} passed the instant key check "
            "(size and first 16 MiB): it may be damaged past its first 16 MiB (a preallocated, "
            f"unfinished copy); run `belle-decrypt check-key {key.path} --full` before "
            "downloading anything again"
        )

    def stop_early(self, outcomes: Sequence[Diagnosis | None]) -> bool:
        """True when the first two files (None: did not fail their checksum) both failed
        because of the key, and the key is not LLaMA-7B."""
        return (
            len(outcomes) >= 2
            and all(d is not None and d.wrong_key for d in outcomes[:2])
            and not self.key_report().is_expected
        )
