"""The pipelined engine against the reference oracle, its error paths, and --jobs."""

from __future__ import annotations

import hashlib
import io
import mmap
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from belle_decrypt import engine, jobs
from belle_decrypt.cancel import Cancelled, CancelToken
from belle_decrypt.container import EncFile
from belle_decrypt.decrypt import decrypt_file
from belle_decrypt.errors import OutputError
from belle_decrypt.keystream import Key
from tests import reference
from tests.conftest import random_bytes

BACKENDS = ["torch", "python"]


def stage_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("belle-xor", "belle-job"))]


def run_engine(
    key_path: Path,
    payload: bytes,
    *,
    piece: int,
    buffer_size: int,
    slots: int = 3,
    backend: engine.Backend = "torch",
    hash_output: bool = True,
) -> tuple[bytes, str, int]:
    """XOR ``payload`` through the engine: (output, sha256 of what the hasher saw, progress)."""
    src, dst = io.BytesIO(payload), io.BytesIO()
    digest = hashlib.sha256()
    progress: list[int] = []
    with Key(key_path, piece_size=piece) as key:
        engine.xor_stream(
            src,
            dst,
            key,
            len(payload),
            hashers=(digest,),
            hash_output=hash_output,
            on_progress=progress.append,
            buffer_size=buffer_size,
            slots=slots,
            backend=backend,
        )
    return dst.getvalue(), digest.hexdigest(), sum(progress)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("piece", [1, 3, 7, 64])
@pytest.mark.parametrize("key_pieces", [0.5, 1, 2, 2.5])
@pytest.mark.parametrize("buffer_size", [1, 5, 64, 100, 1000])
def test_matches_reference_across_boundaries(
    make_key: Callable[..., Path],
    backend: engine.Backend,
    piece: int,
    key_pieces: float,
    buffer_size: int,
) -> None:
    """Payloads spanning many pieces and key wraps, with buffer edges everywhere in a piece."""
    key_size = max(1, int(piece * key_pieces))
    key_path = make_key(key_size)
    key_bytes = key_path.read_bytes()
    length = min(7 * piece * max(2, int(key_pieces) + 1) + 5, 600)
    for size in (length, length - 1, 1):
        plain = random_bytes(size, seed=size + piece)
        enc = reference.xor(plain, reference.keystream(key_bytes, size, piece))
        out, seen, progress = run_engine(
            key_path, enc, piece=piece, buffer_size=buffer_size, backend=backend
        )
        assert out == plain
        assert seen == hashlib.sha256(plain).hexdigest()
        assert progress == size
    assert stage_threads() == []


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("slots", [1, 2, 5])
def test_larger_stream_every_slot_count(
    make_key: Callable[..., Path], backend: engine.Backend, slots: int
) -> None:
    piece = 4099
    key_path = make_key(3 * piece + 17)
    plain = random_bytes(200_003, seed=slots)
    enc = reference.xor(plain, reference.keystream(key_path.read_bytes(), len(plain), piece))
    out, seen, _ = run_engine(
        key_path, enc, piece=piece, buffer_size=6000, slots=slots, backend=backend
    )
    assert out == plain
    assert seen == hashlib.sha256(plain).hexdigest()


@pytest.mark.parametrize("backend", BACKENDS)
def test_hash_input_when_encrypting(make_key: Callable[..., Path], backend: engine.Backend) -> None:
    piece = 7
    key_path = make_key(10)
    plain = random_bytes(333, seed=3)
    out, seen, _ = run_engine(
        key_path, plain, piece=piece, buffer_size=16, hash_output=False, backend=backend
    )
    digest_hex, blob = reference.encrypt(plain, key_path.read_bytes(), piece)
    assert out == blob[32:]
    assert seen == digest_hex


