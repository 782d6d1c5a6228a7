"""One `recover` run: check everything, then stream the recovered tensors into shards.

``Recovery.prepare`` opens both folders and runs every check that can refuse the run (exit 2)
before anything is written, plans the shards, and checks free space. ``Recovery.run`` writes
each shard under a hidden pending name (journalled with its SHA-256), checks the diff against
the model card's md5 list in a thread beside it, checks the recipe's integrity sum, and only
then copies the diff's config and tokenizer files, renames the shards to their final names
and writes the index last. A failed check leaves nothing under a final name.
"""

from __future__ import annotations

import contextlib
import filecmp
import fnmatch
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from belle_decrypt.cancel import CancelToken, check
from belle_decrypt.decrypt import check_free_space, prepare_output_dir
from belle_decrypt.errors import ChecksumError, InputError, ManifestError, OutputError
from belle_decrypt.hashing import hash_file
from belle_decrypt.manifest import Manifest, ManifestEntry
from belle_decrypt.output import AtomicFile, remove_stale_temps
from belle_decrypt.platform_io import fsync_dir
from belle_decrypt.recover import recipes_more as more
from belle_decrypt.recover.buffers import BufferPool, Scratch
from belle_decrypt.recover.checks import Item
from belle_decrypt.recover.hfdir import WeightFolder
from belle_decrypt.recover.journal import (
    JOURNAL_NAME,
    Journal,
    fingerprint,
    pending_name,
    write_small_file,
)
from belle_decrypt.recover.recipes import (
    INV_FREQ,
    RECIPES,
    Recipe,
    choose,
    layer_of,
    state_dict_key,
)
from belle_decrypt.recover.writer import (
    BIN,
    SAFETENSORS,
    HashingWriter,
    Shard,
    index_document,
    index_name,
    parse_size,
    plan_shards,
    write_shard,
)
from belle_decrypt.torchload import import_torch

if TYPE_CHECKING:
    import torch

# The diff's files that describe the recovered model: copied to OUT_DIR as they are.
COPIED = (
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "*.tiktoken",
)
# Files a loader may take for the model's weights.
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "*.index.json")
ShardProgress = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]
KEPT, WRITTEN = "kept", "written"
# A diff file and the manifest's entries for it (md5, SHA-256 or both).
Listed = tuple[Path, tuple[ManifestEntry, ...]]


@dataclass(frozen=True)
class Options:
    """What the user asked for besides the three folders."""

    recipe: str | None = None
    fmt: str = SAFETENSORS
    max_shard_size: int = field(default_factory=lambda: parse_size("2GB"))
    force: bool = False
    fsync: bool = True
    manifest: Manifest | None = None
    expect_sum: float | None = None

    @classmethod
    def parse(
        cls,
        *,
        recipe: str | None,
        as_bin: bool,
        max_shard_size: str,
        manifests: tuple[Path, ...],
        expect_sum: float | None,
        force: bool,
        no_fsync: bool,
    ) -> Options:
        """The options as the command line gives them: the manifests read, the size parsed."""
        if expect_sum is not None and not math.isfinite(expect_sum):
            raise InputError(
                f"--expect-sum {expect_sum} is not a finite number; pass the figure the "
                "release's card gives, like 50637.1836"
            )
        return cls(
            recipe=recipe,
            fmt=BIN if as_bin else SAFETENSORS,
            max_shard_size=parse_size(max_shard_size),
            force=force,
            fsync=not no_fsync,
            manifest=Manifest.read_all(manifests) if manifests else None,
            expect_sum=expect_sum,
        )


@dataclass(frozen=True)
class ShardResult:
    """One output shard: recovered now, or kept from an earlier run after verifying it."""

    name: str
    status: str
    size: int


