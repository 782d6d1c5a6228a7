"""`recover` for the float16 recipes: bit-exact against the oracle, every input layout, every
refusal, resuming after kill -9, and the recovered folder loaded by transformers."""

from __future__ import annotations

import hashlib
import os
import pickle
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import Result

from belle_decrypt.ground.errors import InputError
from belle_decrypt.recipes.catalogue import recognise
from belle_decrypt.tensors.llama import state_dict_key
from belle_decrypt.tensors.sinks.shards import parse_size
from tests import reference_recover as ref
from tests import runner
from tests import tinyllama as tiny
from tests.conftest import listing

VOCAB = {"vicuna": 100, "vicuna-v0": 101, "ziya": 120}
TOKENIZER = {"tokenizer.model": b"sentencepiece stand-in", "tokenizer_config.json": b"{}"}


def run(*args: str | Path) -> Result:
    return runner.run("recover", *args)


def release(
    root: Path,
    recipe: str,
    diff_layout: str = "safetensors",
    base_layout: str = "bin",
    *,
    diff_inv: bool = False,
    base_inv: bool = False,
) -> tuple[Path, Path, tiny.StateDict]:
    """A base folder, a diff folder made per ``recipe``, and the oracle's recovered weights."""
    base = tiny.model(1, inv=base_inv)
    tuned = tiny.tuned(tiny.model(1, inv=diff_inv), 2, vocab=VOCAB[recipe])
    diff = ref.make_diff(recipe, tuned, base if not diff_inv else tiny.model(1, inv=True))
    vocab = VOCAB[recipe]
    diff_dir = tiny.write_folder(
        root / "diff", diff, diff_layout, tiny.config(vocab), extra_files=TOKENIZER
    )
    base_dir = tiny.write_folder(root / "base", base, base_layout, tiny.config(100))
    return diff_dir, base_dir, ref.recover(recipe, diff, base)


def assert_recovered(out: Path, expected: tiny.StateDict) -> None:
    got = tiny.load_folder(out)
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert tiny.same_bits(got[name], tensor), name


@pytest.mark.parametrize("recipe", ["vicuna", "vicuna-v0", "ziya"])
def test_each_recipe_is_bit_exact(recipe: str, tmp_path: Path) -> None:
    diff_dir, base_dir, expected = release(tmp_path, recipe)
    out = tmp_path / "out"
    result = run(diff_dir, base_dir, out, "--recipe", recipe, "--max-shard-size", "60KB")
    assert result.exit_code == 0, result.output
    assert_recovered(out, expected)
    names = listing(out)
    assert names == [
        ".belle-recover.json",
        "config.json",
        "model-00001-of-00004.safetensors",
        "model-00002-of-00004.safetensors",
        "model-00003-of-00004.safetensors",
        "model-00004-of-00004.safetensors",
        "model.safetensors.index.json",
        "tokenizer.model",
        "tokenizer_config.json",
    ]
    lines = result.stdout.splitlines()
    assert lines[0] == f"recipe     {recipe} (given)"
    assert lines[1].startswith("written    model-00001-of-00004.safetensors  ")
    assert lines[5] == "copied     config.json, tokenizer.model, tokenizer_config.json"
    assert lines[6].startswith(f"recovered  {out}: 4 shards, ")
    assert (out / "config.json").read_bytes() == (diff_dir / "config.json").read_bytes()


def test_vicuna_v0_new_row_is_the_deltas_and_zero_sign_follows_fastchat(tmp_path: Path) -> None:
    # FastChat adds a zero row: a delta of -0.0 there comes out +0.0 (-0.0 + 0.0), not -0.0.
    base = tiny.model(1)
    diff = ref.make_diff("vicuna-v0", tiny.tuned(base, 2, vocab=101), base)
    diff["lm_head.weight"][100, :8] = -0.0
    diff_dir = tiny.write_folder(tmp_path / "diff", diff, "safetensors", tiny.config(101))
    base_dir = tiny.write_folder(tmp_path / "base", base, "bin", tiny.config(100))
    out = tmp_path / "out"
    assert run(diff_dir, base_dir, out, "--recipe", "vicuna-v0").exit_code == 0
    got = tiny.load_folder(out)["lm_head.weight"]
    assert got.shape == (101, tiny.HIDDEN)
    assert tiny.same_bits(got[100, :8], torch.zeros(8, dtype=torch.float16))
    assert tiny.same_bits(got[100:], diff["lm_head.weight"][100:] + 0.0)
    assert tiny.same_bits(got, ref.recover("vicuna-v0", diff, base)["lm_head.weight"])


