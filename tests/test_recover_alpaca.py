"""`recover` for Stanford Alpaca and Tulu: float32, a mean-initialised [PAD] row, and
Alpaca's integrity sum (float32, state-dict order, with and without the inv_freq buffers)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import Result

from belle_decrypt.tensors.llama import state_dict_key
from tests import reference_recover as ref
from tests import runner
from tests import tinyllama as tiny
from tests.conftest import listing
from tests.test_recover import KILLER, TOKENIZER, assert_recovered


def run(*args: str | Path) -> Result:
    return runner.run("recover", *args)


def release(
    root: Path,
    recipe: str = "alpaca",
    diff_layout: str = "safetensors-sharded",
    base_dtype: torch.dtype = torch.float16,
    *,
    inv: bool = False,
) -> tuple[Path, Path, tiny.StateDict]:
    """A base (float16 by default), a float32 diff made as ``tuned - resized base``, and the
    oracle's recovered weights."""
    base = tiny.model(1, dtype=base_dtype, inv=inv)
    tuned = tiny.tuned({k: v.float() for k, v in base.items()}, 2, vocab=101)
    diff = ref.make_diff(recipe, tuned, base)
    diff_dir = tiny.write_folder(
        root / "diff", diff, diff_layout, tiny.config(101, dtype="float32"), TOKENIZER
    )
    base_dir = tiny.write_folder(root / "base", base, "bin", tiny.config(100))
    return diff_dir, base_dir, ref.recover(recipe, diff, base)


def in_state_dict_order(state: tiny.StateDict) -> tiny.StateDict:
    return {name: state[name] for name in sorted(state, key=state_dict_key)}


def with_inv_freq(state: tiny.StateDict) -> tiny.StateDict:
    """The recovered state dict as transformers <= 4.30 held it: inv_freq buffers included."""
    full = dict(state)
    for n in range(tiny.LAYERS):
        full.setdefault(f"model.layers.{n}.self_attn.rotary_emb.inv_freq", tiny.inv_freq())
    return in_state_dict_order(full)


def figures(expected: tiny.StateDict) -> tuple[float, float]:
    """Stanford's sum of the recovered weights, without and with the inv_freq buffers."""
    without = {k: v for k, v in expected.items() if "inv_freq" not in k}
    return ref.alpaca_sum(in_state_dict_order(without)), ref.alpaca_sum(with_inv_freq(expected))


@pytest.mark.parametrize("recipe", ["alpaca", "tulu"])
@pytest.mark.parametrize("base_dtype", [torch.float16, torch.float32])
def test_float32_recipes_are_bit_exact(
    recipe: str, base_dtype: torch.dtype, tmp_path: Path
) -> None:
    diff_dir, base_dir, expected = release(tmp_path, recipe, base_dtype=base_dtype)
    out = tmp_path / "out"
    without, _ = figures(expected)
    extra = ["--expect-sum", repr(without)] if recipe == "alpaca" else []
    result = run(diff_dir, base_dir, out, "--recipe", recipe, "--max-shard-size", "100KB", *extra)
    assert result.exit_code == 0, result.output
    assert_recovered(out, expected)
    assert all(t.dtype == torch.float32 for t in tiny.load_folder(out).values())


def test_pad_row_is_the_mean_of_the_base_rows(tmp_path: Path) -> None:
    diff_dir, base_dir, expected = release(tmp_path, "tulu")
    out = tmp_path / "out"
    assert run(diff_dir, base_dir, out, "--recipe", "tulu").exit_code == 0
    base = tiny.model(1)["model.embed_tokens.weight"].float()
    diff = tiny.load_folder(diff_dir)["model.embed_tokens.weight"]
    got = tiny.load_folder(out)["model.embed_tokens.weight"]
    mean = base.mean(dim=0, keepdim=True)
    assert torch.allclose(got[100:] - diff[100:], mean, rtol=1e-6, atol=1e-7)
    assert tiny.same_bits(got, expected["model.embed_tokens.weight"])


def test_the_tiny_models_own_figure_passes(tmp_path: Path) -> None:
    diff_dir, base_dir, expected = release(tmp_path)
    without, _ = figures(expected)
    out = tmp_path / "out"
    result = run(diff_dir, base_dir, out, "--recipe", "alpaca", "--expect-sum", repr(without))
    assert result.exit_code == 0, result.output
    assert (
        f"sum        {without:.4f} matches {without} (without the rotary inv_freq buffers)\n"
        in result.stdout
    )
    assert_recovered(out, expected)


