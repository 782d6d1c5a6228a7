"""The tensor pipeline's plug-in points: a toy source and a toy recipe, each a few lines and
touching no pipeline code, run end to end (checks, shards, journal, resume, atomic finish)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from belle_decrypt.ground.errors import ChecksumError, InputError, OutputError
from belle_decrypt.recipes.catalogue import RECIPES
from belle_decrypt.tensors.buffers import Scratch
from belle_decrypt.tensors.options import KEPT, WRITTEN, Options
from belle_decrypt.tensors.protocol import (
    BASE,
    DIFF,
    Item,
    Recipe,
    Shard,
    SinkContext,
    SourceKind,
    SumRule,
    TensorInfo,
    TensorSource,
)
from belle_decrypt.tensors.run import Recovery
from belle_decrypt.tensors.sinks import SINKS
from belle_decrypt.tensors.sources import SOURCES
from belle_decrypt.tensors.sumcheck import SumCheck


@dataclass
class ToySource:
    """A folder with one ``toy.json``: tensor name -> nested lists of numbers (float32)."""

    path: Path
    role: str
    others: tuple[Path, ...] = ()
    config: dict[str, Any] | None = None
    data: dict[str, list[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data = json.loads((self.path / "toy.json").read_text())

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.path / "toy.json",)

    @property
    def tensors(self) -> dict[str, TensorInfo]:
        shapes = {name: tuple(torch.tensor(rows).shape) for name, rows in self.data.items()}
        return {n: TensorInfo(n, "float32", s, self.files[0]) for n, s in shapes.items()}

    def load(self, name: str) -> torch.Tensor:
        return torch.tensor(self.data[name], dtype=torch.float32)

    def fail(self, message: str, path: Path | None = None) -> InputError:
        return InputError(f"({self.role}) {message}", path or self.path)

    def close(self) -> None:
        """Nothing is held open."""


class ToyKind:
    name = "toy"

    def recognises(self, path: Path) -> bool:
        return (path / "toy.json").is_file()

    def open(self, path: Path, role: str) -> ToySource:
        return ToySource(path, role)


@dataclass(frozen=True)
class MeanRecipe:
    """The mean of base and diff, in float32, for every tensor both folders hold."""

    name: str = "mean"
    purpose: str = "a toy: (base + diff) / 2"
    dtype: str = "float32"
    expected_sum: float | None = None
    sum_tolerance: float = 0.0
    sum_rule: SumRule | None = None
    base_kinds: tuple[SourceKind, ...] = ()

    def check(self, sources: Mapping[str, TensorSource]) -> None:
        if sources[DIFF].tensors.keys() != sources[BASE].tensors.keys():
            raise sources[DIFF].fail("holds other tensors than the base; pass its own base")

    def plan(self, sources: Mapping[str, TensorSource]) -> list[Item]:
        pairs = (
            (sources[BASE].tensors[n], sources[DIFF].tensors[n]) for n in sources[DIFF].tensors
        )
        return [Item(d.name, "float32", d.shape, ((BASE, b), (DIFF, d))) for b, d in pairs]

    def combine(
        self, item: Item, tensors: Mapping[str, torch.Tensor], out: torch.Tensor, scratch: Scratch
    ) -> torch.Tensor:
        torch.add(tensors[BASE].float(), tensors[DIFF], out=out)
        return out.div_(2)


DIFF_DATA: dict[str, list[Any]] = {
    "a.weight": [[1.0, 2.0], [3.0, 4.0]],
    "b.bias": [0.5, -8.0, 3.25],
}
BASE_DATA: dict[str, list[Any]] = {
    "a.weight": [[3.0, 0.0], [-1.0, 4.0]],
    "b.bias": [1.5, 2.0, 0.75],
}


def folders(root: Path) -> tuple[Path, Path]:
    """A toy diff folder and a Hugging Face base folder (float16 safetensors)."""
    diff, base = root / "diff", root / "base"
    diff.mkdir()
    base.mkdir()
    (diff / "toy.json").write_text(json.dumps(DIFF_DATA))
    state = {name: torch.tensor(rows, dtype=torch.float16) for name, rows in BASE_DATA.items()}
    save_file(state, str(base / "model.safetensors"))
    return diff, base


def flat(rows: list[Any]) -> list[float]:
    """Nested lists of numbers, flattened in row-major order."""
    return [x for row in rows for x in flat(row)] if isinstance(rows[0], list) else rows


@contextmanager
def no_bar(name: str, size: int) -> Iterator[Any]:
    yield lambda count: None


def recover(root: Path, recipe: Recipe, **options: Any) -> list[str]:
    """Recover through the pipeline with the toy source and ``recipe``; the shards' statuses."""
    diff, base = folders(root) if not (root / "diff").exists() else (root / "diff", root / "base")
    kinds: tuple[SourceKind, ...] = (ToyKind(), *SOURCES)
    with Recovery.prepare(
        diff, base, root / "out", Options(**options), lambda name, path: (recipe, None), kinds
    ) as job:
        return [shard.status for shard in job.run(no_bar).shards]


