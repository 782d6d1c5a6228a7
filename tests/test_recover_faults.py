"""`recover` under hostile conditions: a file-size limit mid-shard in each sink, inputs that
shrink while mapped, journals and pending files left by other runs, folders seen under two
paths. Each runs the real command line in a subprocess where a hang or a signal could happen."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from belle_decrypt.tensors.sinks.shards import parse_size
from tests import faults, runner
from tests import reference_recover as ref
from tests import tinyllama as tiny
from tests.conftest import listing
from tests.test_recover import KILLER, assert_recovered, release, small_shards


def limited(size: int) -> Callable[[], None]:
    """A ``preexec_fn`` that limits the size of any file the child writes to ``size`` bytes."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return limit


@pytest.mark.parametrize("sink", ["safetensors", "bin"])
@pytest.mark.parametrize("limit", [20_000, 30_000, 45_000])
def test_a_file_size_limit_mid_shard_is_one_line_and_exit_1(
    sink: str, limit: int, tmp_path: Path
) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "vicuna")
    out = tmp_path / "out"
    args = small_shards(diff_dir, base_dir, out) + (["--bin"] if sink == "bin" else [])
    proc = faults.run_cli("recover", *args, preexec_fn=limited(limit), timeout=60)
    first = (
        "pytorch_model-00001-of-00004.bin"
        if sink == "bin"
        else ("model-00001-of-00004.safetensors")
    )
    assert proc.returncode == 1, proc.stderr
    assert faults.one_error(proc.stderr) == (
        f"{out / first}: cannot write: File too large; nothing written (check the free space "
        "and permissions of the output folder)"
    )
    assert [name for name in listing(out) if not name.startswith(".belle-")] == []
    assert faults.temps(out) == []


@contextmanager
def bound(folder: Path, where: Path) -> Iterator[Path]:
    """``folder`` seen again at ``where`` through a bind mount (skipped where mounting is not
    allowed); unmounted on leaving."""
    where.mkdir()
    made = subprocess.run(["mount", "--bind", str(folder), str(where)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {made.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)
        where.rmdir()


@pytest.mark.parametrize("which", ["diff", "base"])
def test_force_into_an_input_folder_seen_under_another_path_is_refused(
    which: str, tmp_path: Path
) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "vicuna")
    folder = diff_dir if which == "diff" else base_dir
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with bound(folder, tmp_path / "again") as again:
        args = small_shards(diff_dir, base_dir, again)
        proc = faults.run_cli("recover", *args, "--force")
        assert proc.returncode == 2, proc.stderr
        assert faults.one_error(proc.stderr) == (
            f"{again}: is also an input folder; pass a new output folder"
        )
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_encrypt_into_its_source_folder_seen_under_another_path_is_refused(
    tmp_path: Path,
) -> None:
    source = tmp_path / "model"
    source.mkdir()
    (source / "pytorch_model.bin").write_bytes(b"weights" * 100)
    key = tmp_path / "key.pth"
    key.write_bytes(bytes(range(256)) * 40)
    with bound(source, tmp_path / "again") as again:
        proc = faults.run_cli("encrypt", source, key, again)
        assert proc.returncode == 2, proc.stderr
        assert faults.one_error(proc.stderr) == (
            f"{again}: the output folder is the source folder; choose another one"
        )
    assert listing(source) == ["pytorch_model.bin"]


@pytest.mark.parametrize(
    "text", ["10GiB", "10Gib", "10gib", "10GB", "10Gb", "10gb", "500MiB", "500mib", "3KB", "3Kb"]
)
def test_shard_sizes_are_read_as_transformers_reads_them(text: str) -> None:
    from transformers.utils.hub import convert_file_size_to_int

    assert parse_size(text) == convert_file_size_to_int(text)


@pytest.mark.parametrize(
    "text", ["9" * 400, "9" * 5000 + "GB", "1" + "0" * 30 + "GiB", "9223372036854775808"]
)
def test_a_huge_shard_size_is_a_usage_error(text: str, tmp_path: Path) -> None:
    result = runner.run(
        "recover",
        tmp_path / "d",
        tmp_path / "b",
        tmp_path / "o",
        "--recipe",
        "vicuna",
        "--max-shard-size",
        text,
    )
    assert result.exit_code == 2
    assert result.stderr == (
        f"belle-decrypt: error: --max-shard-size {text!r} is more than a file can hold; write "
        "it like 2GB, 500MB or 10GiB\n"
    )


@pytest.mark.parametrize(
    "damage",
    [
        lambda entry: {"file": entry["file"]},
        lambda entry: [entry["file"], entry["sums"]],
        lambda entry: {"file": 5, "sums": entry["sums"]},
        lambda entry: {"file": entry["file"][:3], "sums": entry["sums"]},
        lambda entry: {"file": [*entry["file"][:3], -1], "sums": entry["sums"]},
        lambda entry: {"file": [*entry["file"][:3], True], "sums": entry["sums"]},
        lambda entry: {"sha256": "0" * 64, "sums": entry["sums"]},
        lambda entry: {"file": entry["file"], "sums": ["x"]},
        lambda entry: {"file": entry["file"], "sums": {"a": 1}},
    ],
)
def test_a_damaged_journal_entry_starts_afresh(
    damage: Callable[[dict[str, object]], object], tmp_path: Path
) -> None:
    diff_dir, base_dir, expected = release(tmp_path, "vicuna")
    out = tmp_path / "out"
    args = small_shards(diff_dir, base_dir, out)
    assert runner.run("recover", *args).exit_code == 0
    journal = out / ".belle-recover.json"
    doc = json.loads(journal.read_text())
    first = "model-00001-of-00004.safetensors"
    doc["shards"][first] = damage(doc["shards"][first])
    journal.write_text(json.dumps(doc))
    result = runner.run("recover", *args)
    assert result.exit_code == 1, result.output
    assert result.stderr == (
        f"belle-decrypt: error: {out / first}: already exists and is not from this recovery; "
        "pass --force to replace it, or choose another output folder\n"
    )
    result = runner.run("recover", *args, "--force")
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.stdout.splitlines()[1:5]] == ["written"] * 4
    assert_recovered(out, expected)


