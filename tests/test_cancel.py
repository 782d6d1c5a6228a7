"""Cancellation passed down as a token: every long loop stops on it, nothing stays cancelled."""

from __future__ import annotations

import _thread
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from belle_decrypt.checks.keyid import KeyReport, identify
from belle_decrypt.checks.manifest import Manifest
from belle_decrypt.checks.verify import verify_folder
from belle_decrypt.ground.cancel import Cancelled, CancelToken, removed_unfinished
from belle_decrypt.layouts.container import EncFile
from belle_decrypt.streams.hashing import hash_file, md5_file
from belle_decrypt.streams.keystream import Key
from belle_decrypt.xor.batch import Settings, decrypt_all
from belle_decrypt.xor.diagnose import Diagnoser
from tests.conftest import library_threads, listing, random_bytes
from tests.release import make_release, md5


def wait_for_threads(timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while library_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert library_threads() == []


def test_token_is_one_way_and_waits() -> None:
    token = CancelToken()
    token.check()
    assert not token.cancelled
    assert token.wait(0.01) is False
    threading.Timer(0.05, token.cancel).start()
    assert token.wait(5) is True
    assert token.cancelled
    with pytest.raises(Cancelled):
        token.check()


def test_hash_file_stops_on_a_cancelled_token_and_the_next_hash_runs(tmp_path: Path) -> None:
    path = tmp_path / "data"
    data = random_bytes(3 * 1024 * 1024, seed=3)
    path.write_bytes(data)
    token = CancelToken()
    seen: list[int] = []

    def cancel_after_first(n: int) -> None:
        seen.append(n)
        token.cancel()

    with pytest.raises(Cancelled):
        hash_file(path, on_progress=cancel_after_first, chunk=1024 * 1024, cancel=token)
    assert seen == [1024 * 1024]
    assert md5_file(path, cancel=CancelToken()) == md5(data)


def test_verify_stops_its_parallel_hashes(tmp_path: Path) -> None:
    release = make_release(tmp_path, b"key", {"a.bin": 300_000, "b.bin": 300_000})
    manifest = Manifest.read(release.card)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        verify_folder(release.enc_dir, manifest, workers=2, cancel=token)
    wait_for_threads()
    report = verify_folder(release.enc_dir, manifest, workers=2)
    assert report.ok


def test_diagnosis_md5_stops_on_a_cancelled_token(tmp_path: Path) -> None:
    release = make_release(tmp_path, b"key")
    key = tmp_path / "key"
    key.write_bytes(b"another key")
    diagnoser = Diagnoser(key, Manifest.read(release.card))
    enc = EncFile.open(release.enc_path("config.json"))
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        diagnoser.explain(enc, token)
    assert diagnoser.explain(enc).wrong_key


def test_key_report_is_computed_once_across_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "key"
    key.write_bytes(b"k" * 100)
    calls: list[int] = []

    def slow_identify(path: Path, **kwargs: Any) -> KeyReport:
        calls.append(1)
        time.sleep(0.05)
        return identify(path, **kwargs)

    monkeypatch.setattr("belle_decrypt.xor.diagnose.identify", slow_identify)
    diagnoser = Diagnoser(key)
    reports: list[object] = []
    threads = [
        threading.Thread(target=lambda: reports.append(diagnoser.key_report())) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert len(reports) == 4 and all(report is reports[0] for report in reports)


def test_library_runs_again_after_an_interrupt_and_a_second_one_during_shutdown(
    tmp_path: Path, make_key: Callable[..., Path], make_enc: Callable[..., Path]
) -> None:
    """Ctrl-C while two files decrypt at once, then Ctrl-C again while the workers stop:
    the run ends with KeyboardInterrupt, leaves no temporary file, and the same process
    decrypts the folder afterwards."""
    key_path = make_key(5000)
    plain = {name: random_bytes(4 * 1024 * 1024, seed=i) for i, name in enumerate("ab")}
    files = [EncFile.open(make_enc(name, data, key_path)) for name, data in plain.items()]
    out = tmp_path / "out"
    out.mkdir()
    settings = Settings(out_dir=out, jobs=2)
    token = CancelToken()
    lock = threading.Lock()
    interrupted: list[str] = []

    @contextmanager
    def interrupting(name: str, size: int) -> Iterator[Callable[[int], None]]:
        def advance(n: int) -> None:
            with lock:
                first = not interrupted
                if first:
                    interrupted.append(name)
            if first:
                _thread.interrupt_main()  # the first Ctrl-C
            assert token.wait(5), "the run did not cancel its token"  # no file ends before
            if first:
                _thread.interrupt_main()  # the second, while the run waits for its workers
                time.sleep(0.2)

        yield advance

    with Key(key_path) as key:
        with pytest.raises(KeyboardInterrupt):
            decrypt_all(
                files, key, settings, Diagnoser(key_path), file_progress=interrupting, cancel=token
            )
        wait_for_threads()
        assert listing(out) == []
        tally = decrypt_all(files, key, settings, Diagnoser(key_path))
    assert (tally.decrypted, tally.failed) == (2, 0)
    assert {name: (out / name).read_bytes() for name in plain} == plain
    assert listing(out) == ["a", "b"]


def test_an_interrupt_names_the_unfinished_files_the_stopped_workers_removed(
    tmp_path: Path, make_key: Callable[..., Path], make_enc: Callable[..., Path]
) -> None:
    key_path = make_key(5000)
    plain = {name: random_bytes(4 * 1024 * 1024, seed=i) for i, name in enumerate("ab")}
    files = [EncFile.open(make_enc(name, data, key_path)) for name, data in plain.items()]
    out = tmp_path / "out"
    out.mkdir()
    token = CancelToken()
    started = threading.Barrier(2)

    @contextmanager
    def interrupting(name: str, size: int) -> Iterator[Callable[[int], None]]:
        first = [True]

        def advance(n: int) -> None:
            # Once per file: when both files are being written, one Ctrl-C.
            if first and first.pop() and started.wait(5) == 0:
                _thread.interrupt_main()
            assert token.wait(5), "the run did not cancel its token"

        yield advance

    with Key(key_path) as key, pytest.raises(KeyboardInterrupt) as raised:
        decrypt_all(
            files,
            key,
            Settings(out_dir=out, jobs=2),
            Diagnoser(key_path),
            file_progress=interrupting,
            cancel=token,
        )
    wait_for_threads()
    assert listing(out) == []
    assert sorted(removed_unfinished(raised.value)) == [out / "a", out / "b"]
