"""Names that are not UTF-8 (GBK names from archives made on Chinese Windows), in real
subprocesses with a strict UTF-8 stdout: every command handles them like any other name and
prints them escaped, never a UnicodeEncodeError."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests import reference
from tests.conftest import listing, random_bytes
from tests.faults import CLI, ENV

GBK = "中文模型".encode("gbk")  # d6d0cec4 c4a3d0cd: not UTF-8
SHOWN = r"\xd6\xd0\xce\xc4ģ\xd0\xcd"  # as printed: the undecodable bytes escaped
STRICT = {**ENV, "PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}


def run(
    args: Sequence[str | Path | bytes], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *(arg if isinstance(arg, bytes) else os.fsencode(arg) for arg in args)],
        capture_output=True,
        text=True,
        errors="surrogateescape",
        env=STRICT,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def named(folder: Path, suffix: str, prefix: str = "") -> Path:
    return folder / os.fsdecode(prefix.encode() + GBK + suffix.encode())


def test_encrypt_decrypt_verify_check_key(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    weights = random_bytes(9000, seed=3)
    named(model, ".bin").write_bytes(weights)
    (model / "config.json").write_bytes(b"{}\n")
    key = named(tmp_path, ".pth", "key-")
    key.write_bytes(random_bytes(3000, seed=4))
    enc = tmp_path / "enc"

    encrypted = run(["encrypt", model, key, enc])
    assert encrypted.returncode == 0, encrypted.stderr
    assert f"encrypted  {SHOWN}.bin." in encrypted.stdout
    assert "Traceback" not in encrypted.stderr

    out = tmp_path / "out"
    decrypted = run([enc, key, out, "--manifest", enc / "md5sums.txt"])
    assert decrypted.returncode == 0, decrypted.stderr
    assert f"decrypted          {SHOWN}.bin  8.8 KiB in " in decrypted.stdout
    assert f"warning: {key.parent}/key-{SHOWN}.pth: is not the original" in decrypted.stderr
    assert named(out, ".bin").read_bytes() == weights
    assert listing(out) == sorted(["config.json", os.fsdecode(GBK + b".bin")])

    verified = run(["verify", out, "--manifest", enc / "md5sums.txt"])
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.splitlines() == [
        "config.json: OK",
        f"{SHOWN}.bin: OK",
        "2 OK, 0 FAILED, 0 MISSING (decrypted files)",
    ]

    checked = run(["check-key", key])
    assert checked.returncode == 1, checked.stderr
    assert checked.stdout.splitlines()[0] == f"file:                {key.parent}/key-{SHOWN}.pth"
    assert checked.stderr == ""


def test_a_name_does_not_stop_a_folder_run(tmp_path: Path) -> None:
    """The output line of the first file must not kill the run (under a strict UTF-8 stdout
    it raised UnicodeEncodeError and the other files were never tried)."""
    key_bytes = random_bytes(100, seed=5)
    key = tmp_path / "key.pth"
    key.write_bytes(key_bytes)
    enc = tmp_path / "enc"
    enc.mkdir()
    for name, data in ((b"-a.bin", b"first"), (b"-b.bin", b"second")):
        digest, blob = reference.encrypt(data, key_bytes)
        named(enc, f"{name.decode()}.{digest}.enc").write_bytes(blob)
    result = run([enc, key, tmp_path / "out"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "2 decrypted, 0 already decrypted, 0 failed"
    assert named(tmp_path / "out", "-b.bin").read_bytes() == b"second"


def test_md5sum_card_with_gbk_bytes_matches(tmp_path: Path) -> None:
    """A card written by md5sum itself holds the raw GBK bytes: it must match the file."""
    folder = tmp_path / "out"
    folder.mkdir()
    data = random_bytes(700, seed=6)
    named(folder, ".bin").write_bytes(data)
    card = subprocess.run(
        ["md5sum", os.fsencode(named(folder, ".bin").name)],
        cwd=folder,
        capture_output=True,
        check=True,
    ).stdout
    assert card == f"{hashlib.md5(data).hexdigest()}  ".encode() + GBK + b".bin\n"
    (tmp_path / "card.md5").write_bytes(card)
    result = run(["verify", folder, "--manifest", tmp_path / "card.md5"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{SHOWN}.bin: OK",
        "1 OK, 0 FAILED, 0 MISSING (decrypted files)",
    ]
    named(folder, ".bin").write_bytes(data[::-1])
    failed = run(["verify", folder, "--manifest", tmp_path / "card.md5", "--json"])
    assert failed.returncode == 1
    assert '"status": "FAILED"' in failed.stdout
