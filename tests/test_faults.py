"""Faults in real subprocesses: a file-size limit, kill -9, SIGINT and SIGTERM mid-file, an input
that shrinks while read, permission errors, two runs at once. Each test checks the exit code, the
one-line message and the exact contents of OUT_DIR afterwards."""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import reference
from tests.conftest import listing, random_bytes
from tests.faults import (
    CLI,
    ENV,
    PREFIX,
    MiB,
    as_plain_user,
    is_zeros_of,
    make_zero_enc,
    modes_enforced,
    not_warnings,
    one_error,
    run_cli,
    sparse_file,
    start_cli,
    stop_mid_file,
    temps,
)

BIG = 64 * MiB
KEY = random_bytes(4099, seed=41)
needs_modes = pytest.mark.skipif(
    not modes_enforced(),
    reason="file modes are not enforced for this user here (root whose capabilities cannot "
    "be dropped), so a permission error cannot be caused",
)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A key and a 64 MiB `.enc` (decrypting to zeros), shared read-only by this module."""
    root = tmp_path_factory.mktemp("big")
    key = root / "consolidated.00.pth"
    key.write_bytes(KEY)
    return key, make_zero_enc(root / "enc", "pytorch_model.bin", KEY, BIG)


@pytest.fixture
def small(make_key: Callable[..., Path], make_enc: Callable[..., Path]) -> tuple[Path, Path]:
    """A key and a 3 MiB `.enc` of random bytes."""
    key = make_key(5000)
    return key, make_enc("model.bin", random_bytes(3 * MiB, seed=42), key)


def _limit_file_size(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def test_file_size_limit_mid_file_fails_that_file_only(
    small: tuple[Path, Path], make_enc: Callable[..., Path], tmp_path: Path
) -> None:
    key, enc = small
    make_enc("config.json", b'{"dim": 4096}\n', key)
    out = tmp_path / "out"
    proc = run_cli(enc.parent, key, out, preexec_fn=_limit_file_size(1 * MiB))
    assert proc.returncode == 1
    line = one_error(proc.stderr)
    assert line.startswith(f"{out / 'model.bin'}: "), line
    assert "File too large" in line
    assert "1 decrypted, 0 already decrypted, 1 failed" in proc.stdout
    assert listing(out) == ["config.json"]
    assert (out / "config.json").read_bytes() == b'{"dim": 4096}\n'


# Mount a 4 MiB tmpfs on OUT_DIR in a private mount namespace, put the user's file there, run the
# CLI, then record OUT_DIR's listing (the mount ends with the namespace). Exit 99: cannot mount.
_FULL_DISK = (
    'mount -t tmpfs -o size=4m tmpfs "$0" || exit 99; cp "$1" "$0/model.bin"; '
    '"$2" -m belle_decrypt "$3" "$4" "$0" --force; rc=$?; ls -A "$0" > "$5"; '
    'cmp -s "$1" "$0/model.bin" && echo unchanged >> "$5"; exit $rc'
)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare(1)"
)
def test_disk_full_mid_file_keeps_the_old_file(small: tuple[Path, Path], tmp_path: Path) -> None:
    # A same-size differing file counts as done for the free-space check, so --force starts
    # and runs out of space mid-file: the real ENOSPC, and the old file must stay.
    key, enc = small
    mine = tmp_path / "mine.bin"
    mine.write_bytes(random_bytes(3 * MiB, seed=45))
    out, report = tmp_path / "out", tmp_path / "report"
    out.mkdir()
    args = [out, mine, sys.executable, enc, key, report]
    proc = subprocess.run(
        ["unshare", "--mount", "sh", "-c", _FULL_DISK, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
        check=False,
    )
    if proc.returncode == 99:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    assert proc.returncode == 1, proc.stderr
    line = one_error(proc.stderr)
    assert line.startswith(f"{out / 'model.bin'}: "), line
    assert "No space left on device" in line
    assert report.read_text().split() == ["model.bin", "unchanged"]


def test_kill_9_mid_file_then_a_rerun_completes(big: tuple[Path, Path], tmp_path: Path) -> None:
    key, enc = big
    out = tmp_path / "out"
    proc = start_cli(enc, key, out)
    temp = stop_mid_file(proc, out, grown=8 * MiB)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # Nothing under the final name; the killed run's temporary file names its process.
    assert listing(out) == [temp.name]
    assert temp.name.startswith(f".belle-tmp.{proc.pid}.")

    rerun = run_cli(enc, key, out)
    assert rerun.returncode == 0, rerun.stderr
    assert not_warnings(rerun.stderr) == []
    assert rerun.stdout.startswith("decrypted          pytorch_model.bin  64.0 MiB in ")
    assert listing(out) == ["pytorch_model.bin"]
    assert is_zeros_of(out / "pytorch_model.bin", BIG)


@pytest.mark.parametrize(
    ("signum", "code", "word"),
    [
        (signal.SIGINT, 130, "interrupted"),
        (signal.SIGTERM, 143, "terminated"),
        (signal.SIGHUP, 129, "hung up"),
    ],
)
def test_signal_mid_file_removes_the_temporary_file(
    signum: int, code: int, word: str, big: tuple[Path, Path], tmp_path: Path
) -> None:
    key, enc = big
    out = tmp_path / "out"
    proc = start_cli(enc, key, out)
    stop_mid_file(proc, out, grown=8 * MiB)
    os.kill(proc.pid, signum)
    os.kill(proc.pid, signal.SIGCONT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == code, stderr
    assert one_error(stderr) == (
        f"{out / 'pytorch_model.bin'}: {word}; the unfinished file was removed; "
        "run the same command again to finish"
    )
    assert listing(out) == []


def test_input_that_shrinks_while_read_fails_cleanly(
    big: tuple[Path, Path], tmp_path: Path
) -> None:
    key, shared = big
    enc = tmp_path / "enc" / shared.name
    enc.parent.mkdir()
    enc.write_bytes(shared.read_bytes())
    out = tmp_path / "out"
    proc = start_cli(enc, key, out)
    stop_mid_file(proc, out, grown=8 * MiB)
    os.truncate(enc, 32 + 40 * MiB)  # the download being replaced under the run
    os.kill(proc.pid, signal.SIGCONT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1, stderr
    assert one_error(stderr).startswith(f"{enc}: "), stderr
    assert listing(out) == []


def _key_mapped(pid: int, key: Path) -> bool:
    """Whether process ``pid`` has the key file mapped into memory right now."""
    try:
        with open(f"/proc/{pid}/maps") as maps:
            return any(line.rstrip().endswith(str(key)) for line in maps)
    except OSError:
        return False


def _written(folder: Path) -> int:
    """Bytes in our temporary files in ``folder`` now."""
    total = 0
    for name in temps(folder):
        with contextlib.suppress(FileNotFoundError):
            total += (folder / name).stat().st_size
    return total


@pytest.mark.parametrize(
    ("files", "grown"), [(1, 1 * MiB), (1, 12 * MiB), (1, 24 * MiB), (2, 1 * MiB)]
)
def test_a_key_truncated_during_a_run_is_reported_every_time(
    tmp_path: Path, files: int, grown: int
) -> None:
    """The key replaced under a run (a new copy being written): the "shrank" line for each
    file in flight, exit 1, no temporary file, wherever the run was; never a SIGBUS. The run is
    stopped as soon as the key is seen mapped into its memory (a fault there cannot be
    recovered from), else once its output holds ``grown`` bytes. The payloads run on numpy
    (past the plain path's budget), the reader up to three 8 MiB buffers ahead of the writer:
    at 80 MiB the key's first piece is read again at 60 MiB, after any ``grown`` here."""
    key = tmp_path / "consolidated.00.pth"
    key.write_bytes(random_bytes(12 * MiB, seed=44))  # a whole piece and a short one
    digest = hashlib.sha256(b"never reached").digest()
    enc_dir = tmp_path / "enc"
    enc_dir.mkdir()
    for name in ("pytorch_model.bin", "other.bin")[:files]:
        sparse_file(enc_dir / f"{name}.{digest.hex()}.enc", 32 + 80 * MiB, head=digest)
    out = tmp_path / "out"
    proc = start_cli(enc_dir, key, out, "-q", "--jobs", str(files))
    deadline = time.monotonic() + 30
    while not (_key_mapped(proc.pid, key) or _written(out) >= grown):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never got under way"
    os.kill(proc.pid, signal.SIGSTOP)
    os.truncate(key, 4096)  # the first bytes of a new copy
    os.kill(proc.pid, signal.SIGCONT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1, stderr
    shrank = f"{PREFIX}{key}: the key file shrank while it was being read"
    assert not_warnings(stderr) == [shrank] * files
    assert listing(out) == []


@pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0,
    reason="needs unshare(1) and root to make a PID namespace",
)
def test_a_run_in_another_pid_namespace_keeps_a_live_runs_temporary_file(
    tmp_path: Path, make_enc: Callable[..., Path]
) -> None:
    """Two containers on one shared volume: run A is stopped mid-file; run B, in a PID
    namespace of its own (where A's pid does not exist), decrypts another file into the same
    folder. A's temporary file stays (its lock says it is live), and A finishes. A temporary
    file that nobody holds is removed, even when its pid is alive here."""
    key = tmp_path / "consolidated.00.pth"
    key.write_bytes(KEY)
    enc_a = make_zero_enc(tmp_path / "a", "pytorch_model.bin", KEY, 48 * MiB)
    small = random_bytes(5000, seed=45)
    enc_b = make_enc("config.json", small, key, folder="b")
    shared = tmp_path / "shared"
    proc = start_cli(enc_a, key, shared, "-q")
    temp = stop_mid_file(proc, shared, grown=4 * MiB)
    unheld = shared / f".belle-tmp.{os.getpid()}.0123abcd.tokenizer.model"
    unheld.write_bytes(b"left by a run that ended")  # its pid (this test) is alive here
    try:
        other = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", *CLI, enc_b.parent, key, shared],
            capture_output=True,
            text=True,
            timeout=60,
            env=ENV,
            check=False,
        )
        assert other.returncode == 0, other.stderr
        assert temp.exists(), "run B removed the live temporary file of run A"
        assert not unheld.exists()
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert listing(shared) == ["config.json", "pytorch_model.bin"]
    assert (shared / "config.json").read_bytes() == small
    assert is_zeros_of(shared / "pytorch_model.bin", 48 * MiB)