def test_a_toy_source_and_recipe_run_end_to_end_and_resume(tmp_path: Path) -> None:
    assert recover(tmp_path, MeanRecipe(), max_shard_size=16) == [WRITTEN, WRITTEN]
    out = tmp_path / "out"
    got = {**load_file(str(out / "model-00001-of-00002.safetensors"))}
    got |= load_file(str(out / "model-00002-of-00002.safetensors"))
    for name, rows in DIFF_DATA.items():
        pairs = zip(flat(BASE_DATA[name]), flat(rows), strict=True)
        expected = [(b + d) / 2 for b, d in pairs]  # exact in float32 for these numbers
        assert got[name].dtype == torch.float32
        assert got[name].flatten().tolist() == expected
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(index["weight_map"]) == sorted(DIFF_DATA)
    assert recover(tmp_path, MeanRecipe(), max_shard_size=16) == [KEPT, KEPT]


def test_a_toy_recipe_refuses_before_anything_is_written(tmp_path: Path) -> None:
    diff, _ = folders(tmp_path)
    (diff / "toy.json").write_text(json.dumps({"other": [1.0]}))
    with pytest.raises(InputError, match=r"\(DIFF_DIR\) holds other tensors than the base"):
        recover(tmp_path, MeanRecipe())
    assert not (tmp_path / "out").exists()


@dataclass(frozen=True)
class MaxRule:
    """A toy sum rule: each tensor's largest value, totalled as a plain Python sum."""

    label: str | None = "largest values"

    def term(self, item: Item, tensor: torch.Tensor, scratch: Scratch) -> float:
        return float(tensor.max())

    def total(self, terms: Sequence[tuple[str, float]], dtype: str) -> float:
        return sum(value for _, value in terms)


def test_a_recipes_base_kinds_and_sum_rule_are_the_pipelines_hooks(tmp_path: Path) -> None:
    # The diff is a Hugging Face folder, the base a toy one that only the recipe's own base
    # kind reads; the sum is the recipe's rule, checked by the pipeline.
    diff, base = tmp_path / "diff", tmp_path / "base"
    diff.mkdir()
    base.mkdir()
    state = {name: torch.tensor(rows, dtype=torch.float32) for name, rows in DIFF_DATA.items()}
    save_file(state, str(diff / "model.safetensors"))
    (base / "toy.json").write_text(json.dumps(BASE_DATA))
    largest = sum(
        max((b + d) / 2 for b, d in zip(flat(BASE_DATA[n]), flat(DIFF_DATA[n]), strict=True))
        for n in DIFF_DATA
    )

    def run(recipe: Recipe, expect_sum: float | None) -> SumCheck | None:
        with Recovery.prepare(
            diff,
            base,
            tmp_path / "out",
            Options(expect_sum=expect_sum, force=True),
            lambda name, path: (recipe, None),
            SOURCES,
        ) as job:
            return job.run(no_bar).sum_check

    with pytest.raises(InputError, match=r"\(BASE_DIR\) holds no model weights"):
        run(MeanRecipe(), None)
    hooked = MeanRecipe(sum_rule=MaxRule(), base_kinds=(ToyKind(),))
    check = run(hooked, largest)
    assert check is not None
    assert (check.without_inv_freq, check.label) == (largest, "largest values")
    with pytest.raises(ChecksumError, match=r"the recovered largest values sums to"):
        run(hooked, largest + 1)
    with pytest.raises(InputError, match=r"--expect-sum applies to the recipes with a published"):
        run(MeanRecipe(base_kinds=(ToyKind(),)), largest)


@dataclass(frozen=True)
class MakingRecipe(MeanRecipe):
    """The toy mean, describing its output with files of its own (``model_files``)."""

    made: dict[str, bytes] = field(default_factory=dict)

    def model_files(
        self, sources: Mapping[str, TensorSource]
    ) -> tuple[list[Path], dict[str, bytes]]:
        return [], self.made


def test_a_recipes_generated_files_are_written_at_the_finish_and_checked_in_the_way(
    tmp_path: Path,
) -> None:
    made = {"notes.json": b'{"made": true}\n'}
    assert recover(tmp_path, MakingRecipe(made=made)) == [WRITTEN]
    out = tmp_path / "out"
    assert (out / "notes.json").read_bytes() == made["notes.json"]
    assert recover(tmp_path, MakingRecipe(made=made)) == [KEPT]
    (out / "notes.json").write_bytes(b"someone else's")
    with pytest.raises(OutputError, match="already exists and is not from this recovery"):
        recover(tmp_path, MakingRecipe(made=made))
    assert (out / "notes.json").read_bytes() == b"someone else's"
    assert recover(tmp_path, MakingRecipe(made=made), force=True) == [WRITTEN]
    assert (out / "notes.json").read_bytes() == made["notes.json"]


def test_every_catalogued_recipe_is_a_recipe_the_command_line_offers() -> None:
    recipes: list[Recipe] = list(RECIPES.values())
    assert [recipe.name for recipe in recipes] == [
        "vicuna",
        "vicuna-v0",
        "ziya",
        "alpaca",
        "tulu",
        "wizardlm",
        "zhixi",
        "zhixi-fp16",
        "ultralm",
        "yulan",
        "llava",
        "billa",
        "billa-sft",
    ]


class ToyChainKind(ToyKind):
    """Toy folders in order as one diff: the k-th folder's tensors named ``k:NAME``."""

    def open_chain(self, paths: Sequence[Path], role: str) -> ToySource:
        chain = ToySource(paths[0], role)
        chain.data = {
            f"{k}:{name}": rows
            for k, path in enumerate(paths, start=1)
            for name, rows in ToySource(path, role).data.items()
        }
        return chain


@dataclass(frozen=True)
class SumRecipe(MeanRecipe):
    """The base plus every diff of the chain (several reads of one role per item), with a
    config.json of its own (the model-files hook)."""

    name: str = "sum"

    def check(self, sources: Mapping[str, TensorSource]) -> None:
        """Any chain."""

    def plan(self, sources: Mapping[str, TensorSource]) -> list[Item]:
        diff, base = sources[DIFF], sources[BASE]
        return [
            Item(
                n,
                "float32",
                b.shape,
                (
                    (BASE, b),
                    *((DIFF, d) for d in diff.tensors.values() if d.name.endswith(f":{n}")),
                ),
            )
            for n, b in base.tensors.items()
        ]

    def combine(
        self, item: Item, tensors: Mapping[str, torch.Tensor], out: torch.Tensor, scratch: Scratch
    ) -> torch.Tensor:
        out.copy_(tensors[BASE])
        for role, info in item.reads[1:]:
            out.add_(tensors[f"{role}:{info.name}"])
        return out

    def model_files(
        self, sources: Mapping[str, TensorSource]
    ) -> tuple[list[Path], dict[str, bytes]]:
        return [], {"config.json": b'{"toy": true}\n'}