def test_the_figure_with_inv_freq_buffers_passes_and_says_so(tmp_path: Path) -> None:
    diff_dir, base_dir, expected = release(tmp_path)
    without, with_buffers = figures(expected)
    assert abs(with_buffers - without) > 1
    out = tmp_path / "out"
    result = run(diff_dir, base_dir, out, "--recipe", "alpaca", "--expect-sum", repr(with_buffers))
    assert result.exit_code == 0, result.output
    assert (
        f"sum        {with_buffers:.4f} matches {with_buffers} (with the rotary inv_freq "
        "buffers)\n" in result.stdout
    )


def test_inputs_holding_inv_freq_sum_their_own_buffers(tmp_path: Path) -> None:
    diff_dir, base_dir, expected = release(tmp_path, diff_layout="bin", inv=True)
    assert "model.layers.1.self_attn.rotary_emb.inv_freq" in expected
    _, with_buffers = figures(expected)
    out = tmp_path / "out"
    result = run(diff_dir, base_dir, out, "--recipe", "alpaca", "--expect-sum", repr(with_buffers))
    assert result.exit_code == 0, result.output
    assert "(with the rotary inv_freq buffers)" in result.stdout
    assert_recovered(out, expected)


def test_the_sum_follows_the_state_dict_order_not_the_files(tmp_path: Path) -> None:
    # Large embeddings and lm_head of opposite signs make the float32 total depend on the
    # order by more than the tolerance: first and last in state-dict order, first two in the
    # files' (safetensors stores names sorted: lm_head before model.*).
    base = tiny.model(1)
    tuned = tiny.tuned({k: v.float() for k, v in base.items()}, 2, vocab=101)
    tuned["model.embed_tokens.weight"] += 100.0
    tuned["lm_head.weight"] -= 100.0
    diff = ref.make_diff("alpaca", tuned, base)
    diff_dir = tiny.write_folder(tmp_path / "diff", diff, "safetensors", tiny.config(101))
    base_dir = tiny.write_folder(tmp_path / "base", base, "bin", tiny.config(100))
    expected = ref.recover("alpaca", diff, base)
    in_order = ref.alpaca_sum(in_state_dict_order(expected))
    in_files = ref.alpaca_sum({name: expected[name] for name in sorted(expected)})
    assert abs(in_order - in_files) > 0.05
    out = tmp_path / "out"
    result = run(diff_dir, base_dir, out, "--recipe", "alpaca", "--expect-sum", repr(in_order))
    assert result.exit_code == 0, result.output
    assert f"sum        {in_order:.4f} matches {in_order} (without" in result.stdout
    result = run(diff_dir, base_dir, out, "--recipe", "alpaca", "--expect-sum", repr(in_files))
    assert result.exit_code == 1, result.output


def sum_failure(expected: float, without: float, with_buffers: float, diff_dir: Path) -> str:
    return (
        f"the recovered weights sum to {without:.4f} ({with_buffers:.4f} with the rotary "
        f"inv_freq buffers), not {expected} ± 0.01: most likely the base was converted "
        "differently (another script or transformers version), or the diff is damaged; "
        f"`belle-decrypt verify {diff_dir} --manifest CARD` tells them apart; nothing written"
    )


def test_a_figure_off_by_two_hundredths_fails_with_nothing_left(tmp_path: Path) -> None:
    diff_dir, base_dir, expected = release(tmp_path)
    without, with_buffers = figures(expected)
    wrong = round(without + 0.02, 4)
    out = tmp_path / "out"
    result = run(diff_dir, base_dir, out, "--recipe", "alpaca", "--expect-sum", str(wrong))
    assert result.exit_code == 1, result.output
    assert result.stderr == (
        f"belle-decrypt: error: {out}: {sum_failure(wrong, without, with_buffers, diff_dir)}\n"
    )
    assert listing(out) == []


def test_default_alpaca_figure_fails_on_the_tiny_model(tmp_path: Path) -> None:
    made, base_dir, expected = release(tmp_path / "release")
    diff_dir = made.rename(tmp_path / "alpaca-7b-wdiff")  # recognised by its own name
    without, with_buffers = figures(expected)
    out = tmp_path / "out"
    result = run(diff_dir, base_dir, out)
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "recipe     alpaca (recognised from alpaca-7b-wdiff)"
    assert lines[1].startswith("written    model.safetensors  ")
    assert len(lines) == 2
    assert result.stderr == (
        f"belle-decrypt: error: {out}: {sum_failure(50637.1836, without, with_buffers, diff_dir)}\n"
    )
    assert listing(out) == []


