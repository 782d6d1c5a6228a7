"""`recover` with LoRA adapters: PEFT's own adapters merged bit for bit as ``merge_and_unload``
merges them, Chinese-LLaMA-Alpaca's (one, and two in order) as the reference written from
docs/FORMAT.md section 10, and every refusal (exit 2, one line, nothing written)."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import Result

from belle_decrypt.tensors.sources import adapterconfig as lora
from tests import runner
from tests import tinyllama as tiny
from tests import tinylora as tl
from tests.conftest import listing
from tests.test_recover import KILLER

PEFT_CASES: dict[str, dict[str, Any]] = {
    "alpaca-lora": {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]},
    "guanaco": {"r": 16, "lora_alpha": 16, "target_modules": "all-linear"},
    "rslora-patterns-layers": {
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj", "down_proj"],
        "use_rslora": True,
        "rank_pattern": {"v_proj": 4},
        "alpha_pattern": {"down_proj": 7},
        "layers_to_transform": [1],
    },
    "embedding-modules-to-save": {
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["embed_tokens", "q_proj"],
        "modules_to_save": ["lm_head"],
    },
}


def run(*args: str | Path) -> Result:
    return runner.run("recover", *args)


def base_folder(root: Path, layout: str = "safetensors", dtype: str = "float16") -> Path:
    state = tiny.model(1, dtype=getattr(torch, dtype))
    return tiny.write_folder(root / "base", state, layout, tiny.config(100, dtype=dtype))


def assert_equal(out: Path, expected: tiny.StateDict) -> None:
    got = tiny.load_folder(out)
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert tiny.same_bits(got[name], tensor), name


def changed(merged: tiny.StateDict, base: Path) -> set[str]:
    """The tensors an adapter changed (so that a test cannot pass on a no-op)."""
    original = tiny.load_folder(base)
    return {name for name, t in merged.items() if not tiny.same_bits(t, original[name])}


@pytest.mark.parametrize("safetensors", [True, False], ids=["safetensors", "bin"])
@pytest.mark.parametrize("case", sorted(PEFT_CASES))
def test_peft_adapters_merge_as_merge_and_unload(
    case: str, safetensors: bool, tmp_path: Path
) -> None:
    base = base_folder(tmp_path)
    adapter = tl.peft_adapter(base, tmp_path / case, 3, safetensors=safetensors, **PEFT_CASES[case])
    out = tmp_path / "out"
    result = run(adapter, base, out)
    assert result.exit_code == 0, result.output
    expected = tl.peft_merged(base, [adapter])
    assert changed(expected, base)
    assert_equal(out, expected)


def test_layers_to_transform_and_patterns_touch_what_peft_touches(tmp_path: Path) -> None:
    base = base_folder(tmp_path)
    adapter = tl.peft_adapter(base, tmp_path / "a", 3, **PEFT_CASES["rslora-patterns-layers"])
    expected = tl.peft_merged(base, [adapter])
    assert changed(expected, base) == {
        f"model.layers.1.{p}.weight"
        for p in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")
    }
    result = run(adapter, base, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert_equal(tmp_path / "out", expected)


def test_embedding_lora_rounds_twice_as_peft_does(tmp_path: Path) -> None:
    """The product is cast to float16 before the add: a single rounding differs here."""
    base = base_folder(tmp_path)
    adapter = tl.peft_adapter(
        base, tmp_path / "a", 5, r=8, lora_alpha=32, target_modules=["embed_tokens"]
    )
    expected = tl.peft_merged(base, [adapter])
    from safetensors.torch import load_file

    state = load_file(str(adapter / "adapter_model.safetensors"))
    a = state["base_model.model.model.embed_tokens.lora_embedding_A"]
    b = state["base_model.model.model.embed_tokens.lora_embedding_B"]
    w = tiny.load_folder(base)["model.embed_tokens.weight"]
    once = (w.float() + (b.float() @ a.float()).T * 4.0).half()
    assert not tiny.same_bits(once, expected["model.embed_tokens.weight"])
    result = run(adapter, base, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert_equal(tmp_path / "out", expected)


def test_resized_vocabulary_with_embedding_lora(tmp_path: Path) -> None:
    """PEFT saves the resized embedding whole (``base_layer.weight``) and its LoRA pair: the
    whole tensor replaces the base's, then the product is added; config says the new rows."""
    base = base_folder(tmp_path)
    adapter = tl.peft_adapter(
        base,
        tmp_path / "a",
        3,
        rows=110,
        r=4,
        lora_alpha=8,
        target_modules=["embed_tokens", "q_proj"],
        modules_to_save=["lm_head"],
    )
    result = run(adapter, base, tmp_path / "out")
    assert result.exit_code == 0, result.output
    expected = tl.peft_merged(base, [adapter], rows=110)
    assert expected["model.embed_tokens.weight"].shape == (110, tiny.HIDDEN)
    assert_equal(tmp_path / "out", expected)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == 110