@pytest.mark.parametrize("diff_layout", tiny.LAYOUTS)
@pytest.mark.parametrize("base_layout", ["safetensors-sharded", "bin-sharded-noindex"])
def test_every_input_layout(diff_layout: str, base_layout: str, tmp_path: Path) -> None:
    diff_dir, base_dir, expected = release(tmp_path, "vicuna", diff_layout, base_layout)
    out = tmp_path / "out"
    result = run(diff_dir, base_dir, out, "--recipe", "vicuna", "-q")
    assert result.exit_code == 0, result.output
    assert result.output == ""
    assert_recovered(out, expected)
    assert listing(out)[2] == "model.safetensors"


def test_hub_cache_snapshots_are_recognised_and_followed(tmp_path: Path) -> None:
    diff_dir, base_dir, expected = release(tmp_path / "made", "vicuna", "bin-sharded")
    cache = tmp_path / "hub"
    snapshot = tiny.as_hub_cache(diff_dir, cache, "lmsys/vicuna-7b-delta-v1.1")
    base_snapshot = tiny.as_hub_cache(base_dir, cache, "someone/llama-7b-hf")
    out = tmp_path / "out"
    result = run(snapshot, base_snapshot, out)
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    assert first == "recipe     vicuna (recognised from vicuna-7b-delta-v1.1)"
    assert result.stdout.splitlines()[-1].startswith(f"recovered  {out}: 1 shard, ")
    assert_recovered(out, expected)
    assert not any(p.is_symlink() for p in out.iterdir())


@pytest.mark.parametrize(
    ("name", "recipe"),
    [
        ("vicuna-13b-delta-v0", "vicuna-v0"),
        ("stable-vicuna-13b-delta", "vicuna-v0"),
        ("vicuna-7b-delta-v1.1", "vicuna"),
        ("Ziya-LLaMA-13B-v1", "ziya"),
        ("alpaca-7b-wdiff", "alpaca"),
        ("tulu-65b", "tulu"),
        ("tulu-2-7b", None),
        ("vicuna-7b-v1.5", None),
    ],
)
def test_release_names(name: str, recipe: str | None, tmp_path: Path) -> None:
    found = (recipe, name) if recipe is not None else None
    assert recognise(tmp_path / name) == found
    assert recognise(tmp_path / f"models--org--{name}" / "snapshots" / "abc") == found
    assert recognise(tmp_path / f"models--org--{name}") == found


def test_a_parent_folders_name_is_not_the_release(tmp_path: Path) -> None:
    """A vicuna diff kept under a folder named like Ziya must not silently get ziya's recipe."""
    assert recognise(tmp_path / "Ziya-LLaMA-13B-v1" / "mydiff") is None
    assert recognise(tmp_path / "vicuna-7b-delta-v1.1" / "snapshots" / "abc") is None
    inner = tmp_path / "alpaca-7b-wdiff" / "copy"
    inner.mkdir(parents=True)
    linked = tmp_path / "tulu-7b"
    linked.symlink_to(inner)
    assert recognise(linked) == ("tulu", "tulu-7b")


def test_diff_with_inv_freq_against_a_base_without(tmp_path: Path) -> None:
    diff_dir, base_dir, expected = release(tmp_path, "vicuna", diff_inv=True)
    out = tmp_path / "out"
    assert run(diff_dir, base_dir, out, "--recipe", "vicuna").exit_code == 0
    assert not any("inv_freq" in name for name in expected)
    assert_recovered(out, expected)


def test_base_with_inv_freq_against_a_diff_without(tmp_path: Path) -> None:
    diff_dir, base_dir, expected = release(tmp_path, "vicuna-v0", base_inv=True)
    out = tmp_path / "out"
    assert run(diff_dir, base_dir, out, "--recipe", "vicuna-v0").exit_code == 0
    assert_recovered(out, expected)


