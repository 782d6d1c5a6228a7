"""Several files at once (jobs.run, --jobs): order, first error, defaults, the CLI form."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from belle_decrypt.layouts.container import EncFile
from belle_decrypt.streams import jobs
from belle_decrypt.streams.keystream import Key
from belle_decrypt.xor.decrypt import decrypt_file
from tests.conftest import library_threads, random_bytes
from tests.runner import run


def test_decrypt_file_small_pieces_with_jobs(
    tmp_path: Path, make_key: Callable[..., Path], make_enc: Callable[..., Path]
) -> None:
    """Several files decrypted at once through decrypt_file, in order, each byte-exact."""
    piece = 7
    key_path = make_key(3 * piece + 2)
    plains = {f"f{i}.bin": random_bytes(50 * i + 3, seed=i) for i in range(6)}
    encs = [EncFile.open(make_enc(name, p, key_path, piece=piece)) for name, p in plains.items()]
    out = tmp_path / "out"
    out.mkdir()
    seen: list[str] = []
    with Key(key_path, piece_size=piece) as key:
        results = jobs.run(
            lambda enc: decrypt_file(enc, key, out, fsync=False, buffer_size=10),
            encs,
            3,
            on_result=lambda enc, result: seen.append(result.target.name),
        )
    assert [r.target.name for r in results] == list(plains) == seen
    for name, plain in plains.items():
        assert (out / name).read_bytes() == plain
    assert library_threads() == []


def test_jobs_first_error_stops_the_rest() -> None:
    started: list[int] = []

    def func(i: int) -> int:
        started.append(i)
        if i == 1:
            raise ValueError("boom")
        return i

    with pytest.raises(ValueError, match="boom"):
        jobs.run(func, list(range(50)), 2)
    assert len(started) < 50
    assert library_threads() == []
    assert jobs.run(lambda i: i * 2, [1, 2, 3], 4) == [2, 4, 6]
    assert jobs.run(lambda i: i * 2, [1, 2, 3], 1) == [2, 4, 6]


def test_default_jobs() -> None:
    big = jobs.BIG_FILE
    assert jobs.default_jobs([big] * 4, cores=2) == 1
    assert jobs.default_jobs([big] * 4, cores=4) == 2
    assert jobs.default_jobs([big] * 4, hashes_per_file=2, cores=4) == 1
    assert jobs.default_jobs([big] * 2, cores=16) == 2
    assert jobs.default_jobs([10] * 9, cores=16) == 1


def test_cli_folder_with_jobs(
    tmp_path: Path, make_key: Callable[..., Path], make_enc: Callable[..., Path]
) -> None:
    key_path = make_key(1000)
    plains = {f"part{i}.bin": random_bytes(3000 + i, seed=i) for i in range(4)}
    for name, plain in plains.items():
        make_enc(name, plain, key_path)
    out = tmp_path / "out"
    result = run(tmp_path / "enc", key_path, out, "--jobs", "3", "--no-fsync")
    assert result.exit_code == 0, result.output
    assert "4 decrypted, 0 already decrypted, 0 failed" in result.output
    for name, plain in plains.items():
        assert (out / name).read_bytes() == plain
    assert library_threads() == []
