"""Meta's tensors given in pieces (``MetaFolder.pieces``) and `convert` writing them: every
tensor's pieces, put end to end, are the reference join of tests/reference_meta.py bit for
bit (1, 2, 4 and 8 files; row and column joins, q/k, LLaMA-2's grouped k/v in bfloat16), no
piece is larger than its buffer, no joined tensor is ever made whole, and a run stopped
(Ctrl-C) or fed a file cut short in the middle of a tensor says so in one line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from belle_decrypt.ground.errors import OutputError
from belle_decrypt.tensors.protocol import Piece, TakeBuffer
from belle_decrypt.tensors.sources.leases import LEASES
from belle_decrypt.tensors.sources.meta import EMBED, MetaEmbedding, MetaFolder
from tests import reference_meta as meta
from tests import runner
from tests import tinyllama as tiny

SHARDS = (1, 2, 4, 8)
MODELS = [("llama1", n) for n in SHARDS] + [("llama2", n) for n in SHARDS]
# One buffer of 1000 bytes holds a few rows, never a whole tensor, and ends mid-row; 4 MiB
# holds any tiny tensor whole.
BUFFERS = (1000, 4 * 1024 * 1024)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return meta.tokenizer_model(tmp_path_factory.mktemp("spm"))


def joined(folder: MetaFolder, name: str, size: int) -> tuple[torch.Tensor, int]:
    """The tensor's pieces end to end, each checked to lie in its own buffer; and how many."""
    info = folder.tensors[name]
    out = bytearray()
    count = 0
    buffers: list[torch.Tensor] = []

    def take() -> torch.Tensor:
        buffers.append(torch.empty(size, dtype=torch.uint8))
        return buffers[-1]

    for piece, buffer in folder.pieces(name, take):
        assert buffer is buffers[-1]
        start, nbytes = piece.data_ptr(), piece.numel() * piece.element_size()
        assert buffer.data_ptr() <= start and start + nbytes <= buffer.data_ptr() + size
        assert piece.dtype == getattr(torch, info.dtype) and piece.is_contiguous()
        out += piece.view(-1).view(torch.uint8).numpy().tobytes()
        count += 1
    whole = torch.frombuffer(out, dtype=getattr(torch, info.dtype)).reshape(info.shape)
    return whole, count


