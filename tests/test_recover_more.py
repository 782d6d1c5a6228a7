"""`recover` for the later additive releases (docs/FORMAT.md section 3, 3.8): WizardLM, ZhiXi and
its float16 form, UltraLM, YuLan, LLaVA, BiLLa (Wombat, Chimera and BayLing use vicuna-v0 and
vicuna), each bit-exact against tests/reference_recover_more.py on tiny models, their sums,
their release names and their refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import Result

from belle_decrypt.recipes.catalogue import recognise
from tests import reference_recover_more as ref
from tests import runner
from tests import tinyllama as tiny
from tests.conftest import listing
from tests.test_recover import TOKENIZER, assert_recovered, norm_level, refused
from tests.test_recover_alpaca import in_state_dict_order, with_inv_freq

PROJECTOR_IN = 32
PAD_MAP = {"special_tokens_map.json": b'{"pad_token": "<PAD>", "unk_token": "<unk>"}'}


def run(*args: str | Path) -> Result:
    return runner.run("recover", *args)


def tuned_model(recipe: str, base: tiny.StateDict, vocab: int) -> tiny.StateDict:
    """The fine-tuned model (float32); LLaVA's also holds its projector."""
    tuned = tiny.tuned({k: v.float() for k, v in base.items()}, 2, vocab=vocab)
    if recipe == "llava":
        gen = torch.Generator().manual_seed(3)
        tuned[ref.PROJECTOR[0]] = torch.randn((tiny.HIDDEN, PROJECTOR_IN), generator=gen) * 0.05
        tuned[ref.PROJECTOR[1]] = torch.randn((tiny.HIDDEN,), generator=gen) * 0.05
    return tuned


def release(
    root: Path,
    recipe: str,
    vocab: int,
    *,
    pad: bool = False,
    name: str = "diff",
    embed_shift: float = 0.0,
    buffers: bool = False,
) -> tuple[Path, Path, tiny.StateDict]:
    """A float16 base, the publisher's delta for ``recipe`` and the oracle's recovered model
    (``embed_shift`` added to the tuned embedding makes its sum large; ``buffers``: both
    folders hold the rotary inv_freq buffers, as transformers <= 4.30 saved them)."""
    base = tiny.model(1, inv=buffers)
    tuned = tuned_model(recipe, base, vocab)
    tuned[ref.EMBED] += embed_shift
    diff = ref.make_diff(recipe, tuned, base, pad)
    config = tiny.config(vocab, dtype=str(ref.dtype_of(recipe)).removeprefix("torch."))
    if recipe == "llava":
        config |= {"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava"}
    files = TOKENIZER | (PAD_MAP if pad else {})
    diff_dir = tiny.write_folder(root / name, diff, "safetensors-sharded", config, files)
    base_dir = tiny.write_folder(root / "base", base, "bin", tiny.config(100))
    return diff_dir, base_dir, ref.recover(recipe, diff, base, pad)


CASES = [
    ("wizardlm", 101, False),
    ("zhixi", 100, False),
    ("zhixi-fp16", 100, False),
    ("ultralm", 101, True),
    ("ultralm", 100, False),
    ("yulan", 110, False),
    ("llava", 103, False),
]


@pytest.mark.parametrize(("recipe", "vocab", "pad"), CASES)
def test_each_recipe_is_bit_exact(recipe: str, vocab: int, pad: bool, tmp_path: Path) -> None:
    diff_dir, base_dir, expected = release(tmp_path, recipe, vocab, pad=pad)
    out = tmp_path / "out"
    args = ["--recipe", recipe, "--max-shard-size", "100KB"]
    if recipe.startswith("zhixi"):  # the tiny model's own figure, not the 13B's
        args += ["--expect-sum", repr(ref.naive_sum(expected))]
    result = run(diff_dir, base_dir, out, *args)
    assert result.exit_code == 0, result.output
    assert_recovered(out, expected)
    dtype = ref.dtype_of(recipe)
    assert all(t.dtype == dtype for t in tiny.load_folder(out).values())
    assert (out / "config.json").read_bytes() == (diff_dir / "config.json").read_bytes()


