"""Benchmark `belle-decrypt recover` on 7B-shaped models against a plain copy of the same bytes.

Makes a LLaMA-7B-shaped base (float16, hidden 4096, intermediate 11008, vocabulary 32000, as
``pytorch_model-*.bin`` shards like an HF conversion) with 2 and 8 layers, a Vicuna-style
float16 diff (safetensors), an Alpaca-style float32 diff with a [PAD] row (.bin), an UltraLM
float32 diff whose tokenizer names a pad token (so a mean <PAD> row, .bin) and a LLaVA float16
diff with 3 more vocabulary rows and the mm_projector tensors that pass through (safetensors),
then times each run as a child process and samples its /proc/PID/status every 10 ms:

    python benchmarks/bench_recover.py                 # in /tmp, 2 and 8 layers, every diff
    python benchmarks/bench_recover.py --dir /var/tmp --layers 2 --diffs ultralm llava

RssAnon is the memory that must fit in RAM; VmRSS also counts the pages of memory-mapped
inputs, which are page cache the kernel can reclaim. "plain copy" reads the base and the diff
once and writes the diff's bytes (the size of the output) once: the floor for any tool.
Beside them, the official tools' logic (FastChat's apply_delta, Stanford's weight_diff.py
recover: whole state dicts in memory) runs on the 2-layer model, which fits.
Every folder is removed at the end. Inputs and outputs use --no-fsync / no fsync alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

HIDDEN, INTERMEDIATE, VOCAB = 4096, 11008, 32000
# LLaVA v0's projector: CLIP ViT-L/14 features (1024) to the hidden size.
PROJECTOR_IN = 1024
# (diff, dtype, extra vocabulary rows, format, the recipe it runs as). tulu is alpaca's
# arithmetic and per-tensor sums without the 7B figure, which random weights cannot meet.
DIFFS = {
    "vicuna": (torch.float16, 0, "safetensors", "vicuna"),
    "alpaca": (torch.float32, 1, "bin", "tulu"),
    "ultralm": (torch.float32, 1, "bin", "ultralm"),
    "llava": (torch.float16, 3, "safetensors", "llava"),
}
GiB = 1024**3
EXE = [sys.executable, "-m", "belle_decrypt", "recover"]

PLAIN_COPY = """
import sys
from pathlib import Path
inputs, diff, out = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
buf = bytearray(16 << 20)
for folder in inputs:
    for path in sorted(Path(folder).iterdir()):
        keep = folder == diff
        with open(path, "rb", buffering=0) as src, open(Path(out) / path.name, "wb") if keep \\
                else open("/dev/null", "wb") as dst:
            while n := src.readinto(buf):
                dst.write(memoryview(buf)[:n])
"""

FASTCHAT = """
import sys, torch
from safetensors.torch import load_file, save_file
from pathlib import Path
def load(folder):
    state = {}
    for p in sorted(Path(folder).iterdir()):
        if p.suffix == ".safetensors":
            state.update(load_file(str(p)))
        elif p.suffix == ".bin":
            state.update(torch.load(p, weights_only=True))
    return state
base, delta = load(sys.argv[1]), load(sys.argv[2])
for name, param in delta.items():
    param += base[name].to(torch.float16)
save_file(delta, sys.argv[3] + "/model.safetensors")
"""

STANFORD = (
    FASTCHAT.split("base, delta =")[0]
    + """
raw = {k: v.float() for k, v in load(sys.argv[1]).items()}
for key in ("model.embed_tokens.weight", "lm_head.weight"):
    rows = raw[key]
    raw[key] = torch.cat([rows, rows.mean(dim=0, keepdim=True)])
recovered = load(sys.argv[2])
for key in recovered:
    recovered[key].add_(raw[key])
print(float(sum(t.sum() for t in recovered.values())))
save_file(recovered, sys.argv[3] + "/model.safetensors")
"""
)


@dataclass(frozen=True)
class Run:
    seconds: float
    peak_anon: int
    peak_rss: int


COPY_WRITER = """
import os
class Writer:
    # dst.write; with behind, belle_decrypt's write-behind as well: each 8 MiB window handed
    # to write-back at once and dropped from the page cache three windows later.
    def __init__(self, dst, behind):
        self.dst, self.behind, self.written, self.windows = dst, behind, 0, 0
    def write(self, view):
        self.dst.write(view)
        self.written += len(view)
        window = 8 << 20
        while self.behind and (self.windows + 1) * window <= self.written:
            for n in (self.windows, self.windows - 3):
                if n >= 0:
                    os.posix_fadvise(self.dst.fileno(), n * window, window, os.POSIX_FADV_DONTNEED)
            self.windows += 1