def inv_freq_release(root: Path, recipe: str) -> tuple[Path, Path, tiny.StateDict]:
    """Base and diff both holding float16 inv_freq buffers (as transformers <= 4.30 saved a
    float16 model), and the recovered buffers as the publishers' scripts write them: float32,
    the float32 sum of the two (ziya: the delta's own, widened)."""
    base = tiny.model(1, inv=True)
    base = {name: t.half() if name.endswith("inv_freq") else t for name, t in base.items()}
    vocab = 120 if recipe == "ziya" else 100
    tuned = tiny.tuned(base, 2, vocab=vocab)
    diff = ref.make_diff(recipe, tuned, base)
    for name in diff:
        if name.endswith("inv_freq"):  # a delta that is not exactly 0, so the sum shows
            diff[name] = torch.full_like(diff[name], 1e-3).half()
    diff_dir = tiny.write_folder(root / "diff", diff, "safetensors", tiny.config(vocab))
    base_dir = tiny.write_folder(root / "base", base, "bin", tiny.config(100))
    return diff_dir, base_dir, ref.recover(recipe, diff, base)


@pytest.mark.parametrize("recipe", ["vicuna", "vicuna-v0", "ziya", "alpaca", "tulu"])
@pytest.mark.parametrize("as_bin", [False, True])
def test_inv_freq_buffers_are_written_as_float32(recipe: str, as_bin: bool, tmp_path: Path) -> None:
    diff_dir, base_dir, expected = inv_freq_release(tmp_path, recipe)
    out = tmp_path / "out"
    flags = ["--bin"] if as_bin else []
    if recipe == "alpaca":
        flags += ["--expect-sum", str(ref.alpaca_sum(expected))]
    result = runner.run("recover", diff_dir, base_dir, out, "--recipe", recipe, *flags)
    assert result.exit_code == 0, result.output
    got = tiny.load_folder(out)
    buffers = [name for name in expected if name.endswith("inv_freq")]
    assert len(buffers) == tiny.LAYERS
    for name in buffers:
        assert got[name].dtype == torch.float32, name
        assert expected[name].dtype == torch.float32, name
    assert_recovered(out, expected)


SHRINK = """
import os, subprocess, sys, time
from belle_decrypt.tensors import run
from belle_decrypt.tensors.sources import leases
from belle_decrypt.cli import commands as cli
mechanism, victim = sys.argv.pop(1), sys.argv.pop(1)
leases.LEASES.available = mechanism != "size"
produce = run.Recovery._produce
calls = []
def shrinking(self, item, out):
    calls.append(item.name)
    if len(calls) == 3:
        if mechanism == "size":  # between two tensors, in this process
            os.truncate(victim, os.path.getsize(victim) // 3)
        else:  # by another program while a tensor's mapped bytes are in use
            folder = self.sources["diff" if str(self.diff.path) in victim else "base"]
            view = folder.load(folder.tensors.get(item.name, item.input("base")).name)
            code = f"import os; os.truncate({victim!r}, {os.path.getsize(victim) // 3})"
            subprocess.Popen([sys.executable, "-c", code])
            time.sleep(1.0)
            float(view.float().sum())
    return produce(self, item, out)
run.Recovery._produce = shrinking
cli.main()
"""