def test_two_concurrent_runs_never_leave_a_wrong_file(
    make_enc: Callable[..., Path], tmp_path: Path
) -> None:
    key = tmp_path / "consolidated.00.pth"
    key.write_bytes(KEY)
    enc_dir = tmp_path / "enc"
    make_zero_enc(enc_dir, "pytorch_model.bin", KEY, 16 * MiB)
    small = random_bytes(2 * MiB + 5, seed=43)
    make_enc("tokenizer.model", small, key)
    out = tmp_path / "out"
    procs = [start_cli(enc_dir, key, out) for _ in range(2)]
    results = [proc.communicate(timeout=60) for proc in procs]
    for proc, (stdout, stderr) in zip(procs, results, strict=True):
        assert proc.returncode == 0, stderr
        assert not_warnings(stderr) == []
        for name in ("pytorch_model.bin", "tokenizer.model"):
            assert (
                f"decrypted          {name} " in stdout or f"already decrypted  {name} " in stdout
            )
    assert listing(out) == ["pytorch_model.bin", "tokenizer.model"]
    assert is_zeros_of(out / "pytorch_model.bin", 16 * MiB)
    assert (out / "tokenizer.model").read_bytes() == small


@needs_modes
@pytest.mark.parametrize("which", ["enc", "key", "folder"])
def test_unreadable_input_is_refused_before_writing(
    which: str, small: tuple[Path, Path], tmp_path: Path
) -> None:
    key, enc = small
    source = enc.parent if which == "folder" else enc
    unreadable, message = {
        "enc": (enc, "cannot read: Permission denied; check the file's permissions"),
        "key": (key, "cannot read the key: Permission denied; check its permissions"),
        "folder": (enc.parent, "cannot list the folder: Permission denied; check its permissions"),
    }[which]
    unreadable.chmod(0)
    out = tmp_path / "out"
    try:
        proc = run_cli(source, key, out, preexec_fn=as_plain_user())
    finally:
        unreadable.chmod(0o755)
    assert proc.returncode == 2
    assert one_error(proc.stderr) == f"{unreadable}: {message}"
    assert not out.exists()


