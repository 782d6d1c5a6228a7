"""The threads this round added, under faults: convert's pieces from several Meta files and
its two head-start hash threads, the shard writer's thread, and the LoRA merge's adapter
digest thread. A write that fails mid-file (a file-size limit) is one line and exit 1 with
nothing under a final name; a closed or full stdout changes nothing but one warning; a FIFO
where a hashed file should be is refused in one line, never waited on."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests import faults
from tests import reference_meta as meta
from tests import tinylora as tl
from tests.conftest import listing
from tests.test_closed_stdout import HOW, cli, lost, run_lost
from tests.test_recover_faults import limited
from tests.test_recover_lora import chinese_base

CANNOT_WRITE = (
    "cannot write: File too large; nothing written (check the free space and permissions of "
    "the output folder)"
)


@pytest.fixture(scope="module")
def download(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LLaMA-2 download in two files: convert joins each tensor in pieces, and the head
    start hashes the two files in two threads."""
    root = tmp_path_factory.mktemp("meta")
    tokenizer = meta.tokenizer_model(root / "spm")
    return meta.write_download(root / "llama", meta.llama2(2), 2, tokenizer)


def lora_inputs(root: Path) -> tuple[Path, Path]:
    """A Chinese-Alpaca-shaped adapter (its SHA-256 hashed in a thread) and its base."""
    base, _ = chinese_base(root)
    adapter = root / "chinese-alpaca-lora-7b"
    tl.chinese_adapter(adapter, 7, 120, tokenizer=b"Chinese tokenizer")
    return adapter, base


def largest_weights(out: Path) -> Path:
    """The largest weight file a clean run wrote."""
    return max(out.glob("*.safetensors"), key=lambda p: p.stat().st_size)


def assert_refused_mid_file(args: list[str | Path], out: Path, clean: Path) -> None:
    """Run ``args`` with a file-size limit of half the largest file ``clean`` holds."""
    target = largest_weights(clean)
    proc = faults.run_cli(*args, preexec_fn=limited(target.stat().st_size // 2))
    assert proc.returncode == 1, proc.stderr
    assert faults.one_error(proc.stderr) == f"{out / target.name}: {CANNOT_WRITE}"
    assert [name for name in listing(out) if not name.startswith(".belle-")] == []
    assert faults.temps(out) == []


def test_convert_in_pieces_stops_on_a_failed_write(download: Path, tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    assert faults.run_cli("convert", download, clean, "-q").returncode == 0
    out = tmp_path / "out"
    assert_refused_mid_file(["convert", download, out], out, clean)


def test_a_lora_merge_stops_on_a_failed_write(tmp_path: Path) -> None:
    adapter, base = lora_inputs(tmp_path)
    clean = tmp_path / "clean"
    assert faults.run_cli("recover", adapter, base, clean, "-q").returncode == 0
    out = tmp_path / "out"
    assert_refused_mid_file(["recover", adapter, base, out], out, clean)


def assert_same_outputs(out: Path, clean: Path) -> None:
    """The same files with the same bytes; the journals the same but for the identities of
    the files they recorded (inodes and times differ from folder to folder)."""
    assert listing(out) == listing(clean)
    for name in listing(clean):
        if name == ".belle-recover.json":
            assert journal_without_identities(out / name) == journal_without_identities(
                clean / name
            )
        else:
            assert (out / name).read_bytes() == (clean / name).read_bytes(), name


def journal_without_identities(path: Path) -> object:
    doc = json.loads(path.read_text())
    for entry in doc["shards"].values():
        del entry["file"]
    return doc


@pytest.mark.parametrize("how", HOW)
def test_convert_does_the_work_without_stdout(download: Path, tmp_path: Path, how: str) -> None:
    clean = tmp_path / "clean"
    assert faults.run_cli("convert", download, clean, "-q").returncode == 0
    out = tmp_path / "out"
    proc = run_lost(cli("convert", download, out), how)
    assert (proc.returncode, proc.stderr) == (0, lost(how))
    assert_same_outputs(out, clean)


@pytest.mark.parametrize("how", HOW)
def test_a_lora_merge_does_the_work_without_stdout(tmp_path: Path, how: str) -> None:
    adapter, base = lora_inputs(tmp_path)
    clean = tmp_path / "clean"
    assert faults.run_cli("recover", adapter, base, clean, "-q").returncode == 0
    out = tmp_path / "out"
    proc = run_lost(cli("recover", adapter, base, out), how)
    assert (proc.returncode, proc.stderr) == (0, lost(how))
    assert_same_outputs(out, clean)


def fifo_in_place_of(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def not_regular(path: Path, role: str) -> str:
    return (
        f"{path}: ({role}) is not a regular file (a FIFO, socket or device); remove it, or put "
        "the downloaded file in its place"
    )


@pytest.mark.parametrize("verify", [True, False])
def test_a_fifo_among_metas_files_is_refused_not_hashed(
    download: Path, tmp_path: Path, verify: bool
) -> None:
    shutil.copytree(download.parent, tmp_path / "llama")
    folder = tmp_path / "llama" / download.name
    fifo_in_place_of(folder / "consolidated.01.pth")
    out = tmp_path / "out"
    proc = faults.run_cli("convert", folder, out, *([] if verify else ["--no-verify"]), timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert faults.one_error(proc.stderr) == not_regular(folder / "consolidated.01.pth", "LLAMA_DIR")
    assert listing(out) == []


def test_a_fifo_as_the_adapters_weights_is_refused_not_hashed(tmp_path: Path) -> None:
    adapter, base = lora_inputs(tmp_path)
    fifo_in_place_of(adapter / "adapter_model.bin")
    out = tmp_path / "out"
    proc = faults.run_cli("recover", adapter, base, out, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert faults.one_error(proc.stderr) == not_regular(
        adapter / "adapter_model.bin", "ADAPTER_DIR"
    )
    assert listing(out) == []