def shrunk_message(victim: Path, role: str, size: int, mechanism: str) -> str:
    """The one line for an input truncated during the run, by the mechanism that saw it."""
    if mechanism == "size":
        return (
            f"{victim}: ({role}) shrank from {size:,} to {size // 3:,} bytes while being read "
            "(another program truncated it); nothing was left under a final name; download it "
            "again, then run the same command again"
        )
    return (
        f"{victim}: ({role}) another program is truncating or rewriting it while it is being "
        "read (it waits until this run stops); nothing was left under a final name; once it is "
        "done, download the file again if it changed, then run the same command again"
    )


@pytest.mark.parametrize("mechanism", ["lease", "size"])
@pytest.mark.parametrize(
    ("which", "name", "role"),
    [("diff", "model.safetensors", "DIFF_DIR"), ("base", "pytorch_model.bin", "BASE_DIR")],
)
@pytest.mark.parametrize("as_bin", [False, True])
def test_an_input_truncated_during_the_run_is_one_line(
    which: str, name: str, role: str, as_bin: bool, mechanism: str, tmp_path: Path
) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "vicuna")
    out = tmp_path / "out"
    victim = (diff_dir if which == "diff" else base_dir) / name
    size = victim.stat().st_size
    args = small_shards(diff_dir, base_dir, out) + (["--bin"] if as_bin else [])
    proc = subprocess.run(
        [sys.executable, "-c", SHRINK, mechanism, str(victim), "recover", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=faults.ENV,
    )
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert faults.one_error(proc.stderr) == shrunk_message(victim, role, size, mechanism)
    assert [n for n in listing(out) if not n.startswith(".belle-")] == []
    assert faults.temps(out) == []
    deadline = time.monotonic() + 30  # the other program goes on once the run has stopped
    while victim.stat().st_size != size // 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert victim.stat().st_size == size // 3


@pytest.mark.parametrize(
    "change",
    [
        ["--recipe", "vicuna", "--max-shard-size", "90KB"],
        ["--recipe", "vicuna", "--max-shard-size", "60KB", "--bin"],
        ["--recipe", "vicuna-v0", "--max-shard-size", "60KB"],
        ["--recipe", "vicuna", "--max-shard-size", "60KB", "--force"],
        ["--recipe", "vicuna"],
    ],
)
def test_a_rerun_with_another_plan_removes_the_dead_runs_pending_shards(
    change: list[str], tmp_path: Path
) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "vicuna")
    out = tmp_path / "out"
    args = small_shards(diff_dir, base_dir, out)
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, "recover", *args], capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL
    assert [n for n in listing(out) if n.startswith(".belle-pending.")] == [
        ".belle-pending.model-00001-of-00004.safetensors",
        ".belle-pending.model-00002-of-00004.safetensors",
    ]
    result = runner.run("recover", *args[:3], *change)
    assert result.exit_code == 0, result.output
    assert [n for n in listing(out) if n.startswith(".belle-pending.")] == []


def test_a_pending_shard_renamed_by_another_run_is_computed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from belle_decrypt.tensors.journal import FileIdentity

    diff_dir, base_dir, expected = release(tmp_path, "vicuna")
    out = tmp_path / "out"
    args = small_shards(diff_dir, base_dir, out)
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, "recover", *args], capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL
    identity_of = FileIdentity.of

    def other_run_renames_first(path: Path) -> FileIdentity | None:
        # The other run finishes between this run's look at the final name and the pending.
        if path.name == ".belle-pending.model-00002-of-00004.safetensors" and path.exists():
            os.replace(path, path.with_name(path.name.removeprefix(".belle-pending.")))
        return identity_of(path)

    monkeypatch.setattr(FileIdentity, "of", other_run_renames_first)
    result = runner.run("recover", *args)
    assert result.exit_code == 0, result.output
    statuses = [line.split()[0] for line in result.stdout.splitlines()[1:5]]
    assert statuses == ["kept", "written", "written", "written"]
    assert_recovered(out, expected)
    monkeypatch.undo()  # the journal vouches for every file, the renamed ones too
    result = runner.run("recover", *args)
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.stdout.splitlines()[1:5]] == ["kept"] * 4


