"""The installed `belle-decrypt` script, run as users run it: in the upstream shell loop and on a
folder, in real subprocesses."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import listing, random_bytes, unknown_key_warning

SCRIPT = Path(sys.executable).with_name("belle-decrypt")


@pytest.fixture
def hub_clone(
    make_key: Callable[..., Path], make_enc: Callable[..., Path]
) -> tuple[Path, Path, dict[str, bytes]]:
    """A model-hub clone: two `.enc` files (one larger than the key), README.md, .gitattributes."""
    key = make_key(5000)
    plains = {
        "config.json": b'{"hidden_size": 4096}\n',
        "pytorch_model.bin": random_bytes(12_345, seed=5),
    }
    for name, data in plains.items():
        enc_dir = make_enc(name, data, key).parent
    (enc_dir / "README.md").write_text("md5sum ./*\n")
    (enc_dir / ".gitattributes").write_text("*.enc filter=lfs diff=lfs merge=lfs -text\n")
    return key, enc_dir, plains


def test_console_script_is_installed() -> None:
    assert SCRIPT.exists(), f"{SCRIPT} missing: install the package (pip install '.[test]')"


def test_upstream_shell_loop_runs_unchanged(
    hub_clone: tuple[Path, Path, dict[str, bytes]], tmp_path: Path
) -> None:
    key, enc_dir, plains = hub_clone
    out = tmp_path / "finetuned"
    loop = (
        f"mkdir {out}\n"
        f'for f in "{enc_dir}"/*; do if [ -f "$f" ]; then '
        f'belle-decrypt "$f" "{key}" "{out}/"; fi; done\n'
    )
    env = {**os.environ, "PATH": f"{SCRIPT.parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        ["bash", "-c", loop], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert listing(out) == sorted(plains)
    for name, data in plains.items():
        assert (out / name).read_bytes() == data
    # The glob does not match the hidden .gitattributes; README.md gets one clear line.
    warning = unknown_key_warning(key)
    assert proc.stderr.splitlines() == [
        f"belle-decrypt: error: {enc_dir}/README.md: not an encrypted file name "
        "(expected NAME.<64 lower-case hex>.enc)",
        warning,
        warning,
    ]
    assert proc.stdout.count("SHA-256 verified") == 2


def test_folder_form_in_a_subprocess(
    hub_clone: tuple[Path, Path, dict[str, bytes]], tmp_path: Path
) -> None:
    key, enc_dir, plains = hub_clone
    out = tmp_path / "a" / "b"
    proc = subprocess.run(
        [str(SCRIPT), str(enc_dir), str(key), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    # No progress bars when stderr is not a terminal: only the synthetic key's warning.
    assert proc.stderr == unknown_key_warning(key) + "\n"
    assert "skipped            README.md (not a .enc file)" in proc.stdout
    assert proc.stdout.splitlines()[-1] == "2 decrypted, 0 already decrypted, 0 failed"
    for name, data in plains.items():
        assert (out / name).read_bytes() == data


def test_python_dash_m_works_like_the_script(
    hub_clone: tuple[Path, Path, dict[str, bytes]], tmp_path: Path
) -> None:
    key, enc_dir, plains = hub_clone
    wrong = tmp_path / "wrong.pth"
    shutil.copy(key, wrong)
    with open(wrong, "r+b") as handle:
        handle.write(b"\xff\xfe")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "belle_decrypt", str(enc_dir), str(wrong), str(out), "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    warning, *errors = proc.stderr.splitlines()
    assert warning == unknown_key_warning(wrong)
    assert len(errors) == len(plains)
    assert all(line.startswith("belle-decrypt: error: ") for line in errors)
    assert all("the key is probably wrong" in line for line in errors)
    assert listing(out) == []


def test_a_closed_stdout_does_not_stop_a_folder(
    hub_clone: tuple[Path, Path, dict[str, bytes]], tmp_path: Path
) -> None:
    key, enc_dir, plains = hub_clone
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            "bash",
            "-c",
            f'"{SCRIPT}" "{enc_dir}" "{key}" "{out}" | head -1; exit ${{PIPESTATUS[0]}}',
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "skipped            .gitattributes (not a .enc file)\n"
    assert proc.stderr == unknown_key_warning(key) + "\n"
    for name, data in plains.items():
        assert (out / name).read_bytes() == data


@pytest.mark.parametrize("how", ["script", "python -m"])
@pytest.mark.parametrize("module", ["click", "tqdm"])
def test_ctrl_c_while_importing_is_one_line_and_130(tmp_path: Path, how: str, module: str) -> None:
    """A real SIGINT in the first moments (while click, or tqdm, is being imported): one line
    and exit 130, not an import traceback or click's "Aborted!"."""
    fake = tmp_path / "fake" / module
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(10)\n"
    )
    (tmp_path / "a.bin").write_bytes(b"a")
    (tmp_path / "card.md5").write_text(f"{hashlib.md5(b'a').hexdigest()}  a.bin\n")
    command = [str(SCRIPT)] if how == "script" else [sys.executable, "-m", "belle_decrypt"]
    env = {**os.environ, "PYTHONPATH": str(fake.parent)}
    started = time.monotonic()
    proc = subprocess.run(
        [*command, "verify", str(tmp_path), "--manifest", str(tmp_path / "card.md5")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert time.monotonic() - started <= 5
    assert (proc.returncode, proc.stderr) == (130, "belle-decrypt: error: interrupted\n")
    assert proc.stdout == ""


LEAVE = """
import sys
from belle_decrypt import entry
from belle_decrypt.cli import commands
def run():
    print("x" * 100, end="")  # buffered (block-buffered pipe), not yet written
    print("on stderr", file=sys.stderr, end="")
    raise SystemExit(CODE)
commands.main = run
entry.main()
"""

# Python's own buffering of stdout, whatever this environment sets: what is flushed at the end.
BUFFERED = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}


@pytest.mark.parametrize(("code", "status"), [(0, 0), (None, 0), (2, 2), (130, 130)])
def test_the_process_ends_with_the_commands_status_and_its_output_flushed(
    code: int | None, status: int
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", LEAVE.replace("CODE", repr(code))],
        capture_output=True,
        text=True,
        timeout=120,
        env=BUFFERED,
    )
    assert proc.returncode == status
    assert proc.stdout == "x" * 100
    assert proc.stderr == "on stderr"


def test_a_message_as_the_exit_code_is_said_on_stderr_with_status_1() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", LEAVE.replace("CODE", repr("what went wrong"))],
        capture_output=True,
        text=True,
        timeout=120,
        env=BUFFERED,
    )
    assert (proc.returncode, proc.stderr) == (1, "on stderrwhat went wrong\n")
    assert proc.stdout == "x" * 100
