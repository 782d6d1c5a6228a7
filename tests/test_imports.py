"""Commands that need no tensors never import torch (it costs seconds to start): the XOR of
every layout runs on numpy past the Python-int budget, checked in a fresh interpreter after a
real run."""

from __future__ import annotations

import gzip
import hashlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from belle_decrypt.streams import engine
from tests import reference, reference_layouts
from tests.conftest import Key, random_bytes

# Runs the CLI in a fresh interpreter and fails unless it exits with an allowed code and
# never imported torch.
NO_TORCH = (
    "import sys\n"
    "from belle_decrypt.cli.commands import cli\n"
    "allowed = {int(code) for code in sys.argv[1].split(',')}\n"
    "try:\n"
    "    cli(sys.argv[2:], prog_name='belle-decrypt')\n"
    "except SystemExit as exc:\n"
    "    assert (exc.code or 0) in allowed, exc.code\n"
    "assert 'torch' not in sys.modules\n"
)


def _without_torch(args: list[str], allowed: str = "0") -> None:
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, allowed, *args], capture_output=True, text=True
    )
    assert proc.returncode == 0, (args, proc.stderr)


def test_no_torch_for_help_or_small_files(
    tmp_path: Path, make_key: Callable[..., Path], make_enc: Callable[..., Path]
) -> None:
    key_path = make_key(1000)
    enc = make_enc("config.json", random_bytes(100, seed=1), key_path)
    for args in (["--help"], ["--version"], [str(enc), str(key_path), str(tmp_path / "o")]):
        _without_torch(args)
    assert (tmp_path / "o" / "config.json").read_bytes() == random_bytes(100, seed=1)


def test_no_torch_for_verify_or_check_key_on_a_plain_file(
    tmp_path: Path, make_key: Callable[..., Path], make_enc: Callable[..., Path]
) -> None:
    key_path = make_key(1000)
    enc = make_enc("config.json", random_bytes(100, seed=1), key_path)
    card = tmp_path / "md5.txt"
    card.write_text(f"{'0' * 32}  ./{enc.name}\n")
    _without_torch(["verify", str(enc.parent), "--manifest", str(card)], allowed="0,1")
    _without_torch(["check-key", str(key_path)], allowed="0,1")


def test_help_imports_no_tensor_library() -> None:
    """`python -m belle_decrypt --help` (the recipes' names included) loads no torch,
    safetensors or numpy."""
    child = (
        "import runpy, sys\n"
        "sys.argv = ['belle-decrypt', '--help']\n"
        "try:\n"
        "    runpy.run_module('belle_decrypt', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "loaded = {m.split('.')[0] for m in sys.modules} & {'torch', 'safetensors', 'numpy'}\n"
        "assert not loaded, loaded\n"
    )
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "recover" in proc.stdout


# Like NO_TORCH, and also fails unless the XOR ran on numpy (a file past the plain budget).
ON_NUMPY = NO_TORCH + "assert 'numpy' in sys.modules\n"
BIG = engine.PLAIN_LIMIT + 12_345
"""Past the Python-int budget: the XOR runs on numpy arrays."""


def _on_numpy_without_torch(args: list[str | Path], allowed: str = "0") -> None:
    proc = subprocess.run(
        [sys.executable, "-c", ON_NUMPY, allowed, *map(str, args)], capture_output=True, text=True
    )
    assert proc.returncode == 0, (args, proc.stderr)


def test_decrypt_and_encrypt_past_the_plain_budget_run_on_numpy_without_torch(
    tmp_path: Path, make_key: Callable[..., Path], make_enc: Callable[..., Path]
) -> None:
    key = make_key(reference.REAL_PIECE + 99)
    plain = random_bytes(BIG, seed=2)
    enc = make_enc("pytorch_model.bin", plain, key)
    _on_numpy_without_torch([enc, key, tmp_path / "out"])
    assert (tmp_path / "out" / "pytorch_model.bin").read_bytes() == plain
    _on_numpy_without_torch(["encrypt", tmp_path / "out", key, tmp_path / "again"])
    assert (tmp_path / "again" / enc.name).read_bytes() == enc.read_bytes()
    card = tmp_path / "again" / "md5sums.txt"
    _without_torch(["verify", str(tmp_path / "again"), "--manifest", str(card)])


@pytest.mark.parametrize("layout", ["techgpt", "openbuddy"])
def test_the_headerless_layouts_run_on_numpy_without_torch(
    tmp_path: Path, big_key: Key, layout: str
) -> None:
    plain = random_bytes(BIG, seed=3)
    if layout == "techgpt":
        name = reference_layouts.techgpt_name("model.bin")
        data = reference_layouts.techgpt_encrypt(plain, big_key[1])
    else:
        name = reference_layouts.openbuddy_name("model.bin")
        data = reference_layouts.openbuddy_encrypt(plain, big_key[1])
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / name).write_bytes(data)
    (tmp_path / "card.txt").write_text(f"{hashlib.md5(plain).hexdigest()}  ./model.bin\n")
    out = tmp_path / "out"
    _on_numpy_without_torch(
        [tmp_path / "enc", big_key[0], out, "--manifest", tmp_path / "card.txt"]
    )
    assert (out / "model.bin").read_bytes() == plain


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "gzip"])
def test_the_per_file_layout_runs_on_numpy_without_torch(tmp_path: Path, compressed: bool) -> None:
    plain, base = random_bytes(BIG, seed=4), random_bytes(BIG - 1000, seed=5)
    payload = reference.perfile_encode(plain, base)
    for folder, data in (("base", base), ("payload", payload)):
        (tmp_path / folder).mkdir()
        written = (
            gzip.compress(data, compresslevel=1) if compressed and folder == "payload" else data
        )
        (tmp_path / folder / "pytorch_model-00001-of-00002.bin").write_bytes(written)
    card = tmp_path / "card.txt"
    card.write_text(f"{hashlib.md5(plain).hexdigest()}  ./pytorch_model-00001-of-00002.bin\n")
    base_card = tmp_path / "base.txt"
    base_card.write_text(f"{hashlib.md5(base).hexdigest()}  ./pytorch_model-00001-of-00002.bin\n")
    out = tmp_path / "out"
    args: list[str | Path] = [tmp_path / "payload", tmp_path / "base", out, "--manifest", card]
    _on_numpy_without_torch([*args, "--base-manifest", base_card])
    assert (out / "pytorch_model-00001-of-00002.bin").read_bytes() == plain
