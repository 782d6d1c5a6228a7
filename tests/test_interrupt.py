"""Ctrl-C (a real SIGINT) during the long reads of verify and of a resume: exit 130 promptly.

The files are sparse (no disk space, reads cost only the hashing), big enough that finishing
them would take far longer than the 5 s allowed; the real latency is measured in
benchmarks/bench.py --latency.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.faults import interrupt_after_reading, one_error, sparse_file, start_cli

GiB = 1024**3
SIZE = 8 * GiB
STARTED = 512 * 1024 * 1024  # read by the process once the hashing is well under way
LIMIT = 5.0


def test_ctrl_c_during_verify_with_two_jobs(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("a.bin", "b.bin"):
        sparse_file(folder / name, SIZE)
    card = tmp_path / "md5.txt"
    card.write_text(f"{'0' * 32}  ./a.bin\n{'1' * 32}  ./b.bin\n")
    proc = start_cli("verify", folder, "--manifest", card, "-j", "2", "-q")
    seconds = interrupt_after_reading(proc, STARTED)
    _, stderr = proc.communicate()
    assert proc.returncode == 130, stderr
    assert one_error(stderr) == "interrupted"
    assert seconds <= LIMIT


def test_ctrl_c_during_the_re_hash_of_an_existing_output(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"not what the output holds").digest()
    enc = sparse_file(tmp_path / f"model.bin.{digest.hex()}.enc", SIZE + 32, head=digest)
    key = tmp_path / "consolidated.00.pth"
    key.write_bytes(b"key")
    out = tmp_path / "out"
    out.mkdir()
    existing = sparse_file(out / "model.bin", SIZE)
    proc = start_cli(enc, key, out, "-q")
    seconds = interrupt_after_reading(proc, STARTED)
    _, stderr = proc.communicate()
    assert proc.returncode == 130, stderr
    assert one_error(stderr).startswith(f"{existing}: interrupted")
    assert seconds <= LIMIT
    assert sorted(p.name for p in out.iterdir()) == ["model.bin"]
    assert existing.stat().st_size == SIZE