def test_empty_payload(make_key: Callable[..., Path]) -> None:
    out, seen, progress = run_engine(make_key(5), b"", piece=3, buffer_size=4)
    assert (out, seen, progress) == (b"", hashlib.sha256(b"").hexdigest(), 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("key_size", [3, reference.REAL_PIECE + 5, 2 * reference.REAL_PIECE])
def test_real_piece_size(
    make_key: Callable[..., Path], key_size: int, backend: engine.Backend
) -> None:
    """The real 10 MiB piece with 8 MiB buffers: a 3-byte key, a 5-byte last piece tiled over a
    whole piece, and a key of exactly two pieces."""
    piece = reference.REAL_PIECE
    key_path = make_key(key_size)
    plain = random_bytes(2 * piece + piece // 2 + 3, seed=11)
    enc = reference.xor(plain, reference.keystream(key_path.read_bytes(), len(plain), piece))
    out, _, _ = run_engine(
        key_path, enc, piece=piece, buffer_size=engine.BUFFER_SIZE, backend=backend
    )
    assert out == plain


class FailingWriter(io.BytesIO):
    """Accepts ``limit`` bytes, then fails like a full disk."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def write(self, data: object) -> int:
        if self.tell() >= self.limit:
            raise OSError(28, "No space left on device")
        return super().write(data)  # type: ignore[arg-type]


class FailingReader(io.BytesIO):
    def readinto(self, buffer: object) -> int:
        if self.tell() >= 50:
            raise OSError(5, "Input/output error")
        return super().readinto(buffer)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", BACKENDS)
def test_write_error_stops_every_stage(
    make_key: Callable[..., Path], backend: engine.Backend
) -> None:
    with Key(make_key(64), piece_size=16) as key, pytest.raises(OutputError) as caught:
        engine.xor_stream(
            io.BytesIO(bytes(10_000)),
            FailingWriter(100),
            key,
            10_000,
            hashers=(hashlib.sha256(), hashlib.md5()),
            buffer_size=32,
            dst_label="out/model.bin",
            backend=backend,
        )
    assert str(caught.value).startswith("out/model.bin: cannot write: No space left on device")
    assert "\n" not in str(caught.value)
    assert stage_threads() == []


def test_read_error_and_short_input(make_key: Callable[..., Path]) -> None:
    with Key(make_key(64), piece_size=16) as key:
        with pytest.raises(OutputError, match="cannot read: Input/output error"):
            engine.xor_stream(FailingReader(bytes(1000)), io.BytesIO(), key, 1000, buffer_size=16)
        with pytest.raises(OutputError, match="ended early"):
            engine.xor_stream(io.BytesIO(bytes(10)), io.BytesIO(), key, 1000, buffer_size=16)
    assert stage_threads() == []


def test_interrupt_in_the_supervising_thread(make_key: Callable[..., Path]) -> None:
    """Ctrl-C (here raised from the progress callback) stops the stages and propagates."""

    def interrupt(_: int) -> None:
        raise KeyboardInterrupt

    with Key(make_key(64), piece_size=16) as key, pytest.raises(KeyboardInterrupt):
        engine.xor_stream(
            io.BytesIO(bytes(1 << 20)),
            io.BytesIO(),
            key,
            1 << 20,
            on_progress=interrupt,
            buffer_size=64,
            backend="python",
        )
    assert stage_threads() == []


def test_a_cancelled_token_stops_the_stream_and_the_next_runs(
    make_key: Callable[..., Path],
) -> None:
    key_path = make_key(64)
    token = CancelToken()
    token.cancel()
    with Key(key_path) as key:
        with pytest.raises(Cancelled):
            engine.xor_stream(io.BytesIO(bytes(100)), io.BytesIO(), key, 100, cancel=token)
        assert stage_threads() == []
        out = io.BytesIO()
        engine.xor_stream(io.BytesIO(bytes(100)), out, key, 100, cancel=CancelToken())
    assert out.getvalue() == reference.keystream(key_path.read_bytes(), 100)
    assert stage_threads() == []


def test_auto_backend_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "PLAIN_LIMIT", 100)
    monkeypatch.setattr(engine, "_plain_used", 0)
    modules = dict(sys.modules)
    modules.pop("torch", None)
    monkeypatch.setattr(sys, "modules", modules)
    assert engine._use_torch(60, "auto") is False
    assert engine._use_torch(60, "auto") is True  # the budget is spent
    assert engine._use_torch(40, "auto") is False
    assert engine._use_torch(1, "python") is False
    modules["torch"] = sys  # once torch is loaded, it is always used
    assert engine._use_torch(1, "auto") is True


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
    assert stage_threads() == []


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
    assert stage_threads() == []
    assert jobs.run(lambda i: i * 2, [1, 2, 3], 4) == [2, 4, 6]
    assert jobs.run(lambda i: i * 2, [1, 2, 3], 1) == [2, 4, 6]


def test_default_jobs() -> None:
    big = jobs.BIG_FILE
    assert jobs.default_jobs([big] * 4, cores=2) == 1
    assert jobs.default_jobs([big] * 4, cores=4) == 2
    assert jobs.default_jobs([big] * 4, hashes_per_file=2, cores=4) == 1
    assert jobs.default_jobs([big] * 2, cores=16) == 2
    assert jobs.default_jobs([10] * 9, cores=16) == 1


# Runs the CLI in a fresh interpreter and fails unless it exits with an allowed code and
# never imported torch.
NO_TORCH = (
    "import sys\n"
    "from belle_decrypt.cli import cli\n"
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


def test_cli_folder_with_jobs(
    tmp_path: Path, make_key: Callable[..., Path], make_enc: Callable[..., Path]
) -> None:
    from click.testing import CliRunner

    from belle_decrypt.cli import cli

    key_path = make_key(1000)
    plains = {f"part{i}.bin": random_bytes(3000 + i, seed=i) for i in range(4)}
    for name, plain in plains.items():
        make_enc(name, plain, key_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, [str(tmp_path / "enc"), str(key_path), str(out), "--jobs", "3", "--no-fsync"]
    )
    assert result.exit_code == 0, result.output
    assert "4 decrypted, 0 already decrypted, 0 failed" in result.output
    for name, plain in plains.items():
        assert (out / name).read_bytes() == plain
    assert stage_threads() == []


def test_prepare_loads_torch_only_for_streams_past_the_plain_budget() -> None:
    """prepare() is what keeps a file's reported time free of the torch import."""
    code = (
        "import sys; from belle_decrypt import engine; "
        "engine.prepare(100); print('torch' in sys.modules); "
        "engine.prepare(engine.PLAIN_LIMIT + 1); print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]
    assert proc.stderr == ""


def test_no_torch_for_verify_or_check_key_on_a_plain_file(
    tmp_path: Path, make_key: Callable[..., Path], make_enc: Callable[..., Path]
) -> None:
    key_path = make_key(1000)
    enc = make_enc("config.json", random_bytes(100, seed=1), key_path)
    card = tmp_path / "md5.txt"
    card.write_text(f"{'0' * 32}  ./{enc.name}\n")
    _without_torch(["verify", str(enc.parent), "--manifest", str(card)], allowed="0,1")
    _without_torch(["check-key", str(key_path)], allowed="0,1")


def test_the_key_is_never_mapped(
    make_key: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mapped key truncated under the run would kill it with SIGBUS (Python cannot recover
    from a fault on a mapped page): the keystream is always read into the engine's buffers."""
    key_path = make_key(reference.REAL_PIECE + 12345)
    mapped: list[str] = []
    real_mmap = mmap.mmap

    def recording_mmap(fd: int, *args: Any, **kwargs: Any) -> mmap.mmap:
        mapped.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_mmap(fd, *args, **kwargs)

    monkeypatch.setattr(mmap, "mmap", recording_mmap)
    size = 2 * reference.REAL_PIECE + 5
    plain = random_bytes(size, seed=4)
    stream = reference.keystream(key_path.read_bytes(), size, reference.REAL_PIECE)
    for backend in BACKENDS:
        out, _, _ = run_engine(
            key_path,
            reference.xor(plain, stream),
            piece=reference.REAL_PIECE,
            buffer_size=engine.BUFFER_SIZE,
            backend=backend,
        )
        assert out == plain
    assert str(key_path) not in mapped
