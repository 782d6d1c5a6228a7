"""The head start of `recover` and `convert` (belle_decrypt/tensors/headstart.py): the checksums
begun before torch is imported are the run's, taken once, never for a file changed since; a
Ctrl-C while torch is being imported stops it all within a second with one line and 130."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from belle_decrypt.streams.hashing import hash_file
from belle_decrypt.tensors import headstart, listed
from belle_decrypt.tensors.headstart import HeadStart, plan_convert, plan_meta
from tests import reference_meta as meta
from tests import reference_recover, runner
from tests import tinyllama as tiny
from tests.conftest import listing
from tests.test_recover import TOKENIZER, assert_recovered, release
from tests.test_recover_meta_more import downloaded
from tests.test_recover_more import billa, meta_folder

# The run's entry point with a real SIGINT sent while torch's compiled core is being imported.
INTERRUPT_TORCH = """
import importlib.abc, os, signal, sys, time
class Interrupt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch._C":
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(10)
        return None
sys.meta_path.insert(0, Interrupt())
sys.argv[0] = "belle-decrypt"
from belle_decrypt.entry import main
main()
"""


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def counting(calls: list[Path]) -> Callable[..., dict[str, str]]:
    """``hash_file`` noting each path it hashes in ``calls``."""

    def counted(path: Path, *args: Any, **kwargs: Any) -> dict[str, str]:
        calls.append(path)
        return hash_file(path, *args, **kwargs)

    return counted


def test_the_runs_hasher_takes_the_head_starts_digests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    diff_dir, base_dir, expected = release(tmp_path, "vicuna", "bin-sharded")
    files = sorted(p for p in diff_dir.iterdir() if p.name.startswith("pytorch_model-"))
    card = tmp_path / "card.md5"
    card.write_text("".join(f"{md5(p)}  {p.name}\n" for p in files))
    early: list[Path] = []
    late: list[Path] = []
    monkeypatch.setattr(headstart, "hash_file", counting(early))
    monkeypatch.setattr(listed, "hash_file", counting(late))
    out = tmp_path / "out"
    result = runner.run(
        "recover", diff_dir, base_dir, out, "--recipe", "vicuna", "--manifest", card
    )
    assert result.exit_code == 0, result.output
    assert "manifest   2 diff files match the manifest's checksums\n" in result.stdout
    assert (early, late) == (files, [])
    assert_recovered(out, expected)


def test_metas_folder_as_the_base_is_hashed_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenizer = meta.tokenizer_model(tmp_path / "spm")
    meta_dir, converted, base = downloaded(tmp_path, tokenizer, 2)
    tuned = tiny.tuned({k: v.float() for k, v in base.items()}, 3, vocab=meta.VOCAB)
    diff = reference_recover.make_diff("vicuna", tuned, base)
    config = json.loads((converted / "config.json").read_text())
    diff_dir = tiny.write_folder(tmp_path / "diff", diff, "safetensors", config, TOKENIZER)
    early: list[Path] = []
    late: list[Path] = []
    monkeypatch.setattr(headstart, "hash_file", counting(early))
    monkeypatch.setattr(listed, "hash_file", counting(late))
    result = runner.run("recover", diff_dir, meta_dir, tmp_path / "out", "--recipe", "vicuna")
    assert result.exit_code == 0, result.output
    assert early == sorted(meta_dir.glob("consolidated.*.pth"))
    assert late == []


def test_billa_reads_metas_embedding_alone_and_it_is_not_hashed_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    diff_dir, base, recovered = billa(tmp_path)
    base_dir = meta_folder(tmp_path, base)
    pieces = base_dir / "consolidated.00.pth"
    (base_dir / "checklist.chk").write_text(f"{md5(pieces)}  {pieces.name}\n")
    early: list[Path] = []
    monkeypatch.setattr(headstart, "hash_file", counting(early))
    figure = repr(float(recovered.pop("")))
    result = runner.run("recover", diff_dir, base_dir, tmp_path / "out", "--expect-sum", figure)
    assert result.exit_code == 0, result.output
    assert early == []


def test_a_file_changed_after_it_was_hashed_is_hashed_again(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"first")
    with HeadStart([(path, ("md5",))], []) as early:
        assert early.digests(path, ["md5"], lambda: False) == {"md5": md5(path)}
        assert early.digests(path, ["md5", "sha256"], lambda: False) is None
        assert early.digests(tmp_path / "other", ["md5"], lambda: False) is None
        path.write_bytes(b"second, longer")
        assert early.digests(path, ["md5"], lambda: False) is None


def test_several_files_are_hashed_two_at_a_time_each_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(headstart, "hash_file", counting(calls))
    paths = []
    for number in range(5):
        path = tmp_path / f"consolidated.{number:02d}.pth"
        path.write_bytes(os.urandom(1000 + number))
        paths.append(path)
    early = HeadStart([(path, ("md5", "sha256")) for path in paths], [])
    assert len(early.threads) == headstart.HASH_THREADS == 2
    with early:
        for path in reversed(paths):
            assert early.digests(path, ["sha256"], lambda: False) == {
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest()
            }
    assert sorted(calls) == paths
    assert len(HeadStart([(paths[0], ("md5",))], []).threads) == 1


def test_a_mismatch_found_from_the_head_start_is_the_runs_line(tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "vicuna", "bin-sharded")
    shard = diff_dir / "pytorch_model-00002-of-00002.bin"
    card = tmp_path / "card.txt"
    card.write_text(f"{'0' * 32}  {shard.name}\n")
    out = tmp_path / "out"
    result = runner.run(
        "recover", diff_dir, base_dir, out, "--recipe", "vicuna", "--manifest", card
    )
    assert result.exit_code == 1, result.output
    assert result.stderr == (
        f"belle-decrypt: error: {shard}: md5 {md5(shard)} differs from the model card's "
        f"{'0' * 32} ({card}:1): the download is damaged; download it again; nothing written\n"
    )
    assert listing(out) == []


@pytest.mark.parametrize(
    ("norm_eps", "files", "algorithms"),
    [
        (1e-06, 1, ("md5", "sha256")),  # LLaMA-1 7B's shape: the published SHA-256 may apply
        (1e-05, 1, ("md5",)),  # LLaMA-2 7B: it cannot
        (1e-06, 2, ("md5",)),  # no LLaMA-1 of this width in two files
    ],
)
def test_metas_files_are_planned_with_the_checks_the_run_makes(
    norm_eps: float, files: int, algorithms: tuple[str, ...], tmp_path: Path
) -> None:
    params = {"dim": 4096, "n_heads": 32, "n_layers": 32, "norm_eps": norm_eps}
    (tmp_path / "params.json").write_text(json.dumps({**params, "multiple_of": 256}))
    names = [f"consolidated.{n:02d}.pth" for n in range(files)]
    for name in names:
        (tmp_path / name).write_bytes(name.encode())
    (tmp_path / "checklist.chk").write_text("".join(f"{'a' * 32}  {n}\n" for n in names))
    assert plan_meta(tmp_path) == [(tmp_path / n, algorithms) for n in names]
    assert plan_convert(tmp_path, None, verify=False).planned == []
    (tmp_path / "params.json").write_text("not json")
    assert plan_meta(tmp_path) == []  # the run says what is wrong, not the head start
    (tmp_path / "params.json").unlink()
    os.symlink("checklist.chk", tmp_path / "params.json")
    (tmp_path / "checklist.chk").unlink()
    os.symlink("params.json", tmp_path / "checklist.chk")
    os.symlink("loop-b", tmp_path / "loop-a")
    os.symlink("loop-a", tmp_path / "loop-b")
    assert plan_meta(tmp_path) == []
    assert plan_convert(tmp_path, None, verify=True).ahead == [tmp_path / names[0]]


def interrupted(argv: list[str | Path]) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", INTERRUPT_TORCH, *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc, time.monotonic() - started


def test_ctrl_c_while_torch_imports_beside_the_head_start(tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "vicuna")
    big = diff_dir / "tokenizer.model"
    with open(big, "r+b") as handle:  # 2 GiB of holes: hashed for seconds, stored in none
        handle.truncate(2 << 30)
    card = tmp_path / "card.md5"
    card.write_text(f"{'0' * 32}  tokenizer.model\n")
    out = tmp_path / "out"
    proc, seconds = interrupted(
        ["recover", diff_dir, base_dir, out, "--recipe", "vicuna", "--manifest", card]
    )
    assert (proc.returncode, proc.stderr, proc.stdout) == (
        130,
        "belle-decrypt: error: interrupted; run the same command again to finish\n",
        "",
    )
    assert seconds < 5  # torch's import cut short, the hashing of 2 GiB stopped
    assert listing(out) == []


def test_ctrl_c_while_torch_imports_in_convert(tmp_path: Path) -> None:
    tokenizer = meta.tokenizer_model(tmp_path / "spm")
    folder = meta.write_download(tmp_path / "llama", meta.LLAMA1, 2, tokenizer)
    out = tmp_path / "hf"
    proc, _ = interrupted(["convert", folder, out])
    assert (proc.returncode, proc.stderr, proc.stdout) == (
        130,
        "belle-decrypt: error: interrupted; run the same command again to finish\n",
        "",
    )
    assert listing(out) == []
    assert not any(name.startswith(".") for name in os.listdir(folder))
