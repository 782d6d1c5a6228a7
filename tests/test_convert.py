"""`convert` and Meta's folder as `recover`'s base, against the references of
tests/reference_meta.py (docs/FORMAT.md section 8) and against transformers loading the result."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import Result

from tests import reference_meta as meta
from tests import reference_recover, runner
from tests import tinyllama as tiny
from tests.test_recover import KILLER

SHARDS = (1, 2, 4, 8)
MODELS = [("llama1", n) for n in SHARDS] + [("llama2", n) for n in SHARDS]
RECIPES = ("vicuna", "vicuna-v0", "ziya", "alpaca", "tulu")


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return meta.tokenizer_model(tmp_path_factory.mktemp("spm"))


def convert(*args: str | Path) -> Result:
    return runner.run("convert", *args)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def refused(result: Result, out: Path, message: str, code: int = 2) -> None:
    """One line on stderr, the exit code, and nothing under a final name in ``out``."""
    assert result.exit_code == code, result.output
    assert result.stderr == f"belle-decrypt: error: {message}\n"
    assert [n for n in listing(out) if not n.startswith(".")] == []


@pytest.mark.parametrize(("kind", "shards"), MODELS)
def test_convert_is_the_reference_bit_for_bit(
    kind: str, shards: int, tokenizer: Path, tmp_path: Path
) -> None:
    model = meta.tiny_model(kind, shards)
    folder = meta.write_download(tmp_path / "llama", model, shards, tokenizer)
    out = tmp_path / "hf"
    result = convert(folder, out, "--max-shard-size", "100KB", "-q")
    assert result.exit_code == 0, result.output
    got = tiny.load_folder(out)
    expected = meta.reference_hf(meta.whole_model(model), model)
    assert list(got) == list(expected)  # the state-dict order, no rope.freqs, no inv_freq
    for name, tensor in expected.items():
        assert tiny.same_bits(got[name], tensor), name
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == str(model.dtype).removeprefix("torch.")
    assert config["vocab_size"] == meta.VOCAB
    assert config["intermediate_size"] == model.hidden
    assert config["num_key_value_heads"] == model.n_kv_heads
    assert config["max_position_embeddings"] == (2048 if model.version == 1 else 4096)
    assert (out / "tokenizer.model").read_bytes() == tokenizer.read_bytes()
    assert (out / "model.safetensors.index.json").is_file()


@pytest.mark.parametrize(("kind", "shards"), [("llama1", 2), ("llama2", 8)])
def test_transformers_runs_it_like_metas_model(
    kind: str, shards: int, tokenizer: Path, tmp_path: Path
) -> None:
    """Logits close to Meta's forward pass with interleaved rotary; the same weights without
    the q/k permutation are far off: the permutation goes the right way."""
    from transformers import LlamaForCausalLM

    model = meta.tiny_model(kind, shards)
    whole = meta.whole_model(model)
    out = tmp_path / "hf"
    assert (
        convert(meta.write_download(tmp_path / "llama", model, shards, tokenizer), out).exit_code
        == 0
    )
    tokens = [1, 17, 250, 3, 99, 42, 7, 300]
    expected = meta.meta_logits(whole, model, tokens)
    loaded = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        logits = loaded(torch.tensor([tokens])).logits[0]
    assert torch.allclose(logits, expected, atol=1e-4, rtol=1e-4)
    unpermuted = {name: tensor.float() for name, tensor in meta.reference_hf(whole, model).items()}
    for n in range(meta.LAYERS):
        for short, long in (("q", "wq"), ("k", "wk")):
            unpermuted[f"model.layers.{n}.self_attn.{short}_proj.weight"] = whole[
                f"layers.{n}.attention.{long}.weight"
            ].float()
    loaded.load_state_dict(unpermuted)
    with torch.no_grad():
        wrong = loaded(torch.tensor([tokens])).logits[0]
    assert (wrong - expected).abs().max() > 1e-2


def test_tokenizer_files_load_with_autotokenizer(tokenizer: Path, tmp_path: Path) -> None:
    import sentencepiece as spm
    from transformers import AutoTokenizer

    out = tmp_path / "hf"
    folder = meta.write_download(tmp_path / "llama", meta.LLAMA1, 1, tokenizer)
    assert convert(folder, out, "-q").exit_code == 0
    loaded = AutoTokenizer.from_pretrained(out)
    sentencepiece = spm.SentencePieceProcessor(model_file=str(tokenizer))
    for text in ("hello llama", "the quick brown fox 7", "ünï 你好 \n  two  spaces", "{x}"):
        assert loaded(text).input_ids == [1, *sentencepiece.encode(text)], text
    settings = json.loads((out / "tokenizer_config.json").read_text())
    assert settings["tokenizer_class"] == "LlamaTokenizer"
    assert (settings["bos_token"], settings["eos_token"], settings["unk_token"]) == (
        "<s>",
        "</s>",
        "<unk>",
    )


def test_bin_output_and_a_second_run(tokenizer: Path, tmp_path: Path) -> None:
    folder = meta.write_download(tmp_path / "llama", meta.LLAMA1, 4, tokenizer)
    out = tmp_path / "hf"
    assert convert(folder, out, "--bin", "-q").exit_code == 0
    assert "pytorch_model.bin" in listing(out)
    expected = meta.reference_hf(meta.whole_model(meta.LLAMA1), meta.LLAMA1)
    got = tiny.load_folder(out)
    assert all(tiny.same_bits(got[name], t) for name, t in expected.items())
    again = convert(folder, out, "--bin")
    assert again.exit_code == 0, again.output
    assert "kept" in again.stdout


def test_size_names_a_folder_under_the_download(tokenizer: Path, tmp_path: Path) -> None:
    root = tmp_path / "llama"
    meta.write_download(root, meta.llama2(2), 2, tokenizer, name="llama-2-13b")
    (root / "llama-2-13b-chat").mkdir()
    out = tmp_path / "hf"
    result = convert(root, out, "--size", "13B", "-q")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_llama_version_overrides(tokenizer: Path, tmp_path: Path) -> None:
    folder = meta.write_download(tmp_path / "llama", meta.LLAMA1, 1, tokenizer)
    out = tmp_path / "hf"
    assert convert(folder, out, "--llama-version", "2", "-q").exit_code == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["max_position_embeddings"], config["torch_dtype"]) == (4096, "float16")


# Refusals: exit 2 before anything is written, one line naming the file.


def download(tmp_path: Path, tokenizer: Path, shards: int = 4) -> Path:
    return meta.write_download(tmp_path / "llama", meta.LLAMA1, shards, tokenizer)


def test_missing_params_is_refused(tokenizer: Path, tmp_path: Path) -> None:
    folder = download(tmp_path, tokenizer)
    (folder / "params.json").unlink()
    out = tmp_path / "hf"
    refused(
        convert(folder, out),
        out,
        f"{folder / 'params.json'}: (LLAMA_DIR) has no params.json: pass Meta's size folder "
        "(7B/, llama-2-13b/, ...) or the download's root with --size",
    )


def test_missing_tokenizer_is_refused(tokenizer: Path, tmp_path: Path) -> None:
    folder = download(tmp_path, tokenizer)
    (folder.parent / "tokenizer.model").unlink()
    out = tmp_path / "hf"
    refused(
        convert(folder, out),
        out,
        f"{folder / 'tokenizer.model'}: (LLAMA_DIR) no tokenizer.model here or one level up: "
        "Meta's download has it beside the size folders; put it there",
    )


def test_a_gap_in_the_files_is_refused(tokenizer: Path, tmp_path: Path) -> None:
    folder = download(tmp_path, tokenizer)
    (folder / "consolidated.01.pth").unlink()
    (folder / "checklist.chk").unlink()
    out = tmp_path / "hf"
    result = convert(folder, out)
    refused(
        result,
        out,
        f"{folder / 'consolidated.01.pth'}: (LLAMA_DIR) consolidated.01.pth is missing (the "
        "files are numbered from 00 without a gap): download it",
    )


def test_fewer_files_than_the_checklist_is_refused(tokenizer: Path, tmp_path: Path) -> None:
    folder = download(tmp_path, tokenizer)
    (folder / "consolidated.03.pth").unlink()
    out = tmp_path / "hf"
    refused(
        convert(folder, out),
        out,
        f"{folder / 'consolidated.03.pth'}: (LLAMA_DIR) checklist.chk lists "
        "consolidated.03.pth, which is missing: download it",
    )


def test_without_a_checklist_a_missing_last_file_breaks_the_shapes(
    tokenizer: Path, tmp_path: Path
) -> None:
    folder = download(tmp_path, tokenizer)
    (folder / "consolidated.03.pth").unlink()
    (folder / "checklist.chk").unlink()
    out = tmp_path / "hf"
    result = convert(folder, out)
    assert result.exit_code == 2
    assert "the slices do not add up" in result.stderr
    assert listing(out) == []


def test_a_file_of_another_model_is_refused(tokenizer: Path, tmp_path: Path) -> None:
    folder = download(tmp_path, tokenizer)
    other = meta.write_download(tmp_path / "other", meta.LLAMA1, 2, tokenizer)
    shutil.copy(other / "consolidated.01.pth", folder / "consolidated.01.pth")
    out = tmp_path / "hf"
    refused(
        convert(folder, out, "--no-verify"),
        out,
        f"{folder / 'consolidated.01.pth'}: (LLAMA_DIR) tok_embeddings.weight has shape "
        "[320, 32] here but [320, 16] in consolidated.00.pth: the slices do not add up (a file "
        "of another model); download it again",
    )


def test_a_file_that_is_not_a_checkpoint_is_refused(tokenizer: Path, tmp_path: Path) -> None:
    folder = download(tmp_path, tokenizer)
    (folder / "consolidated.02.pth").write_bytes(b"<html>rate limited</html>")
    out = tmp_path / "hf"
    refused(
        convert(folder, out, "--no-verify"),
        out,
        f"{folder / 'consolidated.02.pth'}: (LLAMA_DIR) is not a torch checkpoint (neither a "
        "zip archive nor a pickle; an error page saved in its place?): damaged; download it "
        "again",
    )


def test_an_output_inside_the_download_is_refused(tokenizer: Path, tmp_path: Path) -> None:
    folder = download(tmp_path, tokenizer)
    out = folder / "hf"
    result = convert(folder, out)
    assert result.exit_code == 2
    assert result.stderr == (
        f"belle-decrypt: error: {out}: is inside {folder}, Meta's folder; pass an output "
        "folder elsewhere\n"
    )
    assert not out.exists() or listing(out) == []


def test_llama3_is_refused(tokenizer: Path, tmp_path: Path) -> None:
    folder = download(tmp_path, tokenizer)
    params = json.loads((folder / "params.json").read_text())
    (folder / "params.json").write_text(json.dumps({**params, "vocab_size": 128256}))
    out = tmp_path / "hf"
    refused(
        convert(folder, out, "--no-verify"),
        out,
        f"{folder / 'params.json'}: (LLAMA_DIR) is Llama 3's (a tiktoken vocabulary of "
        "128256): not LLaMA-1/2, which is what these recipes and conversions are for",
    )


def test_a_tiktoken_tokenizer_is_refused(tokenizer: Path, tmp_path: Path) -> None:
    folder = download(tmp_path, tokenizer)
    (folder.parent / "tokenizer.model").write_text("IQ== 0\nIg== 1\n")
    out = tmp_path / "hf"
    result = convert(folder, out, "--no-verify")
    assert result.exit_code == 2
    assert "is not a sentencepiece model (Llama 3's tiktoken vocabulary?)" in result.stderr


def test_a_corrupt_replica_names_its_file(tokenizer: Path, tmp_path: Path) -> None:
    folder = download(tmp_path, tokenizer)
    path = folder / "consolidated.02.pth"
    part = torch.load(path, weights_only=True)
    part["layers.1.ffn_norm.weight"][5] += 1
    torch.save(part, path)
    out = tmp_path / "hf"
    refused(
        convert(folder, out, "--no-verify"),
        out,
        f"{path}: (LLAMA_DIR) layers.1.ffn_norm.weight differs from consolidated.00.pth's, but "
        "every file holds the same copy: this file is corrupt or from another download; "
        "download it again",
    )


def test_a_checklist_mismatch_names_the_file_and_writes_nothing(
    tokenizer: Path, tmp_path: Path
) -> None:
    folder = download(tmp_path, tokenizer)
    path = folder / "consolidated.01.pth"
    listed = meta.md5(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1  # inside a tensor: the file still loads
    path.write_bytes(bytes(data))
    out = tmp_path / "hf"
    result = convert(folder, out)
    assert result.exit_code == 1, result.output
    assert result.stderr == (
        f"belle-decrypt: error: {path}: md5 {meta.md5(path)} differs from checklist.chk's "
        f"{listed} ({folder / 'checklist.chk'}:2): the download is damaged; download it "
        "again; nothing written\n"
    )
    assert [n for n in listing(out) if not n.startswith(".")] == []
    assert convert(folder, out, "--no-verify", "-q").exit_code == 0


def test_a_tokenizer_checklist_mismatch_is_refused(tokenizer: Path, tmp_path: Path) -> None:
    folder = download(tmp_path, tokenizer)
    listing_file = folder.parent / "tokenizer_checklist.chk"
    listing_file.write_text(f"{'0' * 32}  tokenizer.model\n")
    out = tmp_path / "hf"
    refused(
        convert(folder, out),
        out,
        f"{folder.parent / 'tokenizer.model'}: (LLAMA_DIR) md5 {meta.md5(tokenizer)} differs "
        f"from {'0' * 32} ({listing_file}:1): the download is damaged; download it again (or "
        "pass --no-verify)",
    )


# Meta's folder as recover's base.


@pytest.mark.parametrize("recipe", RECIPES)
def test_recover_from_metas_folder_equals_recover_from_the_converted(
    recipe: str, tokenizer: Path, tmp_path: Path
) -> None:
    folder = download(tmp_path, tokenizer, shards=2)
    converted = tmp_path / "hf"
    assert convert(folder, converted, "-q").exit_code == 0
    base = tiny.load_folder(converted)
    vocab = meta.VOCAB if recipe == "vicuna" else meta.VOCAB + 1
    tuned = tiny.tuned({k: v.float() for k, v in base.items()}, 3, vocab=vocab)
    diff_dir = tiny.write_folder(
        tmp_path / "diff",
        reference_recover.make_diff(recipe, tuned, base),
        "bin-sharded",
        tiny.config(vocab),
    )
    reference = reference_recover.recover(
        recipe, reference_recover.make_diff(recipe, tuned, base), base
    )
    extra: list[str | Path] = ["--expect-sum", str(reference_recover.alpaca_sum(reference))]
    from_hf, from_meta = tmp_path / "from-hf", tmp_path / "from-meta"
    for base_dir, out in ((converted, from_hf), (folder, from_meta)):
        args: list[str | Path] = [diff_dir, base_dir, out, "--recipe", recipe, "-q"]
        result = runner.run("recover", *args, *(extra if recipe == "alpaca" else []))
        assert result.exit_code == 0, result.output
    expected = tiny.load_folder(from_hf)
    got = tiny.load_folder(from_meta)
    assert list(got) == list(expected) == list(reference)
    for name, tensor in reference.items():
        assert tiny.same_bits(got[name], tensor), name
        assert tiny.same_bits(expected[name], tensor), name


def test_recover_refuses_metas_llama2_as_the_base(tokenizer: Path, tmp_path: Path) -> None:
    folder = meta.write_download(tmp_path / "llama", meta.llama2(2), 2, tokenizer)
    converted = tmp_path / "hf"
    assert convert(folder, converted, "-q").exit_code == 0
    base = tiny.load_folder(converted)
    diff_dir = tiny.write_folder(
        tmp_path / "diff",
        reference_recover.make_diff("vicuna", tiny.tuned(base, 3), base),
        "bin",
    )
    out = tmp_path / "out"
    refused(
        runner.run("recover", diff_dir, folder, out, "--recipe", "vicuna"),
        out,
        f"{folder}: (BASE_DIR) is LLaMA-2 (bfloat16 tensors), but these diffs were made "
        "against LLaMA-1; pass Meta's LLaMA-1 folder",
    )


def test_a_per_file_release_refuses_metas_folder(tokenizer: Path, tmp_path: Path) -> None:
    folder = download(tmp_path, tokenizer)
    payload = tmp_path / "oasst-xor"
    payload.mkdir()
    (payload / "config.json").write_bytes(b"xor")
    out = tmp_path / "out"
    result = runner.run(payload, folder, out, "--no-verify")
    assert result.exit_code == 2
    assert result.stderr == (
        f"belle-decrypt: error: {folder}: is Meta's original download (consolidated.*.pth): a "
        "per-file XOR release needs the publisher's byte-identical Hugging Face conversion the "
        "card names, which `belle-decrypt convert` does not reproduce; pass that converted "
        "folder\n"
    )
    assert not out.exists()


def test_check_key_on_metas_folder(tokenizer: Path, tmp_path: Path) -> None:
    folder = download(tmp_path, tokenizer, shards=2)
    result = runner.run("check-key", folder)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1] == "model:               LLaMA-1 (dim 64), float16, 2 files"
    for number in range(2):
        name = f"consolidated.0{number}.pth"
        assert f"{name + ':':<21}md5 {meta.md5(folder / name)} OK" in lines
    assert (
        lines[-2] == "key for:             `recover` (as BASE_DIR) and `convert` take this folder"
    )
    assert lines[-1] == (
        f"verdict:             {folder} is LLaMA-1 (dim 64), float16, 2 files: every file matches"
    )
    path = folder / "consolidated.01.pth"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    result = runner.run("check-key", folder, "-q")
    assert result.exit_code == 1
    assert result.stdout == (
        f"verdict:             {folder} is LLaMA-1 (dim 64), float16, 2 files, but "
        "consolidated.01.pth differs: download it again\n"
    )


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_killed_or_interrupted_then_run_again(how: str, tokenizer: Path, tmp_path: Path) -> None:
    """Stopped after two shards (kill -9, or Ctrl-C: exit 130), nothing under a final name;
    the rerun keeps the two (their SHA-256 verified) and finishes with the reference's bits."""
    folder = download(tmp_path, tokenizer)
    out = tmp_path / "hf"
    args = [str(folder), str(out), "--max-shard-size", "100KB"]
    script = KILLER.replace("signal.SIGKILL", f"signal.{how}")
    stopped = subprocess.run(
        [sys.executable, "-c", script, "convert", *args], capture_output=True, text=True
    )
    assert stopped.returncode == (-signal.SIGKILL if how == "SIGKILL" else 130), stopped.stderr
    assert [n for n in listing(out) if not n.startswith(".belle-")] == []
    result = convert(*args)
    assert result.exit_code == 0, result.output
    statuses = [line.split()[0] for line in result.stdout.splitlines()[1:5]]
    assert statuses == ["kept", "kept", "written", "written"]
    assert not any(name.startswith(".belle-pending") for name in listing(out))
    got = tiny.load_folder(out)
    expected = meta.reference_hf(meta.whole_model(meta.LLAMA1), meta.LLAMA1)
    assert all(tiny.same_bits(got[name], t) for name, t in expected.items())