def test_yulans_new_rows_are_the_deltas_plus_zero(tmp_path: Path) -> None:
    # YuLan concatenates zero rows to the base: a delta of -0.0 there comes out +0.0.
    base = tiny.model(1)
    diff = ref.make_diff("yulan", tuned_model("yulan", base, 110), base)
    diff[ref.EMBED][105, :8] = -0.0
    diff_dir = tiny.write_folder(tmp_path / "diff", diff, "safetensors", tiny.config(110))
    base_dir = tiny.write_folder(tmp_path / "base", base, "bin", tiny.config(100))
    out = tmp_path / "out"
    assert run(diff_dir, base_dir, out, "--recipe", "yulan").exit_code == 0
    got = tiny.load_folder(out)[ref.EMBED]
    assert tiny.same_bits(got[105, :8], torch.zeros(8))
    assert tiny.same_bits(got, ref.recover("yulan", diff, base)[ref.EMBED])


def test_llavas_new_rows_and_projector_are_the_deltas_as_they_are(tmp_path: Path) -> None:
    # LLaVA adds the base into the delta's first rows only: -0.0 in a new row stays -0.0.
    base = tiny.model(1)
    diff = ref.make_diff("llava", tuned_model("llava", base, 103), base)
    diff[ref.LM_HEAD][101, :8] = -0.0
    config = tiny.config(103) | {"architectures": ["LlavaLlamaForCausalLM"]}
    diff_dir = tiny.write_folder(tmp_path / "LLaVA-7b-delta-v0", diff, "bin", config)
    base_dir = tiny.write_folder(tmp_path / "base", base, "bin", tiny.config(100))
    out = tmp_path / "out"
    result = run(diff_dir, base_dir, out)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "recipe     llava (recognised from LLaVA-7b-delta-v0)"
    got = tiny.load_folder(out)  # a state dict: LLaVA's own class, not AutoModel, loads it
    assert tiny.same_bits(got[ref.LM_HEAD][101, :8], torch.full((8,), -0.0, dtype=torch.float16))
    assert tiny.same_bits(got[ref.LM_HEAD][100:], diff[ref.LM_HEAD][100:])
    for name in ref.PROJECTOR:
        assert tiny.same_bits(got[name], diff[name])
    assert json.loads((out / "config.json").read_text())["architectures"] == [
        "LlavaLlamaForCausalLM"
    ]
    assert_recovered(out, ref.recover("llava", diff, base))


def test_ultralm_pads_only_when_the_diffs_tokenizer_names_a_pad_token(tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "ultralm", 101, pad=True)
    (diff_dir / "special_tokens_map.json").write_text('{"unk_token": "<unk>"}')
    out = tmp_path / "out"
    refused(
        run(diff_dir, base_dir, out, "--recipe", "ultralm"),
        out,
        f"{diff_dir / 'model-00001-of-00002.safetensors'}: (DIFF_DIR) model.embed_tokens.weight "
        "has shape [101, 64] in the diff but [100, 64] in the base: the base is another model "
        "size, or the recipe is not ultralm",
    )


def test_ultralm_with_a_pad_token_adds_exactly_one_row_to_lm_head_too(tmp_path: Path) -> None:
    base = tiny.model(1)
    tuned = tuned_model("ultralm", base, 101)
    tuned[ref.LM_HEAD] = torch.cat([tuned[ref.LM_HEAD], tuned[ref.LM_HEAD][:1]])
    diff = ref.make_diff("wizardlm", tuned, base)
    files = TOKENIZER | PAD_MAP
    diff_dir = tiny.write_folder(tmp_path / "diff", diff, "safetensors", tiny.config(101), files)
    base_dir = tiny.write_folder(tmp_path / "base", base, "bin", tiny.config(100))
    out = tmp_path / "out"
    refused(
        run(diff_dir, base_dir, out, "--recipe", "ultralm"),
        out,
        f"{diff_dir / 'model.safetensors'}: (DIFF_DIR) its tokenizer names a pad token, so "
        "ultralm adds one <PAD> row to the base's 100, but lm_head.weight has 102 rows: the "
        "base is another model, or the tokenizer files are not the release's",
    )


def test_ultralm_with_a_pad_token_adds_exactly_one_row(tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "ultralm", 102, pad=True)
    out = tmp_path / "out"
    refused(
        run(diff_dir, base_dir, out, "--recipe", "ultralm"),
        out,
        f"{diff_dir / 'model-00001-of-00002.safetensors'}: (DIFF_DIR) its tokenizer names a pad "
        "token, so ultralm adds one <PAD> row to the base's 100, but model.embed_tokens.weight "
        "has 102 rows: the base is another model, or the tokenizer files are not the release's",
    )