@needs_modes
def test_read_only_output_folder_fails_the_file(small: tuple[Path, Path], tmp_path: Path) -> None:
    key, enc = small
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        proc = run_cli(enc, key, out, preexec_fn=as_plain_user())
    finally:
        out.chmod(0o755)
    assert proc.returncode == 1
    assert one_error(proc.stderr) == (
        f"{out / 'model.bin'}: cannot create a file in the output folder: Permission denied; "
        "check the folder's permissions and free space"
    )
    assert listing(out) == []


@needs_modes
def test_unreadable_existing_output_is_left_alone_unless_forced(
    small: tuple[Path, Path], tmp_path: Path
) -> None:
    key, enc = small
    out = tmp_path / "out"
    out.mkdir()
    mine = random_bytes(3 * MiB, seed=44)  # the right size: only its digest can tell
    (out / "model.bin").write_bytes(mine)
    (out / "model.bin").chmod(0)
    proc = run_cli(enc, key, out, preexec_fn=as_plain_user())
    assert proc.returncode == 1
    assert one_error(proc.stderr) == (
        f"{out / 'model.bin'}: cannot read the existing file: Permission denied; check its "
        "permissions, move it away or pass --force to replace it"
    )
    assert listing(out) == ["model.bin"]
    assert (out / "model.bin").read_bytes() == mine
    forced = run_cli(enc, key, out, "--force", preexec_fn=as_plain_user())
    assert forced.returncode == 0, forced.stderr
    assert listing(out) == ["model.bin"]
    assert (out / "model.bin").read_bytes() == random_bytes(3 * MiB, seed=42)