def test_ziya_keeps_the_deltas_inv_freq(tmp_path: Path) -> None:
    diff_dir, base_dir, expected = release(tmp_path, "ziya", diff_inv=True)
    out = tmp_path / "out"
    assert run(diff_dir, base_dir, out, "--recipe", "ziya").exit_code == 0
    assert "model.layers.0.self_attn.rotary_emb.inv_freq" in expected
    assert_recovered(out, expected)


@pytest.mark.parametrize("as_bin", [False, True])
def test_transformers_loads_the_result(as_bin: bool, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    diff_dir, base_dir, expected = release(tmp_path, "vicuna-v0", "bin-sharded", "safetensors")
    out = tmp_path / "out"
    extra = ["--bin"] if as_bin else []
    result = run(
        diff_dir, base_dir, out, "--recipe", "vicuna-v0", "--max-shard-size", "80KB", *extra
    )
    assert result.exit_code == 0, result.output
    suffix = ".bin" if as_bin else ".safetensors"
    assert sum(name.endswith(suffix) for name in listing(out)) == 3
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype="auto").state_dict()
    assert sorted(loaded) == sorted(expected)
    for name, tensor in expected.items():
        assert tiny.same_bits(loaded[name], tensor), name


def test_output_order_is_the_state_dict_order(tmp_path: Path) -> None:
    names = tiny.tensor_names(inv_freq=True)
    assert sorted(reversed(names), key=state_dict_key) == names