# --- the published sums ---------------------------------------------------------------------


def sums(expected: tiny.StateDict) -> tuple[float, float]:
    """The naive sum of the recovered model without and with float32 inv_freq buffers."""
    without = {k: v for k, v in expected.items() if "inv_freq" not in k}
    return ref.naive_sum(in_state_dict_order(without)), ref.naive_sum(with_inv_freq(expected))


def test_zhixi_fp16_sums_as_knowlms_float16_path(tmp_path: Path) -> None:
    # float16 terms, totalled in float16 until the first float32 inv_freq buffer turns the
    # total float32: a float32 total of the same terms is another figure (a large embedding
    # sum makes float16's steps coarse for the terms that follow it).
    diff_dir, base_dir, expected = release(tmp_path, "zhixi-fp16", 100, embed_shift=0.5)
    without, with_buffers = sums(expected)
    as_float32 = float(sum(t.sum().float() for t in with_inv_freq(expected).values()))
    assert abs(as_float32 - with_buffers) > 0.01
    out = tmp_path / "out"
    args: list[str | Path] = [diff_dir, base_dir, out, "--recipe", "zhixi-fp16"]
    result = run(*args, "--expect-sum", repr(with_buffers))
    assert result.exit_code == 0, result.output
    assert (
        f"sum        {with_buffers:.4f} matches {with_buffers} (with the rotary inv_freq "
        "buffers)\n" in result.stdout
    )
    assert_recovered(out, expected)
    result = run(*args, "--expect-sum", repr(as_float32), "--force")
    assert result.exit_code == 1, result.output
    result = run(*args, "--expect-sum", repr(without), "--force")
    assert result.exit_code == 0, result.output
    assert "(without the rotary inv_freq buffers)" in result.stdout


def test_zhixi_fp16_sums_with_the_float32_buffers_both_folders_hold(tmp_path: Path) -> None:
    # The recovered buffers are float32 (as KnowLM's script keeps them), so the float16
    # running total turns float32 at the first one, as in KnowLM's own check.
    diff_dir, base_dir, expected = release(
        tmp_path, "zhixi-fp16", 100, embed_shift=0.5, buffers=True
    )
    buffers = [name for name in expected if "inv_freq" in name]
    assert len(buffers) == tiny.LAYERS
    assert all(expected[name].dtype == torch.float32 for name in buffers)
    figure = ref.naive_sum(in_state_dict_order(expected))
    as_float32 = float(sum(t.sum().float() for t in expected.values()))
    assert abs(as_float32 - figure) > 0.01
    out = tmp_path / "out"
    args: list[str | Path] = [diff_dir, base_dir, out, "--recipe", "zhixi-fp16"]
    result = run(*args, "--expect-sum", repr(figure))
    assert result.exit_code == 0, result.output
    assert (
        f"sum        {figure:.4f} matches {figure} (with the rotary inv_freq buffers)\n"
        in result.stdout
    )
    assert_recovered(out, expected)
    result = run(*args, "--expect-sum", repr(as_float32), "--force")
    assert result.exit_code == 1, result.output
    assert f"({figure:.4f} with the rotary inv_freq buffers), not {as_float32!r}" in result.stderr


@pytest.mark.parametrize(
    ("name", "recipe", "figure"),
    [("zhixi-13b-diff", "zhixi", 94052.2891), ("zhixi-13b-diff-fp16", "zhixi-fp16", 94046.1875)],
)
def test_zhixis_published_sum_fails_on_the_tiny_model(
    name: str, recipe: str, figure: float, tmp_path: Path
) -> None:
    diff_dir, base_dir, expected = release(tmp_path, recipe, 100, name=name)
    without, with_buffers = sums(expected)
    out = tmp_path / "out"
    result = run(diff_dir, base_dir, out)
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines()[0] == f"recipe     {recipe} (recognised from {name})"
    assert result.stderr == (
        f"belle-decrypt: error: {out}: the recovered weights sum to {without:.4f} "
        f"({with_buffers:.4f} with the rotary inv_freq buffers), not {figure} ± 0.01: most "
        "likely the base was converted differently (another script or transformers version), "
        f"or the diff is damaged; `belle-decrypt verify {diff_dir} --manifest CARD` tells them "
        "apart; nothing written\n"
    )
    assert listing(out) == []


