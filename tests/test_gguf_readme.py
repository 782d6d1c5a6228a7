"""The READMEs' GGUF table, each row run as written on tiny stand-ins in a scratch folder,
its file loaded in llama.cpp and compared with transformers on the model it holds."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

from belle_decrypt.tensors.journal import JOURNAL_NAME
from tests import reference_recover as ref
from tests import tinyllama as tiny
from tests.conftest import listing
from tests.ggufcheck import (
    PIECES,
    ROWS,
    TOLERANCE,
    hf_folder,
    llama_logits,
    tokenizer_files,
    transformers_logits,
)

ROOT = Path(__file__).parents[1]
ROW = re.compile(r"^\| [^|]+ \| `(belle-decrypt [^`]+)` \| `([^`]+\.gguf)` \|$", re.MULTILINE)


def readme_rows(readme: Path) -> list[tuple[str, str]]:
    """The (command, file) rows of the README's GGUF table."""
    return ROW.findall(readme.read_text())


def test_both_readmes_show_the_same_gguf_commands() -> None:
    rows = readme_rows(ROOT / "README_en.md")
    assert len(rows) == 3
    assert readme_rows(ROOT / "README.md") == rows


def test_every_readme_gguf_row_runs_as_written(tmp_path: Path) -> None:
    """BELLE-7B-2M stands for what `decrypt` made (a Hugging Face folder), llama-7b-hf for the
    converted base and the Vicuna diff for one made against it; each file runs in llama.cpp
    like the model it holds."""
    belle, _ = hf_folder(tmp_path / "BELLE-7B-2M", seed=3)
    base = tiny.model(1, vocab=ROWS)
    tiny.write_folder(tmp_path / "llama-7b-hf", base, "bin", tiny.config(ROWS), tokenizer_files())
    tuned = tiny.tuned({k: v.float() for k, v in base.items()}, 2, vocab=ROWS)
    diff = ref.make_diff("vicuna", tuned, base)
    files = tokenizer_files()
    tiny.write_folder(
        tmp_path / "vicuna-7b-delta-v1.1", diff, "safetensors", tiny.config(ROWS), files
    )
    vicuna = tiny.write_folder(
        tmp_path / "vicuna-reference",
        ref.recover("vicuna", diff, base),
        "safetensors",
        tiny.config(ROWS),
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for command, file in readme_rows(ROOT / "README_en.md"):
        argv = [sys.executable, "-m", "belle_decrypt", *shlex.split(command)[1:]]
        proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, (command, proc.stderr)
        listed = [name for name in listing((tmp_path / file).parent) if name != JOURNAL_NAME]
        assert listed == [Path(file).name], command
        model = belle if "BELLE" in command else vicuna
        ids = [1, 5, 300, 42, PIECES, ROWS - 1]
        got, want = llama_logits(tmp_path / file, ids), transformers_logits(model, ids)
        tolerance = TOLERANCE["q8_0" if "q8_0" in command else "f16"]
        assert float(np.abs(got - want).max()) <= tolerance, command