def test_sum_failure_with_a_matching_manifest_blames_the_base(tmp_path: Path) -> None:
    import hashlib

    diff_dir, base_dir, _ = release(tmp_path, diff_layout="safetensors")
    card = tmp_path / "card.txt"
    weights = diff_dir / "model.safetensors"
    card.write_text(f"{hashlib.md5(weights.read_bytes()).hexdigest()}  {weights.name}\n")
    out = tmp_path / "out"
    result = run(diff_dir, base_dir, out, "--recipe", "alpaca", "--manifest", card)
    assert result.exit_code == 1
    assert result.stderr.endswith(
        "not 50637.1836 ± 0.01: the diff matches the model card's checksums, so the base is the "
        "problem: it was converted differently (another script or transformers version) or is "
        "not the LLaMA-1 this diff was made from; nothing written\n"
    )
    assert listing(out) == []


def test_expect_sum_is_for_the_recipes_with_a_sum(tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path)
    result = run(diff_dir, base_dir, tmp_path / "out", "--recipe", "vicuna", "--expect-sum", "1")
    assert result.exit_code == 2
    assert result.stderr == (
        "belle-decrypt: error: --expect-sum applies to the recipes with a sum (alpaca, tulu, "
        "wizardlm, zhixi, zhixi-fp16, ultralm, yulan, billa, billa-sft), not vicuna\n"
    )


def test_kill_9_then_rerun_still_checks_the_whole_sum(tmp_path: Path) -> None:
    diff_dir, base_dir, expected = release(tmp_path)
    without, _ = figures(expected)
    out = tmp_path / "out"
    args = [str(diff_dir), str(base_dir), str(out), "--recipe", "alpaca"]
    args += ["--max-shard-size", "100KB", "--expect-sum", repr(without)]
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, "recover", *args], capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL
    assert [n for n in listing(out) if not n.startswith(".belle-")] == []
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].startswith("kept       model-00001-of-")
    assert f"sum        {without:.4f} matches" in result.stdout
    assert_recovered(out, expected)


def test_transformers_loads_the_alpaca_result(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    diff_dir, base_dir, expected = release(tmp_path)
    without, _ = figures(expected)
    out = tmp_path / "out"
    result = run(diff_dir, base_dir, out, "--recipe", "alpaca", "--expect-sum", repr(without))
    assert result.exit_code == 0, result.output
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype="auto").state_dict()
    assert sorted(loaded) == sorted(expected)
    assert all(tiny.same_bits(loaded[name], t) for name, t in expected.items())


@pytest.mark.parametrize(
    ("field", "value"),
    [("hidden_size", None), ("num_attention_heads", 0), ("hidden_size", "x"), ("rope_theta", -1)],
)
def test_a_config_without_a_usable_rotary_shape_is_refused_before_writing(
    field: str, value: object, tmp_path: Path
) -> None:
    diff_dir, base_dir, _ = release(tmp_path)
    config = json.loads((diff_dir / "config.json").read_text())
    config[field] = value
    (diff_dir / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    result = run(diff_dir, base_dir, out, "--recipe", "alpaca", "--expect-sum", "1")
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"belle-decrypt: error: {diff_dir / 'config.json'}: (DIFF_DIR) {field} {value!r} is not "
        "usable for the rotary inv_freq buffers the sum check adds (hidden_size and "
        "num_attention_heads must be positive whole numbers, one a multiple of the other, "
        "rope_theta a positive number); download config.json again\n"
    )
    assert listing(out) == []


@pytest.mark.parametrize("figure", ["nan", "inf", "-inf"])
def test_an_expected_sum_that_is_not_a_finite_number_is_a_usage_error(
    figure: str, tmp_path: Path
) -> None:
    diff_dir, base_dir, _ = release(tmp_path)
    out = tmp_path / "out"
    result = run(diff_dir, base_dir, out, "--recipe", "alpaca", "--expect-sum", figure)
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"belle-decrypt: error: --expect-sum {float(figure)} is not a finite number; pass the "
        "figure the release's card gives, like 50637.1836\n"
    )
    assert not out.exists()