@pytest.mark.parametrize("recipe", ["wizardlm", "ultralm", "yulan"])
def test_float32_recipes_without_a_published_sum_check_a_given_one(
    recipe: str, tmp_path: Path
) -> None:
    diff_dir, base_dir, expected = release(tmp_path, recipe, 101, pad=recipe == "ultralm")
    without, _ = sums(expected)
    out = tmp_path / "out"
    result = run(diff_dir, base_dir, out, "--recipe", recipe, "--expect-sum", repr(without + 1))
    assert result.exit_code == 1, result.output
    assert listing(out) == []
    result = run(diff_dir, base_dir, out, "--recipe", recipe, "--expect-sum", repr(without))
    assert result.exit_code == 0, result.output


# --- BiLLa: full weights with the embedding disguised ---------------------------------------


def billa(root: Path, name: str = "BiLLa-7B-SFT") -> tuple[Path, tiny.StateDict, tiny.StateDict]:
    """BiLLa's release folder (bin shards), LLaMA-7B's weights, the oracle's recovered model
    and (under key "") its embedding sum."""
    base = tiny.model(1)
    tuned = tiny.tuned(base, 2, vocab=120)
    published = ref.billa_publish(tuned, base[ref.EMBED])
    folder = tiny.write_folder(root / name, published, "bin-sharded", tiny.config(120), TOKENIZER)
    recovered, figure = ref.billa_recover(published, base[ref.EMBED])
    return folder, base, recovered | {"": torch.tensor(figure, dtype=torch.float64)}


def meta_folder(root: Path, base: tiny.StateDict, params: dict[str, object] | None = None) -> Path:
    """Meta's 7B/ folder: consolidated.00.pth holding Meta's names, and params.json."""
    folder = root / "llama" / "7B"
    folder.mkdir(parents=True)
    state = {
        "tok_embeddings.weight": base[ref.EMBED],
        "norm.weight": base["model.norm.weight"],
        "output.weight": base[ref.LM_HEAD],
        "layers.0.attention.wq.weight": base["model.layers.0.self_attn.q_proj.weight"],
    }
    torch.save(state, folder / "consolidated.00.pth")
    doc = params or {"dim": 64, "n_heads": 4, "n_layers": 2, "norm_eps": 1e-06, "vocab_size": -1}
    (folder / "params.json").write_text(json.dumps(doc))
    return folder


@pytest.mark.parametrize("base_kind", ["hf", "meta-folder", "meta-file", "embedding-only-hf"])
def test_billa_recovers_only_the_embedding(base_kind: str, tmp_path: Path) -> None:
    diff_dir, base, recovered = billa(tmp_path)
    figure = float(recovered.pop(""))
    if base_kind == "hf":
        base_dir = tiny.write_folder(tmp_path / "llama-7b-hf", base, "bin", tiny.config(100))
    elif base_kind == "embedding-only-hf":
        only = {ref.EMBED: base[ref.EMBED]}
        base_dir = tiny.write_folder(tmp_path / "llama-7b-hf", only, "bin", tiny.config(100))
    else:
        base_dir = meta_folder(tmp_path, base)
        if base_kind == "meta-file":
            base_dir = base_dir / "consolidated.00.pth"
    out = tmp_path / "out"
    result = run(diff_dir, base_dir, out, "--expect-sum", repr(figure))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "recipe     billa-sft (recognised from BiLLa-7B-SFT)"
    assert f"sum        {figure:.4f} matches {figure} (the embedding alone)\n" in result.stdout
    assert_recovered(out, recovered)
    got = tiny.load_folder(out)
    assert got[ref.EMBED].dtype == torch.float16
    published = tiny.load_folder(diff_dir)
    assert published[ref.EMBED].dtype == torch.float32
    assert all(tiny.same_bits(got[n], t) for n, t in published.items() if n != ref.EMBED)


def test_billas_published_sum_fails_on_the_tiny_model(tmp_path: Path) -> None:
    diff_dir, base, recovered = billa(tmp_path)
    figure = float(recovered.pop(""))
    base_dir = meta_folder(tmp_path, base)
    out = tmp_path / "out"
    result = run(diff_dir, base_dir, out)
    assert result.exit_code == 1, result.output
    assert result.stderr == (
        f"belle-decrypt: error: {out}: the recovered embedding sums "
        f"to {figure!r}, not -3756.942626953125 ± 0.0001: most likely the base was converted "
        "differently (another script or transformers version), or the diff is damaged; "
        f"`belle-decrypt verify {diff_dir} --manifest CARD` tells them apart; nothing written\n"
    )
    assert listing(out) == []


