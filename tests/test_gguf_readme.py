"""The READMEs' GGUF table, each row's commands run as written, in order, on tiny stand-ins in a
scratch folder (Meta's `llama/7B/`, its Hugging Face conversion `llama-7b-hf/`, BELLE's `.enc`
files keyed by `consolidated.00.pth`, a Vicuna delta, the two Chinese-Alpaca-Plus adapters);
the file each row names is the only one in its folder, llama.cpp runs it like transformers runs
the model it holds, and its token ids are AutoTokenizer's on that model, Chinese included."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

from belle_decrypt.tensors.journal import JOURNAL_NAME
from tests import reference, runner
from tests import reference_meta as meta
from tests import reference_recover as ref
from tests import tinyllama as tiny
from tests.conftest import listing
from tests.ggufcheck import (
    assert_tokenizes_like_transformers,
    llama_logits,
    plus_pair,
    tokenizer_files,
    transformers_logits,
)

ROOT = Path(__file__).parents[1]
ROW = re.compile(r"^\| [^|]+ \| (`belle-decrypt .+`) \| `([^`]+\.gguf)` \|$", re.MULTILINE)
# Largest |llama.cpp - transformers| logit as a fraction of the largest: float16 matrices are
# the model's own float16 values (llama.cpp rounds activations to float16); Q8_0 rounds each
# weight to 1/254 of its block.
RELATIVE_TOLERANCE = {"f16": 5e-3, "q8_0": 5e-2}


def readme_rows(readme: Path) -> list[tuple[list[str], str]]:
    """The (commands, file) rows of the README's GGUF table, the commands in order."""
    return [
        (re.findall(r"`(belle-decrypt [^`]+)`", cell), file)
        for cell, file in ROW.findall(readme.read_text())
    ]


def test_both_readmes_show_the_same_gguf_commands() -> None:
    rows = readme_rows(ROOT / "README_en.md")
    assert len(rows) == 5
    assert readme_rows(ROOT / "README.md") == rows


def save(folder: Path, state: tiny.StateDict, config: dict[str, object], **files: bytes) -> Path:
    return tiny.write_folder(folder, state, "safetensors", config, files)


def stand_ins(root: Path) -> dict[str, Path]:
    """Every input the rows name, in ``root``; for each release, the Hugging Face folder of
    the model its GGUF file must hold (made by the references, not by the tool)."""
    spm = meta.tokenizer_model(root / "spm")
    llama = meta.write_download(root / "llama", meta.LLAMA1, 1, spm)
    converted = root / "llama-7b-hf"
    assert runner.run("convert", llama, converted, "-q").exit_code == 0
    config = json.loads((converted / "config.json").read_text())
    base = tiny.load_folder(converted)
    files = tokenizer_files(False, spm.read_bytes())
    belle = save(root / "belle-model", tiny.tuned(base, 3), config, **files)
    encrypted = root / "BELLE-7B-2M-enc"
    encrypted.mkdir()
    key = (llama / "consolidated.00.pth").read_bytes()
    for path in belle.iterdir():
        digest, blob = reference.encrypt(path.read_bytes(), key)
        (encrypted / f"{path.name}.{digest}.enc").write_bytes(blob)
    tuned = tiny.tuned({k: v.float() for k, v in base.items()}, 2, vocab=meta.VOCAB)
    diff = ref.make_diff("vicuna", tuned, base)
    save(root / "vicuna-7b-delta-v1.1", diff, config, **files)
    vicuna = save(root / "vicuna-model", ref.recover("vicuna", diff, base), config, **files)
    _, alpaca, merged = plus_pair(root, base)
    chinese = {p.name: p.read_bytes() for p in alpaca.iterdir() if p.name.startswith("tok")}
    chinese["added_tokens.json"] = (alpaca / "added_tokens.json").read_bytes()
    config = {**config, "vocab_size": merged["model.embed_tokens.weight"].shape[0]}
    chinese_model = save(root / "chinese-model", merged, config, **chinese)
    return {
        "BELLE": belle,
        "llama/7B/ llama": converted,
        "vicuna": vicuna,
        "chinese": chinese_model,
    }


def test_every_readme_gguf_row_runs_as_written(tmp_path: Path) -> None:
    models = stand_ins(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for commands, file in readme_rows(ROOT / "README_en.md"):
        for command in commands:
            argv = [sys.executable, "-m", "belle_decrypt", *shlex.split(command)[1:]]
            proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
            assert proc.returncode == 0, (command, proc.stderr)
        gguf = tmp_path / file
        assert [n for n in listing(gguf.parent) if n != JOURNAL_NAME] == [gguf.name], commands
        (model,) = [folder for key, folder in models.items() if key in commands[-1]]
        rows = tiny.load_folder(model)["model.embed_tokens.weight"].shape[0]
        ids = [1, 17, 250, 3, 99, 42, rows - 1]
        got, want = llama_logits(gguf, ids), transformers_logits(model, ids)
        scale = float(np.abs(want).max())
        tolerance = RELATIVE_TOLERANCE["q8_0" if "q8_0" in file else "f16"]
        assert scale > 0.1, commands
        assert float(np.abs(got - want).max()) <= tolerance * scale, commands
        assert_tokenizes_like_transformers(gguf, model)
