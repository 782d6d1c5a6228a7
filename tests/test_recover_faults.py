"""`recover` under hostile conditions: a file-size limit mid-shard in each sink, inputs that
shrink while mapped, journals and pending files left by other runs, folders seen under two
paths. Each runs the real command line in a subprocess where a hang or a signal could happen."""

from __future__ import annotations

import resource
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import faults
from tests.conftest import listing
from tests.test_recover import release, small_shards


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
