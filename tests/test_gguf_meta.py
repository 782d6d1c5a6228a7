"""`convert LLAMA_DIR OUT_DIR --to gguf` (Meta's files to GGUF in one pass, q/k handed in
Meta's own layout) and `recover --to gguf` with Meta's folder as the base: byte for byte the
file that `convert` to the Hugging Face layout and then `convert --to gguf` make; llama.cpp
runs it with logits close to transformers' on that Hugging Face conversion, and its token ids
are AutoTokenizer's there; what does not apply is refused in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from belle_decrypt.tensors.journal import JOURNAL_NAME
from tests import reference_meta as meta
from tests import reference_recover, runner
from tests import tinyllama as tiny
from tests.conftest import listing
from tests.ggufcheck import assert_tokenizes_like_transformers, llama_logits, transformers_logits
from tests.test_gguf import KILLER

# Meta's files (kind, files): LLaMA-1 in one file and in two, LLaMA-2 with grouped k/v.
MODELS = [("llama1", 1), ("llama1", 2), ("llama2", 2), ("llama2", 8)]
STRINGS = (
    "hello llama",
    "the quick brown fox 7",
    "你好 llama 你好世界",
    "ünï 你好 \n  two  spaces",
)
# Largest |llama.cpp - transformers| logit, as a fraction of the largest logit. float16
# matrices hold LLaMA-1's float16 and LLaMA-2's bfloat16 values exactly, but llama.cpp rounds
# the activations to float16 for its float16 dot products.
RELATIVE_TOLERANCE = 5e-3


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return meta.tokenizer_model(tmp_path_factory.mktemp("spm"))


def convert(*args: str | Path) -> None:
    result = runner.run("convert", *args, "-q")
    assert result.exit_code == 0, result.output


def gguf_in(out: Path) -> Path:
    (gguf,) = [p for p in out.iterdir() if p.suffix == ".gguf"]
    return gguf


def tensors(gguf: Path) -> dict[str, tuple[str, list[int], bytes]]:
    """Each tensor's type, shape and bytes, as gguf's reader lists them."""
    reader = GGUFReader(gguf)
    return {
        t.name: (t.tensor_type.name, [int(n) for n in t.shape], bytes(t.data.tobytes()))
        for t in reader.tensors
    }


def two_ways(folder: Path, root: Path, *options: str) -> tuple[Path, Path, Path]:
    """Meta's ``folder`` to GGUF in one pass, and through the Hugging Face layout (each
    output folder named ``tiny``, as the file's name and metadata carry it); the HF folder."""
    hf, from_meta, from_hf = root / "hf", root / "a" / "tiny", root / "b" / "tiny"
    convert(folder, hf)
    convert(folder, from_meta, "--to", "gguf", *options)
    convert(hf, from_hf, "--to", "gguf", *options)
    return gguf_in(from_meta), gguf_in(from_hf), hf


@pytest.mark.parametrize(("kind", "files"), MODELS)
def test_metas_files_to_gguf_are_the_hf_paths_file_and_run_like_it(
    kind: str, files: int, tokenizer: Path, tmp_path: Path
) -> None:
    folder = meta.write_download(tmp_path / "llama", meta.tiny_model(kind, files), files, tokenizer)
    gguf, through_hf, hf = two_ways(folder, tmp_path)
    assert gguf.name == "tiny-f16.gguf"
    assert listing(gguf.parent) == [JOURNAL_NAME, gguf.name]  # no config, no tokenizer files
    got, expected = tensors(gguf), tensors(through_hf)
    assert list(got) == list(expected)
    assert got == expected  # q/k: Meta's layout as it is, the HF path's un-permuted back
    assert gguf.read_bytes() == through_hf.read_bytes()  # metadata and tokenizer too
    ids = [1, 17, 250, 3, 99, 42, 7, 300, meta.VOCAB - 1]
    want = transformers_logits(hf, ids)
    scale = float(np.abs(want).max())
    assert scale > 0.5
    assert float(np.abs(llama_logits(gguf, ids) - want).max()) <= RELATIVE_TOLERANCE * scale
    assert_tokenizes_like_transformers(gguf, hf, STRINGS)