@needs_modes
def test_other_commands_report_unreadable_inputs_in_one_line(
    small: tuple[Path, Path], tmp_path: Path
) -> None:
    key, enc = small
    secret = tmp_path / "secret"
    secret.mkdir()
    plain = secret / "model.bin"
    plain.write_bytes(b"weights")
    card = secret / "md5.txt"
    card.write_text(f"{'0' * 32}  model.bin\n")
    secret.chmod(0o000)
    try:
        runs = {
            "encrypt": run_cli("encrypt", plain, key, tmp_path / "pub", preexec_fn=as_plain_user()),
            "verify": run_cli("verify", enc.parent, "--manifest", card, preexec_fn=as_plain_user()),
            "check-key": run_cli("check-key", plain, preexec_fn=as_plain_user()),
        }
    finally:
        secret.chmod(0o755)
    expected = {
        "encrypt": f"{plain}: cannot read: Permission denied; check its permissions",
        "verify": f"{card}: cannot read the manifest: Permission denied",
        "check-key": f"{plain}: cannot read the key: Permission denied; check its permissions",
    }
    for command, proc in runs.items():
        assert (command, proc.returncode) == (command, 2), proc.stderr
        assert one_error(proc.stderr) == expected[command]
    assert not (tmp_path / "pub").exists() or listing(tmp_path / "pub") == []


@needs_modes
def test_encrypt_force_replaces_an_unreadable_existing_file(tmp_path: Path) -> None:
    key = tmp_path / "key.pth"
    key.write_bytes(random_bytes(300, seed=45))
    plain = tmp_path / "model.bin"
    plain.write_bytes(random_bytes(1000, seed=46))
    digest, blob = reference.encrypt(plain.read_bytes(), key.read_bytes())
    pub = tmp_path / "pub"
    pub.mkdir()
    existing = pub / f"model.bin.{digest}.enc"
    existing.write_bytes(b"someone else's copy")
    existing.chmod(0)
    refused = run_cli("encrypt", plain, key, pub, preexec_fn=as_plain_user())
    assert refused.returncode == 1
    assert one_error(refused.stderr) == (
        f"{existing}: cannot read the existing file: Permission denied; check its permissions, "
        "move it away or pass --force to replace it"
    )
    forced = run_cli("encrypt", plain, key, pub, "--force", preexec_fn=as_plain_user())
    assert forced.returncode == 0, forced.stderr
    assert existing.read_bytes() == blob
