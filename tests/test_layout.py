"""The format seam: layouts plug into plan, the run and the engine without touching them.

Two small layouts are defined here the way the next ones will be (the 16 MiB seed and the
per-file XOR against a base model): a headerless `NAME.toy` whose keystream is a seed repeated,
and a per-file XOR against a same-named base file, zero-padded past its end. Each is checked
against a plain-Python statement of its rule.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import pytest

from belle_decrypt.checks.keyid import LLAMA_7B, KeyReport
from belle_decrypt.ground.errors import BelleError, InputError, ProblemsReported
from belle_decrypt.ground.outcome import Outcome
from belle_decrypt.ground.states import FileState, Verified
from belle_decrypt.layouts.container import BELLE, EncFile
from belle_decrypt.layouts.protocol import Layout, Source, plan
from belle_decrypt.streams.keystream import Key, Keystream
from belle_decrypt.xor.batch import Settings, decrypt_all, prepare_run
from belle_decrypt.xor.decrypt import Result
from belle_decrypt.xor.detect import default_layouts
from tests import reference
from tests.conftest import random_bytes

SEED = 1000


@dataclass(frozen=True)
class ToyFile:
    path: Path
    layout: Layout
    output_name: str
    payload_size: int
    payload_offset: int = 0
    sha256: str | None = None


class SeedStream:
    """The first SEED bytes of the key file, repeated end to end."""

    def __init__(self, key: Key) -> None:
        self.seed = bytearray(SEED)
        key.fill(memoryview(self.seed), 0)

    def fill(self, out: memoryview, offset: int) -> None:
        for pos in range(len(out)):
            out[pos] = self.seed[(offset + pos) % SEED]

    def mapped(self, offset: int, length: int) -> AbstractContextManager[memoryview | None]:
        return nullcontext(None)


class SeedLayout:
    name = "toy-seed"
    pattern = "NAME.toy"

    def recognises(self, filename: str) -> bool:
        return filename.endswith(".toy")

    def open(self, path: Path) -> Source:
        if not path.name.endswith(".toy"):
            raise InputError("not a NAME.toy file", path)
        return ToyFile(path, self, path.name.removesuffix(".toy"), path.stat().st_size)

    def keystream(self, source: Source, key: Key) -> AbstractContextManager[Keystream]:
        return nullcontext(SeedStream(key))

    expected_key = LLAMA_7B

    def key_warning(self, report: KeyReport, unverified: bool) -> str | None:
        return None


class BaseStream:
    """The bytes of a base file, zeros past its end."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size

    def fill(self, out: memoryview, offset: int) -> None:
        have = max(0, min(len(out), self.size - offset))
        out[:have] = os.pread(self.fd, have, offset) if have else b""
        out[have:] = bytes(len(out) - have)

    def mapped(self, offset: int, length: int) -> AbstractContextManager[memoryview | None]:
        return nullcontext(None)


class BaseLayout:
    name = "toy-base"
    pattern = "NAME (same-named base file)"

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir

    def recognises(self, filename: str) -> bool:
        return filename.endswith(".bin")

    def open(self, path: Path) -> Source:
        return ToyFile(path, self, path.name, path.stat().st_size)

    @contextmanager
    def keystream(self, source: Source, key: Key) -> Iterator[Keystream]:
        base = self.base_dir / source.output_name
        fd = os.open(base, os.O_RDONLY)
        try:
            yield BaseStream(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)

    expected_key = LLAMA_7B

    def key_warning(self, report: KeyReport, unverified: bool) -> str | None:
        return None


class Silent:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def problem(self, error: BelleError) -> None:
        self.problems.append(str(error))

    def warning(self, text: str) -> None:
        pass

    def skipped(self, path: Path, why: str) -> None:
        pass


def xor(data: bytes, stream: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, stream, strict=True))


