"""LoRA merges with Meta's own folder as the base (docs/FORMAT.md sections 8 and 9): the same
files, bit for bit, as the merge from the folder `convert` makes of it, and the same tensors
as the references (the Chinese-LLaMA-Alpaca merge written from section 10 on the whole tensors
of section 8's reference conversion; PEFT's ``merge_and_unload`` on the converted folder)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from belle_decrypt.tensors.journal import JOURNAL_NAME
from tests import reference_meta as meta
from tests import runner
from tests import tinyllama as tiny
from tests import tinylora as tl


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return meta.tokenizer_model(tmp_path_factory.mktemp("spm"))


def meta_and_converted(
    root: Path, tokenizer: Path, shards: int, model: meta.Tiny = meta.LLAMA1
) -> tuple[Path, Path, tiny.StateDict]:
    """Meta's folder of ``shards`` files, the folder `convert` makes of it, and the reference
    HF state dict (section 8 applied to the whole tensors)."""
    folder = meta.write_download(root / "llama", model, shards, tokenizer, seed=5)
    converted = root / "llama-7b-converted"
    result = runner.run("convert", folder, converted, "-q")
    assert result.exit_code == 0, result.output
    return folder, converted, meta.reference_hf(meta.whole_model(model, seed=5), model)


def recover(*args: str | Path) -> None:
    result = runner.run("recover", *args, "-q")
    assert result.exit_code == 0, result.output


def same_files(one: Path, other: Path) -> None:
    """Every file of the two outputs (the journal, which names its inputs, aside) byte-equal."""
    names = sorted(p.name for p in one.iterdir() if p.name != JOURNAL_NAME)
    assert names == sorted(p.name for p in other.iterdir() if p.name != JOURNAL_NAME)
    for name in names:
        assert (one / name).read_bytes() == (other / name).read_bytes(), name


def assert_tensors(out: Path, expected: tiny.StateDict) -> None:
    got = tiny.load_folder(out)
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert tiny.same_bits(got[name], tensor), name


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_chinese_alpaca_from_meta_folder(tmp_path: Path, tokenizer: Path, shards: int) -> None:
    folder, converted, reference = meta_and_converted(tmp_path, tokenizer, shards)
    adapter = tmp_path / "chinese-alpaca-lora-7b"
    state = tl.chinese_adapter(adapter, 7, 49954, tokenizer=b"Chinese-Alpaca", base=reference)
    recover(adapter, folder, tmp_path / "from-meta")
    recover(adapter, converted, tmp_path / "from-converted")
    same_files(tmp_path / "from-meta", tmp_path / "from-converted")
    expected = tl.chinese_reference(reference, [(state, tl.CHINESE_CONFIG)])
    assert_tensors(tmp_path / "from-meta", expected)
    config = json.loads((tmp_path / "from-meta" / "config.json").read_text())
    assert config["vocab_size"] == 49954
    assert (tmp_path / "from-meta" / "tokenizer.model").read_bytes() == b"Chinese-Alpaca"


@pytest.mark.parametrize("shards", [2, 8])
def test_chinese_alpaca_plus_from_meta_folder(tmp_path: Path, tokenizer: Path, shards: int) -> None:
    folder, converted, reference = meta_and_converted(tmp_path, tokenizer, shards)
    plus, alpaca = tmp_path / "chinese-llama-plus-lora-7b", tmp_path / "chinese-alpaca-plus-lora-7b"
    first = tl.chinese_adapter(plus, 7, 49953, tokenizer=b"LLaMA-Plus", base=reference)
    second = tl.chinese_adapter(alpaca, 8, 49954, tokenizer=b"Alpaca-Plus", base=reference)
    recover(plus, "--then", alpaca, folder, tmp_path / "from-meta")
    recover(plus, "--then", alpaca, converted, tmp_path / "from-converted")
    same_files(tmp_path / "from-meta", tmp_path / "from-converted")
    expected = tl.chinese_reference(
        reference, [(first, tl.CHINESE_CONFIG), (second, tl.CHINESE_CONFIG)]
    )
    assert_tensors(tmp_path / "from-meta", expected)
    assert (tmp_path / "from-meta" / "tokenizer.model").read_bytes() == b"Alpaca-Plus"


@pytest.mark.parametrize("version", [1, 2], ids=["llama-1", "llama-2"])
def test_peft_adapter_from_meta_folder(tmp_path: Path, tokenizer: Path, version: int) -> None:
    """A PEFT-made adapter (no tokenizer of its own) on Meta's folder: merge_and_unload's bits
    on the converted folder, and the converted folder's config, generation config and
    tokenizer files (LLaMA-2: bfloat16, grouped k/v heads)."""
    model = meta.LLAMA1 if version == 1 else meta.llama2(2)
    folder, converted, reference = meta_and_converted(tmp_path, tokenizer, 2, model)
    settings: dict[str, Any] = {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}
    adapter = tl.peft_adapter(converted, tmp_path / "adapter", 3, dtype=model.dtype, **settings)
    recover(adapter, folder, tmp_path / "from-meta")
    recover(adapter, converted, tmp_path / "from-converted")
    same_files(tmp_path / "from-meta", tmp_path / "from-converted")
    expected = tl.peft_merged(converted, [adapter], dtype=model.dtype)
    assert any(not tiny.same_bits(expected[name], t) for name, t in reference.items())
    assert_tensors(tmp_path / "from-meta", {name: expected[name] for name in reference})
    assert {"tokenizer.json", "generation_config.json"} <= {
        p.name for p in (tmp_path / "from-meta").iterdir()
    }
    assert all(t.dtype == model.dtype for t in tiny.load_folder(tmp_path / "from-meta").values())


def test_meta_checklist_is_checked_beside_the_merge(tmp_path: Path, tokenizer: Path) -> None:
    """A Meta file differing from checklist.chk fails the merge (exit 1) with the file named
    and nothing under a final name (pending names start with a dot)."""
    folder, _, reference = meta_and_converted(tmp_path, tokenizer, 2)
    adapter = tmp_path / "chinese-alpaca-lora-7b"
    tl.chinese_adapter(adapter, 7, 49954, tokenizer=b"Chinese-Alpaca", base=reference)
    checklist = folder / "checklist.chk"
    listed = meta.md5(folder / "consolidated.01.pth")
    checklist.write_text(checklist.read_text().replace(listed, "0" * 32))
    out = tmp_path / "out"
    result = runner.run("recover", adapter, folder, out, "-q")
    assert result.exit_code == 1, result.output
    assert "consolidated.01.pth" in result.output
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == []
