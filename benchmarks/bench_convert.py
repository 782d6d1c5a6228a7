"""Benchmark `belle-decrypt convert` on 7B-shaped Meta files against a plain copy and md5.

Makes a LLaMA-7B-shaped model in Meta's layout (float16, dim 4096, 32 heads, intermediate
11008, vocabulary 32000; a few layers) written as 1, 2, 4 and 8 ``consolidated.NN.pth``
files by Meta's slicing rules, with params.json, checklist.chk and a tokenizer.model, then
times each run as a child process, sampling /proc/PID/status every 10 ms:

    python benchmarks/bench_convert.py                  # in /tmp, 8 layers, 1 2 4 8 files
    python benchmarks/bench_convert.py --dir /var/tmp --layers 2 --shards 1 8

"plain copy" reads every input file once and writes the same number of bytes, and is also
run with the write-behind belle_decrypt uses (the strict floor: on these VMs the plain one
swings 2-4x between runs); "md5" is ``md5sum`` of the inputs alone. Each is run --repeats
times (3), one of each in turn, and the median is given with the fastest and slowest.
`convert --no-verify` should stay within 1.5x the copy, and
`convert` (md5 of every file against checklist.chk, in a thread beside it) within 1.2x the
md5; its peak RssAnon should not grow with the number of files. Beside them, transformers'
conversion logic (every file loaded whole, joined, permuted, saved) runs on the 1- and 8-file
models (--no-transformers leaves it out: at 8 layers it holds about 8 GiB). Each line gives
the load average (/proc/loadavg, 1 minute) when it ended: the machine's other work shows
there. Every folder is removed at the end; --no-fsync.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]
from bench_recover import (  # noqa: E402
    COPY_WRITER,
    GiB,
    Run,
    interleaved,
    measure,
    median,
    spread,
)

from tests.reference_meta import tokenizer_model  # noqa: E402

DIM, HEADS, HIDDEN, VOCAB = 4096, 32, 11008, 32000
EXE = [sys.executable, "-m", "belle_decrypt", "convert"]
ROWS = ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3")

PLAIN_COPY = (
    COPY_WRITER
    + """
import sys
from pathlib import Path
folder, out, behind = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "behind"
buf = bytearray(16 << 20)
with open(out / "copy", "wb") as dst:
    writer = Writer(dst, behind)
    for path in sorted(folder.iterdir()):
        with open(path, "rb", buffering=0) as src:
            while n := src.readinto(buf):
                writer.write(memoryview(buf)[:n])
"""
)

# transformers' convert_llama_weights_to_hf.py, its logic: every file loaded whole, each
# tensor joined and permuted, the state dict saved (it also writes and reloads a temporary
# per-layer copy, left out here: this is the least it does).
TRANSFORMERS = """
import sys, json, torch
from pathlib import Path
from safetensors.torch import save_file
folder, out = Path(sys.argv[1]), Path(sys.argv[2])
params = json.loads((folder / "params.json").read_text())
files = [torch.load(p, map_location="cpu") for p in sorted(folder.glob("consolidated.*.pth"))]
heads, dim = params["n_heads"], params["dim"]
def permute(w, n):
    return w.view(n, w.shape[0] // n // 2, 2, dim).transpose(1, 2).reshape(w.shape[0], dim)
state = {}
for name in files[0]:
    if name == "rope.freqs":
        continue
    parts = [f[name] for f in files]
    if "norm" in name:
        whole = parts[0]
    elif name == "tok_embeddings.weight" or "wo" in name or "w2" in name:
        whole = torch.cat(parts, dim=1)
    else:
        whole = torch.cat(parts, dim=0)
    if "wq" in name or "wk" in name:
        whole = permute(whole, heads)
    state[name] = whole.clone()
save_file(state, str(out / "model.safetensors"))
"""


def line(label: str, runs: list[Run], against: tuple[str, list[Run]] | None = None) -> None:
    """Measured runs: the median time and the spread, the peak memory, the ratio of the
    median to a reference's median, the load."""
    run = median(runs)
    ratio = ""
    if against is not None:
        ratio = f"  {run.seconds / median(against[1]).seconds:4.2f}x the {against[0]}"
    load = Path("/proc/loadavg").read_text().split()[0]
    print(
        f"{label:<50} {run.seconds:5.1f} s ({spread(runs):>11})  RssAnon "
        f"{run.peak_anon / GiB:4.2f} GiB  VmRSS {run.peak_rss / GiB:4.2f} GiB{ratio:<22} "
        f"load {load}",
        flush=True,
    )


def measured_into(out: Path, argv: list[str], made: bool = False) -> Callable[[], Run]:
    """A run of ``argv`` that writes into ``out`` (made first if ``made``), removed after."""

    def run() -> Run:
        if made:
            out.mkdir()
        try:
            return measure(argv)
        finally:
            shutil.rmtree(out, ignore_errors=True)

    return run


def whole_model(layers: int) -> dict[str, torch.Tensor]:
    """Random float16 weights with Meta's names and 7B's shapes."""
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * 0.02).to(torch.float16)

    state = {"tok_embeddings.weight": rand(VOCAB, DIM)}
    for n in range(layers):
        p = f"layers.{n}."
        for w in ("wq", "wk", "wv", "wo"):
            state[p + f"attention.{w}.weight"] = rand(DIM, DIM)
        state[p + "feed_forward.w1.weight"] = rand(HIDDEN, DIM)
        state[p + "feed_forward.w2.weight"] = rand(DIM, HIDDEN)
        state[p + "feed_forward.w3.weight"] = rand(HIDDEN, DIM)
        state[p + "attention_norm.weight"] = torch.ones(DIM, dtype=torch.float16)
        state[p + "ffn_norm.weight"] = torch.ones(DIM, dtype=torch.float16)
    state["norm.weight"] = torch.ones(DIM, dtype=torch.float16)
    state["output.weight"] = rand(VOCAB, DIM)
    return state


