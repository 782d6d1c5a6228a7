"""`verify`: md5sum -c for both groups of a model card, text and JSON, with exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from belle_decrypt.checks.manifest import Manifest
from belle_decrypt.checks.verify import FileCheck, VerifyReport, verify_folder
from belle_decrypt.ground.states import CheckStatus
from tests.faults import as_plain_user, modes_enforced, one_error, run_cli
from tests.release import Release, make_release, md5
from tests.runner import run


@pytest.fixture
def release(tmp_path: Path) -> Release:
    return make_release(tmp_path, b"a short key")


def decrypted_folder(release: Release, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    for name, data in release.plain.items():
        (out / name).write_bytes(data)
    return out


def test_downloads_ok_text(release: Release) -> None:
    result = run("verify", release.enc_dir, "--manifest", release.card)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert sorted(lines[:-1]) == sorted(f"{enc}: OK" for enc in release.enc_names.values())
    assert lines[-1] == "3 OK, 0 FAILED, 0 MISSING (encrypted files)"
    assert result.stderr == ""


def test_results_ok_json(release: Release, tmp_path: Path) -> None:
    out = decrypted_folder(release, tmp_path)
    (out / "README.md").write_text("an extra file the card does not list")
    result = run("verify", out, "--manifest", release.card, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc == {
        "folder": str(out),
        "ok": True,
        "files": [
            {
                "name": name,
                "group": "decrypted",
                "algorithm": "md5",
                "expected": md5(data),
                "actual": md5(data),
                "status": "OK",
            }
            for name, data in release.plain.items()
        ],
    }


def test_corrupted_and_missing_results_json(release: Release, tmp_path: Path) -> None:
    out = decrypted_folder(release, tmp_path)
    damaged = bytearray(release.plain["pytorch_model.bin"])
    damaged[5000] ^= 1
    (out / "pytorch_model.bin").write_bytes(damaged)
    (out / "tokenizer.model").unlink()
    result = run("verify", out, "--manifest", release.card, "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["ok"] is False
    by_name = {entry["name"]: entry for entry in doc["files"]}
    assert by_name["config.json"]["status"] == "OK"
    assert by_name["pytorch_model.bin"] == {
        "name": "pytorch_model.bin",
        "group": "decrypted",
        "algorithm": "md5",
        "expected": md5(release.plain["pytorch_model.bin"]),
        "actual": md5(bytes(damaged)),
        "status": "FAILED",
    }
    assert by_name["tokenizer.model"] == {
        "name": "tokenizer.model",
        "group": "decrypted",
        "algorithm": "md5",
        "expected": md5(release.plain["tokenizer.model"]),
        "actual": None,
        "status": "MISSING",
    }
    assert result.stderr == (
        f"belle-decrypt: error: {out}: 2 of 3 listed files FAILED or MISSING; "
        "download (or decrypt) those files again\n"
    )


def test_corrupted_and_missing_downloads_text(release: Release) -> None:
    broken = release.enc_path("config.json")
    original = broken.read_bytes()
    blob = bytearray(original)
    blob[-1] ^= 0xFF
    broken.write_bytes(blob)
    release.enc_path("tokenizer.model").unlink()
    result = run("verify", release.enc_dir, "--manifest", release.card)
    assert result.exit_code == 1
    assert (
        f"{broken.name}: FAILED (md5 {md5(bytes(blob))}, expected {md5(original)})" in result.stdout
    )
    assert f"{release.enc_names['tokenizer.model']}: MISSING" in result.stdout
    assert f"{release.enc_names['pytorch_model.bin']}: OK" in result.stdout
    assert "1 OK, 1 FAILED, 1 MISSING (encrypted files)" in result.stdout


def test_quiet_prints_only_problems(release: Release) -> None:
    release.enc_path("tokenizer.model").unlink()
    result = run("verify", release.enc_dir, "--manifest", release.card, "-q")
    assert result.exit_code == 1
    assert result.stdout == f"{release.enc_names['tokenizer.model']}: MISSING\n"


def test_both_groups_in_one_folder(release: Release) -> None:
    (release.enc_dir / "config.json").write_bytes(release.plain["config.json"])
    report = verify_folder(release.enc_dir, Manifest.read(release.card), workers=2)
    assert report.groups == ("encrypted", "decrypted")
    assert [c.status for c in report.files] == [CheckStatus.OK] * 4 + [CheckStatus.MISSING] * 2
    assert not report.ok


def test_progress_counts_every_byte(release: Release) -> None:
    seen: list[int] = []
    report = verify_folder(release.enc_dir, Manifest.read(release.card), on_progress=seen.append)
    assert report.ok
    assert sum(seen) == sum(p.stat().st_size for p in release.enc_dir.iterdir())


def test_manifest_lists_nothing_for_folder(release: Release, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("hello")
    result = run("verify", empty, "--manifest", release.card)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"belle-decrypt: error: {empty}: holds none of the 6 files listed in {release.card}; "
        "pass the folder with the downloaded .enc files or the decrypted files\n"
    )


@pytest.mark.parametrize("problem", ["missing manifest", "no entries", "conflict", "no folder"])
def test_unusable_input_exits_2_with_json(release: Release, tmp_path: Path, problem: str) -> None:
    manifest = release.card
    folder = release.enc_dir
    if problem == "missing manifest":
        manifest = tmp_path / "nope.md5"
    elif problem == "no entries":
        manifest = tmp_path / "prose.md"
        manifest.write_text("md5sum ./*\n")
    elif problem == "conflict":
        manifest = tmp_path / "conflict.md5"
        manifest.write_text(f"{'0' * 32}  a.bin\n{'1' * 32}  a.bin\n")
    else:
        folder = tmp_path / "nowhere"
    result = run("verify", folder, "--manifest", manifest, "--json")
    assert result.exit_code == 2
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and doc["files"] == []
    assert result.stderr == f"belle-decrypt: error: {doc['error']}\n"


def test_manifest_option_is_required(release: Release) -> None:
    result = run("verify", release.enc_dir)
    assert result.exit_code == 2
    assert "Missing option '--manifest'" in result.stderr


def test_a_fifo_or_a_device_under_a_listed_name_is_reported_never_read(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    os.mkfifo(folder / "fifo.bin")  # reading it would wait for a writer forever
    (folder / "zero.bin").symlink_to("/dev/zero")  # reading it would never end
    (folder / "ok.bin").write_bytes(b"ok")
    card = tmp_path / "md5.txt"
    card.write_text(f"{'0' * 32}  fifo.bin\n{'1' * 32}  zero.bin\n{md5(b'ok')}  ok.bin\n")
    proc = run_cli("verify", folder, "--manifest", card, timeout=30)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines() == [
        "fifo.bin: FAILED (not a regular file)",
        "zero.bin: FAILED (not a regular file)",
        "ok.bin: OK",
        "1 OK, 2 FAILED, 0 MISSING (decrypted files)",
    ]
    assert one_error(proc.stderr) == (
        f"{folder}: 2 of 3 listed files FAILED or MISSING; download (or decrypt) those files again"
    )


def test_verify_json_on_an_unreadable_folder_says_so_in_its_own_words(tmp_path: Path) -> None:
    if not modes_enforced():
        pytest.skip("file modes are not enforced for this user here")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"a")
    card = tmp_path / "md5.txt"
    card.write_text(f"{md5(b'a')}  a.bin\n")
    folder.chmod(0)
    try:
        proc = run_cli("verify", folder, "--manifest", card, "--json", preexec_fn=as_plain_user())
    finally:
        folder.chmod(0o755)
    message = f"{folder}: cannot read the folder: Permission denied; check its permissions"
    assert proc.returncode == 2, proc.stderr
    assert json.loads(proc.stdout) == {
        "folder": str(folder),
        "ok": False,
        "error": message,
        "files": [],
    }
    assert one_error(proc.stderr) == message


@pytest.mark.parametrize("count", [0, 1, 3])
def test_json_is_written_a_file_at_a_time_as_json_dumps_would(count: int) -> None:
    checks = [
        FileCheck(
            f'dir/"{n}"\udcd6',
            "decrypted",
            "md5",
            "0" * 32,
            None if n else "1" * 32,
            CheckStatus.OK,
        )
        for n in range(count)
    ]
    report = VerifyReport(Path("/data/模型"), tuple(checks))
    assert "".join(report.json_chunks()) == json.dumps(report.as_dict(), indent=2) + "\n"
