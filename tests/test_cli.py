"""The command line through click's CliRunner: exit codes and exact one-line messages."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from belle_decrypt import __version__
from belle_decrypt.cli.console import user_errors
from belle_decrypt.ground.cancel import note_removed
from tests.conftest import listing, random_bytes, unknown_key_warning
from tests.runner import run

PLAIN = random_bytes(3000, seed=11)


@pytest.fixture
def release(
    make_key: Callable[..., Path], make_enc: Callable[..., Path]
) -> tuple[Path, Path, Path]:
    """A key, one `.enc` in folder `enc` made with it, and that file's path."""
    key = make_key(1000)
    enc = make_enc("pytorch_model.bin", PLAIN, key)
    return key, enc.parent, enc


def test_loop_form_decrypts_one_file(release: tuple[Path, Path, Path], tmp_path: Path) -> None:
    key, _, enc = release
    out = tmp_path / "deep" / "out"
    result = run(enc, key, out)
    assert result.exit_code == 0, result.output
    assert (out / "pytorch_model.bin").read_bytes() == PLAIN
    assert result.stdout.startswith("decrypted          pytorch_model.bin  2.9 KiB in ")
    assert result.stdout.rstrip().endswith("SHA-256 verified")
    assert result.stderr == unknown_key_warning(key) + "\n"
    assert listing(out) == ["pytorch_model.bin"]