@dataclass(frozen=True)
class SumCheck:
    """The integrity sum, computed without and with the rotary inv_freq buffers."""

    expected: float
    tolerance: float
    without_inv_freq: float
    with_inv_freq: float
    # Only the embedding's sum (BiLLa): the inv_freq variants do not apply.
    of_embedding: bool = False

    @property
    def matched(self) -> str | None:
        """Which variant is within the tolerance ("without" / "with"), or None."""
        if abs(self.without_inv_freq - self.expected) <= self.tolerance:
            return "without"
        if abs(self.with_inv_freq - self.expected) <= self.tolerance:
            return "with"
        return None


@dataclass(frozen=True)
class Outcome:
    """What a run did."""

    out_dir: Path
    shards: tuple[ShardResult, ...]
    copied: tuple[str, ...]
    sum_check: SumCheck | None
    manifest_checked: int
    seconds: float

    @property
    def written(self) -> int:
        """Bytes of shards written by this run."""
        return sum(s.size for s in self.shards if s.status == WRITTEN)


class Recovery:
    """A checked recovery, ready to run; close it (or use ``with``) to release the inputs."""

    def __init__(
        self,
        recipe: Recipe,
        recognised: str | None,
        diff: WeightFolder,
        base: WeightFolder,
        out_dir: Path,
        options: Options,
    ) -> None:
        self.recipe = recipe
        self.recognised = recognised
        self.diff = diff
        self.base = base
        self.out_dir = out_dir
        self.options = options
        self.items: list[Item] = []
        self.shards: list[Shard] = []
        self.copies: list[Path] = []
        self.journal: Journal | None = None
        self.manifest_entries: list[Listed] = []
        self.pool = BufferPool(0)
        self.scratch = Scratch()
        self.inv_freq_sum = 0.0

    @classmethod
    def prepare(cls, diff_dir: Path, base_dir: Path, out_dir: Path, options: Options) -> Recovery:
        """Open and check the inputs and the output folder; raise before writing anything."""
        for folder in (diff_dir, base_dir):
            if out_dir.exists() and folder.exists() and out_dir.resolve() == folder.resolve():
                raise InputError("is also an input folder; pass a new output folder", out_dir)
        diff = WeightFolder.open(diff_dir, "DIFF_DIR")
        try:
            recipe, recognised = choose(options.recipe, diff_dir)
            if options.expect_sum is not None and not more.summed(recipe):
                with_sums = ", ".join(r.name for r in RECIPES.values() if more.summed(r))
                raise InputError(
                    f"--expect-sum applies to the recipes with a sum ({with_sums}), not "
                    f"{recipe.name}"
                )
            base = more.open_base(recipe, base_dir)
        except BaseException:
            diff.close()
            raise
        recovery = cls(recipe, recognised, diff, base, out_dir, options)
        try:
            recovery._check()
        except BaseException:
            recovery.close()
            raise
        return recovery

    def __enter__(self) -> Recovery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the input files."""
        self.diff.close()
        self.base.close()

    @property
    def total_size(self) -> int:
        """Bytes of all output shards."""
        return sum(shard.size for shard in self.shards)

    def _check(self) -> None:
        # recipes_more: UltraLM's pad row resolved; BiLLa paired on its embedding alone.
        self.recipe, self.items = more.check_and_pair(self.recipe, self.diff, self.base)
        self.shards = plan_shards(self.items, self.options.max_shard_size, self.options.fmt)
        self.pool = BufferPool(max((item.nbytes for item in self.items), default=0))
        self.copies = [
            p for p in self.diff.others if any(fnmatch.fnmatch(p.name, pat) for pat in COPIED)
        ]
        if self.options.manifest is not None:
            self.manifest_entries = self._manifest_entries(self.options.manifest)
        if self.expected_sum is not None:
            self.inv_freq_sum = float(rotary_inv_freq(self.diff).sum())
        prepare_output_dir(self.out_dir)
        remove_stale_temps(self.out_dir)
        key = {
            "recipe": self.recipe.name,
            "format": self.options.fmt,
            "max_shard_size": self.options.max_shard_size,
            "diff": fingerprint(list(self.diff.files)),
            "base": fingerprint(list(self.base.files)),
        }
        self.journal = Journal(self.out_dir / JOURNAL_NAME, key)
        if not self.options.force:
            self.journal = Journal.load(self.out_dir, key)
            self._check_nothing_in_the_way()
        to_write = sum(s.size for s in self.shards if s.name not in self.journal.shards)
        to_write += sum(p.stat().st_size for p in self.copies) + len(index_document(self.shards))
        check_free_space(self.out_dir, to_write)

    def _manifest_entries(self, manifest: Manifest) -> list[Listed]:
        listed = []
        for path in (*self.diff.files, *self.diff.others):
            entries = manifest.lookup(path.name)
            if entries:
                listed.append((path, entries))
        if not listed:
            raise ManifestError(
                f"the manifest lists none of the files in {self.diff.path}; pass the model "
                "card's md5 list of this diff"
            )
        return listed

    def _check_nothing_in_the_way(self) -> None:
        """Refuse (without --force) final names already holding something this run did not make."""
        assert self.journal is not None
        for shard in self.shards:
            target = self.out_dir / shard.name
            if target.exists() and shard.name not in self.journal.shards:
                raise _in_the_way(target)
        for path in self.copies:
            target = self.out_dir / path.name
            if target.exists() and not filecmp.cmp(path, target, shallow=False):
                raise _in_the_way(target)
        index = self.out_dir / index_name(self.options.fmt)
        planned_index = len(self.shards) > 1 and index.exists()
        if planned_index and index.read_bytes() != index_document(self.shards):
            raise _in_the_way(index)
        for stale in self._stale_weights():
            raise _in_the_way(stale)

    def _stale_weights(self) -> list[Path]:
        """Weight files and indexes in OUT_DIR that this run's layout does not have.

        Left beside the new shards they could be loaded instead (transformers reads
        ``model.safetensors`` before an index), so they are in the way, or removed by --force.
        """
        planned = {shard.name for shard in self.shards}
        if len(self.shards) > 1:
            planned.add(index_name(self.options.fmt))
        return [
            path
            for path in sorted(self.out_dir.iterdir())
            if path.name not in planned
            and not path.name.startswith(".")
            and any(fnmatch.fnmatch(path.name, pattern) for pattern in WEIGHT_FILES)
        ]

    def run(
        self,
        shard_progress: ShardProgress,
        *,
        on_shard: Callable[[ShardResult], None] | None = None,
        cancel: CancelToken | None = None,
    ) -> Outcome:
        """Recover every shard, check, then put everything under its final name."""
        started = time.monotonic()
        hasher = _ManifestHasher(self.manifest_entries)
        hasher.start()
        sums: list[tuple[str, float]] = []
        results = []
        try:
            for shard in self.shards:
                with shard_progress(shard.name, shard.size) as advance:
                    status = self._shard(shard, advance, sums, cancel)
                result = ShardResult(shard.name, status, shard.size)
                results.append(result)
                if on_shard is not None:
                    on_shard(result)
            hasher.finish()
            sum_check = self._sum_check(sums)
        except (ChecksumError, ManifestError):
            self._discard()
            raise
        finally:
            hasher.stop()
        copied = self._finish()
        return Outcome(
            self.out_dir,
            tuple(results),
            copied,
            sum_check,
            len(self.manifest_entries),
            time.monotonic() - started,
        )

    def _shard(
        self,
        shard: Shard,
        advance: Callable[[int], None],
        sums: list[tuple[str, float]],
        cancel: CancelToken | None,
    ) -> str:
        assert self.journal is not None
        fsync = self.options.fsync
        if self._kept(shard, advance):
            recorded = self.journal.shards[shard.name]["sums"]
            sums.extend(zip((item.name for item in shard.items), recorded, strict=False))
            return KEPT
        self.journal.forget(shard.name)
        shard_sums: list[float] = []

        def on_bytes(count: int) -> None:
            advance(count)
            check(cancel)

        def on_tensor(item: Item, tensor: torch.Tensor) -> None:
            if more.summed(self.recipe):
                shard_sums.append(more.sum_term(self.recipe, item.name, tensor, self.scratch))

        # Named after the shard (an interrupt names it), committed to its pending name.
        atomic = AtomicFile(self.out_dir / shard.name, fsync=fsync)
        with atomic as handle:
            out = HashingWriter(handle, str(self.out_dir / shard.name))
            try:
                write_shard(shard, out, self._produce, on_bytes, on_tensor, self.pool)
            except OSError as exc:
                raise OutputError(
                    f"cannot write: {exc.strerror or exc}; nothing was left under a final name "
                    "(check the free space, then run the same command again)",
                    self.out_dir / shard.name,
                ) from exc
            atomic.commit(self.out_dir / pending_name(shard.name))
        sums.extend(zip((item.name for item in shard.items), shard_sums, strict=False))
        self.journal.record(shard.name, out.sha256.hexdigest(), shard_sums, fsync=fsync)
        return WRITTEN

    def _kept(self, shard: Shard, advance: Callable[[int], None]) -> bool:
        """Whether an earlier run's file for ``shard`` is there and hashes as journalled."""
        assert self.journal is not None
        recorded = self.journal.shards.get(shard.name)
        if recorded is None:
            return False
        for name in (shard.name, pending_name(shard.name)):
            path = self.out_dir / name
            if path.is_file():
                digest = hash_file(path, ("sha256",), on_progress=advance)["sha256"]
                if digest == recorded.get("sha256"):
                    return True
        return False

    def _produce(self, item: Item, out: torch.Tensor) -> torch.Tensor:
        base = self.base.load(item.base.name) if item.base is not None else None
        diff = self.diff.load(item.name)
        return more.combine(self.recipe, item.name, base, diff, out, self.scratch)

    @property
    def expected_sum(self) -> float | None:
        """The integrity figure to check: --expect-sum, else the recipe's (None: no check)."""
        if self.options.expect_sum is not None:
            return self.options.expect_sum
        return self.recipe.expected_sum

    def _sum_check(self, sums: list[tuple[str, float]]) -> SumCheck | None:
        expected = self.expected_sum
        if expected is None:
            return None
        without = more.total(self.recipe, [(n, s) for n, s in sums if INV_FREQ not in n])
        with_buffers = more.total(self.recipe, self._with_inv_freq(sums))
        check = SumCheck(
            expected,
            self.recipe.sum_tolerance,
            without,
            with_buffers,
            of_embedding=not more.sums_inv_freq(self.recipe),
        )
        if check.matched is None:
            figure = (
                f"weights sum to {without:.4f} ({with_buffers:.4f} with the rotary inv_freq "
                "buffers)"
            )
            if check.of_embedding:
                figure = f"embedding ({more.EMBED}) sums to {without!r}"
            raise ChecksumError(
                f"the recovered {figure}, not {expected} ± {check.tolerance}: "
                f"{self._sum_hint()}; nothing written",
                self.out_dir,
            )
        return check

    def _with_inv_freq(self, sums: list[tuple[str, float]]) -> list[tuple[str, float]]:
        """The sums with an inv_freq buffer's per layer, as transformers <= 4.30 saved them."""
        if any(INV_FREQ in name for name, _ in sums) or not more.sums_inv_freq(self.recipe):
            return sums
        layers = sorted({n for n in (layer_of(name) for name, _ in sums) if n is not None})
        extra = [(f"model.layers.{n}.self_attn.{INV_FREQ}", self.inv_freq_sum) for n in layers]
        return sorted([*sums, *extra], key=lambda pair: state_dict_key(pair[0]))

    def _sum_hint(self) -> str:
        if self.manifest_entries:
            return (
                "the diff matches the model card's checksums, so the base is the problem: it "
                "was converted differently (another script or transformers version) or is not "
                "the LLaMA-1 this diff was made from"
            )
        return (
            "most likely the base was converted differently (another script or transformers "
            f"version), or the diff is damaged; `belle-decrypt verify {self.diff.path} "
            "--manifest CARD` tells them apart"
        )

    def _discard(self) -> None:
        """Remove this run's pending shards and journal: they came from a failed check."""
        for shard in self.shards:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.out_dir / pending_name(shard.name))
        if self.journal is not None:
            self.journal.remove()

    def _finish(self) -> tuple[str, ...]:
        """Copy the diff's model files, rename the shards, write the index last."""
        assert self.journal is not None
        fsync = self.options.fsync
        copied = []
        for path in self.copies:
            target = self.out_dir / path.name
            if target.exists() and filecmp.cmp(path, target, shallow=False):
                continue
            atomic = AtomicFile(target, fsync=fsync)
            with atomic as handle, open(path, "rb") as source:
                shutil.copyfileobj(source, handle, 4 * 1024 * 1024)
                atomic.commit()
            copied.append(path.name)
        for stale in self._stale_weights():
            os.unlink(stale)
        for shard in self.shards:
            pending = self.out_dir / pending_name(shard.name)
            if pending.exists():
                os.replace(pending, self.out_dir / shard.name)
        if fsync:
            fsync_dir(self.out_dir)
        if len(self.shards) > 1:
            index = self.out_dir / index_name(self.options.fmt)
            document = index_document(self.shards)
            if not index.exists() or index.read_bytes() != document:
                write_small_file(index, document, fsync=fsync)
        self.journal.complete = True
        self.journal.save(fsync=fsync)
        return tuple(copied)


