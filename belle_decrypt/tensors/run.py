"""One `recover` run: check everything, then stream the output tensors into files.

``Recovery.prepare`` opens both folders (:mod:`~belle_decrypt.tensors.sources`), chooses the
recipe and runs every check that can refuse the run (exit 2) before anything is written: the
recipe's own, the pairing of every output tensor, the output folder, the journal, what is in
the way, free space. ``Recovery.run`` writes each file the sink plans under a hidden pending
name (journalled with its file's identity), checks the diff against the model card's md5 list in a
thread beside it (:mod:`~belle_decrypt.tensors.listed`), checks the integrity sum
(:mod:`~belle_decrypt.tensors.sumcheck`), and only then copies the diff's config and tokenizer
files, renames the files to their final names and writes the index last. A failed check
leaves nothing under a final name. Sources, recipes and sinks plug in through
:mod:`belle_decrypt.tensors.protocol`; nothing here knows a concrete one but the defaults.
"""

from __future__ import annotations

import contextlib
import filecmp
import fnmatch
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from belle_decrypt.ground.cancel import CancelToken, check
from belle_decrypt.ground.errors import ChecksumError, InputError, ManifestError, OutputError
from belle_decrypt.ground.platform_io import fsync_dir
from belle_decrypt.streams.output import (
    AtomicFile,
    check_free_space,
    prepare_output_dir,
    remove_stale_temps,
)
from belle_decrypt.tensors.buffers import BufferPool, Scratch
from belle_decrypt.tensors.copies import output_files, write_output_files
from belle_decrypt.tensors.journal import (
    JOURNAL_NAME,
    PENDING_PREFIX,
    FileIdentity,
    Journal,
    ShardWriter,
    fingerprint,
    pending_name,
    write_small_file,
)
from belle_decrypt.tensors.listed import Listed, ManifestHasher, listed_files
from belle_decrypt.tensors.llama import rotary_inv_freq
from belle_decrypt.tensors.options import KEPT, WRITTEN, Options, Outcome, ShardResult
from belle_decrypt.tensors.produce import Producer
from belle_decrypt.tensors.protocol import (
    BASE,
    DIFF,
    Checksummed,
    ChooseRecipe,
    Item,
    Recipe,
    Shard,
    SourceKind,
    TensorSource,
)
from belle_decrypt.tensors.sinks import SINKS
from belle_decrypt.tensors.sources import SOURCES, check_finite, open_source
from belle_decrypt.tensors.sumcheck import SumCheck, Sums, check_sum

if TYPE_CHECKING:
    import torch

ShardProgress = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]


