"""The pipelined engine against the reference oracle, its error paths and its threads."""

from __future__ import annotations

import hashlib
import io
import mmap
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from belle_decrypt.ground.cancel import Cancelled, CancelToken
from belle_decrypt.ground.errors import OutputError
from belle_decrypt.streams import engine
from belle_decrypt.streams.keystream import Key
from tests import reference
from tests.conftest import library_threads, random_bytes

BACKENDS: list[engine.Backend] = ["numpy", "python", "torch"]


def run_engine(
    key_path: Path,
    payload: bytes,
    *,
    piece: int,
    buffer_size: int,
    slots: int = 3,
    backend: engine.Backend = "numpy",
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
    assert library_threads() == []


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
    assert library_threads() == []


def test_read_error_and_short_input(make_key: Callable[..., Path]) -> None:
    with Key(make_key(64), piece_size=16) as key:
        with pytest.raises(OutputError, match="cannot read: Input/output error"):
            engine.xor_stream(FailingReader(bytes(1000)), io.BytesIO(), key, 1000, buffer_size=16)
        with pytest.raises(OutputError, match="ended early"):
            engine.xor_stream(io.BytesIO(bytes(10)), io.BytesIO(), key, 1000, buffer_size=16)
    assert library_threads() == []


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
    assert library_threads() == []


def test_a_cancelled_token_stops_the_stream_and_the_next_runs(
    make_key: Callable[..., Path],
) -> None:
    key_path = make_key(64)
    token = CancelToken()
    token.cancel()
    with Key(key_path) as key:
        with pytest.raises(Cancelled):
            engine.xor_stream(io.BytesIO(bytes(100)), io.BytesIO(), key, 100, cancel=token)
        assert library_threads() == []
        out = io.BytesIO()
        engine.xor_stream(io.BytesIO(bytes(100)), out, key, 100, cancel=CancelToken())
    assert out.getvalue() == reference.keystream(key_path.read_bytes(), 100)
    assert library_threads() == []


def test_auto_backend_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "PLAIN_LIMIT", 100)
    monkeypatch.setattr(engine, "_plain_used", 0)
    modules = dict(sys.modules)
    modules.pop("numpy", None)
    monkeypatch.setattr(sys, "modules", modules)
    assert engine._choose(60, "auto") == "python"
    assert engine._choose(60, "auto") == "numpy"  # the budget is spent
    assert engine._choose(40, "auto") == "python"
    assert engine._choose(1, "torch") == "torch"
    modules["numpy"] = sys  # once numpy is loaded, it is always used
    assert engine._choose(1, "auto") == "numpy"


def test_prepare_loads_numpy_only_for_streams_past_the_plain_budget() -> None:
    """prepare() is what keeps a file's reported time free of the numpy import; torch is
    never imported for the XOR."""
    code = (
        "import sys; from belle_decrypt.streams import engine; "
        "engine.prepare(100); print('numpy' in sys.modules); "
        "engine.prepare(engine.PLAIN_LIMIT + 1); print('numpy' in sys.modules); "
        "print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True", "False"]
    assert proc.stderr == ""


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
