"""`recover DIFF META_FOLDER OUT` writes exactly the files `recover DIFF CONVERTED OUT` writes,
for the later releases (issue 18, item 2): WizardLM, ZhiXi, UltraLM, YuLan, LLaVA and BiLLa,
each from a tiny Meta download in one and two files. The five first recipes are in
tests/test_convert.py; the recovered values themselves are proven in tests/test_recover_more.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests import reference_meta as meta
from tests import reference_recover_more as ref
from tests import runner
from tests import tinyllama as tiny
from tests.test_recover import TOKENIZER
from tests.test_recover_more import PAD_MAP, PROJECTOR_IN

# (recipe, extra vocabulary rows, a pad token named): as tests/test_recover_more.py's CASES.
CASES = [
    ("wizardlm", 1, False),
    ("zhixi", 0, False),
    ("ultralm", 1, True),
    ("ultralm", 0, False),
    ("yulan", 10, False),
    ("llava", 3, False),
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return meta.tokenizer_model(tmp_path_factory.mktemp("spm"))


def downloaded(root: Path, tokenizer: Path, shards: int) -> tuple[Path, Path, tiny.StateDict]:
    """A tiny LLaMA-1 download in ``shards`` files, its conversion and the converted weights."""
    folder = meta.write_download(root / "llama", meta.LLAMA1, shards, tokenizer)
    converted = root / "llama-7b-hf"
    result = runner.run("convert", folder, converted, "-q")
    assert result.exit_code == 0, result.output
    return folder, converted, tiny.load_folder(converted)


def diff_config(converted: Path, vocab: int, dtype: torch.dtype) -> dict[str, object]:
    """The converted model's config.json with the release's vocabulary and dtype."""
    config: dict[str, object] = json.loads((converted / "config.json").read_text())
    return config | {"vocab_size": vocab, "torch_dtype": str(dtype).removeprefix("torch.")}


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file a user sees in ``folder`` (the journal and pending names are hidden)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def recover_both(
    diff_dir: Path, meta_dir: Path, converted: Path, root: Path, *args: str
) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The files recover writes from Meta's folder and from its conversion."""
    written = []
    for base_dir, name in ((meta_dir, "from-meta"), (converted, "from-hf")):
        out = root / name
        result = runner.run("recover", diff_dir, base_dir, out, "--max-shard-size", "60KB", *args)
        assert result.exit_code == 0, result.output
        written.append(files_of(out))
    return written[0], written[1]


@pytest.mark.parametrize("shards", [1, 2])
@pytest.mark.parametrize(("recipe", "extra", "pad"), CASES)
def test_the_later_recipes_from_metas_folder_equal_them_from_the_converted(
    recipe: str, extra: int, pad: bool, shards: int, tokenizer: Path, tmp_path: Path
) -> None:
    meta_dir, converted, base = downloaded(tmp_path, tokenizer, shards)
    vocab = meta.VOCAB + extra
    tuned = tiny.tuned({k: v.float() for k, v in base.items()}, 2, vocab=vocab)
    if recipe == "llava":
        gen = torch.Generator().manual_seed(3)
        tuned[ref.PROJECTOR[0]] = torch.randn((meta.DIM, PROJECTOR_IN), generator=gen) * 0.05
        tuned[ref.PROJECTOR[1]] = torch.randn((meta.DIM,), generator=gen) * 0.05
    diff = ref.make_diff(recipe, tuned, base, pad)
    config = diff_config(converted, vocab, ref.dtype_of(recipe))
    files = TOKENIZER | (PAD_MAP if pad else {})
    diff_dir = tiny.write_folder(tmp_path / "diff", diff, "safetensors-sharded", config, files)
    expected = ref.recover(recipe, diff, base, pad)
    args = ["--recipe", recipe, "-q"]
    if recipe == "zhixi":  # the tiny model's own figure, not the 13B's
        args += ["--expect-sum", repr(ref.naive_sum(expected))]
    from_meta, from_hf = recover_both(diff_dir, meta_dir, converted, tmp_path, *args)
    assert list(from_meta) == list(from_hf)
    assert sum(name.endswith(".safetensors") for name in from_meta) > 1
    for name, data in from_hf.items():
        assert from_meta[name] == data, name
    got = tiny.load_folder(tmp_path / "from-meta")
    assert sorted(got) == sorted(expected)
    assert all(tiny.same_bits(got[name], tensor) for name, tensor in expected.items())


def billa_release(root: Path, base: tiny.StateDict, converted: Path) -> Path:
    """BiLLa-7B-SFT's folder made against ``base``'s embedding."""
    tuned = tiny.tuned(base, 2, vocab=meta.VOCAB + 20)
    published = ref.billa_publish(tuned, base[ref.EMBED])
    config = diff_config(converted, meta.VOCAB + 20, torch.float16)
    return tiny.write_folder(root / "BiLLa-7B-SFT", published, "bin-sharded", config, TOKENIZER)


def test_billa_from_metas_folder_equals_it_from_the_converted(
    tokenizer: Path, tmp_path: Path
) -> None:
    meta_dir, converted, base = downloaded(tmp_path, tokenizer, 1)
    diff_dir = billa_release(tmp_path, base, converted)
    published = tiny.load_folder(diff_dir)
    recovered, figure = ref.billa_recover(published, base[ref.EMBED])
    args = ["--expect-sum", repr(figure), "-q"]
    from_meta, from_hf = recover_both(diff_dir, meta_dir, converted, tmp_path, *args)
    assert list(from_meta) == list(from_hf)
    for name, data in from_hf.items():
        assert from_meta[name] == data, name
    got = tiny.load_folder(tmp_path / "from-meta")
    assert all(tiny.same_bits(got[name], tensor) for name, tensor in recovered.items())


def test_billa_refuses_metas_folder_in_two_files(tokenizer: Path, tmp_path: Path) -> None:
    # BiLLa was made from LLaMA-7B, which Meta ships as one file: two are another size.
    meta_dir, converted, base = downloaded(tmp_path, tokenizer, 2)
    diff_dir = billa_release(tmp_path, base, converted)
    out = tmp_path / "out"
    result = runner.run("recover", diff_dir, meta_dir, out)
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"belle-decrypt: error: {meta_dir}: (BASE_DIR) holds 2 consolidated.*.pth files: BiLLa "
        "was made from LLaMA-7B (one file); pass LLaMA-7B's folder or its consolidated.00.pth\n"
    )
    assert not out.exists() or files_of(out) == {}
