"""The LoRA merge's fast paths change no bit and no refusal: the NaN/Inf screen finds every
damaged tensor with its exact count, the scale folded into A and the block-wise rounding equal
PEFT 0.21's own order (``w += (B.float() @ A.float()) * scale``, docs/FORMAT.md section 10) on
many shapes, the adapter's SHA-256 hashed in a thread gives the same name, and torch's
threads come back after a shard."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from safetensors.torch import load_file

from belle_decrypt.ground.errors import InputError
from belle_decrypt.recipes import lora
from belle_decrypt.recipes.lora import EMBEDDING, LINEAR, LoraItem, LoraRecipe, Step
from belle_decrypt.tensors.buffers import BufferPool, Scratch, threads_beside_writer
from belle_decrypt.tensors.journal import ShardWriter
from belle_decrypt.tensors.protocol import (
    BASE,
    DIFF,
    Item,
    Piece,
    TakeBuffer,
    TensorInfo,
    TensorSource,
)
from belle_decrypt.tensors.sinks.shards import BackgroundWriter, plan_shards, write_shard
from belle_decrypt.tensors.sources import check_finite
from belle_decrypt.tensors.sources.adapter import FileDigest, hash_sha256

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class Diff:
    """The least a source needs for check_finite: its tensors and its one-line failure."""

    def __init__(self, name: str, tensor: torch.Tensor) -> None:
        self.tensors = {name: TensorInfo(name, str(tensor.dtype), tuple(tensor.shape), Path())}

    def fail(self, message: str, path: Path | None = None) -> InputError:
        return InputError(message, path)


def source(name: str, tensor: torch.Tensor) -> TensorSource:
    return cast(TensorSource, Diff(name, tensor))


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_nonfinite_value_is_found_and_counted(dtype: torch.dtype) -> None:
    rng = random.Random(3)
    for size in [1, 2, 7, 15, 16, 17, 31, 33, 64, 255, 257, 4099, 70001]:
        clean = torch.randn(size, generator=torch.Generator().manual_seed(size)).to(dtype)
        check_finite(source("t", clean), "t", clean)  # nothing raised
        for value in (math.nan, math.inf, -math.inf):
            positions = {0, size - 1, size // 2, rng.randrange(size), rng.randrange(size)}
            for position in positions:
                damaged = clean.clone()
                damaged[position] = value
                with pytest.raises(InputError, match=r"t holds 1 NaN or infinite value:"):
                    check_finite(source("t", damaged), "t", damaged)
            damaged = clean.clone()
            damaged[sorted(positions)] = value
            with pytest.raises(InputError, match=rf"t holds {len(positions)} NaN or infinite"):
                check_finite(source("t", damaged), "t", damaged)


def test_a_nonfinite_value_in_a_strided_or_empty_tensor() -> None:
    matrix = torch.randn(40, 70).half().t()
    matrix[3, 5] = math.nan
    with pytest.raises(InputError, match="holds 1 NaN"):
        check_finite(source("m", matrix), "m", matrix)
    check_finite(source("e", torch.empty(0, 5)), "e", torch.empty(0, 5))
    check_finite(source("i", torch.arange(5)), "i", torch.arange(5))


def peft_merge(
    weight: torch.Tensor, pairs: list[tuple[str, torch.Tensor, torch.Tensor, float]]
) -> torch.Tensor:
    """PEFT 0.21's order, written from docs/FORMAT.md section 10: a Linear layer ``w += d32``
    in place (one rounding), embedding LoRA ``w += d32.T.to(w.dtype)`` (two)."""
    merged = weight.clone()
    for kind, a, b, scale in pairs:
        delta = (b.float() @ a.float()) * scale
        if kind == EMBEDDING:
            merged += delta.T.to(weight.dtype)
        else:
            merged += delta
    return merged


SCALES = (2.0, 0.25, 4.0, 1.0, 0.5, 2.0**-40, 2.0**40, 16 / math.sqrt(8), 7 / 8, 0.3, 3.0)


@pytest.mark.parametrize("block", [1 << 20, 1000, 7, 1])
def test_the_merge_is_peft_order_bit_for_bit(block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Random shapes, ranks, scales (powers of two folded into A, others not), adapter and
    base dtypes, chains of two, embedding LoRA; blocks of rows down to one row."""
    monkeypatch.setattr(lora, "ADD_BLOCK", block)
    rng = random.Random(block)
    gen = torch.Generator().manual_seed(block)
    recipe, scratch = LoraRecipe(), Scratch()
    shapes = [(1, 1), (1, 9), (9, 1), (64, 64), (300, 257), (1024, 96)]
    shapes += [(rng.randint(1, 400), rng.randint(1, 400)) for _ in range(12)]
    for rows, cols in shapes:
        base_dtype = rng.choice([torch.float16, torch.bfloat16])
        weight = (torch.randn(rows, cols, generator=gen) * rng.choice([0.02, 1.0, 500.0])).to(
            base_dtype
        )
        tensors, steps, pairs = {BASE: weight}, [], []
        for n in range(rng.choice([1, 2])):
            kind = EMBEDDING if rng.random() < 0.2 else LINEAR
            rank = rng.choice([1, 4, 8, 64])
            dtype = rng.choice([torch.float16, torch.float16, torch.bfloat16, torch.float32])
            size = rng.choice([0.01, 1.0, 30.0])
            a_shape, b_shape = (
                ((rank, rows), (cols, rank))
                if kind == EMBEDDING
                else (
                    (rank, cols),
                    (rows, rank),
                )
            )
            a = (torch.randn(a_shape, generator=gen) * size).to(dtype)
            b = (torch.randn(b_shape, generator=gen) * size).to(dtype)
            scale = rng.choice(SCALES)
            tensors[f"{DIFF}:a{n}"], tensors[f"{DIFF}:b{n}"] = a, b
            steps.append(Step(kind, (f"a{n}", f"b{n}"), scale))
            pairs.append((kind, a, b, scale))
        dtype_name = str(base_dtype).removeprefix("torch.")
        item = LoraItem("w", dtype_name, (rows, cols), (), tuple(steps))
        got = recipe.combine(item, tensors, torch.empty(rows, cols, dtype=base_dtype), scratch)
        expected = peft_merge(weight, pairs)
        assert torch.equal(got.view(torch.int16), expected.view(torch.int16)), (rows, cols, steps)


