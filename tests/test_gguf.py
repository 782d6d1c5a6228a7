"""GGUF output (`convert HF_DIR OUT_DIR --to gguf`, `recover --to gguf`): llama.cpp (through
llama-cpp-python) loads the file, its logits match transformers' on the Hugging Face folder and
its token ids AutoTokenizer's there (and sentencepiece's); gguf's reader lists exactly the
tensors, shapes, types, values and keys docs/FORMAT.md section 9 gives; an unfinished file
never has the final name; every refusal is one line. The recipes, Meta's folder, LoRA
adapters and the READMEs' rows are in test_gguf_recipes, _meta, _lora and _readme."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
import torch
from gguf import GGMLQuantizationType, GGUFReader, quants

from belle_decrypt.tensors.journal import JOURNAL_NAME
from tests import tinyllama as tiny
from tests.conftest import listing
from tests.ggufcheck import (
    PIECES,
    ROWS,
    assert_runs_like_transformers,
    convert,
    hf_folder,
    run,
    tokenizer_files,
)
from tests.tinytokenizer import tokenizer_model

F32, F16, Q8 = GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.Q8_0
# docs/FORMAT.md section 9's table, written out: Hugging Face name -> llama.cpp name.
EXPECTED_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    **{
        f"model.layers.{n}.{hf}.weight": f"blk.{n}.{gguf}.weight"
        for n in range(tiny.LAYERS)
        for hf, gguf in (
            ("self_attn.q_proj", "attn_q"),
            ("self_attn.k_proj", "attn_k"),
            ("self_attn.v_proj", "attn_v"),
            ("self_attn.o_proj", "attn_output"),
            ("mlp.gate_proj", "ffn_gate"),
            ("mlp.down_proj", "ffn_down"),
            ("mlp.up_proj", "ffn_up"),
            ("input_layernorm", "attn_norm"),
            ("post_attention_layernorm", "ffn_norm"),
        )
    },
}
EXPECTED_KEYS = {
    "GGUF.version",
    "GGUF.tensor_count",
    "GGUF.kv_count",
    "general.architecture",
    "general.name",
    "general.file_type",
    "llama.vocab_size",
    "llama.context_length",
    "llama.embedding_length",
    "llama.block_count",
    "llama.feed_forward_length",
    "llama.rope.dimension_count",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.attention.layer_norm_rms_epsilon",
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
}


def meta_to_hf(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """docs/FORMAT.md's Meta -> Hugging Face permutation (section 9), as written there."""
    rows, cols = weight.shape
    return weight.view(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def hf_to_meta(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """The rows put back where ``meta_to_hf`` took them from."""
    rows = weight.shape[0]
    source = meta_to_hf(torch.arange(rows).view(rows, 1), heads).view(rows)
    meta = torch.empty_like(weight)
    meta[source] = weight
    return meta


def reference_q8_0(values: torch.Tensor) -> np.ndarray:
    """ggml's Q8_0 of each 32-value block: an f16 scale amax/127, then x / scale rounded half
    away from zero."""
    blocks = values.float().numpy().reshape(-1, 32)
    scale = np.abs(blocks).max(axis=1, keepdims=True) / 127
    inverse = np.divide(1, scale, out=np.zeros_like(scale), where=scale != 0)
    scaled = (blocks * inverse).astype(np.float64)
    q = (np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)).astype(np.int8)  # C's roundf
    out = np.concatenate([scale.astype(np.float16).view(np.uint8), q.view(np.uint8)], axis=1)
    return out.reshape(values.shape[0], -1)


@pytest.mark.parametrize("gguf_type", ["f16", "q8_0"])
def test_convert_runs_in_llama_cpp_like_transformers(gguf_type: str, tmp_path: Path) -> None:
    hf_dir, _ = hf_folder(tmp_path / "hf")
    gguf = convert(hf_dir, tmp_path / "model", "--gguf-type", gguf_type)
    assert gguf.name == f"model-{gguf_type}.gguf"
    assert_runs_like_transformers(gguf, hf_dir, gguf_type)


def test_the_reader_lists_exactly_the_planned_tensors_and_keys(tmp_path: Path) -> None:
    hf_dir, state = hf_folder(tmp_path / "hf")
    reader = GGUFReader(convert(hf_dir, tmp_path / "out"))
    assert set(reader.fields) == EXPECTED_KEYS
    tensors = {t.name: t for t in reader.tensors}
    assert list(tensors) == [EXPECTED_NAMES[name] for name in tiny.tensor_names()]
    for name, values in state.items():
        tensor = tensors[EXPECTED_NAMES[name]]
        assert list(tensor.shape) == list(reversed(values.shape)), name
        got = torch.from_numpy(np.array(tensor.data)).reshape(values.shape)
        if values.dim() == 1:
            assert tensor.tensor_type == F32
            assert tiny.same_bits(got, values.float()), name
            continue
        assert tensor.tensor_type == F16
        if "q_proj" in name or "k_proj" in name:
            assert not tiny.same_bits(got, values), name
            got = meta_to_hf(got, tiny.HEADS)  # stored in Meta's interleaved rotary layout
        assert tiny.same_bits(got, values), name

    def field(key: str) -> object:
        return reader.fields[key].contents()

    assert field("general.architecture") == "llama"
    assert field("general.file_type") == 1
    assert field("llama.vocab_size") == ROWS
    assert field("llama.context_length") == 2048
    assert field("llama.embedding_length") == tiny.HIDDEN
    assert field("llama.block_count") == tiny.LAYERS
    assert field("llama.feed_forward_length") == tiny.INTERMEDIATE
    assert field("llama.rope.dimension_count") == tiny.HIDDEN // tiny.HEADS
    assert field("llama.attention.head_count") == tiny.HEADS
    assert field("llama.attention.head_count_kv") == tiny.HEADS
    assert field("llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    assert field("tokenizer.ggml.model") == "llama"
    processor = sentencepiece.SentencePieceProcessor(model_proto=tokenizer_model())
    pieces = [processor.IdToPiece(n) for n in range(PIECES)]
    assert field("tokenizer.ggml.tokens") == [*pieces, "[PAD]", f"[PAD{ROWS - 1}]"]
    scores = field("tokenizer.ggml.scores")
    assert isinstance(scores, list)
    assert scores[:PIECES] == pytest.approx([processor.GetScore(n) for n in range(PIECES)])
    assert scores[PIECES:] == [-1000.0, -1000.0]
    types = field("tokenizer.ggml.token_type")
    assert isinstance(types, list)
    # <unk> unknown, <s> </s> control, 256 byte pieces, the rest normal; [PAD] user-defined,
    # the row with no piece unused (llama.cpp's TokenType values).
    assert types == [2, 3, 3, *[6] * 256, *[1] * (PIECES - 259), 4, 5]
    assert (field("tokenizer.ggml.bos_token_id"), field("tokenizer.ggml.eos_token_id")) == (1, 2)
    assert field("tokenizer.ggml.unknown_token_id") == 0
    assert field("tokenizer.ggml.padding_token_id") == PIECES
    assert (field("tokenizer.ggml.add_bos_token"), field("tokenizer.ggml.add_eos_token")) == (
        True,
        False,
    )


def test_q8_0_is_ggmls_block_quantization_in_row_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from belle_decrypt.tensors.sinks import gguf_model

    monkeypatch.setattr(gguf_model, "QUANT_CHUNK", 3 * tiny.HIDDEN)  # 3 rows a call
    hf_dir, state = hf_folder(tmp_path / "hf")
    reader = GGUFReader(convert(hf_dir, tmp_path / "out", "--gguf-type", "q8_0"))
    assert "general.quantization_version" in reader.fields
    assert reader.fields["general.file_type"].contents() == 7
    tensors = {t.name: t for t in reader.tensors}
    for name, values in state.items():
        tensor = tensors[EXPECTED_NAMES[name]]
        if values.dim() == 1:
            assert tensor.tensor_type == F32
            continue
        assert tensor.tensor_type == Q8
        assert list(tensor.shape) == list(reversed(values.shape))
        if "q_proj" in name or "k_proj" in name:
            values = hf_to_meta(values, tiny.HEADS)
        expected = reference_q8_0(values)
        assert np.array_equal(np.array(tensor.data), expected), name
        restored = quants.dequantize(np.array(tensor.data), Q8)
        # Half a step, plus the float16 rounding of the scale (127 steps x 2**-11).
        step = np.abs(values.float().numpy()).max() / 127
        assert np.abs(restored - values.float().numpy()).max() <= step * (0.5 + 127 / 2048)


def test_a_llava_projector_is_refused_in_one_line(tmp_path: Path) -> None:
    hf_dir, state = hf_folder(tmp_path / "hf")
    state["model.mm_projector.weight"] = torch.zeros(tiny.HIDDEN, 32, dtype=torch.float16)
    tiny.write_folder(hf_dir, state, "safetensors")
    result = run("convert", hf_dir, tmp_path / "out", "--to", "gguf")
    assert result.exit_code == 2
    assert result.stderr == (
        f"belle-decrypt: error: {hf_dir}: holds model.mm_projector.weight, a multimodal (LLaVA) "
        "projector: a llama GGUF has no place for it; run it with LLaVA's own tools, or "
        "convert it with llama.cpp's LLaVA scripts\n"
    )
    assert not (tmp_path / "out").exists()


def test_refusals_are_one_line_before_writing(tmp_path: Path) -> None:
    hf_dir, _ = hf_folder(tmp_path / "hf")
    out = tmp_path / "out"
    big = tmp_path / "big"
    tiny.write_folder(big, tiny.model(1, vocab=PIECES - 1), "safetensors", tiny.config(PIECES))
    (big / "tokenizer.model").write_bytes(tokenizer_model())
    bare = tiny.write_folder(tmp_path / "bare", tiny.model(1), "safetensors", tiny.config(100))
    cases: list[tuple[list[str | Path], str]] = [
        (
            ["convert", big, out, "--to", "gguf"],
            f"{big / 'tokenizer.model'}: the tokenizer has {PIECES} tokens but the embedding "
            f"only {PIECES - 1} rows: it belongs to another model; use the release's own "
            "tokenizer files",
        ),
        (
            ["convert", bare, out, "--to", "gguf"],
            f"{bare}: has no tokenizer.model (nor has any input folder): a GGUF file carries "
            "its tokenizer; put the release's tokenizer.model in it",
        ),
        (
            ["recover", hf_dir, hf_dir, out, "--recipe", "vicuna", "--to", "gguf", "--bin"],
            "--bin shapes Hugging Face shards; --to gguf writes one GGUF file instead: leave "
            "--bin out",
        ),
        (
            ["recover", hf_dir, hf_dir, out, "--to", "gguf", "--max-shard-size", "1GB"],
            "--max-shard-size shapes Hugging Face shards; --to gguf writes one GGUF file "
            "instead: leave --max-shard-size out",
        ),
        (
            ["recover", hf_dir, hf_dir, out, "--gguf-type", "q8_0"],
            "--gguf-type applies to --to gguf only; add --to gguf or leave it out",
        ),
        (
            ["convert", hf_dir, hf_dir, "--to", "gguf"],
            f"{hf_dir}: is also the input folder; pass a new output folder",
        ),
    ]
    for args, line in cases:
        result = run(*args)
        assert (result.exit_code, result.stderr) == (2, f"belle-decrypt: error: {line}\n"), args
    assert not out.exists()
    assert run("convert", hf_dir, out).exit_code == 2  # --to is required


def test_an_existing_gguf_needs_force_and_free_space_is_checked_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hf_dir, _ = hf_folder(tmp_path / "hf")
    out = tmp_path / "out"
    gguf = convert(hf_dir, out)
    first = gguf.read_bytes()
    result = run("convert", hf_dir, out, "--to", "gguf")
    assert (result.exit_code, result.stderr) == (
        1,
        f"belle-decrypt: error: {gguf}: already exists; pass --force to replace it, or "
        "choose another output folder\n",
    )
    assert convert(hf_dir, out, "--force").read_bytes() == first

    class Usage:
        free = 1000

    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage)
    result = run("convert", hf_dir, tmp_path / "full", "--to", "gguf")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"belle-decrypt: error: {tmp_path / 'full'}: needs ")
    assert listing(tmp_path / "full") == []