@pytest.mark.parametrize(
    ("text", "size"),
    [("2GB", 2 * 10**9), ("500MB", 500 * 10**6), ("10GiB", 10 * 2**30), ("5Gb", 5 * 10**9 // 8)],
)
def test_shard_sizes_in_transformers_syntax(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_a_bad_shard_size_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is not a size"):
        parse_size("2 gigs")


# --- refusals: exit 2, one line, nothing written -------------------------------------------


def norm_level(folder: Path, digits: int = 2) -> str:
    """Mean |x| of a folder's norm weights, as the refusal prints it."""
    state = tiny.load_folder(folder)
    norms = [t.float().abs() for name, t in state.items() if name.endswith("norm.weight")]
    return f"{float(sum(t.sum() for t in norms)) / sum(t.numel() for t in norms):.{digits}f}"


def refused(result: Result, out: Path, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr == f"belle-decrypt: error: {message}\n"
    assert result.stdout == ""
    assert [n for n in listing(out) if not n.startswith(".belle-")] == []


def test_unrecognised_release_needs_a_recipe(tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "vicuna")
    out = tmp_path / "out"
    result = run(diff_dir, base_dir, out)
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"belle-decrypt: error: {diff_dir}: the release is not recognised from its folder "
        "name; pass --recipe, one of: vicuna (FastChat delta v1.1"
    )
    assert "ziya (Ziya-LLaMA-13B: float16, embeddings and lm_head taken from the delta)" in (
        result.stderr
    )
    assert not out.exists()


def test_llama2_base_is_refused(tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "vicuna")
    (base_dir / "config.json").write_text('{"max_position_embeddings": 4096}')
    out = tmp_path / "out"
    refused(
        run(diff_dir, base_dir, out, "--recipe", "vicuna"),
        out,
        f"{base_dir / 'config.json'}: (BASE_DIR) config.json says max_position_embeddings "
        "4096: this is LLaMA-2, but these diffs were made against LLaMA-1 (2048); pass "
        "LLaMA-1 converted to the Hugging Face layout",
    )


def test_full_weights_as_the_diff_are_refused(tmp_path: Path) -> None:
    _, base_dir, _ = release(tmp_path, "vicuna")
    full = tiny.write_folder(tmp_path / "full", tiny.tuned(tiny.model(1), 2), "safetensors")
    out = tmp_path / "out"
    refused(
        run(full, base_dir, out, "--recipe", "vicuna"),
        out,
        f"{full}: (DIFF_DIR) its *norm.weight tensors are as large as the base's (mean |x| "
        f"{norm_level(full)} against {norm_level(base_dir)}), so these are full weights, not a "
        "diff: use the folder as it is, or check that you downloaded the delta release",
    )


def test_swapped_folders_are_refused(tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "vicuna")
    out = tmp_path / "out"
    refused(
        run(base_dir, diff_dir, out, "--recipe", "vicuna"),
        out,
        f"{diff_dir}: (BASE_DIR) its *norm.weight tensors are near 0 (mean |x| "
        f"{norm_level(diff_dir, 3)}, the diff's {norm_level(base_dir, 3)}), so this is a diff, "
        "not LLaMA weights: DIFF_DIR and BASE_DIR are probably swapped",
    )


def test_a_diff_as_the_base_is_refused(tmp_path: Path) -> None:
    diff_dir, _, _ = release(tmp_path, "vicuna")
    out = tmp_path / "out"
    refused(
        run(diff_dir, diff_dir, out, "--recipe", "vicuna"),
        out,
        f"{diff_dir}: (BASE_DIR) its *norm.weight tensors are near 0 (mean |x| "
        f"{norm_level(diff_dir, 3)}), so this is a diff, not LLaMA weights; pass LLaMA-1 "
        "converted to the Hugging Face layout",
    )


def test_a_base_whose_norms_are_small_like_llamas_is_accepted(tmp_path: Path) -> None:
    # LLaMA's own RMSNorm weights are far from 1 in early layers (a few hundredths there).
    base = {
        name: (t * 0.1 if name.endswith("norm.weight") else t) for name, t in tiny.model(1).items()
    }
    diff = ref.make_diff("vicuna", tiny.tuned(base, 2), base)
    diff_dir = tiny.write_folder(tmp_path / "diff", diff, "safetensors", tiny.config(100))
    base_dir = tiny.write_folder(tmp_path / "base", base, "bin", tiny.config(100))
    assert float(norm_level(base_dir)) < 0.5
    out = tmp_path / "out"
    assert run(diff_dir, base_dir, out, "--recipe", "vicuna").exit_code == 0
    assert_recovered(out, ref.recover("vicuna", diff, base))


def test_consolidated_pth_as_the_diff_is_refused(tmp_path: Path) -> None:
    _, base_dir, _ = release(tmp_path, "vicuna")
    meta = tmp_path / "llama" / "7B"
    meta.mkdir(parents=True)
    torch.save({"tok_embeddings.weight": torch.zeros(2, 2)}, meta / "consolidated.00.pth")
    (meta / "params.json").write_text("{}")
    out = tmp_path / "out"
    refused(
        run(meta, base_dir, out, "--recipe", "vicuna"),
        out,
        f"{meta}: (DIFF_DIR) holds Meta's original consolidated.*.pth checkpoint; that is "
        "LLaMA itself, not a diff: pass it as BASE_DIR (recover reads Meta's files), or convert "
        "it with `belle-decrypt convert LLAMA_DIR OUT_DIR`",
    )


def test_folder_of_enc_files_is_refused(tmp_path: Path) -> None:
    _, base_dir, _ = release(tmp_path, "vicuna")
    enc = tmp_path / "enc"
    enc.mkdir()
    (enc / f"pytorch_model.bin.{'0' * 64}.enc").write_bytes(b"x" * 40)
    out = tmp_path / "out"
    refused(
        run(enc, base_dir, out, "--recipe", "vicuna"),
        out,
        f"{enc}: (DIFF_DIR) holds .enc files: an encrypted (XOR) release, not a weight delta; "
        "decrypt it with `belle-decrypt decrypt` instead",
    )


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    _, base_dir, _ = release(tmp_path, "vicuna")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("hi")
    out = tmp_path / "out"
    refused(
        run(empty, base_dir, out, "--recipe", "vicuna"),
        out,
        f"{empty}: (DIFF_DIR) holds no model weights to recover (no pytorch_model*.bin or "
        "*.safetensors); pass the Hugging Face model folder",
    )


def test_missing_tensor_is_refused(tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "vicuna", "bin")
    state = torch.load(diff_dir / "pytorch_model.bin", weights_only=True)
    del state["model.layers.1.mlp.up_proj.weight"]
    torch.save(state, diff_dir / "pytorch_model.bin")
    out = tmp_path / "out"
    refused(
        run(diff_dir, base_dir, out, "--recipe", "vicuna"),
        out,
        f"{base_dir / 'pytorch_model.bin'}: (BASE_DIR) model.layers.1.mlp.up_proj.weight is in "
        "the base but not in the diff: the diff is incomplete (a shard missing or damaged) or "
        "was made from another model",
    )


def test_extra_tensor_is_refused(tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "vicuna", "bin")
    state = torch.load(diff_dir / "pytorch_model.bin", weights_only=True)
    state["model.layers.2.mlp.up_proj.weight"] = torch.zeros(2, dtype=torch.float16)
    torch.save(state, diff_dir / "pytorch_model.bin")
    out = tmp_path / "out"
    refused(
        run(diff_dir, base_dir, out, "--recipe", "vicuna"),
        out,
        f"{diff_dir / 'pytorch_model.bin'}: (DIFF_DIR) model.layers.2.mlp.up_proj.weight is in "
        "the diff but not in the base: the base is not the model this diff was made from "
        "(another size or architecture), or a base shard is missing",
    )


def test_extra_vocabulary_rows_are_refused_for_vicuna(tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "vicuna-v0")
    out = tmp_path / "out"
    refused(
        run(diff_dir, base_dir, out, "--recipe", "vicuna"),
        out,
        f"{diff_dir / 'model.safetensors'}: (DIFF_DIR) model.embed_tokens.weight has shape "
        "[101, 64] in the diff but [100, 64] in the base: the base is another model size, or "
        "the recipe is not vicuna",
    )


@pytest.mark.parametrize("layout", ["safetensors-sharded", "bin-sharded"])
def test_truncated_shard_is_refused(layout: str, tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "vicuna", layout)
    shard = sorted(diff_dir.glob("*-00002-of-00002.*"))[0]
    with open(shard, "r+b") as handle:
        handle.truncate(shard.stat().st_size - 1000)
    out = tmp_path / "out"
    result = run(diff_dir, base_dir, out, "--recipe", "vicuna")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"belle-decrypt: error: {shard}: (DIFF_DIR) ")
    assert result.stderr.endswith(": truncated or damaged; download it again\n")
    assert result.stderr.count("\n") == 1
    assert not out.exists()


class NotATensor:
    """Something a weights_only load must refuse to build."""


def test_pickle_refused_by_weights_only(tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "vicuna", "bin")
    torch.save({"model.embed_tokens.weight": NotATensor()}, diff_dir / "pytorch_model.bin")
    out = tmp_path / "out"
    result = run(diff_dir, base_dir, out, "--recipe", "vicuna")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(
        f"belle-decrypt: error: {diff_dir / 'pytorch_model.bin'}: (DIFF_DIR) refused: it holds "
        "more than tensors (a weights_only load rejected it: "
    )
    assert result.stderr.endswith("); use a plain state-dict checkpoint or .safetensors\n")
    assert not out.exists()


def test_pickle_that_is_not_a_state_dict_is_refused(tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "vicuna", "bin")
    torch.save({"epoch": 3, "weights": [torch.zeros(1)]}, diff_dir / "pytorch_model.bin")
    out = tmp_path / "out"
    refused(
        run(diff_dir, base_dir, out, "--recipe", "vicuna"),
        out,
        f"{diff_dir / 'pytorch_model.bin'}: (DIFF_DIR) is not a plain state dict (a mapping "
        "of names to tensors); pass the model's pytorch_model*.bin files",
    )


def test_old_style_pickle_is_refused(tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "vicuna", "bin")
    (diff_dir / "pytorch_model.bin").write_bytes(pickle.dumps({"a": 1}))
    out = tmp_path / "out"
    refused(
        run(diff_dir, base_dir, out, "--recipe", "vicuna"),
        out,
        f"{diff_dir / 'pytorch_model.bin'}: (DIFF_DIR) is not a torch zip checkpoint (an "
        "old-style pickle, which cannot be read safely); save it again with a recent torch, "
        "or use the .safetensors files",
    )


def test_index_naming_a_missing_shard_is_refused(tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "vicuna", "safetensors-sharded")
    (diff_dir / "model-00002-of-00002.safetensors").unlink()
    out = tmp_path / "out"
    refused(
        run(diff_dir, base_dir, out, "--recipe", "vicuna"),
        out,
        f"{diff_dir / 'model.safetensors.index.json'}: (DIFF_DIR) the index lists "
        "model-00002-of-00002.safetensors, which is missing; download it",
    )


def test_output_in_an_input_folder_is_refused(tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "vicuna")
    result = run(diff_dir, base_dir, diff_dir, "--recipe", "vicuna")
    assert result.exit_code == 2
    assert result.stderr == (
        f"belle-decrypt: error: {diff_dir}: is also an input folder; pass a new output folder\n"
    )


# --- re-runs, --force, --manifest -------------------------------------------------------------


def test_second_run_keeps_every_shard(tmp_path: Path) -> None:
    diff_dir, base_dir, expected = release(tmp_path, "vicuna")
    out = tmp_path / "out"
    args = (diff_dir, base_dir, out, "--recipe", "vicuna", "--max-shard-size", "60KB")
    assert run(*args).exit_code == 0
    before = {p.name: p.stat().st_ino for p in out.iterdir()}
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.stdout.splitlines()[1:5]] == ["kept"] * 4
    assert "copied" not in result.stdout
    after = {p.name: p.stat().st_ino for p in out.iterdir() if p.name != ".belle-recover.json"}
    assert all(before[name] == inode for name, inode in after.items())
    assert_recovered(out, expected)


def test_other_files_in_the_way_need_force(tmp_path: Path) -> None:
    diff_dir, base_dir, expected = release(tmp_path, "vicuna")
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"an older model")
    result = run(diff_dir, base_dir, out, "--recipe", "vicuna")
    assert result.exit_code == 1
    assert result.stderr == (
        f"belle-decrypt: error: {out / 'model.safetensors'}: already exists and is not from "
        "this recovery; pass --force to replace it, or choose another output folder\n"
    )
    assert (out / "model.safetensors").read_bytes() == b"an older model"
    assert run(diff_dir, base_dir, out, "--recipe", "vicuna", "--force").exit_code == 0
    assert_recovered(out, expected)