def test_only_exact_folds_are_taken() -> None:
    half, bf16 = torch.zeros(8, 4, dtype=torch.float16), torch.zeros(8, 4, dtype=torch.bfloat16)
    assert lora.folds_exactly(half, half, 2.0)
    assert lora.folds_exactly(half, half, 0.25)
    assert lora.folds_exactly(half, half, 2.0**64)
    assert not lora.folds_exactly(half, half, 2.0**65)
    assert not lora.folds_exactly(half, half, 2.0**-65)
    assert not lora.folds_exactly(half, half, 3.0)
    assert not lora.folds_exactly(half, half, 16 / math.sqrt(8))
    assert not lora.folds_exactly(bf16, bf16, 2.0)
    assert not lora.folds_exactly(half.float(), half.float(), 2.0)


def test_the_digest_thread_gives_the_files_sha256(tmp_path: Path) -> None:
    path = tmp_path / "adapter_model.bin"
    path.write_bytes(bytes(range(256)) * 40000)
    digest = FileDigest(path)
    assert digest.result() == hash_sha256(path)
    stopped = FileDigest(path)
    stopped.stop()
    assert not stopped.thread.is_alive()
    assert stopped.result() == hash_sha256(path)  # stopped early: hashed when asked
    missing = FileDigest(tmp_path / "gone.bin")
    with pytest.raises(FileNotFoundError):
        missing.result()