def write_meta(
    root: Path, state: dict[str, torch.Tensor], layers: int, shards: int, tokenizer: Path
) -> Path:
    """Meta's files of ``state`` in ``shards`` parts, with checklist.chk and a tokenizer."""
    folder = root / "7B"
    folder.mkdir(parents=True)
    shutil.copy(tokenizer, root / "tokenizer.model")
    for number in range(shards):
        part = {}
        for name, tensor in state.items():
            short = name.removesuffix(".weight").split(".", 2)[-1]
            if short in ROWS or name == "output.weight":
                part[name] = tensor.chunk(shards, dim=0)[number].clone()
            elif short in ("attention.wo", "feed_forward.w2") or name == "tok_embeddings.weight":
                part[name] = tensor.chunk(shards, dim=1)[number].clone()
            else:
                part[name] = tensor
        torch.save(part, folder / f"consolidated.{number:02d}.pth")
    params = {"dim": DIM, "multiple_of": 256, "n_heads": HEADS, "n_layers": layers}
    (folder / "params.json").write_text(json.dumps({**params, "norm_eps": 1e-6, "vocab_size": -1}))
    md5_list(folder, folder / "checklist.chk")
    return folder


def md5_list(folder: Path, target: Path) -> Path:
    """An md5sum-style list of ``folder``'s files (Meta's checklist.chk, a model card's list)."""
    lines = []
    for path in sorted(folder.iterdir()):
        digest = hashlib.md5()
        with open(path, "rb") as handle:
            while block := handle.read(16 << 20):
                digest.update(block)
        lines.append(f"{digest.hexdigest()}  {path.name}\n")
    target.write_text("".join(lines))
    return target


def bench(
    root: Path, layers: int, shard_counts: list[int], transformers: bool, repeats: int
) -> None:
    tokenizer = tokenizer_model(root / "spm")
    state = whole_model(layers)
    size = sum(t.numel() * 2 for t in state.values())
    print(f"model: {layers} layers, {size / GiB:.2f} GiB of weights\n", flush=True)
    peaks: dict[str, list[int]] = {"--no-verify": [], "checked": []}
    for shards in shard_counts:
        download = root / f"meta-{shards}"
        folder = write_meta(download, state, layers, shards, tokenizer)
        inputs = sorted(str(p) for p in folder.glob("consolidated.*.pth"))
        out = root / "out"

        in_out = partial(measured_into, out)
        copy = [sys.executable, "-c", PLAIN_COPY, str(folder), str(out)]
        convert = [*EXE, str(folder), str(out), "-q", "--no-fsync"]
        in_out([*copy, "plain"], made=True)()  # warm the cache
        runs = interleaved(
            {
                "plain": in_out([*copy, "plain"], made=True),
                "behind": in_out([*copy, "behind"], made=True),
                "md5": in_out(["md5sum", *inputs]),
                "--no-verify": in_out([*convert, "--no-verify"]),
                "checked": in_out(convert),
            },
            repeats,
        )
        print(f"{shards} file{'s' * (shards != 1)}, median of {repeats} (fastest-slowest):")
        line("  plain copy (read the files, write as many bytes)", runs["plain"])
        line("  the copy with belle_decrypt's write-behind", runs["behind"])
        line("  md5sum of the files", runs["md5"])
        line("  convert --no-verify", runs["--no-verify"], ("copy", runs["plain"]))
        line("    against the copy with write-behind", runs["--no-verify"], ("wb", runs["behind"]))
        line("  convert (checklist.chk md5 beside it)", runs["checked"], ("md5", runs["md5"]))
        peaks["--no-verify"].append(median(runs["--no-verify"]).peak_anon)
        peaks["checked"].append(median(runs["checked"]).peak_anon)
        if shards == shard_counts[0]:
            bin_runs = [in_out([*convert, "--no-verify", "--bin"])()]
            line("  convert --no-verify --bin (2GB shards)", bin_runs, ("copy", runs["plain"]))
        if transformers and shards in (1, 8):
            tf = [in_out([sys.executable, "-c", TRANSFORMERS, str(folder), str(out)], made=True)()]
            line("  transformers' conversion logic (whole files in memory)", tf)
        shutil.rmtree(download)
        print(flush=True)
    for label, anon in peaks.items():
        low, high = min(anon), max(anon)
        print(
            f"convert ({label}) peak RssAnon over {', '.join(map(str, shard_counts))} files: "
            f"{low / GiB:.2f} to {high / GiB:.2f} GiB ({(high - low) / low:+.1%})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="Where to make the files.")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument(
        "--no-transformers", action="store_true", help="Leave out transformers' conversion."
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="Runs of each measurement, taken in turn."
    )
    args = parser.parse_args()
    # The convert runs are of this tree's belle_decrypt, whatever is installed.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")])
    )
    root = Path(tempfile.mkdtemp(prefix="bench-convert-", dir=args.dir))
    started = time.monotonic()
    print(
        f"convert benchmark, 7B-shaped (dim {DIM}, vocabulary {VOCAB}), {os.cpu_count()} CPUs, "
        f"warm page cache, --no-fsync, torch {torch.__version__}",
        flush=True,
    )
    try:
        bench(root, args.layers, args.shards, not args.no_transformers, args.repeats)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"benchmark took {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