def test_force_removes_weights_of_another_layout(tmp_path: Path) -> None:
    diff_dir, base_dir, expected = release(tmp_path, "vicuna")
    out = tmp_path / "out"
    assert run(diff_dir, base_dir, out, "--recipe", "vicuna", "--bin").exit_code == 0
    result = run(diff_dir, base_dir, out, "--recipe", "vicuna", "--max-shard-size", "60KB")
    assert result.exit_code == 1
    assert result.stderr == (
        f"belle-decrypt: error: {out / 'pytorch_model.bin'}: already exists and is not from "
        "this recovery; pass --force to replace it, or choose another output folder\n"
    )
    args = ("--recipe", "vicuna", "--max-shard-size", "60KB", "--force")
    assert run(diff_dir, base_dir, out, *args).exit_code == 0
    assert listing(out) == [
        ".belle-recover.json",
        "config.json",
        "model-00001-of-00004.safetensors",
        "model-00002-of-00004.safetensors",
        "model-00003-of-00004.safetensors",
        "model-00004-of-00004.safetensors",
        "model.safetensors.index.json",
        "tokenizer.model",
        "tokenizer_config.json",
    ]
    assert_recovered(out, expected)


def test_bin_output_is_kept_on_a_second_run(tmp_path: Path) -> None:
    diff_dir, base_dir, expected = release(tmp_path, "vicuna-v0", "bin")
    out = tmp_path / "out"
    args = (diff_dir, base_dir, out, "--recipe", "vicuna-v0", "--bin", "--max-shard-size", "90KB")
    assert run(*args).exit_code == 0
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.stdout.splitlines()[1:4]] == ["kept"] * 3
    assert_recovered(out, expected)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_manifest_checks_the_diff(tmp_path: Path) -> None:
    diff_dir, base_dir, expected = release(tmp_path, "vicuna", "bin-sharded")
    card = tmp_path / "card.txt"
    files = sorted(p for p in diff_dir.iterdir() if p.name.startswith("pytorch_model-"))
    card.write_text("```\n" + "".join(f"{md5(p)}  ./{p.name}\n" for p in files) + "```\n")
    out = tmp_path / "out"
    result = run(diff_dir, base_dir, out, "--recipe", "vicuna", "--manifest", card)
    assert result.exit_code == 0, result.output
    assert "manifest   2 diff files match the manifest's checksums\n" in result.stdout
    assert_recovered(out, expected)