class Recovery:
    """A checked recovery, ready to run; close it (or use ``with``) to release the inputs."""

    def __init__(
        self,
        recipe: Recipe,
        recognised: str | None,
        sources: dict[str, TensorSource],
        out_dir: Path,
        options: Options,
    ) -> None:
        self.recipe = recipe
        self.recognised = recognised
        self.sources = sources
        self.diff = sources[DIFF]
        self.out_dir = out_dir
        self.options = options
        self.sink = SINKS[options.fmt](options.max_shard_size)
        self.items: list[Item] = []
        self.shards: list[Shard] = []
        self.copies: list[Path] = []
        self.generated: dict[str, bytes] = {}
        self.journal: Journal | None = None
        self.manifest_entries: list[Listed] = []
        self.pool = BufferPool(0)
        self.scratch = Scratch()
        self.producer = Producer(self._produce, recipe, sources, not options.allow_nonfinite)
        self.inv_freq_sum = 0.0
        self.warnings: list[str] = []

    @classmethod
    def prepare(
        cls,
        diff_dir: Path,
        base_dir: Path,
        out_dir: Path,
        options: Options,
        choose: ChooseRecipe,
        kinds: Sequence[SourceKind] = SOURCES,
        then: Sequence[Path] = (),
    ) -> Recovery:
        """Open and check the inputs (each by the first of ``kinds`` that recognises it;
        ``then``: folders chained after DIFF_DIR) and the output folder, with the recipe
        ``choose`` gives for ``options.recipe``; raise before writing anything."""
        for folder in (diff_dir, *then, base_dir):
            # The folders themselves, not their paths: a bind mount shows one under two paths.
            with contextlib.suppress(OSError):
                if os.path.samefile(out_dir, folder):
                    raise InputError("is also an input folder; pass a new output folder", out_dir)
        diff = open_source(diff_dir, "DIFF_DIR", kinds, then)
        try:
            recipe, recognised = choose(options.recipe, diff_dir)
            if options.expect_sum is not None and recipe.sum_rule is None:
                raise InputError(
                    f"--expect-sum applies to the recipes with a published sum (recover --help "
                    f"lists them), not {recipe.name}"
                )
            # A recipe's own base kinds first (BiLLa: Meta's embedding).
            base = open_source(base_dir, "BASE_DIR", (*recipe.base_kinds, *kinds))
        except BaseException:
            diff.close()
            raise
        listed = base.listed if isinstance(base, Checksummed) else ()
        sources = {DIFF: diff, BASE: base}
        return cls.prepare_opened(recipe, recognised, sources, out_dir, options, listed)

    @classmethod
    def prepare_opened(
        cls,
        recipe: Recipe,
        recognised: str | None,
        sources: dict[str, TensorSource],
        out_dir: Path,
        options: Options,
        checksums: Sequence[Listed] = (),
    ) -> Recovery:
        """Check the opened ``sources`` (closed on a refusal) and the output folder with
        ``recipe``; raise before writing anything. ``convert`` passes Meta's folder in both
        roles, and its files' checksums (``checksums``: hashed beside the run as
        ``--manifest``'s are)."""
        recovery = cls(recipe, recognised, sources, out_dir, options)
        recovery.manifest_entries = list(checksums)
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
        for source in self.sources.values():
            source.close()

    @property
    def total_size(self) -> int:
        """Bytes of all output shards."""
        return sum(shard.size for shard in self.shards)

    def _check(self) -> None:
        self.recipe.check(self.sources)
        self.items = self.recipe.plan(self.sources)
        self.copies, self.generated, context = output_files(
            self.recipe,
            self.sink,
            self.sources,
            self.out_dir,
            self.options.output_type,
            self.warnings,
        )
        self.sink.bind(context)
        self.shards = self.sink.plan(self.items)
        self.pool = BufferPool(max((item.nbytes for item in self.items), default=0))
        if self.options.manifest is not None:
            self.manifest_entries += listed_files(self.options.manifest, self.diff)
        if self.expected_sum is not None:
            described = self.diff if self.diff.config is not None else self.sources[BASE]
            self.inv_freq_sum = float(rotary_inv_freq(described).sum())
        prepare_output_dir(self.out_dir)
        remove_stale_temps(self.out_dir)
        key = {
            "recipe": self.recipe.name,
            "format": self.sink.fmt,
            "max_shard_size": self.options.max_shard_size,
            **{role: fingerprint(list(source.files)) for role, source in self.sources.items()},
        }
        self.journal = Journal(self.out_dir / JOURNAL_NAME, key)
        if not self.options.force:
            self.journal = Journal.load(self.out_dir, key)
            self._check_nothing_in_the_way()
        self._remove_pending_not_kept()
        vouched = self.journal.vouched
        to_write = sum(s.size for s in self.shards if vouched(s.name, self.out_dir) is None)
        to_write += sum(p.stat().st_size for p in self.copies) + self.sink.overhead(self.shards)
        to_write += sum(len(data) for data in self.generated.values())
        check_free_space(self.out_dir, to_write)

    def _check_nothing_in_the_way(self) -> None:
        """Refuse (without --force) final names already holding something this run did not make."""
        assert self.journal is not None
        for shard in self.shards:
            target = self.out_dir / shard.name
            if target.exists() and not self.journal.made(shard.name):
                raise _in_the_way(target)
        for path in self.copies:
            target = self.out_dir / path.name
            if target.exists() and not filecmp.cmp(path, target, shallow=False):
                raise _in_the_way(target)
        index = self.sink.index(self.shards)
        for name, data in [*([index] if index is not None else []), *self.generated.items()]:
            target = self.out_dir / name
            if target.exists() and (not target.is_file() or target.read_bytes() != data):
                raise _in_the_way(target)
        for stale in self._stale_weights():
            raise _in_the_way(stale)

    def _remove_pending_not_kept(self) -> None:
        """Remove pending shards of this tool that this run's plan and journal do not keep
        (left by a run killed under another plan, recipe or input): otherwise they would stay
        hidden for good, and count against the free space."""
        assert self.journal is not None
        kept = {pending_name(s.name) for s in self.shards if s.name in self.journal.shards}
        for entry in os.scandir(self.out_dir):
            if entry.name.startswith(PENDING_PREFIX) and entry.name not in kept:
                with contextlib.suppress(FileNotFoundError):
                    if entry.is_file(follow_symlinks=False):
                        os.unlink(entry.path)

    def _stale_weights(self) -> list[Path]:
        """Weight files and indexes in OUT_DIR that this run's layout does not have.

        Left beside the new shards they could be loaded instead (transformers reads
        ``model.safetensors`` before an index), so they are in the way, or removed by --force.
        """
        planned = {shard.name for shard in self.shards}
        index = self.sink.index(self.shards)
        if index is not None:
            planned.add(index[0])
        return [
            path
            for path in sorted(self.out_dir.iterdir())
            if path.name not in planned
            and not path.name.startswith(".")
            and any(fnmatch.fnmatch(path.name, pattern) for pattern in self.sink.weight_files)
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
        hasher = ManifestHasher(self.manifest_entries, self.options.head_start)
        hasher.start()
        sums: Sums = []
        results = []
        try:
            for shard in self.shards:
                with shard_progress(shard.name, shard.size) as advance:
                    status, size = self._shard(shard, advance, sums, cancel)
                result = ShardResult(shard.name, status, size)
                results.append(result)
                if on_shard is not None:
                    on_shard(result)
            hasher.finish()
            sum_check = self._sum_check(sums)
        except (ChecksumError, ManifestError, InputError):
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
        sums: Sums,
        cancel: CancelToken | None,
    ) -> tuple[str, int]:
        """Keep or write one shard; its status and its size on disk (a --bin shard's planned
        size is only an upper estimate)."""
        assert self.journal is not None
        fsync = self.options.fsync
        kept = self._kept(shard, advance)
        if kept is not None:
            recorded = self.journal.shards[shard.name]["sums"]
            sums.extend(zip((item.name for item in shard.items), recorded, strict=False))
            return KEPT, kept
        self.journal.forget(shard.name)
        shard_sums: list[float] = []

        def on_bytes(count: int) -> None:
            advance(count)
            check(cancel)

        rule = self.recipe.sum_rule

        def on_tensor(item: Item, tensor: torch.Tensor) -> None:
            if rule is not None:
                shard_sums.append(rule.term(item, tensor, self.scratch))

        # Named after the shard (an interrupt names it), committed to its pending name.
        atomic = AtomicFile(self.out_dir / shard.name, fsync=fsync)
        with atomic as handle:
            out = ShardWriter(handle, str(self.out_dir / shard.name))
            try:
                self.sink.write(shard, out, self.producer, on_bytes, on_tensor, self.pool)
                handle.flush()
            except OSError as exc:
                raise OutputError(
                    f"cannot write: {exc.strerror or exc}; nothing was left under a final name "
                    "(check the free space, then run the same command again)",
                    self.out_dir / shard.name,
                ) from exc
            self.sink.verify(shard, atomic.temp)
            atomic.commit(self.out_dir / pending_name(shard.name))
        sums.extend(zip((item.name for item in shard.items), shard_sums, strict=False))
        # Gone already from the pending name: another run into OUT_DIR renamed it (the same
        # journalled work) to the final name, where the journal follows it.
        written = FileIdentity.of(self.out_dir / pending_name(shard.name)) or FileIdentity.of(
            self.out_dir / shard.name
        )
        if written is not None:
            self.journal.record(shard.name, written, shard_sums, fsync=fsync)
        return WRITTEN, out.count

    def _kept(self, shard: Shard, advance: Callable[[int], None]) -> int | None:
        """The size of an earlier run's file for ``shard`` if it is there and still the file
        the journal recorded, else None."""
        assert self.journal is not None
        recorded = self.journal.vouched(shard.name, self.out_dir)
        if recorded is None:
            return None
        advance(recorded.size)
        return recorded.size

    def _produce(self, item: Item, out: torch.Tensor) -> torch.Tensor:
        tensors: dict[str, torch.Tensor] = {}
        for role, info in item.reads:
            tensor = tensors[f"{role}:{info.name}"] = self.sources[role].load(info.name)
            tensors.setdefault(role, tensor)
            if role == DIFF and not self.options.allow_nonfinite:
                check_finite(self.diff, info.name, tensor)
        return self.recipe.combine(item, tensors, out, self.scratch)

    @property
    def expected_sum(self) -> float | None:
        """The integrity figure to check: --expect-sum, else the recipe's (None: no check)."""
        if self.options.expect_sum is not None:
            return self.options.expect_sum
        return self.recipe.expected_sum

    def _sum_check(self, sums: Sums) -> SumCheck | None:
        expected = self.expected_sum
        if expected is None:
            return None
        finals = [s.name for s in self.shards if (self.out_dir / s.name).is_file()]
        return check_sum(
            self.recipe,
            expected,
            sums,
            self.inv_freq_sum,
            self.diff.path,
            self.out_dir,
            bool(self.manifest_entries),
            finals,
        )

    def _discard(self) -> None:
        """Remove this run's pending shards and journal: they came from a failed check."""
        for shard in self.shards:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.out_dir / pending_name(shard.name))
        if self.journal is not None:
            self.journal.remove()

    def _finish(self) -> tuple[str, ...]:
        """Copy the diff's model files (write the recipe's own), rename the shards, write the
        index last."""
        assert self.journal is not None
        fsync = self.options.fsync
        copied = write_output_files(self.out_dir, self.copies, self.generated, fsync)
        for stale in self._stale_weights():
            os.unlink(stale)
        for shard in self.shards:
            # Gone: another run into OUT_DIR renamed it (the same journalled bytes) first.
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.out_dir / pending_name(shard.name), self.out_dir / shard.name)
        if fsync:
            fsync_dir(self.out_dir)
        for shard in self.shards:  # a rename is a new change time: the journal follows it
            final = FileIdentity.of(self.out_dir / shard.name)
            if final is not None:
                self.journal.moved(shard.name, final)
        self.journal.save(fsync=fsync)  # at once: a re-run keeps the renamed files
        index = self.sink.index(self.shards)
        if index is not None:
            target = self.out_dir / index[0]
            if not target.exists() or target.read_bytes() != index[1]:
                write_small_file(target, index[1], fsync=fsync)
        self.journal.complete = True
        self.journal.save(fsync=fsync)
        return tuple(copied)


def _in_the_way(target: Path) -> OutputError:
    """A different file in the way: exit 1 in every command, as the READMEs' table says."""
    return OutputError(
        "already exists and is not from this recovery; pass --force to replace it, or choose "
        "another output folder",
        target,
    )
