"""A reader of stdout that has gone (`| head -0`) changes nothing but the output: every command
still does its work and exits with its real status, with nothing on stderr but its own lines."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from belle_decrypt.checks.keyid import HEAD_SIZE
from tests.conftest import random_bytes, unknown_key_warning
from tests.faults import ENV, not_warnings


def run_closed(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with stdout a pipe whose reading end is already closed."""
    reading, writing = os.pipe()
    os.close(reading)
    try:
        return subprocess.run(
            argv,
            stdout=writing,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env=ENV,
            cwd=cwd,
            check=False,
        )
    finally:
        os.close(writing)


def cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "belle_decrypt", *map(str, args)]


@pytest.mark.parametrize("args", [["--help"], ["verify", "--help"], ["--version"]])
def test_help_exits_0(args: list[str]) -> None:
    proc = run_closed(cli(*args))
    assert (proc.returncode, proc.stderr) == (0, "")


def test_verify_exits_0_when_all_ok_and_1_when_not(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"a")
    card = tmp_path / "md5.txt"
    card.write_text(f"{hashlib.md5(b'a').hexdigest()}  a.bin\n")
    for as_json in ([], ["--json"]):
        proc = run_closed(cli("verify", folder, "--manifest", card, *as_json))
        assert (proc.returncode, proc.stderr) == (0, "")
    card.write_text(f"{hashlib.md5(b'b').hexdigest()}  a.bin\n")
    proc = run_closed(cli("verify", folder, "--manifest", card))
    assert proc.returncode == 1
    assert proc.stderr == (
        f"belle-decrypt: error: {folder}: 1 of 1 listed files FAILED or MISSING; download "
        "(or decrypt) those files again\n"
    )


def test_check_key_exits_0_for_the_expected_key(tmp_path: Path) -> None:
    data = random_bytes(5000, 3)
    key = tmp_path / "consolidated.00.pth"
    key.write_bytes(data)
    # The child takes this synthetic file for LLaMA-7B, then runs the real entry point.
    known = (
        f"KnownKey('LLaMA-7B consolidated.00.pth', md5={hashlib.md5(data).hexdigest()!r}, "
        f"size={len(data)}, head_md5={hashlib.md5(data[:HEAD_SIZE]).hexdigest()!r})"
    )
    child = (
        "import sys\n"
        "from belle_decrypt.checks import keyid\n"
        f"keyid.LLAMA_7B = keyid.{known}\n"
        "from belle_decrypt.cli.commands import main\n"
        f"sys.argv = ['belle-decrypt', 'check-key', {str(key)!r}]\n"
        "main()\n"
    )
    proc = run_closed([sys.executable, "-c", child])
    assert (proc.returncode, proc.stderr) == (0, "")
    proc = run_closed(cli("check-key", tmp_path / "missing.pth"))
    assert proc.returncode == 2


def test_demo_exits_0(tmp_path: Path) -> None:
    proc = run_closed(cli("demo", "--keep", "kept"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not_warnings(proc.stderr) == []  # the stand-in key is warned about
    assert (tmp_path / "kept" / "demo-model-out" / "pytorch_model.bin").exists()


def test_decrypt_and_encrypt_still_exit_0(
    tmp_path: Path, make_key: Callable[..., Path], make_enc: Callable[..., Path]
) -> None:
    key = make_key(5000)
    data = random_bytes(12_345, seed=5)
    enc = make_enc("pytorch_model.bin", data, key)
    proc = run_closed(cli(enc, key, tmp_path / "out"))
    assert (proc.returncode, proc.stderr) == (0, unknown_key_warning(key) + "\n")
    assert (tmp_path / "out" / "pytorch_model.bin").read_bytes() == data
    proc = run_closed(cli("encrypt", tmp_path / "out", key, tmp_path / "pub"))
    assert (proc.returncode, proc.stderr) == (0, "")
    assert (tmp_path / "pub" / "md5sums.txt").exists()
