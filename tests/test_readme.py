"""The `belle-decrypt` command lines of both READMEs, run as written against a small release
built in a temporary folder, with what the READMEs say they do: the docs cannot drift.

Placeholders (`/path/to_encrypted`, `llama/7B/consolidated.00.pth`, `$LLAMA_7B`, ...) all name
files of that release; the key is a stand-in (the one file of a tiny Meta download, which
`convert` and `recover` read as Meta's folder), so `check-key` exits 1 as the READMEs say for
any file that is not Meta's LLaMA-7B, and the CI script stops there (`set -e`). The `recover`
releases are tiny stand-ins too, so Alpaca's published sum check fails (exit 1, nothing
written) as the READMEs say it does for a base that is not the publisher's. Install, test and
benchmark lines are left out.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import reference, reference_meta
from tests.conftest import random_bytes
from tests.release import Release, make_release
from tests.tinyllama import load_folder, readme_releases, same_bits
from tests.tinylora import README_MERGED, readme_adapters

ROOT = Path(__file__).parents[1]
# The releases whose published sum the tiny stand-ins cannot meet (exit 1, nothing written).
PUBLISHED_SUMS = ("alpaca-7b-wdiff", "zhixi-13b-diff", "BiLLa-7B-SFT")
# Absolute placeholders of the READMEs, and where they point in the release's folder.
PLACES = {
    "/path/to_encrypted": "enc",
    "/path/to_original_llama_7B/consolidated.00.pth": "llama/7B/consolidated.00.pth",
    "/path/to_finetuned_model": "finetuned",
}


# The output folders of the READMEs' `recover` commands that succeed.
RECOVERED = (
    "vicuna-7b",
    "vicuna-13b-v0",
    "stable-vicuna-13b",
    "ziya-13b",
    "tulu-7b-hf",
    "wizardlm-7b",
    "ultralm-13b",
    "yulan-chat-13b",
    "llava-7b-v0",
    "llava-lightning-7b",
    "wombat-7b",
    "chimera-inst-chat-7b",
    "bayling-7b",
    "billa-7b-llm",
)


def bash_blocks(readme: Path) -> list[str]:
    """The ```bash blocks of ``readme``, in order."""
    return re.findall(r"^```bash\n(.*?)^```", readme.read_text(), flags=re.DOTALL | re.MULTILINE)


def commands(readme: Path) -> list[str]:
    """Each block that is a script as one command, else each line that runs belle-decrypt;
    comments removed, install / test / benchmark lines left out."""
    found: list[str] = []
    for block in bash_blocks(readme):
        if block.startswith("#!"):
            found.append(block)
            continue
        for line in block.splitlines():
            line = re.sub(r"\s+# .*$", "", line).strip()
            if "belle-decrypt" in line and not line.startswith(("pip ", "python ")):
                found.append(line)
    return found


def expected_exit(command: str) -> int:
    """What the READMEs say: check-key exits 1 for a file that is not LLaMA-7B (0 for a base
    folder matching its list), and a CI script under `set -e` stops with that code; every
    other command succeeds."""
    if "check-key" in command:
        return 0 if "--base-manifest" in command else 1
    return 1 if any(name in command for name in PUBLISHED_SUMS) else 0


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Release]:
    """A folder where every path the READMEs use exists."""
    tokenizer = reference_meta.tokenizer_model(tmp_path / "spm")
    meta = reference_meta.write_download(tmp_path / "llama", reference_meta.LLAMA1, 1, tokenizer)
    key = meta / "consolidated.00.pth"  # a tiny Meta download stands in for LLaMA-7B
    release = make_release(tmp_path, key.read_bytes())
    shutil.copytree(release.enc_dir, tmp_path / "BELLE-7B-2M-enc")
    shutil.copy(release.card, tmp_path / "md5.txt")
    shutil.copy(release.card, tmp_path / "model-card-md5.txt")
    whole = reference_meta.whole_model(reference_meta.LLAMA1)
    llama = reference_meta.reference_hf(whole, reference_meta.LLAMA1)
    readme_releases(tmp_path, llama)
    readme_adapters(tmp_path, llama)  # made for llama-7b-hf, the conversion of llama/7B/
    (tmp_path / "my-finetune").mkdir()
    for name, data in release.plain.items():
        (tmp_path / "my-finetune" / name).write_bytes(data)
    per_file_release(tmp_path, release.plain)
    return tmp_path, release


def per_file_release(folder: Path, plain: dict[str, bytes]) -> None:
    """OpenAssistant's layout: a base folder, the payload folder and the card's two lists."""
    base, payload = folder / "llama-30b-hf", folder / "oasst-sft-7-llama-30b-xor"
    base.mkdir()
    payload.mkdir()
    bases = {name: random_bytes(len(data) + 7, seed=len(name)) for name, data in plain.items()}
    for name, data in plain.items():
        (base / name).write_bytes(bases[name])
        (payload / name).write_bytes(reference.perfile_encode(data, bases[name]))
    (payload / "README.md").write_text("# card\n")
    for listed, files in (("oasst-base-md5.txt", bases), ("oasst-md5.txt", plain)):
        lines = [f"{hashlib.md5(data).hexdigest()}  ./{name}\n" for name, data in files.items()]
        (folder / listed).write_text("".join(lines))


def run_in(folder: Path, command: str) -> subprocess.CompletedProcess[str]:
    for placeholder, place in PLACES.items():
        command = command.replace(placeholder, str(folder / place))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "LLAMA_7B": str(folder / "llama" / "7B"),
    }
    return subprocess.run(
        ["bash", "-c", command],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_both_readmes_show_the_same_commands() -> None:
    assert commands(ROOT / "README.md") == commands(ROOT / "README_en.md")


def test_every_readme_command_does_what_the_readme_says(world: tuple[Path, Release]) -> None:
    folder, release = world
    lines = commands(ROOT / "README.md")
    assert len(lines) >= 9
    for command in lines:
        proc = run_in(folder, command)
        assert proc.returncode == expected_exit(command), (command, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr, (command, proc.stderr)
    for out in ("finetuned", "BELLE-7B-2M", "oasst-sft-7-llama-30b"):
        assert {p.name: p.read_bytes() for p in (folder / out).iterdir()} == release.plain, out
    assert (folder / "downloads.json").read_text().count('"status": "OK"') == len(release.plain)
    assert not (folder / "out").exists()  # the CI script stopped at check-key
    for recovered in RECOVERED:
        assert (folder / recovered / "model.safetensors").is_file(), recovered
    for merged in README_MERGED:
        assert (folder / merged / "model.safetensors").is_file(), merged
    for failed in ("alpaca-7b", "zhixi-13b", "zhixi-13b-fp16", "billa-7b-sft"):
        assert not [p for p in (folder / failed).iterdir() if not p.name.startswith(".")], failed
    converted = load_folder(folder / "llama-7b-converted")
    base = load_folder(folder / "llama-7b-hf")
    assert list(converted) == list(base)
    assert all(same_bits(converted[name], t) for name, t in base.items())
    from_meta, from_hf = load_folder(folder / "vicuna-7b-meta"), load_folder(folder / "vicuna-7b")
    assert list(from_meta) == list(from_hf)
    assert all(same_bits(from_meta[name], t) for name, t in from_hf.items())
    published = sorted(p.name for p in (folder / "my-finetune-enc").iterdir())
    assert published == sorted([*release.enc_names.values(), "md5sums.txt"])