def test_q8_0_from_metas_files_is_the_hf_paths(tokenizer: Path, tmp_path: Path) -> None:
    folder = meta.write_download(tmp_path / "llama", meta.llama2(2), 2, tokenizer)
    gguf, through_hf, _ = two_ways(folder, tmp_path, "--gguf-type", "q8_0")
    assert gguf.name == "tiny-q8_0.gguf"
    assert gguf.read_bytes() == through_hf.read_bytes()
    assert {kind for kind, _, _ in tensors(gguf).values()} == {"Q8_0", "F32"}


def test_q_and_k_are_not_permuted_there_and_back(
    tokenizer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Meta's folder hands q and k in Meta's layout, which GGUF stores: no un-permuting."""
    from belle_decrypt.tensors.sinks import gguf_model

    def refuse(*args: object) -> None:
        raise AssertionError("q/k un-permuted")

    monkeypatch.setattr(gguf_model, "unpermute", refuse)
    folder = meta.write_download(tmp_path / "llama", meta.llama2(2), 2, tokenizer)
    convert(folder, tmp_path / "out", "--to", "gguf")
    assert listing(tmp_path / "out") == [JOURNAL_NAME, "out-f16.gguf"]


def test_the_download_root_with_size(tokenizer: Path, tmp_path: Path) -> None:
    folder = meta.write_download(tmp_path / "llama", meta.LLAMA1, 2, tokenizer)
    by_size, by_folder = tmp_path / "a" / "m", tmp_path / "b" / "m"
    convert(tmp_path / "llama", by_size, "--size", "7B", "--to", "gguf")
    convert(folder, by_folder, "--to", "gguf")
    assert gguf_in(by_size).read_bytes() == gguf_in(by_folder).read_bytes()


def test_a_rerun_keeps_the_file_and_the_summary_names_it(tokenizer: Path, tmp_path: Path) -> None:
    folder = meta.write_download(tmp_path / "llama", meta.LLAMA1, 2, tokenizer)
    out = tmp_path / "m"
    first = runner.run("convert", folder, out, "--to", "gguf")
    assert first.exit_code == 0, first.output
    assert f"converted  {out / 'm-f16.gguf'}: " in first.stdout
    again = runner.run("convert", folder, out, "--to", "gguf")
    assert again.exit_code == 0, again.output
    assert "kept" in again.stdout
    assert listing(out) == [JOURNAL_NAME, "m-f16.gguf"]


@pytest.mark.parametrize("files", [1, 2])
def test_recover_to_gguf_from_metas_folder(files: int, tokenizer: Path, tmp_path: Path) -> None:
    """The same GGUF file as `recover --to gguf` from the converted folder, for a diff with
    no tokenizer of its own (Meta's, one level up from the size folder, is taken)."""
    folder = meta.write_download(tmp_path / "llama", meta.LLAMA1, files, tokenizer)
    converted = tmp_path / "hf"
    convert(folder, converted)
    base = tiny.load_folder(converted)
    tuned = tiny.tuned({k: v.float() for k, v in base.items()}, 3, vocab=meta.VOCAB)
    diff = reference_recover.make_diff("vicuna", tuned, base)
    diff_dir = tiny.write_folder(tmp_path / "diff", diff, "bin-sharded")
    outs = []
    for base_dir, parent in ((converted, "from-hf"), (folder, "from-meta")):
        out = tmp_path / parent / "vicuna"
        args = ("recover", diff_dir, base_dir, out, "--recipe", "vicuna", "--to", "gguf", "-q")
        result = runner.run(*args)
        assert result.exit_code == 0, result.output
        outs.append(gguf_in(out).read_bytes())
    assert outs[0] == outs[1]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ((), "is already in the Hugging Face layout (not Meta's consolidated.*.pth); pass "),
        (("--to", "hf"), "is already in the Hugging Face layout (not Meta's consolidated"),
        (("--to", "gguf", "--no-verify"), "--no-verify applies to Meta's folder; a Hugging"),
        (("--to", "gguf", "--llama-version", "1"), "--llama-version applies to Meta's folder"),
        (("--to", "gguf", "--bin"), "--bin applies to Meta's folder; a Hugging Face folder"),
    ],
)
def test_what_does_not_apply_to_an_hf_folder_is_refused(
    options: tuple[str, ...], message: str, tokenizer: Path, tmp_path: Path
) -> None:
    hf = tmp_path / "hf"
    convert(meta.write_download(tmp_path / "llama", meta.LLAMA1, 1, tokenizer), hf)
    out = tmp_path / "out"
    result = runner.run("convert", hf, out, *options)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"belle-decrypt: error: {message}") or result.stderr.startswith(
        f"belle-decrypt: error: {hf}: {message}"
    )
    assert result.stderr.count("\n") == 1
    assert listing(out) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--bin",), "--bin shapes Hugging Face shards; --to gguf writes one GGUF file instead"),
        (("--max-shard-size", "1MB"), "--max-shard-size shapes Hugging Face shards; --to gguf"),
    ],
)
def test_shard_options_with_gguf_from_metas_folder_are_refused(
    options: tuple[str, ...], message: str, tokenizer: Path, tmp_path: Path
) -> None:
    folder = meta.write_download(tmp_path / "llama", meta.LLAMA1, 1, tokenizer)
    out = tmp_path / "out"
    result = runner.run("convert", folder, out, "--to", "gguf", *options)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"belle-decrypt: error: {message}")
    assert result.stderr.count("\n") == 1
    assert listing(out) == []


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGINT"])
def test_an_interrupted_conversion_never_leaves_a_gguf_under_its_name(
    signal_name: str, tokenizer: Path, tmp_path: Path
) -> None:
    """kill -9 or Ctrl-C in the middle of Meta's folder to GGUF: nothing under the final name;
    the same command then finishes, with the file of an uninterrupted run."""
    folder = meta.write_download(tmp_path / "llama", meta.LLAMA1, 2, tokenizer)
    out, clean = tmp_path / "out", tmp_path / "clean" / "out"
    args = ["convert", str(folder), str(out), "--to", "gguf"]
    script = KILLER.replace("SIGNAL", signal_name)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    stopped = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, env=env
    )
    assert stopped.returncode == (-signal.SIGKILL if signal_name == "SIGKILL" else 130)
    assert "out-f16.gguf" not in listing(out)
    if signal_name == "SIGINT":
        assert stopped.stderr.startswith(f"belle-decrypt: error: {out / 'out-f16.gguf'}: ")
        assert stopped.stderr.count("\n") == 1
    convert(*args[1:])
    assert listing(out) == [JOURNAL_NAME, "out-f16.gguf"]  # the leftover removed
    convert(folder, clean, "--to", "gguf")
    assert (out / "out-f16.gguf").read_bytes() == (clean / "out-f16.gguf").read_bytes()


def test_a_checklist_mismatch_leaves_no_gguf(tokenizer: Path, tmp_path: Path) -> None:
    """Meta's files are hashed beside the GGUF pass; a mismatch names the file, exit 1, and
    nothing (not even the temporary file) is left in OUT_DIR."""
    folder = meta.write_download(tmp_path / "llama", meta.LLAMA1, 2, tokenizer)
    path = folder / "consolidated.01.pth"
    listed = meta.md5(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1  # inside a tensor: the file still loads
    path.write_bytes(bytes(data))
    out = tmp_path / "out"
    result = runner.run("convert", folder, out, "--to", "gguf")
    assert result.exit_code == 1, result.output
    assert result.stderr == (
        f"belle-decrypt: error: {path}: md5 {meta.md5(path)} differs from checklist.chk's "
        f"{listed} ({folder / 'checklist.chk'}:2): the download is damaged; download it "
        "again; nothing written\n"
    )
    assert listing(out) == []
    convert(folder, out, "--to", "gguf", "--no-verify")
    assert listing(out) == [JOURNAL_NAME, "out-f16.gguf"]