"""
"""The copy scripts' writer. On these VMs a plain copy's time swings 2-4x from run to run
(every fresh page-cache page is faulted in from the host: 1.5 to 10 s of kernel time for
3.5 GiB), where the same copy with the write-behind belle_decrypt uses takes 1.4-1.8 s; the
benchmarks give both, the second as the strict floor."""


def interleaved(plan: dict[str, Callable[[], Run]], repeats: int) -> dict[str, list[Run]]:
    """Each of ``plan``'s runs ``repeats`` times, one of each in turn (so that a slow minute
    of the machine falls on all of them alike)."""
    runs: dict[str, list[Run]] = {label: [] for label in plan}
    for _ in range(repeats):
        for label, run in plan.items():
            runs[label].append(run())
    return runs


def median(runs: Sequence[Run]) -> Run:
    """The median time (the upper one of an even count) and the largest peaks."""
    ordered = sorted(run.seconds for run in runs)
    return Run(
        ordered[len(ordered) // 2],
        max(run.peak_anon for run in runs),
        max(run.peak_rss for run in runs),
    )


def spread(runs: Sequence[Run]) -> str:
    """The fastest and slowest of ``runs``, as text."""
    times = [run.seconds for run in runs]
    return f"{min(times):.1f}-{max(times):.1f} s"


def status_kib(pid: int) -> tuple[int, int]:
    """(RssAnon, VmRSS) of ``pid`` in bytes, or (0, 0) once it has gone."""
    anon = rss = 0
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("RssAnon:"):
                    anon = int(line.split()[1]) * 1024
                elif line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return anon, rss


def measure(argv: Sequence[str]) -> Run:
    """Run ``argv``, sampling its memory every 10 ms; fail loudly on a non-zero exit."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_anon = peak_rss = 0
    while proc.poll() is None:
        anon, rss = status_kib(proc.pid)
        peak_anon, peak_rss = max(peak_anon, anon), max(peak_rss, rss)
        time.sleep(0.01)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        assert proc.stderr is not None
        raise SystemExit(f"{argv}: exit {proc.returncode}: {proc.stderr.read().decode()}")
    return Run(seconds, peak_anon, peak_rss)


