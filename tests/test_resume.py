"""Re-runs, --force, free space, symbolic links and stale temporary files, through CliRunner.

Every test checks the exit code, the message and the exact contents of OUT_DIR; a file that must
be left alone keeps its inode and its mtime.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from click.testing import Result

from belle_decrypt.ground.errors import OutputError
from belle_decrypt.ground.states import FileState
from belle_decrypt.layouts.container import EncFile
from belle_decrypt.streams.keystream import Key
from belle_decrypt.streams.output import AtomicFile
from belle_decrypt.xor.decrypt import decrypt_file
from tests import faults
from tests.conftest import listing, random_bytes
from tests.runner import run

BIN = random_bytes(30_000, seed=71)
JSON = b'{"dim": 4096, "n_layers": 32}\n'


def one_error(result: Result) -> str:
    """The one error line of an in-process run (a traceback would have failed the test)."""
    return faults.one_error(result.stderr)


class Release(NamedTuple):
    key: Path
    enc_dir: Path
    out: Path


@pytest.fixture
def release(
    make_key: Callable[..., Path], make_enc: Callable[..., Path], tmp_path: Path
) -> Release:
    key = make_key(7000)
    make_enc("pytorch_model.bin", BIN, key)
    enc_dir = make_enc("config.json", JSON, key).parent
    return Release(key, enc_dir, tmp_path / "out")


def stamp(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_ino, info.st_mtime_ns


def test_rerun_leaves_finished_files_untouched(release: Release) -> None:
    first = run(release.enc_dir, release.key, release.out)
    assert first.exit_code == 0, first.output
    before = {name: stamp(release.out / name) for name in listing(release.out)}
    assert sorted(before) == ["config.json", "pytorch_model.bin"]
    time.sleep(0.01)
    again = run(release.enc_dir, release.key, release.out)
    assert again.exit_code == 0, again.output
    assert faults.not_warnings(again.stderr) == []
    assert "already decrypted  config.json " in again.stdout
    assert "already decrypted  pytorch_model.bin " in again.stdout
    assert again.stdout.splitlines()[-1] == "0 decrypted, 2 already decrypted, 0 failed"
    assert {name: stamp(release.out / name) for name in listing(release.out)} == before


def test_rerun_with_a_manifest_checks_md5_and_leaves_files_untouched(
    release: Release, tmp_path: Path
) -> None:
    manifest = tmp_path / "md5.txt"
    manifest.write_text(
        f"{hashlib.md5(BIN).hexdigest()}  ./pytorch_model.bin\n"
        f"{hashlib.md5(JSON).hexdigest()}  ./config.json\n"
    )
    first = run(release.enc_dir, release.key, release.out, "--manifest", manifest)
    assert first.exit_code == 0, first.output
    before = {name: stamp(release.out / name) for name in listing(release.out)}
    again = run(release.enc_dir, release.key, release.out, "--manifest", manifest)
    assert again.exit_code == 0, again.output
    assert again.stdout.count("already decrypted  ") == 2
    assert "SHA-256 and md5 verified" in again.stdout
    assert {name: stamp(release.out / name) for name in listing(release.out)} == before


def test_rerun_finishes_only_what_is_missing(release: Release) -> None:
    release.out.mkdir()
    (release.out / "config.json").write_bytes(JSON)  # done by an earlier, interrupted run
    done = stamp(release.out / "config.json")
    result = run(release.enc_dir, release.key, release.out)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "1 decrypted, 1 already decrypted, 0 failed"
    assert stamp(release.out / "config.json") == done
    assert listing(release.out) == ["config.json", "pytorch_model.bin"]
    assert (release.out / "pytorch_model.bin").read_bytes() == BIN


@pytest.mark.parametrize("same_size", [False, True], ids=["other-size", "same-size"])
def test_differing_file_is_refused_and_kept(release: Release, same_size: bool) -> None:
    release.out.mkdir()
    mine = random_bytes(len(BIN), seed=72) if same_size else b"my own notes\n"
    target = release.out / "pytorch_model.bin"
    target.write_bytes(mine)
    kept = stamp(target)
    result = run(release.enc_dir, release.key, release.out)
    assert result.exit_code == 1
    assert one_error(result) == (
        f"{target}: exists and differs from what this file decrypts to; move it away or pass "
        "--force to replace it"
    )
    assert result.stdout.splitlines()[-1] == "1 decrypted, 0 already decrypted, 1 failed"
    assert stamp(target) == kept
    assert target.read_bytes() == mine
    assert listing(release.out) == ["config.json", "pytorch_model.bin"]


def test_force_replaces_a_differing_file_with_a_new_verified_one(release: Release) -> None:
    release.out.mkdir()
    target = release.out / "pytorch_model.bin"
    target.write_bytes(b"old")
    old_inode = target.stat().st_ino
    result = run(release.enc_dir, release.key, release.out, "--force")
    assert result.exit_code == 0, result.output
    assert "decrypted          pytorch_model.bin " in result.stdout
    assert target.stat().st_ino != old_inode
    assert target.read_bytes() == BIN
    assert listing(release.out) == ["config.json", "pytorch_model.bin"]


def test_failed_force_leaves_the_old_file(release: Release, make_key: Callable[..., Path]) -> None:
    release.out.mkdir()
    target = release.out / "pytorch_model.bin"
    target.write_bytes(b"old")
    kept = stamp(target)
    wrong = make_key(7000, name="13B.pth", seed=99)
    enc = next(release.enc_dir.glob("pytorch_model.bin.*.enc"))
    result = run(enc, wrong, release.out, "--force")
    assert result.exit_code == 1
    line = one_error(result)
    assert line.startswith(f"{enc}: decrypted SHA-256 ")
    assert line.endswith("; nothing written")
    assert stamp(target) == kept
    assert target.read_bytes() == b"old"
    assert listing(release.out) == ["pytorch_model.bin"]


def test_force_replaces_a_symlink_not_the_file_it_points_to(
    release: Release, tmp_path: Path
) -> None:
    release.out.mkdir()
    precious = tmp_path / "precious.bin"
    precious.write_bytes(b"user data")
    kept = stamp(precious)
    (release.out / "pytorch_model.bin").symlink_to(precious)
    result = run(release.enc_dir, release.key, release.out, "--force")
    assert result.exit_code == 0, result.output
    assert not (release.out / "pytorch_model.bin").is_symlink()
    assert (release.out / "pytorch_model.bin").read_bytes() == BIN
    assert stamp(precious) == kept and precious.read_bytes() == b"user data"


def test_the_key_itself_is_never_replaced(
    make_key: Callable[..., Path], make_enc: Callable[..., Path], tmp_path: Path
) -> None:
    # point-alpaca ships consolidated.00.pth.<sha>.enc; OUT_DIR = the key's own folder.
    llama = tmp_path / "llama" / "7B"
    llama.mkdir(parents=True)
    key = make_key(7000, name="llama/7B/consolidated.00.pth")
    enc = make_enc("consolidated.00.pth", BIN, key)
    kept = stamp(key)
    result = run(enc, key, llama, "--force")
    assert result.exit_code == 1
    assert one_error(result) == (
        f"{key}: is the key file itself and would be replaced; choose another output folder"
    )
    assert stamp(key) == kept
    assert listing(llama) == ["consolidated.00.pth"]


def test_a_folder_in_the_way_is_refused(release: Release) -> None:
    (release.out / "config.json").mkdir(parents=True)
    result = run(release.enc_dir, release.key, release.out, "--force")
    assert result.exit_code == 1
    assert one_error(result) == (
        f"{release.out / 'config.json'}: a folder is in the way of the output file; move it away"
    )
    assert listing(release.out) == ["config.json", "pytorch_model.bin"]
    assert listing(release.out / "config.json") == []


def _free(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    real = shutil.disk_usage

    def fake(path: Any) -> Any:
        usage = real(path)
        return type(usage)(usage.total, usage.used, free)

    monkeypatch.setattr(shutil, "disk_usage", fake)


def test_free_space_counts_only_files_still_to_write(
    release: Release, monkeypatch: pytest.MonkeyPatch
) -> None:
    release.out.mkdir()
    (release.out / "config.json").write_bytes(JSON)  # already done: needs no space
    _free(monkeypatch, len(BIN) - 1)
    refused = run(release.enc_dir, release.key, release.out)
    assert refused.exit_code == 1
    assert one_error(refused) == (
        f"{release.out}: needs {len(BIN):,} bytes (0.0 GiB) but only {len(BIN) - 1:,} (0.0 GiB) "
        "are free; free some space or choose another output folder"
    )
    assert listing(release.out) == ["config.json"]
    _free(monkeypatch, len(BIN))
    fits = run(release.enc_dir, release.key, release.out)
    assert fits.exit_code == 0, fits.output
    assert listing(release.out) == ["config.json", "pytorch_model.bin"]


def test_free_space_in_folder_form_is_the_whole_total(
    release: Release, monkeypatch: pytest.MonkeyPatch
) -> None:
    _free(monkeypatch, len(BIN) + len(JSON) - 1)
    refused = run(release.enc_dir, release.key, release.out)
    assert refused.exit_code == 1
    assert f"needs {len(BIN) + len(JSON):,} bytes" in one_error(refused)
    assert listing(release.out) == []


def test_model_hub_cache_of_symbolic_links_works(
    make_key: Callable[..., Path], make_enc: Callable[..., Path], tmp_path: Path
) -> None:
    # hub cache: snapshots/<rev>/NAME.<sha>.enc -> ../../blobs/<sha>; the key and folder linked too
    key = make_key(7000, name="real-consolidated.00.pth")
    made = [make_enc("pytorch_model.bin", BIN, key), make_enc("config.json", JSON, key)]
    repo = tmp_path / "hub" / "models--BelleGroup--BELLE-7B-2M-enc"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    for enc in made:
        blob = repo / "blobs" / enc.name.split(".")[-2]
        enc.rename(blob)
        (snapshot / enc.name).symlink_to(Path("..", "..", "blobs", blob.name))
    linked_key = tmp_path / "consolidated.00.pth"
    linked_key.symlink_to(key)
    linked_dir = tmp_path / "BELLE-7B-2M-enc"
    linked_dir.symlink_to(snapshot)
    out = tmp_path / "out"
    result = run(linked_dir, linked_key, out)
    assert result.exit_code == 0, result.output
    assert listing(out) == ["config.json", "pytorch_model.bin"]
    assert (out / "pytorch_model.bin").read_bytes() == BIN
    assert (out / "config.json").read_bytes() == JSON
    one = run(snapshot / made[0].name, linked_key, tmp_path / "one")
    assert one.exit_code == 0, one.output
    assert listing(tmp_path / "one") == ["pytorch_model.bin"]


def _zombie() -> subprocess.Popen[bytes]:
    """A child that has ended but is not reaped yet (its temporary file is stale)."""
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "child did not end"
        time.sleep(0.01)
    return child


def test_stale_temporary_files_go_but_a_live_runs_stay(release: Release) -> None:
    """A temporary file is live while a process holds its lock, whatever pid its name holds
    (the writer may be in another container); one that nobody holds is stale, even when its
    pid is alive here. This process's own are never touched."""
    release.out.mkdir()
    ended = subprocess.Popen(["true"])
    ended.wait()
    zombie = _zombie()
    elsewhere = f".belle-tmp.{ended.pid}.deadbeef.pytorch_model.bin"  # pid not seen here
    (release.out / elsewhere).write_bytes(b"partial")
    holder = subprocess.Popen(  # a run going on beside this one, in another namespace
        [
            sys.executable,
            "-c",
            "import fcntl, sys\n"
            "f = open(sys.argv[1], 'rb')\n"
            "fcntl.flock(f, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "sys.stdin.read()\n",
            str(release.out / elsewhere),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    alive = subprocess.Popen(["sleep", "60"])
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        dead_temp = f".belle-tmp.{ended.pid}.0123abcd.pytorch_model.bin"
        zombie_temp = f".belle-tmp.{zombie.pid}.89abcdef.pytorch_model.bin"
        unheld_temp = f".belle-tmp.{alive.pid}.01234567.pytorch_model.bin"
        own_temp = f".belle-tmp.{os.getpid()}.76543210.pytorch_model.bin"
        not_ours = [
            ".belle-tmp.notes",
            f".belle-tmp.{ended.pid}.xyz.pytorch_model.bin",
            "pytorch_model.bin.part",
        ]
        for name in [dead_temp, zombie_temp, unheld_temp, own_temp, *not_ours]:
            (release.out / name).write_bytes(b"partial")
        result = run(release.enc_dir, release.key, release.out)
    finally:
        holder.communicate("")
        alive.kill()
        alive.wait()
        zombie.wait()
    assert result.exit_code == 0, result.output
    expected = [elsewhere, own_temp, *not_ours, "config.json", "pytorch_model.bin"]
    assert listing(release.out) == sorted(expected)
    assert (release.out / elsewhere).read_bytes() == b"partial"


def test_stale_temp_with_an_impossible_pid_is_removed(release: Release) -> None:
    release.out.mkdir()
    (release.out / f".belle-tmp.{10**30}.0123abcd.config.json").write_bytes(b"x")
    result = run(release.enc_dir, release.key, release.out)
    assert result.exit_code == 0, result.output
    assert listing(release.out) == ["config.json", "pytorch_model.bin"]


def test_no_fsync_still_writes_atomically(release: Release) -> None:
    result = run(release.enc_dir, release.key, release.out, "--no-fsync")
    assert result.exit_code == 0, result.output
    assert listing(release.out) == ["config.json", "pytorch_model.bin"]
    assert (release.out / "pytorch_model.bin").read_bytes() == BIN
    assert os.stat(release.out / "config.json").st_size == len(JSON)


@pytest.mark.parametrize("appears", [b"user's own file", BIN], ids=["differs", "identical"])
def test_file_appearing_under_the_final_name_mid_run_is_kept(
    release: Release, appears: bytes
) -> None:
    """The user (or a run beside this one) puts a file in place while this one decrypts."""
    enc = EncFile.open(next(release.enc_dir.glob("pytorch_model.bin.*.enc")))
    release.out.mkdir()
    target = release.out / "pytorch_model.bin"

    def meanwhile(n: int) -> None:
        if not target.exists():
            target.write_bytes(appears)

    with Key(release.key) as key:
        if appears == BIN:
            result = decrypt_file(enc, key, release.out, on_progress=meanwhile, buffer_size=4096)
            assert result.status is FileState.ALREADY_DECRYPTED
        else:
            with pytest.raises(OutputError, match="exists and differs"):
                decrypt_file(enc, key, release.out, on_progress=meanwhile, buffer_size=4096)
    assert target.read_bytes() == appears
    assert listing(release.out) == ["pytorch_model.bin"]


@pytest.mark.parametrize("exists", [False, True])
def test_no_replace_commit_without_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exists: bool
) -> None:
    """On a file system without hard links (FAT, some FUSE), the no-replace rename falls back."""

    def no_links(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    final = tmp_path / "model.bin"
    if exists:
        final.write_bytes(b"mine")
    atomic = AtomicFile(final)
    with atomic as handle:
        handle.write(b"new")
        if exists:
            with pytest.raises(FileExistsError):
                atomic.commit(replace=False)
        else:
            atomic.commit(replace=False)
    assert final.read_bytes() == (b"mine" if exists else b"new")
    assert listing(tmp_path) == ["model.bin"]


def test_killed_between_link_and_unlink_leaves_a_verified_file(release: Release) -> None:
    """kill -9 inside the no-replace rename: final name and temporary name share one inode."""
    first = run(release.enc_dir, release.key, release.out)
    assert first.exit_code == 0, first.output
    ended = subprocess.Popen(["true"])
    ended.wait()
    final = release.out / "pytorch_model.bin"
    os.link(final, release.out / f".belle-tmp.{ended.pid}.0123abcd.pytorch_model.bin")
    kept = stamp(final)
    again = run(release.enc_dir, release.key, release.out)
    assert again.exit_code == 0, again.output
    assert "already decrypted  pytorch_model.bin " in again.stdout
    assert listing(release.out) == ["config.json", "pytorch_model.bin"]
    assert stamp(final) == kept and final.read_bytes() == BIN