@pytest.mark.parametrize(("kind", "shards"), MODELS)
def test_pieces_end_to_end_are_the_reference_join(
    kind: str, shards: int, tokenizer: Path, tmp_path: Path
) -> None:
    model = meta.tiny_model(kind, shards)
    path = meta.write_download(tmp_path / "llama", model, shards, tokenizer)
    expected = meta.reference_hf(meta.whole_model(model), model)
    with MetaFolder.open_meta(path, "LLAMA_DIR") as folder:
        assert list(folder.tensors) == list(expected)
        for size in BUFFERS:
            for name, tensor in expected.items():
                got, count = joined(folder, name, size)
                assert tiny.same_bits(got, tensor), (name, size)
                assert count >= -(-tensor.numel() * tensor.element_size() // size), name


def test_convert_never_joins_a_tensor_whole(
    tokenizer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Safetensors output from 8 files takes every tensor in pieces: ``load`` (the whole
    join) is never called, and the output is the reference's bits."""
    model = meta.llama2(8)
    path = meta.write_download(tmp_path / "llama", model, 8, tokenizer)

    def whole(self: MetaFolder, name: str) -> torch.Tensor:
        raise AssertionError(f"{name} joined whole")

    monkeypatch.setattr(MetaFolder, "load", whole)
    out = tmp_path / "hf"
    result = runner.run("convert", path, out, "--max-shard-size", "100KB", "-q")
    assert result.exit_code == 0, result.output
    got = tiny.load_folder(out)
    expected = meta.reference_hf(meta.whole_model(model), model)
    assert list(got) == list(expected)
    assert all(tiny.same_bits(got[name], t) for name, t in expected.items())


def cut_short(victim: Path) -> Callable[[MetaFolder, str, TakeBuffer], Iterator[Piece]]:
    """A MetaFolder.pieces that cuts ``victim`` to a third after the first piece of the
    third tensor, as another program truncating it would."""
    seen: list[str] = []
    pieces = MetaFolder.pieces

    def cutting(self: MetaFolder, name: str, take: TakeBuffer) -> Iterator[Piece]:
        seen.append(name)
        for number, piece in enumerate(pieces(self, name, take)):
            yield piece
            if len(seen) == 3 and number == 0:
                os.truncate(victim, victim.stat().st_size // 3)

    return cutting


def test_a_file_cut_short_mid_tensor_is_named_in_one_line(
    tokenizer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = meta.write_download(tmp_path / "llama", meta.LLAMA1, 4, tokenizer)
    victim = path / "consolidated.02.pth"
    size = victim.stat().st_size
    monkeypatch.setattr(MetaFolder, "pieces", cut_short(victim))
    monkeypatch.setattr(LEASES, "available", False)  # the size check, not the lease's
    monkeypatch.setattr("belle_decrypt.tensors.sinks.shards.PIECE_SIZE", 1000)
    out = tmp_path / "hf"
    result = runner.run("convert", path, out, "--no-verify", "-q")
    assert result.exit_code == 1
    assert result.stderr == (
        f"belle-decrypt: error: {victim}: (LLAMA_DIR) shrank from {size:,} to {size // 3:,} "
        "bytes while being read (another program truncated it); nothing was left under a final "
        "name; download it again, then run the same command again\n"
    )
    assert [n for n in os.listdir(out) if not n.startswith(".")] == []


def test_pieces_check_the_files_before_each_piece(
    tokenizer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between two pieces of one tensor, a truncated file is an error naming it, not a
    crash reading a mapping past its end."""
    path = meta.write_download(tmp_path / "llama", meta.LLAMA1, 2, tokenizer)
    victim = path / "consolidated.01.pth"
    monkeypatch.setattr(LEASES, "available", False)
    with MetaFolder.open_meta(path, "LLAMA_DIR") as folder:
        pieces = folder.pieces(
            "model.embed_tokens.weight", lambda: torch.empty(1000, dtype=torch.uint8)
        )
        next(pieces)
        os.truncate(victim, victim.stat().st_size // 3)
        with pytest.raises(OutputError, match="shrank"):
            next(pieces)


INTERRUPT = """
import os, signal, sys, time
from belle_decrypt.tensors import journal
from belle_decrypt.tensors.sinks import shards
from belle_decrypt.cli import commands as cli
shards.PIECE_SIZE = 1000
written = journal.ShardWriter.write
calls = []
def slow(self, data):
    calls.append(1)
    if len(calls) == 20:
        with open(os.environ["STOPPED_AT"], "w") as handle:
            handle.write(repr(time.monotonic()))
        os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)
    return written(self, data)
journal.ShardWriter.write = slow
cli.main()
"""


def test_ctrl_c_between_pieces_stops_within_a_second(tokenizer: Path, tmp_path: Path) -> None:
    """A slow disk, pieces queued: Ctrl-C in the middle of a tensor ends the run (exit 130)
    within a second, one line, nothing under a final name."""
    path = meta.write_download(tmp_path / "llama", meta.LLAMA1, 8, tokenizer)
    out = tmp_path / "hf"
    stopped_at = tmp_path / "stopped"
    stopped = subprocess.run(
        [sys.executable, "-c", INTERRUPT, "convert", path, out, "--no-verify"],
        capture_output=True,
        text=True,
        env={**os.environ, "STOPPED_AT": str(stopped_at)},
    )
    ended = time.monotonic()
    assert stopped.returncode == 130, stopped.stderr
    # a second, and the interpreter's own exit
    assert ended - float(stopped_at.read_text()) < 1.5
    assert len(stopped.stderr.splitlines()) == 1 and "interrupted" in stopped.stderr
    assert [n for n in os.listdir(out) if not n.startswith(".")] == []


def test_billas_embedding_reader_is_metas_folder(tokenizer: Path, tmp_path: Path) -> None:
    """BiLLa's base (the embedding alone) is read by MetaFolder itself: from Meta's folder of
    one file and from that file alone, the same bits as the whole folder's embedding."""
    path = meta.write_download(tmp_path / "llama", meta.LLAMA1, 1, tokenizer)
    kind = MetaEmbedding()
    with MetaFolder.open_meta(path, "BASE_DIR") as whole:
        expected = whole.load(EMBED).clone()
    for given in (path, path / "consolidated.00.pth"):
        assert kind.recognises(given)
        with kind.open(given, "BASE_DIR") as only:
            assert isinstance(only, MetaFolder)
            assert list(only.tensors) == [EMBED]
            assert tiny.same_bits(only.load(EMBED), expected)


@pytest.mark.parametrize(("kind", "shards"), [("llama1", 4), ("llama2", 8)])
def test_pieces_in_metas_layout_are_the_plain_join(
    kind: str, shards: int, tokenizer: Path, tmp_path: Path
) -> None:
    """With ``hf_layout`` False (a conversion straight to GGUF), q and k are Meta's whole
    tensors as they are, unpermuted; the rest as in the HF layout."""
    model = meta.tiny_model(kind, shards)
    path = meta.write_download(tmp_path / "llama", model, shards, tokenizer)
    whole = meta.whole_model(model)
    expected = meta.reference_hf(whole, model)
    for n in range(meta.LAYERS):
        for hf, own in (("q_proj", "wq"), ("k_proj", "wk")):
            name = f"model.layers.{n}.self_attn.{hf}.weight"
            expected[name] = whole[f"layers.{n}.attention.{own}.weight"]
    with MetaFolder.open_meta(path, "LLAMA_DIR") as folder:
        folder.hf_layout = False
        for name, tensor in expected.items():
            got, _ = joined(folder, name, 1000)
            assert tiny.same_bits(got, tensor), name