def test_a_diff_without_config_takes_the_bases_config_and_tokenizer(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    base = tiny.model(1)
    diff = ref.make_diff("vicuna", tiny.tuned(base, 2, vocab=100), base)
    diff_dir = tiny.write_folder(tmp_path / "diff", diff, "safetensors")
    tokenizer = {"tokenizer.model": b"the base's tokenizer", "tokenizer_config.json": b"{}"}
    base_dir = tiny.write_folder(tmp_path / "base", base, "bin", tiny.config(100), tokenizer)
    out = tmp_path / "out"
    result = runner.run("recover", diff_dir, base_dir, out, "--recipe", "vicuna")
    assert result.exit_code == 0, result.output
    assert result.stderr == (
        f"belle-decrypt: warning: {diff_dir}: (DIFF_DIR) has no config.json; the base's "
        "config.json, tokenizer.model, tokenizer_config.json are used instead (a diff "
        "downloaded with its weights only?)\n"
    )
    assert "copied     config.json, tokenizer.model, tokenizer_config.json\n" in result.stdout
    for name in ("config.json", *tokenizer):
        assert (out / name).read_bytes() == (base_dir / name).read_bytes()
    assert_recovered(out, ref.recover("vicuna", diff, base))
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == 100


def test_a_diff_without_config_and_more_rows_than_the_base_is_refused(tmp_path: Path) -> None:
    base = tiny.model(1)
    diff = ref.make_diff("vicuna-v0", tiny.tuned(base, 2, vocab=101), base)
    diff_dir = tiny.write_folder(tmp_path / "diff", diff, "safetensors")
    base_dir = tiny.write_folder(tmp_path / "base", base, "bin", tiny.config(100))
    out = tmp_path / "out"
    result = runner.run("recover", diff_dir, base_dir, out, "--recipe", "vicuna-v0")
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"belle-decrypt: error: {diff_dir}: (DIFF_DIR) has no config.json, and the base's does "
        "not fit it (vocab_size 100, the diff has 101 rows); download the diff's config.json "
        "and tokenizer files into it\n"
    )
    assert listing(out) == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_diff_holding_nan_or_inf_is_refused_naming_the_tensor(bad: float, tmp_path: Path) -> None:
    base = tiny.model(1)
    diff = ref.make_diff("vicuna", tiny.tuned(base, 2, vocab=100), base)
    name = "model.layers.1.mlp.up_proj.weight"
    diff[name][3, 5] = bad
    diff_dir = tiny.write_folder(tmp_path / "diff", diff, "bin-sharded", tiny.config(100))
    base_dir = tiny.write_folder(tmp_path / "base", base, "bin", tiny.config(100))
    out = tmp_path / "out"
    args: list[str | Path] = [
        diff_dir,
        base_dir,
        out,
        "--recipe",
        "vicuna",
        "--max-shard-size",
        "60KB",
    ]
    result = runner.run("recover", *args)
    assert result.exit_code == 2, result.output
    shard = diff_dir / "pytorch_model-00002-of-00002.bin"
    assert result.stderr == (
        f"belle-decrypt: error: {shard}: (DIFF_DIR) {name} holds 1 NaN or infinite value: the "
        "diff is damaged (no published diff has any); download it again, or pass "
        "--allow-nonfinite to recover it as it is; nothing was left under a final name\n"
    )
    assert listing(out) == []
    result = runner.run("recover", *args, "--allow-nonfinite")
    assert result.exit_code == 0, result.output
    assert_recovered(out, ref.recover("vicuna", diff, base))


def test_a_rerun_whose_sum_fails_names_the_files_under_final_names(tmp_path: Path) -> None:
    from tests import test_recover_alpaca as alpaca

    diff_dir, base_dir, expected = alpaca.release(tmp_path, "tulu")
    out = tmp_path / "out"
    args: list[str | Path] = [diff_dir, base_dir, out, "--recipe", "tulu"]
    args += ["--max-shard-size", "150KB"]
    assert runner.run("recover", *args).exit_code == 0
    names = [n for n in listing(out) if n.startswith("model-0000")]
    assert len(names) == 3
    without, with_buffers = alpaca.figures(expected)
    wrong = round(without + 0.02, 4)
    result = runner.run("recover", *args, "--expect-sum", str(wrong))
    assert result.exit_code == 1, result.output
    failure = alpaca.sum_failure(wrong, without, with_buffers, diff_dir)
    assert failure.endswith("; nothing written")
    assert result.stderr == (
        f"belle-decrypt: error: {out}: {failure.removesuffix('; nothing written')}; nothing "
        f"new written, but the model already under its final names from an earlier run "
        f"({', '.join(names)}) is the one that failed; move it away or replace it with --force "
        "once the inputs are right\n"
    )
    assert [n for n in listing(out) if n.startswith("model-0000")] == names


