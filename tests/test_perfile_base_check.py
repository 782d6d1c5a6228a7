"""The per-file layout's base check over many buffers: a differing base byte anywhere is caught
before the final name, and no thread outlives a run, whether it fails or is cancelled. (The
base's md5 is taken in the engine's reader thread, the output's in a hash thread: the two
already run side by side; a third thread for the base measured no faster.)"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from belle_decrypt.checks.manifest import Manifest
from belle_decrypt.ground.cancel import Cancelled, CancelToken
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