def test_plan_groups_a_folder_by_layout(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_bytes(random_bytes(3000, seed=1))
    folder = tmp_path / "enc"
    folder.mkdir()
    digest_hex, blob = reference.encrypt(b"plain", key.read_bytes())
    (folder / f"config.json.{digest_hex}.enc").write_bytes(blob)
    (folder / "tokenizer.model.toy").write_bytes(b"x" * 10)
    (folder / "README.md").write_text("hi")
    found = plan(folder, [SeedLayout(), BELLE])
    groups = found.by_layout()
    assert sorted(groups) == ["belle", "toy-seed"]
    assert [source.output_name for source in groups["toy-seed"]] == ["tokenizer.model"]
    assert isinstance(groups["belle"][0], EncFile)
    assert found.skipped == (folder / "README.md",)
    assert plan(folder, default_layouts()).by_layout().keys() == {"belle"}


@pytest.mark.parametrize("size", [1, SEED - 1, SEED, 3 * SEED + 17, 5000])
def test_a_seed_layout_decrypts_through_the_run(tmp_path: Path, size: int) -> None:
    key_bytes = random_bytes(SEED + 500, seed=2)
    key = tmp_path / "key"
    key.write_bytes(key_bytes)
    plain = random_bytes(size, seed=size)
    stream = (key_bytes[:SEED] * (size // SEED + 1))[:size]
    folder = tmp_path / "enc"
    folder.mkdir()
    (folder / "model.bin.toy").write_bytes(xor(plain, stream))
    card = tmp_path / "md5.txt"
    card.write_text(f"{hashlib.md5(plain).hexdigest()}  ./model.bin\n")
    out = tmp_path / "out"
    settings = Settings(out_dir=out)
    with prepare_run(folder, key, settings, [card], Silent(), [SeedLayout()]) as run:
        outcomes: list[Outcome[Result]] = []
        tally = decrypt_all(
            run.files, run.key, run.settings, run.diagnoser, on_outcome=outcomes.append
        )
    assert tally.ok and tally.decrypted == 1
    assert (out / "model.bin").read_bytes() == plain
    assert outcomes[0].checked is Verified.MD5
    with prepare_run(folder, key, settings, [card], Silent(), [SeedLayout()]) as run:
        again = decrypt_all(run.files, run.key, run.settings, run.diagnoser)
    assert again.done[FileState.ALREADY_DECRYPTED] == 1


def test_a_layout_without_a_checksum_needs_a_manifest(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_bytes(b"k" * SEED)
    folder = tmp_path / "enc"
    folder.mkdir()
    (folder / "model.bin.toy").write_bytes(b"abc")
    notices = Silent()
    with (
        pytest.raises(ProblemsReported),
        prepare_run(folder, key, Settings(out_dir=tmp_path / "out"), [], notices, [SeedLayout()]),
    ):
        pass
    assert notices.problems == [
        f"{folder / 'model.bin.toy'}: carries no checksum and no manifest lists 'model.bin'; "
        "pass the model card's md5 list with --manifest"
    ]
    assert not (tmp_path / "out").exists()


def test_a_wrong_md5_on_a_layout_without_a_checksum_is_diagnosed(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_bytes(b"k" * SEED)
    folder = tmp_path / "enc"
    folder.mkdir()
    (folder / "model.bin.toy").write_bytes(b"abc")
    card = tmp_path / "md5.txt"
    card.write_text(f"{'0' * 32}  ./model.bin\n")
    with prepare_run(
        folder, key, Settings(out_dir=tmp_path / "out"), [card], Silent(), [SeedLayout()]
    ) as run:
        outcomes: list[Outcome[Result]] = []
        tally = decrypt_all(
            run.files, run.key, run.settings, run.diagnoser, on_outcome=outcomes.append
        )
    assert tally.failed == 1
    message = str(outcomes[0].error)
    assert message.startswith(f"{folder / 'model.bin.toy'}: decrypted md5 ")
    assert f"does not match {'0' * 32}: " in message
    assert outcomes[0].diagnosis is not None
    assert os.listdir(tmp_path / "out") == []


@pytest.mark.parametrize(("plain_size", "base_size"), [(100, 300), (300, 100), (0, 5), (50, 0)])
def test_a_per_file_base_layout_decrypts_through_the_run(
    tmp_path: Path, plain_size: int, base_size: int
) -> None:
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    base = random_bytes(base_size, seed=5)
    (base_dir / "model.bin").write_bytes(base)
    plain = random_bytes(plain_size, seed=6)
    padded = (base + bytes(plain_size))[:plain_size]
    folder = tmp_path / "payload"
    folder.mkdir()
    (folder / "model.bin").write_bytes(xor(plain, padded))
    card = tmp_path / "md5.txt"
    card.write_text(f"{hashlib.md5(plain).hexdigest()}  ./model.bin\n")
    key = tmp_path / "key"
    key.write_bytes(b"unused by this layout")
    out = tmp_path / "out"
    layouts = [BaseLayout(base_dir)]
    with prepare_run(folder, key, Settings(out_dir=out), [card], Silent(), layouts) as run:
        tally = decrypt_all(run.files, run.key, run.settings, run.diagnoser)
    assert tally.ok
    assert (out / "model.bin").read_bytes() == plain