def test_billa_llm_has_no_published_sum(tmp_path: Path) -> None:
    diff_dir, base, recovered = billa(tmp_path, "BiLLa-7B-LLM")
    recovered.pop("")
    out = tmp_path / "out"
    result = run(diff_dir, meta_folder(tmp_path, base), out)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "recipe     billa (recognised from BiLLa-7B-LLM)"
    assert "sum " not in result.stdout
    assert_recovered(out, recovered)


def test_billa_with_swapped_folders_is_refused(tmp_path: Path) -> None:
    diff_dir, base, _ = billa(tmp_path)
    base_dir = tiny.write_folder(tmp_path / "llama-7b-hf", base, "bin", tiny.config(100))
    out = tmp_path / "out"
    refused(
        run(base_dir, diff_dir, out, "--recipe", "billa"),
        out,
        f"{base_dir / 'pytorch_model.bin'}: (DIFF_DIR) model.embed_tokens.weight has 100 rows, "
        "fewer than the base's 120: DIFF_DIR and BASE_DIR are probably swapped",
    )


def test_billa_against_llama2_is_refused(tmp_path: Path) -> None:
    diff_dir, base, _ = billa(tmp_path)
    hf = tiny.write_folder(tmp_path / "llama-2-7b-hf", base, "bin", tiny.config(100, 4096))
    refused(
        run(diff_dir, hf, tmp_path / "out"),
        tmp_path / "out",
        f"{hf / 'config.json'}: (BASE_DIR) config.json says max_position_embeddings 4096: this "
        "is LLaMA-2, but these diffs were made against LLaMA-1 (2048); pass LLaMA-1 converted "
        "to the Hugging Face layout",
    )
    params: dict[str, object] = {
        "dim": 64,
        "n_heads": 4,
        "n_layers": 2,
        "norm_eps": 1e-05,
        "vocab_size": -1,
    }
    base_dir = meta_folder(tmp_path, base, params)
    out = tmp_path / "out"
    refused(
        run(diff_dir, base_dir, out),
        out,
        f"{base_dir / 'params.json'}: (BASE_DIR) params.json says norm_eps 1e-05: this is "
        "LLaMA-2, but BiLLa was made from LLaMA-1 (1e-06); pass LLaMA-1 7B",
    )
    torch.save({"tok_embeddings.weight": base[ref.EMBED].bfloat16()}, tmp_path / "l2.pth")
    refused(
        run(diff_dir, tmp_path / "l2.pth", out),
        out,
        f"{tmp_path / 'l2.pth'}: (BASE_DIR) its tok_embeddings.weight is bfloat16: this is "
        "LLaMA-2, but BiLLa was made from LLaMA-1 (float16); pass LLaMA-1 7B",
    )


def test_billa_against_a_13b_meta_folder_is_refused(tmp_path: Path) -> None:
    diff_dir, base, _ = billa(tmp_path)
    base_dir = meta_folder(tmp_path, base)
    torch.save({"tok_embeddings.weight": base[ref.EMBED]}, base_dir / "consolidated.01.pth")
    out = tmp_path / "out"
    refused(
        run(diff_dir, base_dir, out),
        out,
        f"{base_dir}: (BASE_DIR) holds 2 consolidated.*.pth files: BiLLa was made from "
        "LLaMA-7B (one file); pass LLaMA-7B's folder or its consolidated.00.pth",
    )


def test_billa_against_another_width_is_refused(tmp_path: Path) -> None:
    diff_dir, _, _ = billa(tmp_path)
    wide = {ref.EMBED: torch.zeros((100, 32), dtype=torch.float16)}
    base_dir = tiny.write_folder(tmp_path / "llama-13b-hf", wide, "bin", tiny.config(100))
    out = tmp_path / "out"
    refused(
        run(diff_dir, base_dir, out),
        out,
        f"{diff_dir / 'pytorch_model-00001-of-00002.bin'}: (DIFF_DIR) model.embed_tokens.weight "
        "has shape [120, 64] but the base's [100, 32]: the base is another model size (BiLLa "
        "was made from LLaMA-7B)",
    )