KILLER = """
import os, signal, sys
from belle_decrypt.tensors.sinks import ggufsink
from belle_decrypt.cli.commands import main
encoded = ggufsink.encoded
calls = []
def stop(*args):
    calls.append(1)
    if len(calls) == 7:
        os.kill(os.getpid(), signal.SIGNAL)
    return encoded(*args)
ggufsink.encoded = stop
main()
"""


@pytest.mark.parametrize("command", ["convert", "recover"])
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGINT"])
def test_an_interrupted_gguf_never_has_its_final_name(
    command: str, signal_name: str, tmp_path: Path
) -> None:
    hf_dir, state = hf_folder(tmp_path / "hf")
    if command == "convert":
        inputs = [str(hf_dir)]
    else:
        diff = {k: (v.float() - v.float() * 0.9).half() for k, v in state.items()}
        base = {k: (v.float() * 0.9).half() for k, v in state.items()}
        files = tokenizer_files()
        diff_dir = tiny.write_folder(tmp_path / "d", diff, "safetensors", tiny.config(ROWS), files)
        base_dir = tiny.write_folder(tmp_path / "b", base, "bin", tiny.config(ROWS))
        inputs = [str(diff_dir), str(base_dir)]
    extra = ["--recipe", "vicuna"] if command == "recover" else []
    out, clean = tmp_path / "out", tmp_path / "clean" / "out"

    def argv(folder: Path) -> list[str]:
        return [command, *inputs, str(folder), "--to", "gguf", *extra]

    args = argv(out)
    script = KILLER.replace("SIGNAL", signal_name)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    stopped = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, env=env
    )
    left = listing(out)
    if signal_name == "SIGKILL":
        assert stopped.returncode == -signal.SIGKILL
        assert len(left) == 1 and left[0].startswith(".belle-tmp.")
        assert left[0].endswith(".out-f16.gguf")
    else:
        assert stopped.returncode == 130
        assert stopped.stderr == (
            f"belle-decrypt: error: {out / 'out-f16.gguf'}: interrupted; the unfinished file "
            "was removed; run the same command again to finish\n"
        )
        assert left == []
    assert run(*args).exit_code == 0
    journal = [JOURNAL_NAME] if command == "recover" else []
    assert listing(out) == [*journal, "out-f16.gguf"]
    assert run(*argv(clean)).exit_code == 0
    assert (out / "out-f16.gguf").read_bytes() == (clean / "out-f16.gguf").read_bytes()


