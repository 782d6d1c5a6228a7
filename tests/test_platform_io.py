"""Each OS capability switched off, as on a platform without it: the tool falls back and
still decrypts byte-exact. Linux is where the real calls run; these simulate the others."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from belle_decrypt.ground import platform_io
from belle_decrypt.ground.errors import InputError
from belle_decrypt.layouts.container import EncFile
from belle_decrypt.streams import engine, output
from belle_decrypt.streams.keystream import Key
from belle_decrypt.streams.output import AtomicFile, remove_stale_temps, temp_name
from belle_decrypt.xor.decrypt import decrypt_file
from tests import reference
from tests.conftest import listing, random_bytes
from tests.runner import run

PIECE = 4096
# Each capability with the calls that must not be made without it.
CAPABILITIES: dict[str, list[tuple[object, str]]] = {
    "HAS_PREADV": [(os, "preadv")],
    "HAS_PREAD": [(os, "preadv"), (os, "pread")],
    "HAS_NONBLOCK": [],
    "HAS_FADVISE": [(os, "posix_fadvise")],
    "CAN_FSYNC_DIR": [],  # folders must not be opened: see without()
    "HAS_SIGHUP": [],
    "HAS_SIGXFSZ": [],
    "HAS_FLOCK": [(fcntl, "flock")],
    "CAN_PROBE_PIDS": [(os, "kill")],
    "HAS_AFFINITY": [(os, "sched_getaffinity")],
}


def without(monkeypatch: pytest.MonkeyPatch, capability: str) -> None:
    """Switch ``capability`` off and make the calls it guards fail loudly if made anyway."""
    monkeypatch.setattr(platform_io, capability, False)
    if capability == "HAS_PREAD":
        monkeypatch.setattr(platform_io, "HAS_PREADV", False)
    for module, name in CAPABILITIES[capability]:
        if hasattr(module, name):

            def forbidden(*args: object, _name: str = name, **kwargs: object) -> None:
                raise AssertionError(f"{_name} called although its capability is off")

            monkeypatch.setattr(module, name, forbidden)
    if capability == "CAN_FSYNC_DIR":
        real_open = os.open

        def open_no_folder(path: str | Path, flags: int, *args: int, **kwargs: int) -> int:
            assert not os.path.isdir(path), "a folder was opened although it cannot be synced"
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", open_no_folder)


def test_every_capability_is_listed() -> None:
    flags = {name for name in vars(platform_io) if name.startswith(("HAS_", "CAN_"))}
    assert flags == set(CAPABILITIES)


@pytest.mark.parametrize("capability", sorted(CAPABILITIES))
def test_decrypt_is_byte_exact_without(
    capability: str,
    monkeypatch: pytest.MonkeyPatch,
    make_key: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """The library path with small pieces, so the key is read, wrapped and tiled."""
    monkeypatch.setattr(output, "WRITE_BEHIND", 4096)
    key_path = make_key(3 * PIECE + 100)
    plain = random_bytes(20 * PIECE + 7, seed=4)
    digest_hex, blob = reference.encrypt(plain, key_path.read_bytes(), PIECE)
    enc_path = tmp_path / f"model.bin.{digest_hex}.enc"
    enc_path.write_bytes(blob)
    out = tmp_path / "out"
    out.mkdir()
    without(monkeypatch, capability)
    with Key(key_path, piece_size=PIECE) as key:
        for backend in ("python", "numpy"):
            monkeypatch.setattr(engine, "_choose", lambda *_, b=backend: b)
            result = decrypt_file(EncFile.open(enc_path), key, out, buffer_size=3000, force=True)
            assert (out / "model.bin").read_bytes() == plain, backend
            (out / "model.bin").unlink()
    assert result.sha256 == digest_hex


@pytest.mark.parametrize("capability", sorted(CAPABILITIES))
def test_the_command_line_decrypts_without(
    capability: str,
    monkeypatch: pytest.MonkeyPatch,
    make_key: Callable[..., Path],
    make_enc: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """The whole command (signal handlers, stale temporary files, folder fsync) at the real
    piece size, with a key over one piece (read whole, wrapped, and a short last piece)."""
    key = make_key(reference.REAL_PIECE + 5)
    plain = random_bytes(reference.REAL_PIECE + 3 * 1024 * 1024, seed=8)
    enc = make_enc("pytorch_model.bin", plain, key)
    out = tmp_path / "out"
    without(monkeypatch, capability)
    result = run(enc.parent, key, out, "-q")
    assert result.exit_code == 0, result.output
    assert (out / "pytorch_model.bin").read_bytes() == plain
    assert listing(out) == ["pytorch_model.bin"]


def test_signal_handlers_without_sighup_or_sigxfsz(monkeypatch: pytest.MonkeyPatch) -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGHUP, signal.SIGXFSZ)}
    monkeypatch.setattr(platform_io, "HAS_SIGHUP", False)
    monkeypatch.setattr(platform_io, "HAS_SIGXFSZ", False)
    restore = platform_io.install_signal_handlers(lambda signum, frame: None)
    try:
        assert {sig: signal.getsignal(sig) for sig in before} == before
        assert not platform_io.is_hangup(signal.SIGHUP)
    finally:
        restore()


def test_fifo_refused_without_o_nonblock(
    monkeypatch: pytest.MonkeyPatch, make_key: Callable[..., Path], tmp_path: Path
) -> None:
    monkeypatch.setattr(platform_io, "HAS_NONBLOCK", False)
    fifo = tmp_path / f"x.{'0' * 64}.enc"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="is not a regular file"):
        EncFile.open(fifo)
    assert platform_io.open_regular(fifo) is None


def ended_pid() -> str:
    """The pid of a process that has ended."""
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return ended.stdout.strip()


def test_stale_temps_kept_when_processes_cannot_be_probed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stale = tmp_path / temp_name("model.bin", owner=ended_pid())
    stale.write_bytes(b"partial")
    monkeypatch.setattr(platform_io, "HAS_FLOCK", False)  # then the pid tells
    monkeypatch.setattr(platform_io, "CAN_PROBE_PIDS", False)
    assert remove_stale_temps(tmp_path) == []
    monkeypatch.setattr(platform_io, "CAN_PROBE_PIDS", True)
    assert remove_stale_temps(tmp_path) == [stale]


@pytest.mark.parametrize("errno_", [errno.ENOLCK, errno.EOPNOTSUPP])
def test_a_file_system_without_locks_falls_back_to_the_pid(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, errno_: int
) -> None:
    """NFS mounted without a lock manager, some FUSE file systems: flock fails; a run still
    writes (its pid marks its file) and removes only files whose pid has ended."""

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno_, os.strerror(errno_))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    live = tmp_path / temp_name("model.bin", owner="1")  # init: alive
    stale = tmp_path / temp_name("model.bin", owner=ended_pid())
    for path in (live, stale):
        path.write_bytes(b"partial")
    assert remove_stale_temps(tmp_path) == [stale]
    atomic = AtomicFile(tmp_path / "config.json")
    with atomic as written:
        written.write(b"{}")
        atomic.commit()
    assert listing(tmp_path) == [live.name, "config.json"]


def test_cores_without_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform_io, "HAS_AFFINITY", False)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert platform_io.available_cores() == 3