def test_manifest_mismatch_fails_with_nothing_written(tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "vicuna", "bin-sharded")
    card = tmp_path / "card.txt"
    shard = diff_dir / "pytorch_model-00002-of-00002.bin"
    card.write_text(f"{'0' * 32}  {shard.name}\n")
    out = tmp_path / "out"
    result = run(diff_dir, base_dir, out, "--recipe", "vicuna", "--manifest", card)
    assert result.exit_code == 1, result.output
    assert result.stderr == (
        f"belle-decrypt: error: {shard}: md5 {md5(shard)} differs from the model card's "
        f"{'0' * 32} ({card}:1): the download is damaged; download it again; nothing written\n"
    )
    assert listing(out) == []


def test_sha256_card_entries_are_checked_too(tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "vicuna", "bin-sharded")
    card = tmp_path / "card.txt"
    first, second = (diff_dir / f"pytorch_model-0000{n}-of-00002.bin" for n in (1, 2))
    actual = hashlib.sha256(second.read_bytes()).hexdigest()
    card.write_text(
        f"{hashlib.sha256(first.read_bytes()).hexdigest()}  {first.name}\n"
        f"{'1' * 64}  {second.name}\n"
    )
    out = tmp_path / "out"
    result = run(diff_dir, base_dir, out, "--recipe", "vicuna", "--manifest", card)
    assert result.exit_code == 1, result.output
    assert result.stderr == (
        f"belle-decrypt: error: {second}: sha256 {actual} differs from the model card's "
        f"{'1' * 64} ({card}:2): the download is damaged; download it again; nothing written\n"
    )
    assert listing(out) == []


