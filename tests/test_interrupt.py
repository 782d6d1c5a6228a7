"""Ctrl-C and SIGTERM (real signals) during the long reads of verify, of a resume's re-hash of
existing outputs, and of a failure's diagnosis: the right exit status promptly, one line that
claims a removed file only when one was.

The files are sparse (no disk space, reads cost only the hashing), big enough that finishing
them would take far longer than the 5 s allowed; the real latency is measured in
benchmarks/bench.py --latency.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.faults import interrupt_after_reading, one_error, sparse_file, start_cli

GiB = 1024**3
MiB = 1024**2
SIZE = 8 * GiB
STARTED = 128 * MiB  # read by the process once the hashing is well under way
LIMIT = 5.0
AGAIN = "run the same command again to finish"
SIGNALS = pytest.mark.parametrize(
    ("signum", "code", "word"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)


def key_file(folder: Path) -> Path:
    key = folder / "consolidated.00.pth"
    key.write_bytes(b"key")
    return key


def wrong_enc(folder: Path, name: str, size: int) -> Path:
    """A sparse `.enc` whose header names a digest its payload never has."""
    digest = hashlib.sha256(b"not what the payload decrypts to").digest()
    return sparse_file(folder / f"{name}.{digest.hex()}.enc", size + 32, head=digest)


def sparse_model(tmp_path: Path, names: list[str]) -> tuple[Path, Path]:
    """A folder of big sparse files and a card that lists them with wrong md5s."""
    folder = tmp_path / "model"
    folder.mkdir()
    for name in names:
        sparse_file(folder / name, SIZE)
    card = tmp_path / "md5.txt"
    card.write_text("".join(f"{'0' * 32}  ./{name}\n" for name in names))
    return folder, card


@SIGNALS
@pytest.mark.parametrize("jobs", [1, 2])
def test_a_signal_during_verify(
    tmp_path: Path, signum: int, code: int, word: str, jobs: int
) -> None:
    folder, card = sparse_model(tmp_path, ["a.bin", "b.bin"])
    proc = start_cli("verify", folder, "--manifest", card, "-j", str(jobs), "-q")
    seconds = interrupt_after_reading(proc, STARTED, signum)
    stdout, stderr = proc.communicate()
    assert proc.returncode == code, stderr
    assert one_error(stderr) == word
    assert stdout == ""
    assert seconds <= LIMIT


def test_verify_json_prints_its_document_when_interrupted(tmp_path: Path) -> None:
    folder, card = sparse_model(tmp_path, ["a.bin"])
    proc = start_cli("verify", folder, "--manifest", card, "--json")
    seconds = interrupt_after_reading(proc, STARTED)
    stdout, stderr = proc.communicate()
    assert proc.returncode == 130, stderr
    assert one_error(stderr) == "interrupted"
    assert json.loads(stdout) == {
        "folder": str(folder),
        "ok": False,
        "error": "interrupted",
        "files": [],
    }
    assert seconds <= LIMIT


@SIGNALS
@pytest.mark.parametrize("jobs", [1, 2])
def test_a_signal_during_the_re_hash_of_existing_outputs(
    tmp_path: Path, signum: int, code: int, word: str, jobs: int
) -> None:
    """The existing outputs are left as they were, and the line does not name them."""
    enc_dir = tmp_path / "enc"
    enc_dir.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    names = [f"model-{i}.bin" for i in range(jobs)]
    existing = {}
    for name in names:
        wrong_enc(enc_dir, name, SIZE)
        path = sparse_file(out / name, SIZE)
        existing[name] = path.stat().st_mtime_ns
    proc = start_cli(enc_dir, key_file(tmp_path), out, "-q", "--jobs", str(jobs))
    seconds = interrupt_after_reading(proc, STARTED * jobs, signum)
    _, stderr = proc.communicate()
    assert proc.returncode == code, stderr
    assert one_error(stderr) == f"{word}; {AGAIN}"
    assert seconds <= LIMIT
    assert sorted(p.name for p in out.iterdir()) == names
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == existing


@SIGNALS
def test_a_signal_during_the_diagnosis_md5(
    tmp_path: Path, signum: int, code: int, word: str
) -> None:
    """Two files fail their checksum; while the md5 of each download is checked against the
    manifest (to tell a broken download from a wrong key), a signal stops the run.

    The payloads are small (decrypted in a blink, without torch), and the downloads grow to
    8 GiB once the run has planned them: the decrypt reads only the planned payload, the md5
    reads everything, so the diagnosis is the long read."""
    payload = 16 * MiB
    enc_dir = tmp_path / "enc"
    enc_dir.mkdir()
    encs = [wrong_enc(enc_dir, name, payload) for name in ("a.bin", "b.bin")]
    card = tmp_path / "md5.txt"
    card.write_text("".join(f"{'0' * 32}  {enc.name}\n" for enc in encs))
    out = tmp_path / "out"
    proc = start_cli(enc_dir, key_file(tmp_path), out, "--manifest", card, "--jobs", "2", "-q")
    deadline = time.monotonic() + 30
    while not out.exists():  # made once the files are planned
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.001)
    for enc in encs:
        os.truncate(enc, SIZE)
    seconds = interrupt_after_reading(proc, 2 * payload + STARTED, signum)
    _, stderr = proc.communicate()
    assert proc.returncode == code, stderr
    assert one_error(stderr) == f"{word}; {AGAIN}"
    assert seconds <= LIMIT
    assert list(out.iterdir()) == []
