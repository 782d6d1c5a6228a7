"""The journal keeps a finished shard by its file's identity (inode, size, modification and
change times), not by re-reading it: a file changed through the file system since it was
recorded, under its pending or its final name, is computed again."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from belle_decrypt.tensors.journal import FileIdentity
from tests.conftest import listing
from tests.test_recover import KILLER, assert_recovered, release, run

SHARDS = [f"model-0000{n}-of-00004.safetensors" for n in range(1, 5)]


def other_bytes(path: Path) -> None:
    """The file's bytes replaced with others (a damaged file)."""
    path.write_bytes(b"damaged")


def same_size_rewrite(path: Path) -> None:
    """One byte changed in place, the modification time put back as it was."""
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    with open(path, "r+b") as handle:
        handle.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_mtime_ns == before.st_mtime_ns


def same_bytes_copy(path: Path) -> None:
    """The file replaced by a byte-equal copy (another inode)."""
    copy = path.with_name(path.name + ".copy")
    shutil.copy2(path, copy)
    os.replace(copy, path)


def finished(tmp_path: Path) -> tuple[tuple[str | Path, ...], Path, dict[str, torch.Tensor]]:
    """A finished recovery in four shards: its arguments, OUT_DIR and the expected tensors."""
    diff_dir, base_dir, expected = release(tmp_path, "vicuna")
    out = tmp_path / "out"
    args = (diff_dir, base_dir, out, "--recipe", "vicuna", "--max-shard-size", "60KB")
    assert run(*args).exit_code == 0
    return args, out, expected


def killed_after_two_shards(tmp_path: Path) -> tuple[list[str], Path, dict[str, torch.Tensor]]:
    """A recovery in four shards killed (-9) once two are journalled: its arguments, OUT_DIR
    and the expected tensors."""
    diff_dir, base_dir, expected = release(tmp_path, "ziya", "bin-sharded")
    out = tmp_path / "out"
    args = [str(diff_dir), str(base_dir), str(out), "--recipe", "ziya", "--max-shard-size", "60KB"]
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, "recover", *args], capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL
    return args, out, expected


def statuses(stdout: str) -> list[str]:
    return [line.split()[0] for line in stdout.splitlines()[1:5]]


@pytest.mark.parametrize("change", [other_bytes, same_size_rewrite, same_bytes_copy])
def test_a_changed_pending_shard_is_computed_again(
    change: Callable[[Path], None], tmp_path: Path
) -> None:
    args, out, expected = killed_after_two_shards(tmp_path)
    pending = [f".belle-pending.{name}" for name in SHARDS[:2]]
    assert listing(out) == [*pending, ".belle-recover.json"]
    change(out / pending[1])
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert [line.split()[:2] for line in result.stdout.splitlines()[1:5]] == [
        ["kept", SHARDS[0]],
        *(["written", name] for name in SHARDS[1:]),
    ]
    assert not any(name.startswith(".belle-pending") for name in listing(out))
    assert_recovered(out, expected)


def test_a_final_shard_changed_in_place_is_written_again(tmp_path: Path) -> None:
    args, out, expected = finished(tmp_path)
    same_size_rewrite(out / SHARDS[2])
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert statuses(result.stdout) == ["kept", "kept", "written", "kept"]
    assert_recovered(out, expected)


def test_the_journal_follows_the_rename_to_the_final_names(tmp_path: Path) -> None:
    _, out, _ = finished(tmp_path)
    doc = json.loads((out / ".belle-recover.json").read_text())
    assert doc["version"] == 2 and doc["complete"] is True
    for name in SHARDS:
        assert FileIdentity.parse(doc["shards"][name]["file"]) == FileIdentity.of(out / name)


def test_a_journal_of_the_sha256_version_owns_its_files_and_writes_them_again(
    tmp_path: Path,
) -> None:
    args, out, expected = finished(tmp_path)
    journal = out / ".belle-recover.json"
    doc = json.loads(journal.read_text())
    doc["version"] = 1
    for entry in doc["shards"].values():
        entry["sha256"] = "0" * 64
        del entry["file"]
    journal.write_text(json.dumps(doc))
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert statuses(result.stdout) == ["written"] * 4
    assert_recovered(out, expected)
    assert json.loads(journal.read_text())["version"] == 2
    assert statuses(run(*args).stdout) == ["kept"] * 4


def test_identity_of_what_is_not_a_regular_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_bytes(b"x")
    (tmp_path / "link").symlink_to(target)
    assert FileIdentity.of(tmp_path / "link") is None
    assert FileIdentity.of(tmp_path) is None
    assert FileIdentity.of(tmp_path / "absent") is None
    identity = FileIdentity.of(target)
    assert identity is not None and identity.size == 1
    assert FileIdentity.parse(identity.to_json()) == identity
    for bad in ([1, 2, 3], [1, 2, 3, -4], [1, 2, 3, 4.0], [1, 2, 3, False], "1 2 3 4", None):
        assert FileIdentity.parse(bad) is None


def test_free_space_counts_a_changed_pending_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from belle_decrypt.ground.errors import OutputError
    from belle_decrypt.tensors import run as recover_run

    args, out, _ = killed_after_two_shards(tmp_path)
    needs: list[int] = []

    def no_room(folder: Path, needed: int) -> None:
        needs.append(needed)
        raise OutputError("no room (test)", folder)

    monkeypatch.setattr(recover_run, "check_free_space", no_room)
    assert run(*args).exit_code == 1
    pending = out / f".belle-pending.{SHARDS[1]}"
    same_size_rewrite(pending)
    assert run(*args).exit_code == 1
    assert needs[1] - needs[0] == pending.stat().st_size


def test_files_renamed_before_a_failed_index_write_are_kept_by_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from belle_decrypt.tensors.journal import write_small_file

    diff_dir, base_dir, expected = release(tmp_path, "vicuna")
    out = tmp_path / "out"
    args = (diff_dir, base_dir, out, "--recipe", "vicuna", "--max-shard-size", "60KB")

    def full_disk_at_the_index(path: Path, data: bytes, *, fsync: bool) -> None:
        if path.name.endswith(".index.json"):
            raise OSError(28, "No space left on device")
        write_small_file(path, data, fsync=fsync)

    monkeypatch.setattr("belle_decrypt.tensors.run.write_small_file", full_disk_at_the_index)
    assert run(*args).exit_code != 0
    assert all((out / name).is_file() for name in SHARDS)
    monkeypatch.undo()
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert statuses(result.stdout) == ["kept"] * 4
    assert_recovered(out, expected)


def test_a_fifo_under_the_journals_name_starts_afresh_without_waiting(tmp_path: Path) -> None:
    diff_dir, base_dir, expected = release(tmp_path, "vicuna")
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / ".belle-recover.json")
    args = [*map(str, (diff_dir, base_dir, out)), "--recipe", "vicuna", "--max-shard-size", "60KB"]
    proc = subprocess.run(
        [sys.executable, "-m", "belle_decrypt", "recover", *args, "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    assert (out / ".belle-recover.json").is_file()
    assert_recovered(out, expected)