def test_an_hf_folder_with_a_params_json_stays_an_hf_base(tmp_path: Path) -> None:
    base = tiny.model(1)
    base_dir = tiny.write_folder(tmp_path / "base", base, "safetensors", tiny.config(100))
    (base_dir / "params.json").write_text('{"dim": 64}')
    diff_dir = tiny.write_folder(
        tmp_path / "diff",
        reference_recover.make_diff("vicuna", tiny.tuned(base, 3), base),
        "bin",
    )
    out = tmp_path / "out"
    result = runner.run("recover", diff_dir, base_dir, out, "--recipe", "vicuna", "-q")
    assert result.exit_code == 0, result.output


def test_size_spellings_and_a_size_not_there(tokenizer: Path, tmp_path: Path) -> None:
    root = tmp_path / "llama"
    meta.write_download(root, meta.LLAMA1, 1, tokenizer, name="30B")
    assert convert(root, tmp_path / "hf", "--size", "33B", "-q").exit_code == 0
    out = tmp_path / "none"
    refused(
        convert(root, out, "--size", "65B"),
        out,
        f"{root}: (LLAMA_DIR) --size 65B: no such size folder here (folders: 30B); pass one of "
        "them",
    )


def test_one_convert_command_tells_metas_folder_from_a_hugging_face_one(
    tokenizer: Path, tmp_path: Path
) -> None:
    """Meta's folder goes to the HF layout or to GGUF in one pass; the HF folder it makes goes
    to the same GGUF, and what applies to Meta's folder only is refused for it."""
    folder = meta.write_download(tmp_path / "llama", meta.LLAMA1, 2, tokenizer)
    gguf_out, one_pass = tmp_path / "gguf", tmp_path / "one-pass" / "gguf"
    assert convert(folder, one_pass, "--to", "gguf", "-q").exit_code == 0
    hf = tmp_path / "hf"
    assert convert(folder, hf, "--to", "hf", "-q").exit_code == 0
    for flag in (["--bin"], ["--no-verify"], ["--llama-version", "1"], ["--max-shard-size", "1GB"]):
        refused(
            convert(hf, gguf_out, "--to", "gguf", *flag),
            gguf_out,
            f"{hf}: {flag[0]} applies to Meta's folder; a Hugging Face folder is converted with "
            "--to gguf only: leave it out",
        )
    refused(
        convert(folder, gguf_out, "--gguf-type", "q8_0"),
        gguf_out,
        "--gguf-type applies to --to gguf only; add --to gguf or leave it out",
    )
    done = convert(hf, gguf_out, "--to", "gguf", "-q")
    assert done.exit_code == 0, done.output
    assert listing(gguf_out) == ["gguf-f16.gguf"]
    assert (gguf_out / "gguf-f16.gguf").read_bytes() == (one_pass / "gguf-f16.gguf").read_bytes()
