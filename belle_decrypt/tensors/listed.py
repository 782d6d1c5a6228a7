"""``--manifest`` beside the run: the diff's files the model card lists, hashed in a thread
while the shards are computed, so that a damaged download fails the run before the finish."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from belle_decrypt.checks.manifest import Manifest, ManifestEntry
from belle_decrypt.ground.errors import ChecksumError, ManifestError
from belle_decrypt.streams.hashing import hash_file
from belle_decrypt.tensors.protocol import TensorSource

Listed = tuple[Path, tuple[ManifestEntry, ...]]
"""A diff file and the manifest's entries for it (md5, SHA-256 or both)."""


def listed_files(manifest: Manifest, diff: TensorSource) -> list[Listed]:
    """The diff's files the manifest lists; refuse a manifest that lists none of them."""
    listed = []
    for path in (*diff.files, *diff.others):
        entries = manifest.lookup(path.name)
        if entries:
            listed.append((path, entries))
    if not listed:
        raise ManifestError(
            f"the manifest lists none of the files in {diff.path}; pass the model "
            "card's md5 list of this diff"
        )
    return listed


def whose(entry: ManifestEntry) -> str:
    """Who gave an expected digest, for messages: a source's own checklist (Meta's
    ``checklist.chk``), Meta's published table (docs/FORMAT.md), or the model card."""
    if entry.source.startswith("docs/FORMAT.md"):
        return "Meta's published"
    if entry.source.endswith(".chk"):
        return f"{Path(entry.source).name}'s"
    return "the model card's"


class Hashed(Protocol):
    """Digests taken before the run (:class:`belle_decrypt.tensors.headstart.HeadStart`)."""

    def digests(
        self, path: Path, algorithms: Sequence[str], stopping: Callable[[], bool]
    ) -> dict[str, str] | None:
        """``path``'s digests in ``algorithms``, or None: hash it yourself."""


class ManifestHasher:
    """The listed diff files hashed (md5 and/or SHA-256, as listed), one after another in a
    thread beside the recovery; a file the ``head_start`` hashed already is not read again."""

    def __init__(self, entries: list[Listed], head_start: Hashed | None = None) -> None:
        self.entries = entries
        self.head_start = head_start
        self.stopping = threading.Event()
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._work, name="recover-md5", daemon=True)

    def start(self) -> None:
        """Begin hashing (nothing to do without entries)."""
        if self.entries:
            self.thread.start()

    def _work(self) -> None:
        def check_stop(count: int) -> None:
            if self.stopping.is_set():
                raise InterruptedError

        try:
            for path, entries in self.entries:
                algorithms = sorted({entry.algorithm for entry in entries})
                early = self.head_start
                actual = early.digests(path, algorithms, self.stopping.is_set) if early else None
                if self.stopping.is_set():
                    return
                if actual is None:
                    actual = hash_file(path, algorithms, on_progress=check_stop)
                for entry in entries:
                    if actual[entry.algorithm] != entry.digest:
                        self.failure = ChecksumError(
                            f"{entry.algorithm} {actual[entry.algorithm]} differs from "
                            f"{whose(entry)} {entry.digest} ({entry.where}): the download is "
                            "damaged; download it again; nothing written",
                            path,
                        )
                        return
        except InterruptedError:
            return
        except OSError as exc:
            self.failure = ChecksumError(f"cannot read: {exc.strerror or exc}", exc.filename)

    def finish(self) -> None:
        """Wait for the hashing to end and raise its failure, if any."""
        if self.thread.is_alive():
            self.thread.join()
        if self.failure is not None:
            raise self.failure

    def stop(self) -> None:
        """Stop hashing early (a failure or an interrupt elsewhere)."""
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join()
