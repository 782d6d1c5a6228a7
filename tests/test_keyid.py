"""check-key: fingerprints, the known-key table, and naming what a wrong key is."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
import torch

from belle_decrypt.checks import keyid
from belle_decrypt.checks.keyid import HEAD_SIZE, KnownKey, describe_tensors, identify
from belle_decrypt.ground.errors import InputError
from tests.conftest import random_bytes
from tests.faults import one_error, run_cli
from tests.runner import run


def known_from(data: bytes, label: str = "LLaMA-7B consolidated.00.pth") -> KnownKey:
    """A table entry for a synthetic stand-in of a published file."""
    return KnownKey(
        label,
        md5=hashlib.md5(data).hexdigest(),
        size=len(data),
        head_md5=hashlib.md5(data[:HEAD_SIZE]).hexdigest(),
    )


def test_real_constants_are_format_md_values() -> None:
    assert keyid.LLAMA_7B.size == 13_476_939_516
    assert keyid.LLAMA_7B.head_md5 == "08cf0f43451cc4ae056e0b19e56c1fcf"
    assert keyid.LLAMA_7B.md5 == "6efc8dab194ab59e49cd24be5574d85e"
    assert keyid.KNOWN_KEYS[0] is keyid.LLAMA_7B
    assert {k.md5 for k in keyid.KNOWN_KEYS[1:]} == {
        "0804c42ca65584f50234a86d71e6916a",
        "016017be6040da87604f77703b92f2bc",
        "f856e9d99c30855d6ead4d00cc3a5573",
        "9deae67e2e7b5ccfb2c738f390c00854",
    }


def test_unknown_small_file(tmp_path: Path) -> None:
    path = tmp_path / "key.bin"
    path.write_bytes(b"abc")
    report = identify(path)
    assert not report.is_expected
    assert report.size == 3
    assert report.head_md5 == hashlib.md5(b"abc").hexdigest()
    assert report.checkpoint is None
    assert report.verdict == (
        "is not the original LLaMA-7B consolidated.00.pth (3 bytes, not 13,476,939,516)"
    )


def test_synthetic_llama_7b_instant_and_full(tmp_path: Path) -> None:
    data = random_bytes(HEAD_SIZE + 1000, 1)
    path = tmp_path / "consolidated.00.pth"
    path.write_bytes(data)
    expected = known_from(data)
    instant = identify(path, expected=expected, known=[expected])
    assert instant.is_expected and instant.md5 is None
    assert "size and first 16 MiB match" in instant.verdict
    full = identify(path, full=True, expected=expected, known=[expected])
    assert full.is_expected and full.md5 == expected.md5
    assert full.verdict == "is the original LLaMA-7B consolidated.00.pth (whole-file md5 matches)"


def test_damaged_after_first_16_mib(tmp_path: Path) -> None:
    data = random_bytes(HEAD_SIZE + 1000, 1)
    expected = known_from(data)
    path = tmp_path / "key.pth"
    path.write_bytes(data[:-1] + b"\0")
    assert identify(path, expected=expected, known=[expected]).is_expected
    full = identify(path, full=True, expected=expected, known=[expected])
    assert not full.is_expected
    assert "its md5 differs: a damaged copy" in full.verdict


def test_incomplete_download(tmp_path: Path) -> None:
    data = random_bytes(HEAD_SIZE + 1000, 1)
    expected = known_from(data)
    path = tmp_path / "key.pth"
    path.write_bytes(data[: HEAD_SIZE + 10])
    report = identify(path, expected=expected, known=[expected])
    assert not report.is_expected
    assert report.verdict.endswith("but is 990 bytes short (an incomplete download)")


def test_full_md5_names_another_known_file(tmp_path: Path) -> None:
    seven = random_bytes(2000, 1)
    thirteen = random_bytes(3000, 2)
    table = [known_from(seven), known_from(thirteen, "LLaMA-13B consolidated.00.pth")]
    path = tmp_path / "consolidated.00.pth"
    path.write_bytes(thirteen)
    report = identify(path, full=True, expected=table[0], known=table)
    assert not report.is_expected
    assert report.verdict == (
        "is LLaMA-13B consolidated.00.pth, not the original LLaMA-7B consolidated.00.pth; "
        "the diffs are keyed on the original LLaMA-7B consolidated.00.pth"
    )


def test_missing_key_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="key file not found"):
        identify(tmp_path / "nope.pth")


def meta_state(layers: int, hidden: int, vocab: int) -> dict[str, torch.Tensor]:
    state = {"tok_embeddings.weight": torch.zeros(vocab, hidden), "norm.weight": torch.ones(hidden)}
    for n in range(layers):
        state[f"layers.{n}.attention.wq.weight"] = torch.zeros(hidden, hidden)
        state[f"layers.{n}.attention_norm.weight"] = torch.ones(hidden)
    return state


def test_small_torch_checkpoint_is_described(tmp_path: Path) -> None:
    path = tmp_path / "consolidated.00.pth"
    torch.save(meta_state(layers=3, hidden=8, vocab=50), path)
    report = identify(path)
    assert report.checkpoint is not None
    assert (report.checkpoint.layout, report.checkpoint.layers) == ("Meta-format", (0, 1, 2))
    assert (report.checkpoint.hidden, report.checkpoint.vocab) == (8, 50)
    assert not report.checkpoint.shard
    assert report.verdict.endswith(
        ": it is a Meta-format checkpoint: 3 layers, hidden size 8, "
        "vocabulary 50 (not LLaMA's 32000: extended)"
    )


def test_hugging_face_shard_in_torch_format(tmp_path: Path) -> None:
    path = tmp_path / "pytorch_model-00002-of-00002.bin"
    torch.save(
        {
            "model.layers.4.input_layernorm.weight": torch.ones(16),
            "model.layers.5.input_layernorm.weight": torch.ones(16),
            "lm_head.weight": torch.zeros(32000, 16, dtype=torch.int8),
        },
        path,
    )
    report = identify(path)
    assert report.checkpoint is not None
    assert report.checkpoint.describe() == (
        "a Hugging-Face-format checkpoint shard: layers 4-5, hidden size 16, vocabulary 32000"
    )


def test_safetensors_header_is_read_without_torch(tmp_path: Path) -> None:
    header = (
        b'{"model.embed_tokens.weight":{"dtype":"F16","shape":[49953,4096],"data_offsets":[0,0]},'
        b'"model.layers.0.input_layernorm.weight":{"dtype":"F16","shape":[4096],'
        b'"data_offsets":[0,0]},"__metadata__":{"format":"pt"}}'
    )
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    info = identify(path).checkpoint
    assert info is not None
    assert info.describe() == (
        "a Hugging-Face-format checkpoint: 1 layer, hidden size 4096, "
        "vocabulary 49953 (not LLaMA's 32000: extended) (LLaMA-7B size)"
    )


@pytest.mark.parametrize(
    ("layers", "hidden", "model"),
    [(32, 4096, "LLaMA-7B"), (40, 5120, "LLaMA-13B"), (60, 6656, "LLaMA-30B")],
)
def test_llama_sizes_from_shapes(layers: int, hidden: int, model: str) -> None:
    shapes = {"tok_embeddings.weight": [32000, hidden], "norm.weight": [hidden]}
    shapes.update({f"layers.{n}.attention.wq.weight": [hidden, hidden] for n in range(layers)})
    info = describe_tensors(shapes)
    assert info.model == model
    assert info.describe() == (
        f"a Meta-format checkpoint: {layers} layers, hidden size {hidden}, vocabulary 32000 "
        f"({model} size)"
    )


def test_cli_check_key_unknown(tmp_path: Path) -> None:
    path = tmp_path / "key.bin"
    path.write_bytes(b"abc")
    result = run("check-key", path)
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"file:                {path}",
        "size:                3 bytes (LLaMA-7B: 13,476,939,516)",
        f"md5 of first 16 MiB: {hashlib.md5(b'abc').hexdigest()} "
        "(LLaMA-7B: 08cf0f43451cc4ae056e0b19e56c1fcf)",
        "checkpoint:          not readable as one",
        f"verdict:             {path} is not the original LLaMA-7B consolidated.00.pth "
        "(3 bytes, not 13,476,939,516)",
    ]


def test_cli_check_key_known_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = random_bytes(5000, 3)
    path = tmp_path / "consolidated.00.pth"
    path.write_bytes(data)
    monkeypatch.setattr(keyid, "LLAMA_7B", known_from(data))
    result = run("check-key", path, "--full", "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"verdict:             {path} is the original LLaMA-7B consolidated.00.pth "
        "(whole-file md5 matches)\n"
    )


def test_cli_check_key_missing(tmp_path: Path) -> None:
    result = run("check-key", tmp_path / "nope.pth")
    assert result.exit_code == 2
    assert result.stderr == (
        f"belle-decrypt: error: {tmp_path / 'nope.pth'}: key file not found; "
        "pass LLaMA-7B consolidated.00.pth\n"
    )


def safetensors(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header


@pytest.mark.parametrize(
    "blob",
    [
        struct.pack("<Q", 200_000) + b"[" * 200_000,  # nests deeper than the recursion limit
        safetensors(b'{"x":{"shape":[{"a":1}],"dtype":"F16"},"norm.weight":{"shape":[[1]]}}'),
        safetensors(b'{"norm.weight":{"shape":["4096"]},"layers.0.w":{"shape":[true]}}'),
    ],
    ids=["deep-nesting", "dict-in-shape", "strings-in-shape"],
)
def test_crafted_key_gets_a_verdict(tmp_path: Path, blob: bytes) -> None:
    """check-key and decrypt's diagnosis, in subprocesses: a verdict, never a traceback."""
    key = tmp_path / "crafted.safetensors"
    key.write_bytes(blob)
    checked = run_cli("check-key", key)
    assert checked.returncode == 1, checked.stderr
    assert checked.stderr == ""
    assert checked.stdout.splitlines()[-2:] == [
        "checkpoint:          not readable as one",
        f"verdict:             {key} is not the original LLaMA-7B consolidated.00.pth "
        f"({len(blob):,} bytes, not 13,476,939,516)",
    ]
    enc = tmp_path / f"model.bin.{'0' * 64}.enc"
    enc.write_bytes(bytes(32) + b"payload")
    decrypted = run_cli(enc, key, tmp_path / "out")
    assert decrypted.returncode == 1
    assert one_error(decrypted.stderr).endswith(
        f"the key is probably wrong: {key} is not the original LLaMA-7B consolidated.00.pth "
        f"({len(blob):,} bytes, not 13,476,939,516); nothing written"
    )


def test_one_tensor_is_singular() -> None:
    assert describe_tensors({"w": [3]}).describe() == (
        "a PyTorch checkpoint with 1 tensor, not a LLaMA layout"
    )
    assert describe_tensors({"w": [3], "b": [3]}).describe() == (
        "a PyTorch checkpoint with 2 tensors, not a LLaMA layout"
    )