def test_decrypt_spelled_out_is_the_same_command(
    release: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    key, _, enc = release
    result = run("decrypt", enc, key, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "pytorch_model.bin").read_bytes() == PLAIN


def test_folder_form_skips_clutter_and_goes_smallest_first(
    release: tuple[Path, Path, Path], make_enc: Callable[..., Path], tmp_path: Path
) -> None:
    key, enc_dir, _ = release
    small = random_bytes(10, seed=3)
    make_enc("config.json", small, key)
    (enc_dir / "README.md").write_text("# model card\n")
    (enc_dir / ".gitattributes").write_text("*.enc filter=lfs\n")
    (enc_dir / ".git").mkdir()
    out = tmp_path / "out"
    result = run(enc_dir, key, out, "--no-fsync")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "skipped            .gitattributes (not a .enc file)"
    assert lines[1] == "skipped            README.md (not a .enc file)"
    assert lines[2].startswith("decrypted          config.json  10 B in ")
    assert lines[3].startswith("decrypted          pytorch_model.bin  2.9 KiB in ")
    assert lines[4] == "2 decrypted, 0 already decrypted, 0 failed"
    assert listing(out) == ["config.json", "pytorch_model.bin"]
    assert (out / "config.json").read_bytes() == small


def test_quiet_prints_only_the_key_warning(
    release: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    key, enc_dir, _ = release
    result = run(enc_dir, key, tmp_path / "out", "-q")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr == unknown_key_warning(key) + "\n"


def test_second_run_reports_already_decrypted(
    release: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    key, _, enc = release
    out = tmp_path / "out"
    assert run(enc, key, out).exit_code == 0
    result = run(enc, key, out)
    assert result.exit_code == 0
    assert result.stdout.startswith("already decrypted  pytorch_model.bin")


def test_wrong_key_fails_and_leaves_nothing(
    release: tuple[Path, Path, Path], make_key: Callable[..., Path], tmp_path: Path
) -> None:
    _, _, enc = release
    wrong = make_key(1000, name="pytorch_model-00001-of-00002.bin", seed=99)
    out = tmp_path / "out"
    result = run(enc, wrong, out)
    assert result.exit_code == 1
    digest = enc.name.split(".")[-2]
    warning, first = result.stderr.splitlines()[:2]
    assert warning == unknown_key_warning(wrong)
    assert first.startswith(f"belle-decrypt: error: {enc}: decrypted SHA-256 ")
    assert first.endswith(
        f" does not match {digest}: the key is probably wrong: {wrong} is not the original "
        "LLaMA-7B consolidated.00.pth (1,000 bytes, not 13,476,939,516); nothing written"
    )
    assert len(result.stderr.splitlines()) == 2  # the warning and the one error line
    assert listing(out) == []


def test_missing_source_is_a_usage_error(make_key: Callable[..., Path], tmp_path: Path) -> None:
    key = make_key(10)
    missing = tmp_path / "nope.enc"
    result = run(missing, key, tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr == (
        f"belle-decrypt: error: {missing}: no such file or folder; "
        "pass a downloaded .enc file or its folder\n"
    )
    assert not (tmp_path / "out").exists()


def test_name_without_digest_is_a_usage_error(
    make_key: Callable[..., Path], tmp_path: Path
) -> None:
    key = make_key(10)
    readme = tmp_path / "README.md"
    readme.write_text("card")
    result = run(readme, key, tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr == (
        f"belle-decrypt: error: {readme}: not an encrypted file name "
        "(expected NAME.<64 lower-case hex>.enc)\n"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", [".", ".."])
def test_name_that_would_escape_the_folder_is_refused(
    name: str, make_key: Callable[..., Path], tmp_path: Path
) -> None:
    key = make_key(10)
    enc = tmp_path / f"{name}.{'0' * 64}.enc"
    enc.write_bytes(b"\0" * 40)
    result = run(enc, key, tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr == (
        f"belle-decrypt: error: {enc}: would decrypt to the unsafe name '{name}'; rename it\n"
    )


def test_lfs_pointer_is_refused(make_key: Callable[..., Path], tmp_path: Path) -> None:
    key = make_key(10)
    enc = tmp_path / f"pytorch_model.bin.{'ab' * 32}.enc"
    enc.write_text(
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{'cd' * 32}\nsize 6738420000\n"
    )
    result = run(enc, key, tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr == (
        f"belle-decrypt: error: {enc}: is a Git LFS pointer, not the data; run `git lfs pull` "
        "in the cloned repository (or download the file itself)\n"
    )


def test_header_disagreeing_with_name_is_refused(
    release: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    key, _, enc = release
    renamed = tmp_path / f"pytorch_model.bin.{'e' * 64}.enc"
    renamed.write_bytes(enc.read_bytes())
    result = run(renamed, key, tmp_path / "out")
    assert result.exit_code == 2
    header = enc.name.split(".")[-2]
    assert result.stderr == (
        f"belle-decrypt: error: {renamed}: header digest {header} disagrees with the name's "
        f"{'e' * 64}; the file is damaged or renamed: download it again\n"
    )


def test_empty_key_is_a_usage_error(release: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, _, enc = release
    key = tmp_path / "empty.pth"
    key.write_bytes(b"")
    result = run(enc, key, tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr == (
        f"belle-decrypt: error: {key}: the key file is empty; pass LLaMA-7B consolidated.00.pth\n"
    )
    assert not (tmp_path / "out").exists()


def test_folder_with_a_bad_file_writes_nothing(
    release: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    key, enc_dir, _ = release
    bad = enc_dir / f"tokenizer.model.{'1' * 64}.enc"
    bad.write_bytes(b"short")
    result = run(enc_dir, key, tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr == (
        f"belle-decrypt: error: {bad}: is 5 bytes, shorter than the 32-byte header; "
        "download it again\n"
    )
    assert not (tmp_path / "out").exists()


def test_version_and_help_have_an_example() -> None:
    assert run("--version").stdout == f"belle-decrypt, version {__version__}\n"
    top = run("--help")
    assert top.exit_code == 0
    assert 'belle-decrypt "$f" consolidated.00.pth out/' in top.stdout
    sub = run("decrypt", "-h")
    assert sub.exit_code == 0
    assert "Example:" in sub.stdout and "belle-decrypt decrypt " in sub.stdout


def test_missing_arguments_are_usage_errors() -> None:
    result = run("only-one-arg")
    assert result.exit_code == 2
    assert "Missing argument 'KEY_FILE'" in result.stderr


AGAIN = "run the same command again to finish"


@pytest.mark.parametrize(
    ("writing", "removed", "expected"),
    [
        (True, ["o/a.bin"], f"o/a.bin: interrupted; the unfinished file was removed; {AGAIN}"),
        (
            True,
            ["o/a.bin", "o/b.bin"],
            f"interrupted; the unfinished files o/a.bin, o/b.bin were removed; {AGAIN}",
        ),
        (True, [], f"interrupted; {AGAIN}"),
        (False, [], "interrupted"),
    ],
)
def test_an_interrupt_says_what_happened_to_output(
    writing: bool, removed: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped, user_errors(writing=writing):
        interrupt = KeyboardInterrupt()
        for final in removed:
            note_removed(interrupt, Path(final))
        raise interrupt
    assert stopped.value.code == 130
    assert capsys.readouterr().err == f"belle-decrypt: error: {expected}\n"


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["", "KEY", "OUT"], "SOURCE"),
        (["decrypt", "ENC", "", "OUT"], "KEY_FILE"),
        (["ENC", "KEY", ""], "OUT_DIR"),
        (["ENC", "KEY", "OUT", "--manifest", ""], "--manifest"),
        (["ENC", "KEY", "OUT", "--base-manifest", ""], "--base-manifest"),
        (["verify", "", "--manifest", "md5.txt"], "FOLDER"),
        (["verify", "DIR", "--manifest", ""], "--manifest"),
        (["check-key", ""], "KEY_FILE"),
        (["check-key", "DIR", "--base-manifest", ""], "--base-manifest"),
        (["encrypt", "SRC", "KEY", ""], "OUT_DIR"),
        (["recover", "DIFF", "", "OUT"], "BASE_DIR"),
        (["recover", "DIFF", "BASE", "OUT", "--manifest", ""], "--manifest"),
        (["demo", "--keep", ""], "--keep"),
    ],
)
def test_an_empty_path_is_a_usage_error_in_every_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], what: str
) -> None:
    monkeypatch.chdir(tmp_path)  # an empty path would otherwise mean this folder
    result = run(*args)
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (
        f"belle-decrypt: error: {what}: the path is empty (an unset variable?); give a path\n"
    )
    assert listing(tmp_path) == []


def test_check_key_on_a_missing_folder_says_folder(tmp_path: Path) -> None:
    missing = tmp_path / "llama-7b-hf"
    hint = "pass the folder of LLaMA converted to the Hugging Face layout"
    for args in ([f"{missing}/"], [missing, "--format", "perfile"]):
        result = run("check-key", *args)
        assert (result.exit_code, result.stdout) == (2, "")
        assert result.stderr == f"belle-decrypt: error: {missing}: no such folder; {hint}\n"
    (tmp_path / "file").write_bytes(b"x")
    result = run("check-key", tmp_path / "file", "--format", "perfile")
    assert result.exit_code == 2
    assert result.stderr == f"belle-decrypt: error: {tmp_path / 'file'}: is not a folder; {hint}\n"