def test_torch_threads_come_back_after_a_shard() -> None:
    before = torch.get_num_threads()
    with threads_beside_writer():
        assert torch.get_num_threads() == max(1, before - 1)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    ("rank", "alpha", "rslora", "dtype"),
    [
        (64, 128, False, torch.float16),  # scale 2: folded into A
        (64, 16, True, torch.float16),  # rslora 16 / 8 = 2: folded
        (16, 7, False, torch.float16),  # 0.4375: applied to the product
        (8, 32, False, torch.bfloat16),  # bfloat16 A and B: never folded
    ],
)
def test_peft_merges_a_wide_layer_as_the_recipe_does(
    rank: int, alpha: int, rslora: bool, dtype: torch.dtype
) -> None:
    """PEFT 0.21 itself on a layer wider than the tiny models' (adapter weights rounded to the
    file's dtype and loaded as PEFT loads them: autocast to float32)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(rank + alpha)
    linear = torch.nn.Linear(1536, 2048, bias=False).to(dtype)
    weight = linear.weight.detach().clone()
    model = torch.nn.Sequential()
    model.add_module("q_proj", linear)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        use_rslora=rslora,
        target_modules=["q_proj"],
        init_lora_weights=False,
    )
    peft_model: Any = get_peft_model(model, config)
    layer = peft_model.base_model.model.q_proj
    with torch.no_grad():
        for part in (layer.lora_A["default"].weight, layer.lora_B["default"].weight):
            part.normal_(0, 0.02)
            part.copy_(part.to(dtype).float())
    a = layer.lora_A["default"].weight.detach().to(dtype)
    b = layer.lora_B["default"].weight.detach().to(dtype)
    step = Step(LINEAR, ("a", "b"), layer.scaling["default"])
    layer.merge()
    merged = layer.base_layer.weight.detach()
    item = LoraItem("w", str(dtype).removeprefix("torch."), (2048, 1536), (), (step,))
    tensors = {BASE: weight, f"{DIFF}:a": a, f"{DIFF}:b": b}
    out = torch.empty(2048, 1536, dtype=dtype)
    got = LoraRecipe().combine(item, tensors, out, Scratch())
    assert torch.equal(got.view(torch.int16), merged.view(torch.int16))


def test_the_writer_writes_in_a_thread_every_byte_in_order(tmp_path: Path) -> None:
    tensors = [torch.randn(n, 1000) for n in (1, 3000, 17)]
    given_back: list[int] = []
    with open(tmp_path / "shard", "wb") as handle:
        out = ShardWriter(handle, "shard")
        out.write(b"header")
        writer = BackgroundWriter(out)
        for number, tensor in enumerate(tensors):
            writer.put((tensor, partial(given_back.append, number)))
        writer.close()
    data = (tmp_path / "shard").read_bytes()
    assert data == b"header" + b"".join(t.numpy().tobytes() for t in tensors)
    assert out.count == len(data)
    assert given_back == [0, 1, 2]


def test_a_write_failure_stops_the_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: ShardWriter, data: bytes | memoryview) -> int:
        raise OSError("write failed")

    monkeypatch.setattr(ShardWriter, "write", broken)
    with open(tmp_path / "shard", "wb") as handle:
        writer = BackgroundWriter(ShardWriter(handle, "shard"))
        with pytest.raises(OSError, match="write failed"):
            writer.put((torch.ones(10), None))
            writer.close()
        writer.abort()


class HalfPieced:
    """A produce that gives every other item as pieces (made in the taken buffers), the
    others whole: a shard where the writing thread and the pieces written in place take
    turns."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __call__(self, item: Item, out: torch.Tensor) -> torch.Tensor:
        return out.copy_(self.tensors[item.name])

    def pieces(self, item: Item, take: TakeBuffer) -> Iterator[Piece] | None:
        if int(item.name) % 2 == 0:
            return None
        return self._pieces(self.tensors[item.name].view(-1), take)

    def _pieces(self, data: torch.Tensor, take: TakeBuffer) -> Iterator[Piece]:
        start = 0
        while start < data.numel():
            buffer = take()
            count = min(buffer.numel() // 4, data.numel() - start, 777)
            piece = buffer[: count * 4].view(torch.float32)
            yield piece.copy_(data[start : start + count]), buffer
            start += count


def test_pieces_and_whole_tensors_are_written_in_the_shards_order(tmp_path: Path) -> None:
    tensors = {str(n): torch.randn(n * 100 + 3, 7) for n in range(6)}
    items = tuple(Item(name, "float32", tuple(t.shape), ()) for name, t in tensors.items())
    shard = plan_shards(list(items), 10**9, "safetensors")[0]
    with open(tmp_path / "model.safetensors", "wb") as handle:
        out = ShardWriter(handle, "shard")
        write_shard(
            shard,
            "safetensors",
            out,
            HalfPieced(tensors),
            lambda count: None,
            lambda item, tensor: None,
            BufferPool(max(item.nbytes for item in items)),
        )
    written = load_file(tmp_path / "model.safetensors")
    assert list(written) == list(tensors)
    for name, tensor in tensors.items():
        assert torch.equal(written[name], tensor), name


def test_a_writer_that_died_wakes_the_drain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: ShardWriter, data: bytes | memoryview) -> int:
        raise OSError("write failed")

    monkeypatch.setattr(ShardWriter, "write", broken)
    with open(tmp_path / "shard", "wb") as handle:
        writer = BackgroundWriter(ShardWriter(handle, "shard"))
        writer.put((torch.ones(10), None))
        with pytest.raises(OSError, match="write failed"):
            writer.drain()
        writer.abort()