TERM_IN_JOURNAL_SAVE = """
import os, signal
from belle_decrypt.tensors import journal
from belle_decrypt.cli import commands as cli
class Interrupted(journal.AtomicFile):
    def commit(self, *args, **kwargs):
        if self.final.name == journal.JOURNAL_NAME:
            os.kill(os.getpid(), signal.SIGTERM)
        super().commit(*args, **kwargs)
journal.AtomicFile = Interrupted
cli.main()
"""


def test_sigterm_during_a_journal_save_does_not_name_the_journal(tmp_path: Path) -> None:
    diff_dir, base_dir, expected = release(tmp_path, "vicuna")
    out = tmp_path / "out"
    args = small_shards(diff_dir, base_dir, out)
    stopped = subprocess.run(
        [sys.executable, "-c", TERM_IN_JOURNAL_SAVE, "recover", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert stopped.returncode == 143
    assert stopped.stderr == (
        "belle-decrypt: error: terminated; run the same command again to finish\n"
    )
    assert faults.temps(out) == []
    assert runner.run("recover", *args).exit_code == 0
    assert_recovered(out, expected)


def test_bin_reports_the_sizes_written_not_the_planned_ones(tmp_path: Path) -> None:
    from belle_decrypt.cli.console import human_size

    diff_dir, base_dir, _ = release(tmp_path, "vicuna")
    out = tmp_path / "out"
    result = runner.run("recover", *small_shards(diff_dir, base_dir, out), "--bin")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    sizes = {p.name: p.stat().st_size for p in out.glob("pytorch_model-*.bin")}
    assert len(sizes) == 4
    for line in lines[1:5]:
        status, name, size = line.split(maxsplit=2)
        assert (status, size) == ("written", human_size(sizes[name])), line
    assert f"4 shards, {human_size(sum(sizes.values()))} written in " in lines[-1]


def test_an_unsupported_safetensors_dtype_is_named_as_unsupported(tmp_path: Path) -> None:
    base = tiny.model(1)
    diff = ref.make_diff("vicuna", tiny.tuned(base, 2, vocab=100), base)
    name = "model.layers.0.self_attn.q_proj.weight"
    diff[name] = diff[name].to(torch.float8_e4m3fn)
    diff_dir = tiny.write_folder(tmp_path / "diff", diff, "safetensors", tiny.config(100))
    base_dir = tiny.write_folder(tmp_path / "base", base, "bin", tiny.config(100))
    out = tmp_path / "out"
    result = runner.run("recover", diff_dir, base_dir, out, "--recipe", "vicuna")
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"belle-decrypt: error: {diff_dir / 'model.safetensors'}: (DIFF_DIR) {name} is "
        "F8_E4M3, a dtype recover does not support (F64, F32, F16, BF16, integers and BOOL); "
        "use the release's float16 or float32 files\n"
    )
    assert listing(out) == []


def test_a_hub_cache_root_uses_the_snapshot_refs_main_names(tmp_path: Path) -> None:
    diff_dir, base_dir, expected = release(tmp_path / "made", "vicuna", "bin-sharded")
    cache = tmp_path / "hub"
    snapshot = tiny.as_hub_cache(diff_dir, cache, "lmsys/vicuna-7b-delta-v1.1")
    base_snapshot = tiny.as_hub_cache(base_dir, cache, "someone/llama-7b-hf")
    for snap in (snapshot, base_snapshot):
        (snap.parent.parent / "refs").mkdir()
        (snap.parent.parent / "refs" / "main").write_text(snap.name)
    root = snapshot.parent.parent
    out = tmp_path / "out"
    result = runner.run("recover", root, base_snapshot.parent.parent, out)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == (
        "recipe     vicuna (recognised from vicuna-7b-delta-v1.1)"
    )
    assert_recovered(out, expected)


def test_a_hub_cache_root_without_refs_main_says_to_pass_the_snapshot(tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path / "made", "vicuna")
    snapshot = tiny.as_hub_cache(diff_dir, tmp_path / "hub", "lmsys/vicuna-7b-delta-v1.1")
    root = snapshot.parent.parent
    out = tmp_path / "out"
    result = runner.run("recover", root, base_dir, out)
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"belle-decrypt: error: {root}: (DIFF_DIR) is a hub-cache folder without refs/main; "
        f"pass one of its snapshots: {snapshot}\n"
    )
    assert listing(out) == []


def test_the_lease_signal_handler_is_put_back_after_a_run(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGIO)
    diff_dir, base_dir, expected = release(tmp_path, "vicuna")
    out = tmp_path / "out"
    assert runner.run("recover", *small_shards(diff_dir, base_dir, out)).exit_code == 0
    assert signal.getsignal(signal.SIGIO) == before
    assert_recovered(out, expected)
