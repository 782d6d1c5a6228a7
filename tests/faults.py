"""Helpers for fault-injection tests: the CLI in a subprocess, big inputs, signals mid-file.

Big inputs decrypt to zeros, so they are quick to build: the payload is the oracle's keystream
itself (zeros XOR keystream) and the digest is that of the zeros.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests import reference

CLI = [sys.executable, "-m", "belle_decrypt"]
PREFIX = "belle-decrypt: error: "
WARNING = "belle-decrypt: warning: "
TEMP_PREFIX = ".belle-tmp."
MiB = 1024 * 1024
# No .pyc writes: a file-size limit must only ever hit the output file.
ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}


def run_cli(
    *args: str | Path, preexec_fn: Callable[[], None] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m belle_decrypt ARGS`` to the end."""
    return subprocess.run(
        [*CLI, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec_fn,
        env=ENV,
        check=False,
    )


def start_cli(*args: str | Path) -> subprocess.Popen[str]:
    """Start ``python -m belle_decrypt ARGS`` without waiting."""
    return subprocess.Popen(
        [*CLI, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def not_warnings(stderr: str) -> list[str]:
    """The lines of ``stderr`` other than warnings (a synthetic key is always warned about)."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if not line.startswith(WARNING)]


def one_error(stderr: str) -> str:
    """The text of the single `belle-decrypt: error:` line that ``stderr`` must hold."""
    lines = not_warnings(stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith(PREFIX), stderr
    return lines[0][len(PREFIX) :]


def temps(folder: Path) -> list[str]:
    """Our temporary files in ``folder``."""
    if not folder.exists():
        return []
    return sorted(name for name in os.listdir(folder) if name.startswith(TEMP_PREFIX))


def make_zero_enc(folder: Path, name: str, key: bytes, size: int) -> Path:
    """An `.enc` of ``size`` zero bytes, written piece by piece (memory stays small)."""
    piece = reference.REAL_PIECE
    assert len(key) <= piece, "one key piece: the keystream repeats every piece"
    stream = reference.keystream(key, piece)
    digest = hashlib.sha256()
    zeros = bytes(piece)
    for start in range(0, size, piece):
        digest.update(zeros[: min(piece, size - start)])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.{digest.hexdigest()}.enc"
    with open(path, "wb") as handle:
        handle.write(digest.digest())
        for start in range(0, size, piece):
            handle.write(stream[: min(piece, size - start)])
    return path


def is_zeros_of(path: Path, size: int) -> bool:
    """Whether ``path`` holds exactly ``size`` zero bytes."""
    if path.stat().st_size != size:
        return False
    with open(path, "rb") as handle:
        while chunk := handle.read(8 * MiB):
            if chunk.count(0) != len(chunk):
                return False
    return True


def stop_mid_file(proc: subprocess.Popen[str], out: Path, grown: int, timeout: float = 30) -> Path:
    """Wait until a temporary file in ``out`` holds ``grown`` bytes, then SIGSTOP ``proc``.

    Returns the temporary file. Fails if the run ends first or the wait times out.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in temps(out):
            try:
                size = (out / name).stat().st_size
            except FileNotFoundError:
                continue
            if size >= grown:
                os.kill(proc.pid, signal.SIGSTOP)
                assert (out / name).exists(), "the run finished before it could be stopped"
                return out / name
        if proc.poll() is not None:
            raise AssertionError(f"run ended before mid-file: {proc.communicate()}")
        time.sleep(0.001)
    proc.kill()
    raise AssertionError(f"no temporary file of {grown} bytes in {out} after {timeout} s")


# Capabilities that let root ignore file modes (linux/capability.h).
_CAP_DAC_OVERRIDE = 1
_CAP_DAC_READ_SEARCH = 2
_PR_CAPBSET_DROP = 24


def _drop_mode_override() -> None:
    """In the child, before exec: drop root's power to ignore modes (from the bounding set,
    so the exec'd process never has it). Root then meets permission errors like anyone."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def as_plain_user() -> Callable[[], None] | None:
    """A ``preexec_fn`` under which file modes are enforced (``None`` when not root)."""
    return _drop_mode_override if os.geteuid() == 0 else None


@functools.cache
def modes_enforced() -> bool:
    """Whether a chmod 000 file really is unreadable to the CLI's subprocess on this machine."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe"
        probe.write_bytes(b"x")
        probe.chmod(0)
        try:
            done = subprocess.run(
                [sys.executable, "-c", f"open({str(probe)!r}, 'rb')"],
                capture_output=True,
                preexec_fn=as_plain_user(),
                timeout=30,
                check=False,
            )
        except subprocess.SubprocessError:
            return False
        return done.returncode != 0


def bytes_read(pid: int) -> int:
    """Bytes process ``pid`` has read so far (``rchar`` of /proc/PID/io), 0 if unknown."""
    try:
        with open(f"/proc/{pid}/io") as handle:
            for line in handle:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def interrupt_after_reading(
    proc: subprocess.Popen[str], threshold: int, signum: int = signal.SIGINT, timeout: float = 30
) -> float:
    """Once ``proc`` has read ``threshold`` bytes, send ``signum``; return the seconds it then
    took to exit. Fails if it ends before reading that much."""
    deadline = time.monotonic() + timeout
    while bytes_read(proc.pid) < threshold:
        if proc.poll() is not None:
            raise AssertionError(f"run ended before reading {threshold}: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"read less than {threshold} bytes in {timeout} s")
        time.sleep(0.005)
    sent = time.monotonic()
    os.kill(proc.pid, signum)
    proc.wait(timeout=timeout)
    return time.monotonic() - sent


def sparse_file(path: Path, size: int, head: bytes = b"") -> Path:
    """A file of ``size`` bytes that takes no disk space: ``head``, then a hole (zeros)."""
    with open(path, "wb") as handle:
        handle.write(head)
        handle.truncate(size)
    return path
