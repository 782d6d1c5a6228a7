"""What the GGUF tests share: a tiny Hugging Face LLaMA with a real tokenizer (Chinese pieces,
Alpaca's ``[PAD]``, a row with no piece), `convert --to gguf`, llama.cpp's logits and token ids
(through llama-cpp-python) and transformers' on the Hugging Face output of the same inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import sentencepiece
import torch
from click.testing import Result

from belle_decrypt.recipes.sentencepiece import tokenizer_json
from tests import runner
from tests import tinyllama as tiny
from tests import tinylora as tl
from tests.tinytokenizer import BYTE_FALLBACK_VOCAB, tokenizer_model

# The sentencepiece pieces, then added_tokens.json's [PAD], then one row with no piece.
PIECES = BYTE_FALLBACK_VOCAB
ROWS = PIECES + 2
STRINGS = (
    "Hello, world!",
    "你好世界，这是一个测试。",  # noqa: RUF001
    "llama 模型 runs 12345 on ollama",
)
EXTENDED = 500
"""Pieces of the tiny Chinese-LLaMA-shaped extended tokenizer (LLaMA's: PIECES)."""
# Largest |llama.cpp - transformers| logit allowed (logits are about ±1.5 here): float16
# matrices lose nothing against the float16 model; Q8_0 rounds each weight to 1/254 of its block.
TOLERANCE = {"f16": 0.01, "q8_0": 0.1}


def run(*args: str | Path) -> Result:
    return runner.run(*args)


def tokenizer_files(pad: bool = True, model: bytes | None = None) -> dict[str, bytes]:
    """A real tokenizer.model (``model``, else the tiny one), the tokenizer.json transformers 5
    reads without protobuf (made by the tool's own converter: its ids are checked against
    sentencepiece's), and, like Alpaca's, a [PAD] appended by added_tokens.json."""
    model = model if model is not None else tokenizer_model()
    files = {
        "tokenizer.model": model,
        "tokenizer.json": tokenizer_json(model),
        "tokenizer_config.json": json.dumps({"pad_token": "[PAD]"}).encode(),
    }
    if pad:
        pieces = sentencepiece.SentencePieceProcessor(model_proto=model).GetPieceSize()
        files["added_tokens.json"] = json.dumps({"[PAD]": pieces}).encode()
    return files


def hf_folder(folder: Path, rows: int = ROWS, seed: int = 1) -> tuple[Path, tiny.StateDict]:
    """A tiny LLaMA in the Hugging Face layout with a real tokenizer."""
    state = tiny.model(seed, vocab=rows)
    tiny.write_folder(folder, state, "safetensors", tiny.config(rows), tokenizer_files())
    return folder, state


def plus_pair(root: Path, base: tiny.StateDict) -> tuple[Path, Path, tiny.StateDict]:
    """Chinese-LLaMA-Plus and Chinese-Alpaca-Plus as the releases lay them out, tiny, made for
    ``base``: both carry the extended tokenizer (EXTENDED pieces), Alpaca's with [PAD] appended
    by added_tokens.json; embed_tokens and lm_head whole at EXTENDED and EXTENDED + 1 rows.
    The third value: their merge into ``base`` by the reference of tests/tinylora.py."""
    extended = tokenizer_model(EXTENDED)
    plus = root / "chinese-llama-plus-lora-7b"
    alpaca = root / "chinese-alpaca-plus-lora-7b"
    first = tl.chinese_adapter(plus, 14, EXTENDED, tokenizer=extended, base=base)
    second = tl.chinese_adapter(alpaca, 15, EXTENDED + 1, tokenizer=extended, base=base)
    for folder, pad in ((plus, False), (alpaca, True)):
        for name, data in tokenizer_files(pad, extended).items():
            (folder / name).write_bytes(data)
    pair = [(first, tl.CHINESE_CONFIG), (second, tl.CHINESE_CONFIG)]
    return plus, alpaca, tl.chinese_reference(base, pair)


def convert(hf_dir: Path, out: Path, *options: str) -> Path:
    """`convert HF_DIR OUT --to gguf OPTIONS`, checked to succeed; the GGUF file's path."""
    result = run("convert", hf_dir, out, "--to", "gguf", *options)
    assert result.exit_code == 0, result.output
    (gguf,) = [p for p in out.iterdir() if p.suffix == ".gguf"]
    return gguf


def llama_logits(gguf: Path, ids: list[int]) -> np.ndarray:
    """llama.cpp's logits for every position of ``ids``."""
    from llama_cpp import Llama

    llm = Llama(str(gguf), logits_all=True, n_ctx=32, n_threads=1, verbose=False)
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)])
    llm.close()
    return logits


def llama_tokens(gguf: Path, text: str) -> list[int]:
    from llama_cpp import Llama

    llm = Llama(str(gguf), vocab_only=True, verbose=False)
    ids = llm.tokenize(text.encode(), add_bos=True)
    llm.close()
    return ids


def transformers_logits(hf_dir: Path, ids: list[int]) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    with torch.no_grad():
        logits: np.ndarray = model(torch.tensor([ids])).logits[0].numpy()
    return logits


def assert_tokenizes_like_transformers(
    gguf: Path, hf_dir: Path, strings: tuple[str, ...] = STRINGS
) -> None:
    """llama.cpp's token ids for each string are AutoTokenizer's on the Hugging Face folder,
    and those are <s> then sentencepiece's own encoding of its tokenizer.model (so that the
    folder's tokenizer.json, which transformers 5 reads, is itself checked); the tokenizer
    has Chinese pieces, not only bytes for them."""
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(hf_dir)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(hf_dir / "tokenizer.model"))
    assert any("你" in piece for piece in loaded.get_vocab())
    for text in strings:
        ids = loaded(text).input_ids
        assert ids == [processor.bos_id(), *processor.encode(text)], text
        assert llama_tokens(gguf, text) == ids, text


def assert_runs_like_transformers(gguf: Path, hf_dir: Path, gguf_type: str) -> None:
    ids = [1, 5, 300, 42, 7, PIECES - 1, PIECES, ROWS - 1]
    got, want = llama_logits(gguf, ids), transformers_logits(hf_dir, ids)
    assert got.shape == want.shape
    assert float(np.abs(got - want).max()) <= TOLERANCE[gguf_type]
    assert float(np.abs(want).max()) > 0.5  # the comparison is not between near-zeros
    assert_tokenizes_like_transformers(gguf, hf_dir)
