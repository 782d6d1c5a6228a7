"""A head start for `recover` and `convert`: the checksums that need no torch, begun before it.

Both commands spend their first second or more importing torch. The files whose checksums the
run checks beside itself (:class:`~belle_decrypt.tensors.listed.ManifestHasher`) are known
without it: the diff files ``--manifest`` lists, and the ``consolidated.NN.pth`` files of
Meta's folder that its ``checklist.chk`` lists (with the published SHA-256 where the table of
docs/FORMAT.md section 8 may apply). So :func:`plan_recover` and :func:`plan_convert` list them
from the folders alone, and :class:`HeadStart` hashes them in a thread from the first moment,
after asking the kernel to read the start of each input's first weight file ahead. hashlib and
reads release the GIL, so the hashing goes on while the main thread imports torch and opens
the folders.

The run's hasher takes a digest from here only for the same file (device, inode, size and
modification time unchanged since it was hashed) and waits for one under way; a file the head
start did not cover, or covered with fewer algorithms, it hashes itself. So what is checked,
and every message, stays the run's own: a wrong guess here costs time, never a verdict.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from belle_decrypt.checks.keyid import is_meta_folder
from belle_decrypt.checks.manifest import Manifest
from belle_decrypt.ground.errors import BelleError, InputError
from belle_decrypt.streams.hashing import hash_file
from belle_decrypt.tensors.sources.metafiles import (
    CHECKLIST,
    PARAMS,
    PUBLISHED_SHA256,
    read_checklist,
    read_params,
    size_folder,
)

Key = tuple[int, int, int, int]
Planned = tuple[Path, tuple[str, ...]]
"""A file to hash and the algorithms (sorted)."""
# Larger reads than the run's hasher: fewer hand-overs of the GIL with the import beside it;
# shared by the threads, so that memory is the same for one file or many.
CHUNK = 32 * 1024 * 1024
META_FILE = re.compile(r"consolidated\.(\d+)\.pth")
# LLaMA-2's params.json says norm_eps 1e-05: the published LLaMA-1 SHA-256 cannot apply.
LLAMA2_NORM_EPS = 1e-05
# What is read ahead of each input's first weight file: its first tensors (LLaMA-7B's
# embedding is 250 MB); more would only compete with the hashing for the disk.
READ_AHEAD = 256 * 1024 * 1024
# Files hashed at once (where there are that many).
HASH_THREADS = 2
WEIGHTS = re.compile(r".*\.safetensors|pytorch_model.*\.bin|consolidated\.\d+\.pth")


def identity(path: Path) -> Key | None:
    """What tells a file's contents unchanged: device, inode, size, modification time."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _listing(folder: Path) -> list[Path]:
    """The regular files in ``folder`` (none when it cannot be read; an entry that cannot be
    looked at, a symbolic link loop, left out: the run names it)."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:
        return []
    return [Path(entry.path) for entry in entries if _is_file(entry)]


def _is_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _fail(message: str, path: Path | None = None) -> InputError:
    return InputError(message, path)


def plan_manifest(folder: Path, manifest: Manifest) -> list[Planned]:
    """``folder``'s files that ``manifest`` lists (its ``.bin`` weights left out beside
    safetensors, as the Hugging Face folder reads them)."""
    files = _listing(folder)
    safetensors = any(path.name.endswith(".safetensors") for path in files)
    planned = []
    for path in files:
        if safetensors and path.name.startswith("pytorch_model") and path.name.endswith(".bin"):
            continue
        algorithms = sorted({entry.algorithm for entry in manifest.lookup(path.name)})
        if algorithms:
            planned.append((path, tuple(algorithms)))
    return planned


def plan_meta(folder: Path) -> list[Planned]:
    """Meta's weight files its ``checklist.chk`` lists (md5), with SHA-256 too where the
    published table may hold the model; nothing when the folder's small files do not read
    (the run says why)."""
    try:
        params = read_params(folder / PARAMS, _fail)
        checklist = read_checklist(folder / CHECKLIST, _fail)
    except (BelleError, OSError, ValueError):
        return []
    files = [path for path in _listing(folder) if META_FILE.fullmatch(path.name)]
    files.sort(key=lambda path: int(path.name.split(".")[1]))
    published: tuple[str, ...] = ()
    if params.norm_eps != LLAMA2_NORM_EPS:
        published = PUBLISHED_SHA256.get((params.dim, params.n_layers, len(files)), ())
    planned = []
    for path in files:
        algorithms = (["md5"] if path.name in checklist else []) + (["sha256"] if published else [])
        if algorithms:
            planned.append((path, tuple(algorithms)))
    return planned


def first_weights(folder: Path) -> list[Path]:
    """The first weight file of ``folder`` by name, which a run reads from first."""
    return [path for path in _listing(folder) if WEIGHTS.fullmatch(path.name)][:1]


def plan_recover(
    diff_dir: Path,
    then: Sequence[Path],
    base_dir: Path,
    manifest: Manifest | None,
    whole_base: bool,
) -> HeadStart:
    """The head start of ``recover``: the files ``manifest`` lists in the diff folders, and
    Meta's checklisted files when BASE_DIR is Meta's folder read whole (``whole_base``: the
    recipe reads the base through the pipeline's own sources, as all but BiLLa do)."""
    planned = []
    for folder in (diff_dir, *then):
        planned += plan_manifest(folder, manifest) if manifest is not None else []
    if whole_base and is_meta_folder(base_dir):
        planned += plan_meta(base_dir)
    ahead = [*first_weights(diff_dir), *first_weights(base_dir)]
    return HeadStart(planned, ahead)


def plan_convert(llama_dir: Path, size: str | None, verify: bool) -> HeadStart:
    """The head start of ``convert``: Meta's checklisted files unless ``verify`` is off."""
    if size is not None:
        try:
            llama_dir = size_folder(llama_dir, size, "LLAMA_DIR")
        except (BelleError, OSError):
            return HeadStart([], [])
    return HeadStart(plan_meta(llama_dir) if verify else [], first_weights(llama_dir))


class HeadStart:
    """``planned`` files hashed one after another in a thread, after a read-ahead of
    ``ahead``; :meth:`digests` hands the results to the run."""

    def __init__(self, planned: Sequence[Planned], ahead: Sequence[Path]) -> None:
        self.planned = [(path, identity(path), algorithms) for path, algorithms in planned]
        self.ahead = list(ahead)
        self.keys = {key for _, key, _ in self.planned if key is not None}
        self.results: dict[Key, tuple[tuple[str, ...], dict[str, str]]] = {}
        self.finished = False
        self.condition = threading.Condition()
        self.stopping = threading.Event()
        self.queue = [
            (path, key, algorithms) for path, key, algorithms in self.planned if key is not None
        ]
        # Two files hashed at once where there are two: md5 runs at one core's speed, and on a
        # many-file folder the second core would otherwise wait for the run's own work.
        count = min(HASH_THREADS, max(1, len(self.queue)))
        self.threads = [
            threading.Thread(target=self._work, args=(n == 0,), name="head-start", daemon=True)
            for n in range(count)
        ]
        self.working = count
        self.chunk = CHUNK // count

    def __enter__(self) -> HeadStart:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Begin (nothing to do without files)."""
        if self.keys or self.ahead:
            for thread in self.threads:
                thread.start()
        else:
            self.finished = True

    def stop(self) -> None:
        """Stop within a read and wait for the thread."""
        self.stopping.set()
        for thread in self.threads:
            if thread.is_alive():
                thread.join()

    def _check_stop(self, count: int) -> None:
        if self.stopping.is_set():
            raise InterruptedError

    def _work(self, reads_ahead: bool) -> None:
        try:
            if reads_ahead:
                for path in self.ahead:
                    _read_ahead(path)
            while True:
                with self.condition:
                    if not self.queue:
                        return
                    path, key, algorithms = self.queue.pop(0)
                try:
                    digests = hash_file(
                        path, algorithms, on_progress=self._check_stop, chunk=self.chunk
                    )
                except OSError:
                    continue  # the run hashes it itself and says what is wrong
                if identity(path) == key:
                    with self.condition:
                        self.results[key] = (algorithms, digests)
                        self.condition.notify_all()
        except InterruptedError:
            pass
        finally:
            with self.condition:
                self.working -= 1
                self.finished = self.working == 0
                self.condition.notify_all()

    def digests(
        self, path: Path, algorithms: Sequence[str], stopping: Callable[[], bool]
    ) -> dict[str, str] | None:
        """``path``'s digests in ``algorithms`` if this head start hashed (or is hashing) the
        same file with them all, else None; waits for a planned file until it is done, the
        head start ends, or ``stopping()``."""
        key = identity(path)
        if key is None or key not in self.keys:
            return None
        with self.condition:
            while key not in self.results and not self.finished and not stopping():
                self.condition.wait(0.1)
            done = self.results.get(key)
        if done is None or not set(algorithms) <= set(done[0]) or identity(path) != key:
            return None
        return {name: done[1][name] for name in algorithms}


def _read_ahead(path: Path) -> None:
    """Ask the kernel to read the start of ``path`` into the page cache (where it can be
    asked): on a cold cache the run's first tensors are then on their way during the import."""
    if not hasattr(os, "posix_fadvise"):
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, READ_AHEAD, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    finally:
        os.close(fd)