def test_manifest_listing_nothing_of_the_diff_is_a_usage_error(tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "vicuna")
    card = tmp_path / "card.txt"
    card.write_text(f"{'0' * 32}  other.bin\n")
    out = tmp_path / "out"
    refused(
        run(diff_dir, base_dir, out, "--recipe", "vicuna", "--manifest", card),
        out,
        f"the manifest lists none of the files in {diff_dir}; pass the model card's md5 list "
        "of this diff",
    )


# --- kill -9 mid-run, then the same command again ------------------------------------------

KILLER = """
import os, signal, sys
from belle_decrypt.tensors import journal
from belle_decrypt.cli import commands as cli
recorded = journal.Journal.record
def record(self, *args, **kwargs):
    recorded(self, *args, **kwargs)
    if len(self.shards) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
journal.Journal.record = record
cli.main()
"""


def test_changed_input_is_not_resumed(tmp_path: Path) -> None:
    diff_dir, base_dir, expected = release(tmp_path, "vicuna")
    out = tmp_path / "out"
    args = (diff_dir, base_dir, out, "--recipe", "vicuna", "--max-shard-size", "60KB")
    assert run(*args).exit_code == 0
    shutil.copy(base_dir / "pytorch_model.bin", tmp_path / "copy.bin")
    os.replace(tmp_path / "copy.bin", base_dir / "pytorch_model.bin")
    result = run(*args)
    assert result.exit_code == 1
    assert result.stderr == (
        f"belle-decrypt: error: {out / 'model-00001-of-00004.safetensors'}: already exists and "
        "is not from this recovery; pass --force to replace it, or choose another output folder\n"
    )
    result = run(*args, "--force")
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.stdout.splitlines()[1:5]] == ["written"] * 4
    assert_recovered(out, expected)


def small_shards(diff_dir: Path, base_dir: Path, out: Path) -> list[str]:
    """A vicuna command line that writes four shards."""
    return [
        str(diff_dir),
        str(base_dir),
        str(out),
        "--recipe",
        "vicuna",
        "--max-shard-size",
        "60KB",
    ]