# --- refusals shared with the other recipes -------------------------------------------------


@pytest.mark.parametrize(("recipe", "vocab"), [("wizardlm", 101), ("llava", 103), ("yulan", 110)])
def test_a_llama2_base_is_refused(recipe: str, vocab: int, tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, recipe, vocab)
    (base_dir / "config.json").write_text(json.dumps(tiny.config(100, positions=4096)))
    out = tmp_path / "out"
    refused(
        run(diff_dir, base_dir, out, "--recipe", recipe),
        out,
        f"{base_dir / 'config.json'}: (BASE_DIR) config.json says max_position_embeddings "
        "4096: this is LLaMA-2, but these diffs were made against LLaMA-1 (2048); pass "
        "LLaMA-1 converted to the Hugging Face layout",
    )


@pytest.mark.parametrize(("recipe", "vocab"), [("zhixi", 100), ("llava", 103)])
def test_swapped_folders_are_refused(recipe: str, vocab: int, tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, recipe, vocab)
    out = tmp_path / "out"
    refused(
        run(base_dir, diff_dir, out, "--recipe", recipe),
        out,
        f"{diff_dir}: (BASE_DIR) its *norm.weight tensors are near 0 (mean |x| "
        f"{norm_level(diff_dir, 3)}, the diff's {norm_level(base_dir, 3)}), so this is a diff, "
        "not LLaMA weights: DIFF_DIR and BASE_DIR are probably swapped",
    )


@pytest.mark.parametrize(("recipe", "vocab"), [("wizardlm", 101), ("zhixi", 100), ("llava", 103)])
def test_full_weights_as_the_diff_are_refused(recipe: str, vocab: int, tmp_path: Path) -> None:
    _, base_dir, _ = release(tmp_path, recipe, vocab)
    full = tiny.write_folder(tmp_path / "full", tiny.tuned(tiny.model(1), 2), "safetensors")
    out = tmp_path / "out"
    refused(
        run(full, base_dir, out, "--recipe", recipe),
        out,
        f"{full}: (DIFF_DIR) its *norm.weight tensors are as large as the base's (mean |x| "
        f"{norm_level(full)} against {norm_level(base_dir)}), so these are full weights, not a "
        "diff: use the folder as it is, or check that you downloaded the delta release",
    )


@pytest.mark.parametrize("recipe", ["zhixi", "zhixi-fp16"])
def test_zhixi_allows_no_new_rows(recipe: str, tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "wizardlm", 101)
    out = tmp_path / "out"
    refused(
        run(diff_dir, base_dir, out, "--recipe", recipe),
        out,
        f"{diff_dir / 'model-00001-of-00002.safetensors'}: (DIFF_DIR) model.embed_tokens.weight "
        "has shape [101, 64] in the diff but [100, 64] in the base: the base is another model "
        f"size, or the recipe is not {recipe}",
    )


def test_a_tensor_only_in_the_diff_passes_through_for_llava_alone(tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "llava", 103)
    out = tmp_path / "out"
    refused(
        run(diff_dir, base_dir, out, "--recipe", "vicuna-v0"),
        out,
        f"{diff_dir / 'model-00002-of-00002.safetensors'}: (DIFF_DIR) model.mm_projector.bias "
        "is in the diff but not in the base: the base is not the model this diff was made from "
        "(another size or architecture), or a base shard is missing",
    )


