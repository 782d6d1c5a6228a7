"""Commands that need no tensors never import torch (it costs seconds to start)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import random_bytes

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