def _in_the_way(target: Path) -> InputError:
    return InputError(
        "already exists and is not from this recovery; pass --force to replace it, or choose "
        "another output folder",
        target,
    )


def rotary_inv_freq(folder: WeightFolder) -> torch.Tensor:
    """LLaMA's rotary ``inv_freq`` buffer (float32) for the folder's config, as transformers
    made it; LLaMA-7B's when the config does not say. A config whose figures cannot give it
    is refused (before anything is written)."""
    config = folder.config or {}
    hidden = config.get("hidden_size", 4096)
    heads = config.get("num_attention_heads", 32)
    theta = config.get("rope_theta")
    theta = 10000.0 if theta is None else theta
    if not _positive(hidden, True):
        raise _unusable_config(folder, "hidden_size", hidden)
    if not _positive(heads, True) or hidden % heads:
        raise _unusable_config(folder, "num_attention_heads", heads)
    if not _positive(theta, False):
        raise _unusable_config(folder, "rope_theta", theta)
    torch_module = import_torch()
    dim = hidden // heads
    result: torch.Tensor = 1.0 / (theta ** (torch_module.arange(0, dim, 2).float() / dim))
    return result


def _positive(value: object, whole: bool) -> bool:
    """Whether ``value`` is a positive (``whole``: integer) number; JSON's true is not."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value > 0
    return not whole and isinstance(value, float) and value > 0


def _unusable_config(folder: WeightFolder, name: str, value: object) -> InputError:
    return folder.fail(
        f"{name} {value!r} is not usable for the rotary inv_freq buffers the sum check adds "
        "(hidden_size and num_attention_heads must be positive whole numbers, one a multiple "
        "of the other, rope_theta a positive number); download config.json again",
        folder.path / "config.json",
    )


class _ManifestHasher:
    """The listed diff files hashed (md5 and/or SHA-256, as listed), one after another in a
    thread beside the recovery."""

    def __init__(self, entries: list[Listed]) -> None:
        self.entries = entries
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
                actual = hash_file(path, algorithms, on_progress=check_stop)
                for entry in entries:
                    if actual[entry.algorithm] != entry.digest:
                        self.failure = ChecksumError(
                            f"{entry.algorithm} {actual[entry.algorithm]} differs from the "
                            f"model card's {entry.digest} ({entry.where}): the download is "
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