@pytest.mark.parametrize("command", ["convert", "recover"])
def test_a_file_that_reads_back_short_never_gets_its_name(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last tensor's bytes left out: gguf's reader finds its data past the end of the
    file, and the run stops (exit 1) before the file is committed."""
    from belle_decrypt.tensors.sinks import ggufsink

    chunks = ggufsink._chunks
    monkeypatch.setattr(ggufsink, "_chunks", lambda data: [*chunks(data)][:-1])
    hf_dir, state = hf_folder(tmp_path / "hf")
    out = tmp_path / "out"
    if command == "convert":
        result = run("convert", hf_dir, out, "--to", "gguf")
    else:
        diff = {k: (v.float() - v.float() * 0.9).half() for k, v in state.items()}
        base = {k: (v.float() * 0.9).half() for k, v in state.items()}
        files = tokenizer_files()
        diff_dir = tiny.write_folder(tmp_path / "d", diff, "safetensors", tiny.config(ROWS), files)
        base_dir = tiny.write_folder(tmp_path / "b", base, "bin", tiny.config(ROWS))
        result = run("recover", diff_dir, base_dir, out, "--recipe", "vicuna", "--to", "gguf")
    assert result.exit_code == 1, result.output
    # gguf's reader cannot map the last tensor's data: one line, the file not committed.
    line = f"belle-decrypt: error: {out / 'out-f16.gguf'}: the written file does not read back ("
    assert result.stderr.startswith(line)
    assert result.stderr.endswith(
        "; nothing was left under a final name (check the disk, then run the same command again)\n"
    )
    assert result.stderr.count("\n") == 1
    assert listing(out) == []