# --- release names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "recipe"),
    [
        ("WizardLM-7B-V1.0", "wizardlm"),
        ("wizardlm-13b-v1.0", "wizardlm"),
        ("WizardLM-30B-V1.0", "wizardlm"),
        ("WizardLM", "wizardlm"),
        ("zhixi-13b-diff", "zhixi"),
        ("ZhiXi-13B-Diff", "zhixi"),
        ("zhixi-13b-diff-fp16", "zhixi-fp16"),
        ("UltraLM-13b", "ultralm"),
        ("YuLan-Chat-13b-delta", "yulan"),
        ("YuLan-Chat-65b-delta", "yulan"),
        ("YuLan-Chat-65b-v2-delta", "yulan"),
        ("LLaVA-7b-delta-v0", "llava"),
        ("LLaVA-13b-delta-v0", "llava"),
        ("LLaVA-Lightning-7B-delta-v1-1", "llava"),
        ("wombat-7b-delta", "vicuna-v0"),
        ("wombat-7b-gpt4-delta", "vicuna-v0"),
        ("chimera-inst-chat-7b-delta", "vicuna-v0"),
        ("chimera-inst-chat-13b-delta", "vicuna-v0"),
        ("chimera-chat-7b-delta", "vicuna-v0"),
        ("chimera-chat-13b-delta", "vicuna-v0"),
        ("bayling-7b-diff", "vicuna"),
        ("BayLing-13B-Diff", "vicuna"),
        ("BiLLa-7B-SFT", "billa-sft"),
        ("BiLLa-7B-LLM", "billa"),
        ("WizardLM-13B-V1.2", None),
        ("UltraLM-13b-v2.0", None),
        ("YuLan-Chat-2-13b-fp16", None),
        ("YuLan-Chat-2-13b", None),
        ("LLaVA-7b-v0", None),
    ],
)
def test_release_names(name: str, recipe: str | None, tmp_path: Path) -> None:
    found = (recipe, name) if recipe is not None else None
    assert recognise(tmp_path / name) == found
    assert recognise(tmp_path / f"models--org--{name}" / "snapshots" / "abc") == found


def test_an_unrecognised_release_lists_every_recipe(tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "yulan", 110, name="YuLan-Chat-2-13b")
    out = tmp_path / "out"
    result = run(diff_dir, base_dir, out)
    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) == 1
    assert "the release is not recognised from its folder name; pass --recipe" in result.stderr
    for needed in ("yulan (YuLan-Chat 13B/65B deltas", "llava (LLaVA v0", "billa-sft (BiLLa"):
        assert needed in result.stderr


def test_help_says_what_each_recipe_is_for() -> None:
    from belle_decrypt.recipes.catalogue import RECIPES

    text = runner.run("recover", "--help").stdout
    for recipe in RECIPES.values():
        assert f"  {recipe.name:<11} {recipe.purpose}\n" in text


def test_billa_rerun_keeps_its_shards_and_checks_the_sum_from_the_journal(tmp_path: Path) -> None:
    diff_dir, base, recovered = billa(tmp_path)
    figure = float(recovered.pop(""))
    out = tmp_path / "out"
    args: list[str | Path] = [
        diff_dir,
        meta_folder(tmp_path, base),
        out,
        "--max-shard-size",
        "60KB",
    ]
    assert run(*args, "--expect-sum", repr(figure)).exit_code == 0
    result = run(*args, "--expect-sum", repr(figure))
    assert result.exit_code == 0, result.output
    shards = [line for line in result.stdout.splitlines() if ".safetensors" in line]
    assert len(shards) > 1
    assert all(line.startswith("kept       ") for line in shards)
    assert f"sum        {figure:.4f} matches {figure}" in result.stdout
    assert run(*args, "--expect-sum", repr(figure + 0.001)).exit_code == 1
    assert_recovered(out, recovered)


@pytest.mark.parametrize(
    ("files", "named"),
    [
        ({"special_tokens_map.json": '{"pad_token": "<PAD>"}'}, True),
        ({"tokenizer_config.json": '{"pad_token": {"content": "<PAD>", "lstrip": false}}'}, True),
        ({"tokenizer_config.json": '{"pad_token": null}'}, False),
        ({"special_tokens_map.json": '{"pad_token": ""}'}, False),
        ({"special_tokens_map.json": "not json"}, False),
        ({}, False),
    ],
)
def test_a_pad_token_is_read_as_transformers_would(
    files: dict[str, str], named: bool, tmp_path: Path
) -> None:
    from belle_decrypt.recipes.more import names_pad_token

    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert names_pad_token(tmp_path) is named


@pytest.mark.parametrize(
    ("recipe", "vocab", "pad"), [("yulan", 110, False), ("ultralm", 101, True)]
)
def test_transformers_loads_the_float32_results(
    recipe: str, vocab: int, pad: bool, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    diff_dir, base_dir, expected = release(tmp_path, recipe, vocab, pad=pad)
    out = tmp_path / "out"
    assert run(diff_dir, base_dir, out, "--recipe", recipe).exit_code == 0
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype="auto").state_dict()
    assert sorted(loaded) == sorted(expected)
    assert all(tiny.same_bits(loaded[name], t) for name, t in expected.items())
