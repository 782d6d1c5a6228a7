"""`belle-decrypt demo`, run as a newcomer would: from an empty folder, in a subprocess."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from tests.conftest import listing

SCRIPT = Path(sys.executable).with_name("belle-decrypt")


def demo(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), "demo", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_demo_from_an_empty_folder_runs_the_flow_and_cleans_up(tmp_path: Path) -> None:
    proc = demo(tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for command in (
        "$ belle-decrypt encrypt demo-model consolidated.00.pth demo-model-enc",
        "$ belle-decrypt demo-model-enc consolidated.00.pth demo-model-out "
        "--manifest demo-model-enc/md5sums.txt",
        "$ belle-decrypt verify demo-model-out --manifest demo-model-enc/md5sums.txt",
    ):
        assert command in out
    assert out.count("SHA-256 and md5 verified") == 3
    assert "3 OK, 0 FAILED, 0 MISSING (decrypted files)" in out
    assert (
        "5. torch loads the decrypted pytorch_model.bin: 5 tensors, equal to the original." in out
    )
    assert "removed the example (keep it with --keep DIR)." in out
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("belle-decrypt: warning: consolidated.00.pth: is not the")
    assert listing(tmp_path) == []
    folder = out.splitlines()[0].split(" in ", 1)[1].split(" (")[0]
    assert not Path(folder).exists()


def test_demo_keep_leaves_a_consistent_release(tmp_path: Path) -> None:
    proc = demo(tmp_path, "--keep", "kept")
    assert proc.returncode == 0, proc.stderr
    kept = tmp_path / "kept"
    assert listing(kept) == [
        "consolidated.00.pth",
        "demo-model",
        "demo-model-enc",
        "demo-model-out",
    ]
    plain = kept / "demo-model"
    assert listing(kept / "demo-model-out") == listing(plain)
    for name in listing(plain):
        assert (kept / "demo-model-out" / name).read_bytes() == (plain / name).read_bytes()
    checkpoint = plain / "pytorch_model.bin"
    assert checkpoint.stat().st_size > 2 * 10 * 1024 * 1024  # tiles the short piece and wraps
    md5 = hashlib.md5(checkpoint.read_bytes()).hexdigest()
    assert f"{md5}  ./pytorch_model.bin" in (kept / "demo-model-enc" / "md5sums.txt").read_text()

    again = demo(tmp_path, "--keep", "kept")
    assert again.returncode == 2
    assert again.stderr == (
        "belle-decrypt: error: kept: is not empty; give --keep a new or empty folder\n"
    )