def test_ctrl_c_stops_with_130_and_nothing_under_a_final_name(tmp_path: Path) -> None:
    diff_dir, base_dir, expected = release(tmp_path, "vicuna")
    out = tmp_path / "out"
    args = small_shards(diff_dir, base_dir, out)
    script = KILLER.replace("signal.SIGKILL", "signal.SIGINT")
    stopped = subprocess.run(
        [sys.executable, "-c", script, "recover", *args], capture_output=True, text=True
    )
    assert stopped.returncode == 130
    assert stopped.stderr == (
        "belle-decrypt: error: interrupted; run the same command again to finish\n"
    )
    assert [name for name in listing(out) if not name.startswith(".belle-")] == []
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert_recovered(out, expected)


def test_a_write_error_is_one_line_and_leaves_no_final_name(tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "vicuna")
    out = tmp_path / "out"
    args = small_shards(diff_dir, base_dir, out)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))

    proc = subprocess.run(
        [sys.executable, "-m", "belle_decrypt", "recover", *args],
        capture_output=True,
        text=True,
        preexec_fn=limit,
    )
    assert proc.returncode == 1
    assert proc.stderr == (
        f"belle-decrypt: error: {out / 'model-00001-of-00004.safetensors'}: cannot write: File "
        "too large; nothing written (check the free space and permissions of the output "
        "folder)\n"
    )
    assert [name for name in listing(out) if not name.startswith(".belle-")] == []


def test_a_base_saved_by_transformers_itself(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=100,
        hidden_size=tiny.HIDDEN,
        intermediate_size=tiny.INTERMEDIATE,
        num_hidden_layers=tiny.LAYERS,
        num_attention_heads=tiny.HEADS,
        max_position_embeddings=2048,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.data = param.data.to(torch.float16)
            if name.endswith("norm.weight"):
                param.fill_(1.0)
    model.save_pretrained(tmp_path / "llama-hf")
    base = {name: t.detach().clone() for name, t in model.state_dict().items()}
    diff = ref.make_diff("vicuna-v0", tiny.tuned(base, 3, vocab=101), base)
    diff_dir = tiny.write_folder(tmp_path / "diff", diff, "bin", tiny.config(101))
    out = tmp_path / "out"
    result = run(diff_dir, tmp_path / "llama-hf", out, "--recipe", "vicuna-v0")
    assert result.exit_code == 0, result.output
    assert_recovered(out, ref.recover("vicuna-v0", diff, base))


def test_a_missing_folder_is_named_before_the_recipe_is_asked_for(tmp_path: Path) -> None:
    result = run(tmp_path / "nowhere", tmp_path / "base", tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr == (
        f"belle-decrypt: error: {tmp_path / 'nowhere'}: (DIFF_DIR) no such folder; pass the "
        "Hugging Face model folder\n"
    )
    assert not (tmp_path / "out").exists()


MID_SHARD = """
import os, signal
from belle_decrypt.tensors import run
from belle_decrypt.cli import commands as cli
produce = run.Recovery._produce
calls = []
def interrupted(self, item, out):
    calls.append(item.name)
    if len(calls) == 5:
        os.kill(os.getpid(), signal.SIGINT)
    return produce(self, item, out)
run.Recovery._produce = interrupted
cli.main()
"""


def test_ctrl_c_mid_shard_names_the_shard_whose_temporary_file_was_removed(
    tmp_path: Path,
) -> None:
    diff_dir, base_dir, expected = release(tmp_path, "vicuna")
    out = tmp_path / "out"
    args = small_shards(diff_dir, base_dir, out)
    stopped = subprocess.run(
        [sys.executable, "-c", MID_SHARD, "recover", *args], capture_output=True, text=True
    )
    assert stopped.returncode == 130
    assert stopped.stderr == (
        f"belle-decrypt: error: {out / 'model-00001-of-00004.safetensors'}: interrupted; the "
        "unfinished file was removed; run the same command again to finish\n"
    )
    assert listing(out) == []
    assert run(*args).exit_code == 0
    assert_recovered(out, expected)