def test_fan_in_fan_out_is_ignored_on_linear_layers_as_peft_does(tmp_path: Path) -> None:
    """PEFT resets fan_in_fan_out on nn.Linear (LLaMA's layers) with a warning: no transpose."""
    base = base_folder(tmp_path)
    adapter = tl.peft_adapter(
        base, tmp_path / "a", 3, r=8, lora_alpha=16, target_modules=["q_proj"]
    )
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["fan_in_fan_out"] = True
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="fan_in_fan_out"):
        expected = tl.peft_merged(base, [adapter])
    result = run(adapter, base, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert_equal(tmp_path / "out", expected)


def test_bfloat16_base_stays_bfloat16(tmp_path: Path) -> None:
    base = base_folder(tmp_path, dtype="bfloat16")
    adapter = tl.peft_adapter(
        base, tmp_path / "a", 3, dtype=torch.bfloat16, **PEFT_CASES["guanaco"]
    )
    result = run(adapter, base, tmp_path / "out")
    assert result.exit_code == 0, result.output
    expected = tl.peft_merged(base, [adapter], torch.bfloat16)
    assert {t.dtype for t in expected.values()} == {torch.bfloat16}
    assert_equal(tmp_path / "out", expected)


def test_two_peft_adapters_in_order(tmp_path: Path) -> None:
    base = base_folder(tmp_path)
    first = tl.peft_adapter(base, tmp_path / "first", 3, **PEFT_CASES["guanaco"])
    second = tl.peft_adapter(base, tmp_path / "second", 4, **PEFT_CASES["alpaca-lora"])
    result = run(first, "--then", second, base, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert_equal(tmp_path / "out", tl.peft_merged(base, [first, second]))


# --- Chinese-LLaMA-Alpaca ----------------------------------------------------------------------


def chinese_base(root: Path) -> tuple[Path, tiny.StateDict]:
    state = tiny.model(1)
    folder = tiny.write_folder(root / "llama-7b-hf", state, "bin-sharded", tiny.config(100))
    (folder / "tokenizer.model").write_bytes(b"LLaMA's tokenizer")
    return folder, state


def test_chinese_alpaca_one_adapter(tmp_path: Path) -> None:
    base, base_state = chinese_base(tmp_path)
    adapter = tmp_path / "chinese-alpaca-lora-7b"
    state = tl.chinese_adapter(adapter, 7, 120, tokenizer=b"Chinese tokenizer")
    out = tmp_path / "out"
    result = run(adapter, base, out)
    assert result.exit_code == 0, result.output
    assert_equal(out, tl.chinese_reference(base_state, [(state, tl.CHINESE_CONFIG)]))
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 120
    assert (out / "tokenizer.model").read_bytes() == b"Chinese tokenizer"
    assert (out / "special_tokens_map.json").exists()


def test_chinese_alpaca_plus_two_adapters_in_order(tmp_path: Path) -> None:
    base, base_state = chinese_base(tmp_path)
    plus = tmp_path / "chinese-llama-plus-lora-7b"
    alpaca = tmp_path / "chinese-alpaca-plus-lora-7b"
    first = tl.chinese_adapter(plus, 7, 120, tokenizer=b"LLaMA-Plus tokenizer")
    second = tl.chinese_adapter(alpaca, 8, 121, tokenizer=b"Alpaca-Plus tokenizer")
    out = tmp_path / "out"
    result = run(plus, "--then", alpaca, base, out)
    assert result.exit_code == 0, result.output
    expected = tl.chinese_reference(
        base_state, [(first, tl.CHINESE_CONFIG), (second, tl.CHINESE_CONFIG)]
    )
    assert_equal(out, expected)
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 121
    assert (out / "tokenizer.model").read_bytes() == b"Alpaca-Plus tokenizer"
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(out, dtype="auto").state_dict()
    for name, tensor in expected.items():
        assert tiny.same_bits(loaded[name], tensor), name


def test_rounding_after_each_adapter_is_not_rounding_once(tmp_path: Path) -> None:
    """The two-adapter reference rounds to float16 after each adapter: rounding once at the
    end (float32 throughout) gives other bits, so the chain test tells them apart."""
    base_state = tiny.model(1)
    first = tl.chinese_adapter(tmp_path / "a", 7, 120)
    second = tl.chinese_adapter(tmp_path / "b", 8, 121)
    chained = tl.chinese_reference(
        base_state, [(first, tl.CHINESE_CONFIG), (second, tl.CHINESE_CONFIG)]
    )
    name = "model.layers.0.self_attn.q_proj.weight"
    key = tl.PREFIX + name.removesuffix(".weight")
    total = base_state[name].float()
    for state in (first, second):
        total = (
            total
            + (state[key + ".lora_B.weight"].float() @ state[key + ".lora_A.weight"].float()) * 4.0
        )
    assert not tiny.same_bits(total.half(), chained[name])


def test_chinese_rows_name_the_adapter(tmp_path: Path) -> None:
    base, _ = chinese_base(tmp_path)
    adapter = tmp_path / "my-adapter"
    tl.chinese_adapter(adapter, 7, 49954)
    result = run(adapter, base, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert f"adapter    {adapter} (Chinese-Alpaca, by its 49954-row embedding)" in result.output
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == 49954


def published(
    monkeypatch: pytest.MonkeyPatch, adapter: Path, kind: str, size: str, name: str
) -> None:
    """Make ``adapter``'s SHA-256 a published one (no real release fits in a test)."""
    digest = hashlib.sha256((adapter / "adapter_model.bin").read_bytes()).hexdigest()
    monkeypatch.setitem(lora.KNOWN, digest, lora.Known(name, kind, size))


def test_published_hash_names_the_adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base, _ = chinese_base(tmp_path)
    plus = tmp_path / "p"
    alpaca = tmp_path / "a"
    tl.chinese_adapter(plus, 7, 49953)
    tl.chinese_adapter(alpaca, 8, 49954)
    published(monkeypatch, plus, "llama-plus", "7B", "Chinese-LLaMA-Plus-7B")
    published(monkeypatch, alpaca, "alpaca-plus", "7B", "Chinese-Alpaca-Plus-7B")
    monkeypatch.setitem(lora.HIDDEN_OF, "7B", tiny.HIDDEN)
    result = run(plus, "--then", alpaca, base, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert f"adapter    {plus} (Chinese-LLaMA-Plus-7B, by its published SHA-256)" in result.output
    assert (
        f"adapter    {alpaca} (Chinese-Alpaca-Plus-7B, by its published SHA-256)" in result.output
    )


# --- refusals: exit 2, one line, nothing written ---------------------------------------------


def refused(result: Result, out: Path, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("belle-decrypt: error: ")
    assert result.stderr.count("\n") == 1
    assert message in result.stderr, result.stderr
    assert result.stdout == ""
    assert not out.exists() or [n for n in listing(out) if not n.startswith(".belle-")] == []


def test_plus_without_llama_plus_says_what_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, _ = chinese_base(tmp_path)
    alpaca = tmp_path / "a"
    tl.chinese_adapter(alpaca, 8, 49954)
    published(monkeypatch, alpaca, "alpaca-plus", "7B", "Chinese-Alpaca-Plus-7B")
    monkeypatch.setitem(lora.HIDDEN_OF, "7B", tiny.HIDDEN)
    out = tmp_path / "out"
    refused(
        run(alpaca, base, out),
        out,
        f"is Chinese-Alpaca-Plus-7B, which is merged after Chinese-LLaMA-Plus-7B: run "
        f"`belle-decrypt recover chinese-llama-plus-lora-7b --then {alpaca} {base} {out}`",
    )


def test_published_adapter_for_another_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, _ = chinese_base(tmp_path)
    adapter = tmp_path / "a"
    tl.chinese_adapter(adapter, 8, 49954)
    published(monkeypatch, adapter, "alpaca", "13B", "Chinese-Alpaca-13B")
    out = tmp_path / "out"
    refused(
        run(adapter, base, out),
        out,
        "is Chinese-Alpaca-13B, made for LLaMA-13B (hidden size 5120), but BASE_DIR's hidden "
        f"size is {tiny.HIDDEN}",
    )


def test_wrong_order_is_refused(tmp_path: Path) -> None:
    base, _ = chinese_base(tmp_path)
    plus, alpaca = tmp_path / "plus", tmp_path / "alpaca"
    tl.chinese_adapter(plus, 7, 49953)
    tl.chinese_adapter(alpaca, 8, 49954)
    out = tmp_path / "out"
    refused(
        run(alpaca, "--then", plus, base, out),
        out,
        f"carries a 49954-row vocabulary but comes before {plus} (49953 rows): the adapters are "
        f"in the wrong order (LLaMA-Plus first, then Alpaca); run `belle-decrypt recover {plus} "
        f"--then {alpaca} {base} {out}`",
    )


def lora_state(rank: int = 4, hidden: int = tiny.HIDDEN, layer: int = 0) -> tiny.StateDict:
    name = f"{tl.PREFIX}model.layers.{layer}.self_attn.q_proj"
    return {
        f"{name}.lora_A.weight": torch.ones((rank, hidden)) * 0.01,
        f"{name}.lora_B.weight": torch.ones((hidden, rank)) * 0.01,
    }


CONFIG: dict[str, Any] = {
    "peft_type": "LORA",
    "r": 4,
    "lora_alpha": 8,
    "target_modules": ["q_proj"],
}


@pytest.mark.parametrize(
    ("config", "state", "message"),
    [
        ({"use_dora": True}, None, "use_dora = true cannot be merged into plain weights"),
        ({"lora_bias": True}, None, "lora_bias = true cannot be merged into plain weights"),
        ({"trainable_token_indices": [1, 2]}, None, "trainable_token_indices = [1, 2] cannot"),
        ({"fancy_new_config": {"x": 1}}, None, 'fancy_new_config = {"x": 1} is a setting this'),
        ({"peft_type": "IA3"}, None, "peft_type is 'IA3', not 'LORA'"),
        ({"r": 8}, None, "but the config gives it rank 8"),
        ({"bias": "all"}, {"q_bias": None}, "is a bias tensor (bias 'all')"),
        (
            {},
            {"layer": 7},
            "changes model.layers.7.self_attn.q_proj.weight, which the base does not have",
        ),
        ({}, {"hidden": 32}, "do not fit the base's [64, 64]"),
        ({}, {"dora": None}, "is a DoRA magnitude"),
        ({}, {"empty": None}, "holds no LoRA tensors at all"),
    ],
    ids=lambda v: str(v)[:24],
)
def test_refusals(
    config: dict[str, Any], state: dict[str, Any] | None, message: str, tmp_path: Path
) -> None:
    base = base_folder(tmp_path)
    extra = state or {}
    tensors = lora_state(hidden=extra.get("hidden", tiny.HIDDEN), layer=extra.get("layer", 0))
    name = f"{tl.PREFIX}model.layers.0.self_attn.q_proj"
    if "q_bias" in extra:
        tensors[f"{tl.PREFIX}model.layers.0.self_attn.q_proj.bias"] = torch.zeros(tiny.HIDDEN)
    if "dora" in extra:
        tensors[f"{name}.lora_magnitude_vector"] = torch.ones(tiny.HIDDEN)
    if "empty" in extra:
        tensors = {}
    adapter = tl.save_adapter(tmp_path / "adapter", tensors, {**CONFIG, **config})
    out = tmp_path / "out"
    refused(run(adapter, base, out), out, message)


@pytest.mark.parametrize("position", [1, 2])
def test_nan_in_an_adapter_is_the_pipelines_refusal(position: int, tmp_path: Path) -> None:
    """The pipeline's one rule for non-finite diff tensors: exit 2, one line naming the
    adapter and its file, nothing under a final name; --allow-nonfinite merges it as it is."""
    base = base_folder(tmp_path)
    tensors = lora_state()
    key = f"{tl.PREFIX}model.layers.0.self_attn.q_proj.lora_B.weight"
    tensors[key][3, 1] = float("nan")
    damaged = tl.save_adapter(tmp_path / "adapter", tensors, CONFIG, bin_file=False)
    good = tl.save_adapter(tmp_path / "good", lora_state(), CONFIG)
    chain = [damaged] if position == 1 else [good, "--then", damaged]
    out = tmp_path / "out"
    result = run(*chain, base, out)
    assert result.exit_code == 2, result.output
    role, name = ("ADAPTER_DIR", key) if position == 1 else ("ADAPTER_DIR 2", f"{key} (adapter 2)")
    assert result.stderr == (
        f"belle-decrypt: error: {damaged / 'adapter_model.safetensors'}: ({role}) {name} holds "
        "1 NaN or infinite value: the diff is damaged (no published diff has any); download it "
        "again, or pass --allow-nonfinite to recover it as it is; nothing was left under a final "
        "name\n"
    )
    assert [n for n in listing(out) if not n.startswith(".belle-")] == []
    result = run(*chain, base, out, "--allow-nonfinite")
    assert result.exit_code == 0, result.output
    merged = tiny.load_folder(out)["model.layers.0.self_attn.q_proj.weight"]
    assert bool(merged[3].isnan().all())


def test_then_takes_adapters_only(tmp_path: Path) -> None:
    base = base_folder(tmp_path)
    adapter = tl.save_adapter(tmp_path / "adapter", lora_state(), CONFIG)
    out = tmp_path / "out"
    refused(
        run(adapter, "--then", base, base, out),
        out,
        f"{base}: holds no adapter_config.json, so it is not a PEFT adapter",
    )


def test_recipe_with_an_adapter_is_refused(tmp_path: Path) -> None:
    base = base_folder(tmp_path)
    adapter = tl.save_adapter(tmp_path / "adapter", lora_state(), CONFIG)
    out = tmp_path / "out"
    refused(
        run(adapter, base, out, "--recipe", "vicuna"), out, "--recipe vicuna is for weight diffs"
    )


def test_second_run_keeps_the_shards(tmp_path: Path) -> None:
    base = base_folder(tmp_path)
    adapter = tl.peft_adapter(base, tmp_path / "a", 3, **PEFT_CASES["guanaco"])
    out = tmp_path / "out"
    assert run(adapter, base, out, "--max-shard-size", "100KB").exit_code == 0
    again = run(adapter, base, out, "--max-shard-size", "100KB")
    assert again.exit_code == 0, again.output
    assert again.output.count("kept ") == 2
    assert_equal(out, tl.peft_merged(base, [adapter]))


def test_manifest_checks_the_adapters_files(tmp_path: Path) -> None:
    base, _ = chinese_base(tmp_path)
    adapter = tmp_path / "chinese-alpaca-lora-7b"
    tl.chinese_adapter(adapter, 7, 120)
    digest = hashlib.sha256((adapter / "adapter_model.bin").read_bytes()).hexdigest()
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text(f"{digest}  adapter_model.bin\n")
    bad.write_text(f"{'0' * 64}  adapter_model.bin\n")
    result = run(adapter, base, tmp_path / "out", "--manifest", good)
    assert result.exit_code == 0, result.output
    assert "manifest   1 diff files match the manifest's checksums" in result.output
    failed = run(adapter, base, tmp_path / "out2", "--manifest", bad)
    assert failed.exit_code == 1, failed.output
    assert "differs from the model card's" in failed.stderr
    assert [n for n in listing(tmp_path / "out2") if not n.startswith(".belle-")] == []


def plus_chain(root: Path) -> tuple[list[str], tiny.StateDict]:
    """The Plus command line (two adapters) writing four shards, and its reference."""
    base, base_state = chinese_base(root)
    plus, alpaca = root / "chinese-llama-plus-lora-7b", root / "chinese-alpaca-plus-lora-7b"
    first = tl.chinese_adapter(plus, 7, 120)
    second = tl.chinese_adapter(alpaca, 8, 121)
    expected = tl.chinese_reference(
        base_state, [(first, tl.CHINESE_CONFIG), (second, tl.CHINESE_CONFIG)]
    )
    args = [str(plus), "--then", str(alpaca), str(base), str(root / "out")]
    return [*args, "--max-shard-size", "60KB"], expected


def test_kill_9_then_rerun_keeps_the_verified_shards(tmp_path: Path) -> None:
    args, expected = plus_chain(tmp_path)
    out = tmp_path / "out"
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, "recover", *args], capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL
    assert [n for n in listing(out) if n.startswith(".belle-pending")] == [
        ".belle-pending.model-00001-of-00004.safetensors",
        ".belle-pending.model-00002-of-00004.safetensors",
    ]
    result = run(*args)
    assert result.exit_code == 0, result.output
    statuses = [line.split()[0] for line in result.stdout.splitlines() if "of-00004" in line]
    assert statuses == ["kept", "kept", "written", "written"]
    assert_equal(out, expected)


def test_ctrl_c_stops_with_130_and_nothing_under_a_final_name(tmp_path: Path) -> None:
    args, expected = plus_chain(tmp_path)
    out = tmp_path / "out"
    script = KILLER.replace("signal.SIGKILL", "signal.SIGINT")
    stopped = subprocess.run(
        [sys.executable, "-c", script, "recover", *args], capture_output=True, text=True
    )
    assert stopped.returncode == 130, stopped.stderr
    assert stopped.stderr == (
        "belle-decrypt: error: interrupted; run the same command again to finish\n"
    )
    assert [name for name in listing(out) if not name.startswith(".belle-")] == []
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert_equal(out, expected)