def test_a_chain_kind_a_multi_read_recipe_and_made_model_files(tmp_path: Path) -> None:
    """The hooks a LoRA merge uses: ``--then`` folders opened by a ChainKind as one diff, an
    item reading several tensors of one role, and files the recipe writes itself."""
    diff, base = folders(tmp_path)
    second = tmp_path / "second"
    second.mkdir()
    (second / "toy.json").write_text(json.dumps(DIFF_DATA))
    out = tmp_path / "out"

    def run(kinds: tuple[SourceKind, ...]) -> list[str]:
        with Recovery.prepare(
            diff, base, out, Options(), lambda n, p: (SumRecipe(), None), kinds, then=[second]
        ) as job:
            return [shard.status for shard in job.run(no_bar).shards]

    with pytest.raises(InputError, match=r"--then only chains LoRA adapters"):
        run((ToyKind(), *SOURCES))
    assert not out.exists()
    assert run((ToyChainKind(), *SOURCES)) == [WRITTEN]
    got = load_file(str(out / "model.safetensors"))
    for name, rows in DIFF_DATA.items():
        expected = [b + 2 * d for b, d in zip(flat(BASE_DATA[name]), flat(rows), strict=True)]
        assert got[name].flatten().tolist() == expected
    assert (out / "config.json").read_bytes() == b'{"toy": true}\n'


@dataclass
class LinesSink:
    """A toy sink: one text file of every tensor's values, a line each; it takes the run's
    context through ``bind`` and reads its file back in ``verify``."""

    fmt: str = "lines"
    weight_files: tuple[str, ...] = ()
    self_contained: bool = True
    contexts: list[SinkContext] = field(default_factory=list)
    verified: list[bytes] = field(default_factory=list)
    refuse: bool = False

    def bind(self, context: SinkContext) -> None:
        self.contexts.append(context)

    def plan(self, items: list[Item]) -> list[Shard]:
        return [Shard("model.txt", tuple(items), 1024)]

    def index(self, shards: list[Shard]) -> tuple[str, bytes] | None:
        return None

    def overhead(self, shards: list[Shard]) -> int:
        return 0

    def write(self, shard: Shard, out: Any, produce: Any, on_bytes: Any, *rest: Any) -> None:
        for item in shard.items:
            values = produce(item, torch.empty(item.shape, dtype=torch.float32))
            out.write(f"{item.name} {values.flatten().tolist()}\n".encode())

    def verify(self, shard: Shard, path: Path) -> None:
        self.verified.append(path.read_bytes())
        if self.refuse:
            raise OutputError("reads back wrong", path)


def test_a_sinks_bind_and_verify_are_the_pipelines_hooks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = LinesSink()
    monkeypatch.setitem(SINKS, "lines", lambda max_size: sink)
    assert recover(tmp_path, MeanRecipe(), fmt="lines", output_type="t") == [WRITTEN]
    (context,) = sink.contexts
    diff, base = tmp_path / "diff", tmp_path / "base"
    assert (context.out_dir, context.folder, context.files) == (tmp_path / "out", diff, {})
    assert (context.config_path, context.output_type, context.hf_layout) == (
        base / "config.json",
        "t",
        True,
    )
    written = (tmp_path / "out" / "model.txt").read_bytes()
    assert sink.verified == [written]  # read back whole, before the commit
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".belle-recover.json",
        "model.txt",
    ]
    sink.refuse = True
    (tmp_path / "again").mkdir()
    with pytest.raises(OutputError, match="reads back wrong"):
        recover(tmp_path / "again", MeanRecipe(), fmt="lines")
    assert [p.name for p in (tmp_path / "again" / "out").iterdir()] == []


def test_a_self_contained_sink_is_bound_to_the_files_a_recipe_makes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recipe's own model files (``model_files``: LoRA's merged config) are what a sink that
    carries the model's description is bound to, and none of them goes beside its file."""
    sink = LinesSink()
    monkeypatch.setitem(SINKS, "lines", lambda max_size: sink)
    made = {"config.json": b'{"vocab_size": 3}\n', "tokenizer_config.json": b"{}"}
    assert recover(tmp_path, MakingRecipe(made=made), fmt="lines") == [WRITTEN]
    (context,) = sink.contexts
    assert (context.config, context.files) == ({"vocab_size": 3}, made)
    assert context.config_path == tmp_path / "base" / "config.json"  # where a refusal points
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".belle-recover.json",
        "model.txt",
    ]
