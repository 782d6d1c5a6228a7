"""`recover ADAPTER [--then ADAPTER2] BASE OUT --to gguf`: LoRA adapters merged straight into a
GGUF file give byte for byte the file of merging into a Hugging Face folder and then
`convert --to gguf` (the merged config's vocab_size, the last adapter's tokenizer with its
``[PAD]``); llama.cpp runs it like transformers runs the merged folder, and its token ids are
AutoTokenizer's there, Chinese included. Bases: a Hugging Face folder and Meta's own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sentencepiece
from gguf import GGUFReader

from belle_decrypt.tensors.journal import JOURNAL_NAME
from tests import reference_meta as meta
from tests import runner
from tests import tinyllama as tiny
from tests import tinylora as tl
from tests.conftest import listing
from tests.ggufcheck import (
    EXTENDED,
    PIECES,
    assert_tokenizes_like_transformers,
    llama_logits,
    plus_pair,
    tokenizer_files,
    transformers_logits,
)
from tests.tinytokenizer import tokenizer_model

# Largest |llama.cpp - transformers| logit as a fraction of the largest: float16 matrices hold
# the merged float16 weights exactly; llama.cpp rounds activations to float16.
RELATIVE_TOLERANCE = 5e-3


def recover(*args: str | Path) -> None:
    result = runner.run("recover", *args, "-q")
    assert result.exit_code == 0, result.output


def gguf_in(out: Path) -> Path:
    (gguf,) = [p for p in out.iterdir() if p.suffix == ".gguf"]
    return gguf


def both_ways(root: Path, *inputs: str | Path, gguf_type: str = "f16") -> tuple[Path, Path]:
    """The merge straight to GGUF, checked byte for byte against the merge to a Hugging Face
    folder converted afterwards (each output folder named ``merged``, as the file's name and
    metadata carry it); the GGUF file and the Hugging Face merge."""
    hf, straight, converted = root / "hf" / "merged", root / "a" / "merged", root / "b" / "merged"
    recover(*inputs, hf)
    recover(*inputs, straight, "--to", "gguf", "--gguf-type", gguf_type)
    result = runner.run("convert", hf, converted, "--to", "gguf", "--gguf-type", gguf_type)
    assert result.exit_code == 0, result.output
    gguf = gguf_in(straight)
    assert listing(straight) == [JOURNAL_NAME, f"merged-{gguf_type}.gguf"]  # the GGUF only
    assert gguf.read_bytes() == gguf_in(converted).read_bytes()
    return gguf, hf


def assert_runs_like_the_merge(gguf: Path, hf: Path, rows: int) -> None:
    ids = [1, 5, 300, 42, 7, PIECES - 1, rows - 1]
    want = transformers_logits(hf, ids)
    scale = float(np.abs(want).max())
    assert scale > 0.1  # not a comparison between near-zeros
    assert float(np.abs(llama_logits(gguf, ids) - want).max()) <= RELATIVE_TOLERANCE * scale
    assert_tokenizes_like_transformers(gguf, hf)


def llama_base(root: Path) -> tuple[Path, tiny.StateDict]:
    """LLaMA in the Hugging Face layout: its own tokenizer, no [PAD]."""
    state = tiny.model(1, vocab=PIECES)
    folder = tiny.write_folder(
        root / "llama-7b-hf", state, "safetensors", tiny.config(PIECES), tokenizer_files(False)
    )
    return folder, state


def test_a_peft_adapter_to_gguf_is_the_merge_converted(tmp_path: Path) -> None:
    base, _ = llama_base(tmp_path)
    settings: dict[str, Any] = {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}
    adapter = tl.peft_adapter(base, tmp_path / "alpaca-lora-7b", 3, **settings)
    assert not any(p.name.startswith("tokenizer") for p in adapter.iterdir())  # the base's
    gguf, hf = both_ways(tmp_path, adapter, base)
    assert_runs_like_the_merge(gguf, hf, PIECES)


def test_chinese_alpaca_plus_to_gguf_carries_the_extended_vocabulary(tmp_path: Path) -> None:
    base, state = llama_base(tmp_path)
    plus, alpaca, _ = plus_pair(tmp_path, state)
    gguf, hf = both_ways(tmp_path, plus, "--then", alpaca, base)
    reader = GGUFReader(gguf)
    assert reader.fields["llama.vocab_size"].contents() == EXTENDED + 1
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    processor = sentencepiece.SentencePieceProcessor(model_proto=tokenizer_model(EXTENDED))
    assert tokens == [*(processor.IdToPiece(n) for n in range(EXTENDED)), "[PAD]"]
    assert reader.fields["tokenizer.ggml.padding_token_id"].contents() == EXTENDED
    assert json.loads((hf / "config.json").read_text())["vocab_size"] == EXTENDED + 1
    assert_runs_like_the_merge(gguf, hf, EXTENDED + 1)


def test_q8_0_from_the_adapters_is_the_merge_converted(tmp_path: Path) -> None:
    base, state = llama_base(tmp_path)
    plus, alpaca, _ = plus_pair(tmp_path, state)
    gguf, _ = both_ways(tmp_path, plus, "--then", alpaca, base, gguf_type="q8_0")
    assert {t.tensor_type.name for t in GGUFReader(gguf).tensors} == {"Q8_0", "F32"}


@pytest.fixture(scope="module")
def meta_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return meta.tokenizer_model(tmp_path_factory.mktemp("spm"))


@pytest.mark.parametrize("adapters", ["peft", "plus-pair"])
def test_adapters_on_metas_folder_to_gguf(
    adapters: str, meta_tokenizer: Path, tmp_path: Path
) -> None:
    """Meta's folder as the base: the tokenizer is the adapter's when it brings one, else
    Meta's (with the tokenizer files `convert` makes); the same file as the merge from the
    folder `convert` makes of it, converted."""
    folder = meta.write_download(tmp_path / "llama", meta.LLAMA1, 2, meta_tokenizer)
    converted = tmp_path / "llama-7b-hf"
    assert runner.run("convert", folder, converted, "-q").exit_code == 0
    inputs: tuple[str | Path, ...]
    if adapters == "peft":
        settings: dict[str, Any] = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}
        settings["target_modules"] += ["k_proj", "v_proj"]
        inputs = (tl.peft_adapter(converted, tmp_path / "alpaca-lora-7b", 3, **settings),)
        rows = meta.VOCAB
    else:
        plus, alpaca, _ = plus_pair(tmp_path, tiny.load_folder(converted))
        inputs = (plus, "--then", alpaca)
        rows = EXTENDED + 1
    gguf, hf = both_ways(tmp_path / "meta", *inputs, folder)
    other, _ = both_ways(tmp_path / "converted", *inputs, converted)
    assert gguf.read_bytes() == other.read_bytes()
    ids = [1, 17, 250, 3, 99, rows - 1]
    want = transformers_logits(hf, ids)
    scale = float(np.abs(want).max())
    assert float(np.abs(llama_logits(gguf, ids) - want).max()) <= RELATIVE_TOLERANCE * scale
    assert_tokenizes_like_transformers(gguf, hf)