def names(layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """LLaMA's tensors in state-dict order, with 7B shapes."""
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for n in range(layers):
        layer = f"model.layers.{n}."
        out += [(layer + f"self_attn.{p}_proj.weight", (HIDDEN, HIDDEN)) for p in "qkvo"]
        out += [
            (layer + "mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN)),
            (layer + "mlp.down_proj.weight", (HIDDEN, INTERMEDIATE)),
            (layer + "mlp.up_proj.weight", (INTERMEDIATE, HIDDEN)),
            (layer + "input_layernorm.weight", (HIDDEN,)),
            (layer + "post_attention_layernorm.weight", (HIDDEN,)),
        ]
    return [*out, ("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]


def write_model(
    folder: Path,
    layers: int,
    dtype: torch.dtype,
    scale: float,
    norm: float,
    extra_rows: int,
    fmt: str,
    projector: bool = False,
) -> None:
    """A model folder of random weights in ~2 GB shards (``fmt``: bin or safetensors), with
    LLaVA's mm_projector tensors last when ``projector``."""
    folder.mkdir(parents=True)
    groups: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    gen = torch.Generator().manual_seed(layers)
    tensors = names(layers)
    if projector:
        tensors += [
            ("model.mm_projector.weight", (HIDDEN, PROJECTOR_IN)),
            ("model.mm_projector.bias", (HIDDEN,)),
        ]
    for name, shape in tensors:
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            shape = (shape[0] + extra_rows, shape[1])
        tensor = (torch.randn(shape, generator=gen) * scale).to(dtype)
        if name.endswith("norm.weight"):
            tensor += norm
        nbytes = tensor.numel() * tensor.element_size()
        if groups[-1] and size + nbytes > 2 * 10**9:
            groups.append({})
            size = 0
        groups[-1][name] = tensor
        size += nbytes
    for n, group in enumerate(groups, start=1):
        stem = f"{n:05d}-of-{len(groups):05d}"
        if fmt == "bin":
            torch.save(group, folder / f"pytorch_model-{stem}.bin")
        else:
            save_file(group, str(folder / f"model-{stem}.safetensors"), {"format": "pt"})
    groups.clear()


def size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


def line(label: str, run: Run, copy: Run | None = None) -> None:
    ratio = f"  {run.seconds / copy.seconds:4.2f}x the copy" if copy else ""
    print(
        f"{label:<50} {run.seconds:7.1f} s   RssAnon {run.peak_anon / GiB:5.2f} GiB   "
        f"VmRSS {run.peak_rss / GiB:5.2f} GiB{ratio}",
        flush=True,
    )


def bench(root: Path, layers_list: Sequence[int], diffs: Sequence[str]) -> None:
    started = time.monotonic()
    imported = measure([sys.executable, "-c", "import torch, safetensors.torch"])
    line("python -c 'import torch, safetensors'", imported)
    anon: dict[tuple[str, int], int] = {}
    for layers in layers_list:
        base = root / f"base-{layers}"
        write_model(base, layers, torch.float16, 0.02, 1.0, 0, "bin")
        for recipe in diffs:
            dtype, extra, fmt, as_recipe = DIFFS[recipe]
            diff = root / f"{recipe}-diff-{layers}"
            write_model(diff, layers, dtype, 0.001, 0.0, extra, fmt, recipe == "llava")
            if recipe == "ultralm":
                (diff / "special_tokens_map.json").write_text('{"pad_token": "<PAD>"}')
            gib = (size_of(base) + 2 * size_of(diff)) / GiB
            print(
                f"\n{recipe}, {layers} layers: base {size_of(base) / GiB:.2f} GiB, diff "
                f"{size_of(diff) / GiB:.2f} GiB, {gib:.1f} GiB read + written",
                flush=True,
            )
            out = root / "out"
            out.mkdir()
            measure([sys.executable, "-c", PLAIN_COPY, f"{base},{diff}", str(diff), str(out)])
            shutil.rmtree(out)
            out.mkdir()
            copy = measure(
                [sys.executable, "-c", PLAIN_COPY, f"{base},{diff}", str(diff), str(out)]
            )
            line("plain copy (read both, write the output)", copy)
            shutil.rmtree(out)
            for shard in ("2GB", "500MB"):
                argv = [*EXE, str(diff), str(base), str(out), "--recipe", as_recipe, "-q"]
                run = measure([*argv, "--no-fsync", "--max-shard-size", shard])
                line(f"recover --recipe {as_recipe} --max-shard-size {shard}", run, copy)
                anon[(f"{recipe} {shard}", layers)] = run.peak_anon
                shutil.rmtree(out)
            if layers == min(layers_list) and recipe in ("vicuna", "alpaca"):
                out.mkdir()
                script = FASTCHAT if recipe == "vicuna" else STANFORD
                who = "FastChat apply_delta" if recipe == "vicuna" else "Stanford recover"
                line(
                    f"{who} logic (whole state dicts)",
                    measure([sys.executable, "-c", script, str(base), str(diff), str(out)]),
                    copy,
                )
                shutil.rmtree(out)
            shutil.rmtree(diff)
        shutil.rmtree(base)
    if len(layers_list) > 1:
        low, high = min(layers_list), max(layers_list)
        print()
        for key in sorted({k for k, _ in anon}):
            a, b = anon[(key, low)], anon[(key, high)]
            print(
                f"peak RssAnon {key:<14} {low} layers {a / GiB:.2f} GiB, {high} layers "
                f"{b / GiB:.2f} GiB ({(b - a) / a:+.1%})"
            )
    print(f"\nbenchmark took {time.monotonic() - started:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="Where to make the models.")
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--diffs", nargs="+", choices=list(DIFFS), default=list(DIFFS))
    parser.add_argument("--smoke", action="store_true", help="Tiny shapes: check the script.")
    args = parser.parse_args()
    if args.smoke:
        global HIDDEN, INTERMEDIATE, VOCAB
        HIDDEN, INTERMEDIATE, VOCAB = 256, 688, 2000
    root = Path(tempfile.mkdtemp(prefix="bench-recover-", dir=args.dir))
    print(
        f"recover benchmark, 7B-shaped (hidden {HIDDEN}, vocabulary {VOCAB}), {os.cpu_count()} "
        f"CPUs, warm page cache, --no-fsync, torch {torch.__version__}",
        flush=True,
    )
    try:
        bench(root, args.layers, args.diffs)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
