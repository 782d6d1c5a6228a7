"""The per-file layout's base hash runs in a thread of its own (beside the output's md5, not in
the engine's reader), and keeps every guarantee: a differing base byte anywhere is caught before
the final name, and no thread outlives a run, whether it succeeds, fails or is cancelled."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from belle_decrypt.checks.manifest import Manifest
from belle_decrypt.ground.cancel import Cancelled, CancelToken
from belle_decrypt.layouts import perfile
from belle_decrypt.layouts.perfile import BaseMismatch, PerFileLayout
from belle_decrypt.xor.decrypt import decrypt_file
from tests import reference
from tests.conftest import library_threads, listing, random_bytes

SHARD = "pytorch_model-00001-of-00002.bin"
PLAIN = random_bytes(30_000, seed=71)
BASE = random_bytes(20_000, seed=72)


def release(tmp_path: Path, base: bytes = BASE) -> tuple[PerFileLayout, Path, Path]:
    """A payload made by the reference, its base folder (holding ``base``) and an output
    folder; the layout checks the base against the card's md5 of ``BASE``."""
    for folder, data in (("base", base), ("payload", reference.perfile_encode(PLAIN, BASE))):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / SHARD).write_bytes(data)
    card = Manifest.parse(f"{hashlib.md5(BASE).hexdigest()}  ./{SHARD}\n")
    (tmp_path / "out").mkdir()
    return PerFileLayout(tmp_path / "base", card), tmp_path / "payload" / SHARD, tmp_path / "out"


class Recording:
    """A hashlib object that notes the threads its updates ran in."""

    def __init__(self, name: str, threads: set[str]) -> None:
        self.inner = hashlib.new(name)
        self.threads = threads

    def update(self, data: Any, /) -> None:
        self.threads.add(threading.current_thread().name)
        self.inner.update(data)

    def hexdigest(self) -> str:
        return self.inner.hexdigest()


def test_the_base_is_hashed_in_its_own_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout, payload, out = release(tmp_path)
    threads: set[str] = set()
    recording = SimpleNamespace(new=lambda name: Recording(name, threads))
    monkeypatch.setattr(perfile, "hashlib", recording)  # the base's hashers only
    result = decrypt_file(
        layout.open(payload),
        None,
        out,
        buffer_size=1000,
        expected={"md5": hashlib.md5(PLAIN).hexdigest()},
    )
    assert threads == {"belle-base-hash"}
    assert result.md5 == hashlib.md5(PLAIN).hexdigest()
    assert (out / SHARD).read_bytes() == PLAIN
    assert library_threads() == []


@pytest.mark.parametrize("position", [0, 999, 1000, 14_567, 19_999], ids=lambda n: f"byte{n}")
def test_a_base_byte_changed_anywhere_is_caught_before_the_final_name(
    tmp_path: Path, position: int
) -> None:
    """Many buffers (and recycled copies) before the one that differs; the payload is longer
    than the base, so the last buffers are zeros past the base's end."""
    changed = bytearray(BASE)
    changed[position] ^= 0x40
    layout, payload, out = release(tmp_path, bytes(changed))
    with pytest.raises(BaseMismatch) as raised:
        decrypt_file(layout.open(payload), None, out, buffer_size=1000)
    assert raised.value.path == tmp_path / "base" / SHARD
    assert listing(out) == []
    assert library_threads() == []


def test_a_cancelled_run_leaves_no_thread_and_no_file(tmp_path: Path) -> None:
    layout, payload, out = release(tmp_path)
    token = CancelToken()

    def cancel_midway(done: int) -> None:
        if done:
            token.cancel()

    with pytest.raises(Cancelled):
        decrypt_file(
            layout.open(payload),
            None,
            out,
            buffer_size=100,
            on_progress=cancel_midway,
            cancel=token,
        )
    assert listing(out) == []
    assert library_threads() == []
