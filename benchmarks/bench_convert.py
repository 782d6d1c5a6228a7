"""Benchmark `belle-decrypt convert` on 7B-shaped Meta files against a plain copy and md5.

Makes a LLaMA-7B-shaped model in Meta's layout (float16, dim 4096, 32 heads, intermediate
11008, vocabulary 32000; a few layers) written as 1, 2, 4 and 8 ``consolidated.NN.pth``
files by Meta's slicing rules, with params.json, checklist.chk and a tokenizer.model, then
times each run as a child process, sampling /proc/PID/status every 10 ms:

    python benchmarks/bench_convert.py                  # in /tmp, 8 layers, 1 2 4 8 files
    python benchmarks/bench_convert.py --dir /var/tmp --layers 2 --shards 1 8

"plain copy" reads every input file once and writes the same number of bytes; "md5" is
``md5sum`` of the inputs alone. `convert --no-verify` should stay within 1.5x the copy, and
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
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]
from bench_recover import GiB, Run, measure  # noqa: E402

from tests.reference_meta import tokenizer_model  # noqa: E402

DIM, HEADS, HIDDEN, VOCAB = 4096, 32, 11008, 32000
EXE = [sys.executable, "-m", "belle_decrypt", "convert"]
ROWS = ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3")

PLAIN_COPY = """
import sys
from pathlib import Path
folder, out = Path(sys.argv[1]), Path(sys.argv[2])
buf = bytearray(16 << 20)
with open(out / "copy", "wb") as dst:
    for path in sorted(folder.iterdir()):
        with open(path, "rb", buffering=0) as src:
            while n := src.readinto(buf):
                dst.write(memoryview(buf)[:n])
"""

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


def line(label: str, run: Run, against: tuple[str, Run] | None = None) -> None:
    """One measured run: time, peak memory, the ratio to a reference run, the load."""
    ratio = f"  {run.seconds / against[1].seconds:4.2f}x the {against[0]}" if against else ""
    load = Path("/proc/loadavg").read_text().split()[0]
    print(
        f"{label:<56} {run.seconds:6.1f} s   RssAnon {run.peak_anon / GiB:5.2f} GiB   "
        f"VmRSS {run.peak_rss / GiB:5.2f} GiB{ratio:<17}  load {load}",
        flush=True,
    )


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


def bench(root: Path, layers: int, shard_counts: list[int], transformers: bool) -> None:
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
        out.mkdir()
        measure([sys.executable, "-c", PLAIN_COPY, str(folder), str(out)])  # warm the cache
        copy = measure([sys.executable, "-c", PLAIN_COPY, str(folder), str(out)])
        shutil.rmtree(out)
        md5 = measure(["md5sum", *inputs])
        print(f"{shards} file{'s' * (shards != 1)}:")
        line("  plain copy (read the files, write as many bytes)", copy)
        line("  md5sum of the files", md5)
        for extra, label, against in (
            (["--no-verify"], "  convert --no-verify", ("copy", copy)),
            ([], "  convert (checklist.chk md5 beside it)", ("md5", md5)),
        ):
            run = measure([*EXE, str(folder), str(out), "-q", "--no-fsync", *extra])
            line(label, run, against)
            peaks["--no-verify" if extra else "checked"].append(run.peak_anon)
            shutil.rmtree(out)
        if shards == shard_counts[0]:
            run = measure([*EXE, str(folder), str(out), "-q", "--no-fsync", "--no-verify", "--bin"])
            line("  convert --no-verify --bin (2GB shards)", run, ("copy", copy))
            shutil.rmtree(out)
        if transformers and shards in (1, 8):
            out.mkdir()
            run = measure([sys.executable, "-c", TRANSFORMERS, str(folder), str(out)])
            line("  transformers' conversion logic (whole files in memory)", run, ("copy", copy))
            shutil.rmtree(out)
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
        bench(root, args.layers, args.shards, not args.no_transformers)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"benchmark took {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
