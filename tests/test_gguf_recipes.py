"""`recover --to gguf` for the weight-diff recipes (docs/FORMAT.md section 3): the file holds,
byte for byte, the tensors of converting the Hugging Face folder the same recover writes, and
llama.cpp runs it like transformers runs that folder; the sum check runs before the file gets
its name; LLaVA is refused in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from belle_decrypt.tensors.journal import JOURNAL_NAME
from tests import reference_recover as ref
from tests import reference_recover_more
from tests import tinyllama as tiny
from tests.conftest import listing
from tests.ggufcheck import (
    PIECES,
    ROWS,
    TOLERANCE,
    assert_tokenizes_like_transformers,
    convert,
    llama_logits,
    run,
    tokenizer_files,
    transformers_logits,
)
from tests.tinytokenizer import tokenizer_model

RECIPES = {"vicuna": ROWS, "vicuna-v0": ROWS, "ziya": ROWS + 5}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_recover_to_gguf_runs_like_the_recovered_folder(recipe: str, tmp_path: Path) -> None:
    """One pass from a diff to GGUF: the file llama.cpp runs is the model recover writes as
    a Hugging Face folder (ziya: more rows than tokens, placeholders fill them)."""
    rows = RECIPES[recipe]
    base_rows = ROWS - 1 if recipe == "vicuna-v0" else ROWS
    base = tiny.model(1, vocab=base_rows)
    tuned = tiny.tuned({k: v.float() for k, v in base.items()}, 2, vocab=rows)
    diff = ref.make_diff(recipe, tuned, base)
    diff_dir = tiny.write_folder(
        tmp_path / "diff", diff, "safetensors", tiny.config(rows), tokenizer_files()
    )
    base_dir = tiny.write_folder(tmp_path / "base", base, "bin", tiny.config(base_rows))
    hf_out, gguf_out = tmp_path / "hf-out", tmp_path / "gguf-out"
    assert run("recover", diff_dir, base_dir, hf_out, "--recipe", recipe).exit_code == 0
    result = run("recover", diff_dir, base_dir, gguf_out, "--recipe", recipe, "--to", "gguf")
    assert result.exit_code == 0, result.output
    assert listing(gguf_out) == [JOURNAL_NAME, "gguf-out-f16.gguf"]  # the GGUF file only
    assert "written    gguf-out-f16.gguf" in result.stdout
    gguf = gguf_out / "gguf-out-f16.gguf"
    reader = GGUFReader(gguf)
    assert len(reader.fields["tokenizer.ggml.tokens"].contents()) == rows
    # The same tensors as converting the recovered folder afterwards.
    converted = GGUFReader(convert(hf_out, tmp_path / "converted"))
    for ours, theirs in zip(reader.tensors, converted.tensors, strict=True):
        assert ours.name == theirs.name
        assert np.array(ours.data).tobytes() == np.array(theirs.data).tobytes(), ours.name
    ids = [1, 5, 300, 42, PIECES, rows - 1]
    got, want = llama_logits(gguf, ids), transformers_logits(hf_out, ids)
    assert float(np.abs(got - want).max()) <= TOLERANCE["f16"]
    assert_tokenizes_like_transformers(gguf, hf_out)


def test_alpaca_sum_check_runs_before_the_gguf_gets_its_name(tmp_path: Path) -> None:
    base = tiny.model(1, vocab=ROWS - 1)
    tuned = tiny.tuned({k: v.float() for k, v in base.items()}, 2, vocab=ROWS)
    diff = ref.make_diff("alpaca", tuned, base)
    diff_dir = tiny.write_folder(
        tmp_path / "diff", diff, "bin", tiny.config(ROWS, dtype="float32"), tokenizer_files()
    )
    base_dir = tiny.write_folder(tmp_path / "base", base, "bin", tiny.config(ROWS - 1))
    out = tmp_path / "out"
    args: list[str | Path] = [
        "recover",
        diff_dir,
        base_dir,
        out,
        "--recipe",
        "alpaca",
        "--to",
        "gguf",
    ]
    result = run(*args, "--expect-sum", "1.5")
    assert result.exit_code == 1, result.output
    assert "nothing written" in result.stderr
    assert listing(out) == []
    recovered = ref.recover("alpaca", diff, base)
    total = float(sum(t.sum() for t in recovered.values()))
    result = run(*args, "--expect-sum", str(total))
    assert result.exit_code == 0, result.output
    assert "matches" in result.stdout
    tensors = {t.name: t for t in GGUFReader(out / "out-f16.gguf").tensors}
    embedding = recovered["model.embed_tokens.weight"].half()
    assert np.array_equal(np.array(tensors["token_embd.weight"].data), embedding.numpy())


LATER = [("wizardlm", 101, False), ("zhixi", 100, False), ("zhixi-fp16", 100, False)]
LATER += [("ultralm", 101, True), ("yulan", 110, False), ("tulu", 100, False)]


@pytest.mark.parametrize(("recipe", "vocab", "pad"), LATER)
def test_every_later_recipe_to_gguf_holds_the_recovered_folder(
    recipe: str, vocab: int, pad: bool, tmp_path: Path
) -> None:
    """The later releases (docs/FORMAT.md section 3) in one pass: the GGUF file holds, byte
    for byte, the tensors of converting the Hugging Face folder the same recover writes."""
    from tests import test_recover_more as more

    if recipe == "tulu":
        base = tiny.model(1)
        diff = ref.make_diff("tulu", tiny.tuned({k: v.float() for k, v in base.items()}, 2), base)
        diff_dir = tiny.write_folder(tmp_path / "diff", diff, "bin", tiny.config(vocab))
        base_dir = tiny.write_folder(tmp_path / "base", base, "bin", tiny.config(vocab))
        expected = ref.recover("tulu", diff, base)
    else:
        diff_dir, base_dir, expected = more.release(tmp_path, recipe, vocab, pad=pad)
    (diff_dir / "tokenizer.model").write_bytes(tokenizer_model(90, byte_fallback=False))
    args: list[str | Path] = [diff_dir, base_dir]
    extra = ["--recipe", recipe]
    if recipe.startswith("zhixi"):  # the tiny model's own figure, not the 13B's
        extra += ["--expect-sum", repr(reference_recover_more.naive_sum(expected))]
    if recipe == "tulu":
        extra += ["--expect-sum", repr(float(sum(t.double().sum() for t in expected.values())))]
    hf_out, gguf_out = tmp_path / "hf", tmp_path / "gguf"
    assert run("recover", *args, hf_out, *extra).exit_code == 0
    result = run("recover", *args, gguf_out, *extra, "--to", "gguf", "--gguf-type", "q8_0")
    assert result.exit_code == 0, result.output
    assert listing(gguf_out) == [JOURNAL_NAME, "gguf-q8_0.gguf"]
    ours = GGUFReader(gguf_out / "gguf-q8_0.gguf")
    theirs = GGUFReader(convert(hf_out, tmp_path / "converted", "--gguf-type", "q8_0"))
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for mine, other in zip(ours.tensors, theirs.tensors, strict=True):
        assert np.array(mine.data).tobytes() == np.array(other.data).tobytes(), mine.name
    assert len(ours.fields["tokenizer.ggml.tokens"].contents()) == vocab


def test_llava_is_refused_in_one_line_by_recover_too(tmp_path: Path) -> None:
    from tests import test_recover_more as more

    diff_dir, base_dir, _ = more.release(tmp_path, "llava", 103)
    (diff_dir / "tokenizer.model").write_bytes(tokenizer_model(90, byte_fallback=False))
    out = tmp_path / "out"
    result = run("recover", diff_dir, base_dir, out, "--recipe", "llava", "--to", "gguf")
    assert result.exit_code == 2
    assert result.stderr == (
        f"belle-decrypt: error: {diff_dir}: holds model.mm_projector.bias, a multimodal (LLaVA) "
        "projector: a llama GGUF has no place for it; run it with LLaVA's own tools, or "
        "convert it with llama.cpp's LLaVA scripts\n"
    )
    assert listing(out) == []
