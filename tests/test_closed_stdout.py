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


def run_lost(argv: list[str], how: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with stdout closed (``>&-``) or a full device (``>/dev/full``)."""
    with open(os.devnull if how == "closed" else "/dev/full", "wb") as stdout:
        return subprocess.run(
            argv,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env=ENV,
            check=False,
            preexec_fn=(lambda: os.close(1)) if how == "closed" else None,
        )


def lost(how: str) -> str:
    """The one line a command says when its stdout cannot be written."""
    why = "it is closed" if how == "closed" else "No space left on device"
    return (
        f"belle-decrypt: warning: could not write to standard output ({why}); its lines are "
        "dropped, the command goes on\n"
    )


HOW = ["closed", "full"]


@pytest.mark.parametrize("how", HOW)
def test_decrypt_and_encrypt_do_the_work_without_stdout(
    tmp_path: Path, make_key: Callable[..., Path], make_enc: Callable[..., Path], how: str
) -> None:
    key = make_key(5000)
    data = random_bytes(12_345, seed=5)
    enc = make_enc("pytorch_model.bin", data, key)
    proc = run_lost(cli(enc, key, tmp_path / "out"), how)
    assert (proc.returncode, proc.stderr) == (0, unknown_key_warning(key) + "\n" + lost(how))
    assert (tmp_path / "out" / "pytorch_model.bin").read_bytes() == data
    proc = run_lost(cli("encrypt", tmp_path / "out", key, tmp_path / "pub"), how)
    assert (proc.returncode, proc.stderr) == (0, lost(how))
    assert (tmp_path / "pub" / "md5sums.txt").exists()


@pytest.mark.parametrize("how", HOW)
def test_verify_and_check_key_give_their_status_without_stdout(tmp_path: Path, how: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"a")
    card = tmp_path / "md5.txt"
    card.write_text(f"{hashlib.md5(b'a').hexdigest()}  a.bin\n")
    for as_json in ([], ["--json"]):
        proc = run_lost(cli("verify", folder, "--manifest", card, *as_json), how)
        assert (proc.returncode, proc.stderr) == (0, lost(how))
    card.write_text(f"{hashlib.md5(b'b').hexdigest()}  a.bin\n")
    proc = run_lost(cli("verify", folder, "--manifest", card), how)
    assert (proc.returncode, proc.stderr) == (
        1,
        lost(how) + f"belle-decrypt: error: {folder}: 1 of 1 listed files FAILED or MISSING; "
        "download (or decrypt) those files again\n",
    )
    proc = run_lost(cli("check-key", folder / "a.bin"), how)
    assert (proc.returncode, proc.stderr) == (1, lost(how))
    proc = run_lost(cli("--help"), how)
    assert (proc.returncode, proc.stderr) == (0, lost(how))


@pytest.mark.parametrize("how", HOW)
def test_recover_does_the_work_without_stdout(tmp_path: Path, how: str) -> None:
    from tests import tinyllama

    base = tinyllama.model(1)
    cfg = tinyllama.config(100)
    tinyllama.write_folder(tmp_path / "base", base, cfg=cfg)
    delta = {name: tuned - base[name] for name, tuned in tinyllama.tuned(base, 2).items()}
    tinyllama.write_folder(tmp_path / "diff", delta, cfg=cfg)
    out = tmp_path / "out"
    proc = run_lost(
        cli("recover", tmp_path / "diff", tmp_path / "base", out, "--recipe", "vicuna"), how
    )
    assert (proc.returncode, proc.stderr) == (0, lost(how))
    assert (out / "model.safetensors").exists()
