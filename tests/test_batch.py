"""The library's run over many files, without the CLI: callbacks, tally, early stop."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from belle_decrypt.ground.outcome import Outcome
from belle_decrypt.ground.states import Verified
from belle_decrypt.layouts.container import EncFile
from belle_decrypt.streams.keystream import Key
from belle_decrypt.xor.batch import Settings, decrypt_all
from belle_decrypt.xor.decrypt import Result
from belle_decrypt.xor.diagnose import Diagnoser
from tests.conftest import random_bytes


def _files(
    make_key: Callable[..., Path], make_enc: Callable[..., Path]
) -> tuple[Path, list[EncFile]]:
    key = make_key(700)
    encs = [make_enc(f"part{i}.bin", random_bytes(100 * (i + 1), seed=i), key) for i in range(4)]
    return key, [EncFile.open(path) for path in encs]


def test_every_file_reports_progress_and_an_outcome_in_order(
    make_key: Callable[..., Path], make_enc: Callable[..., Path], tmp_path: Path
) -> None:
    key_path, files = _files(make_key, make_enc)
    progressed: dict[str, int] = {}
    outcomes: list[Outcome[Result]] = []
    sizes: dict[str, int] = {}

    @contextmanager
    def file_progress(name: str, size: int) -> Iterator[Callable[[int], None]]:
        progressed[name] = 0
        sizes[name] = size

        def advance(n: int) -> None:
            progressed[name] += n

        yield advance

    settings = Settings(out_dir=tmp_path / "out")
    settings.out_dir.mkdir()
    with Key(key_path) as key:
        tally = decrypt_all(
            files,
            key,
            settings,
            Diagnoser(key_path),
            file_progress=file_progress,
            on_outcome=outcomes.append,
        )
    assert tally.ok and (tally.decrypted, tally.failed, tally.not_tried) == (4, 0, 0)
    assert [o.source for o in outcomes] == [enc.path for enc in files]
    assert all(o.checked is Verified.SHA256 and o.error is None for o in outcomes)
    assert progressed == sizes == {enc.enc_name.name: enc.payload_size for enc in files}


def test_a_wrong_key_stops_after_two_files(
    make_key: Callable[..., Path], make_enc: Callable[..., Path], tmp_path: Path
) -> None:
    _, files = _files(make_key, make_enc)
    wrong = make_key(700, name="wrong.pth", seed=3)
    outcomes: list[Outcome[Result]] = []
    out = tmp_path / "out"
    out.mkdir()
    with Key(wrong) as key:
        tally = decrypt_all(
            files, key, Settings(out_dir=out), Diagnoser(wrong), on_outcome=outcomes.append
        )
        assert (tally.failed, tally.not_tried, tally.ok) == (2, 2, False)
        assert tally.stopped is not None and "2 more not tried" in tally.stopped
        assert all(o.diagnosis is not None and o.diagnosis.wrong_key for o in outcomes)
        going = decrypt_all(files, key, Settings(out_dir=out, keep_going=True), Diagnoser(wrong))
    assert (going.failed, going.not_tried, going.stopped) == (4, 0, None)
    assert list(out.iterdir()) == []
