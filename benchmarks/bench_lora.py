"""Benchmark `belle-decrypt recover` merging a LoRA adapter into a 7B-shaped base.

The base is LLaMA-7B-shaped (float16, hidden 4096, intermediate 11008, vocabulary 32000, as
``pytorch_model-*.bin`` shards) with 2 and 8 layers; the adapter is Chinese-Alpaca-shaped: r 64
on every linear layer (float16, ``adapter_model.bin``) and the whole embedding and head at the
extended 49954 rows. Each run is a child process whose /proc/PID/status is sampled every 10 ms:

    python benchmarks/bench_lora.py                 # in /tmp, 2 and 8 layers
    python benchmarks/bench_lora.py --dir /var/tmp --layers 2

The floor is measured in the same run: a plain copy (read the base and the adapter once, write
as many bytes as the output holds; no hash) plus the float32 products alone: for each of the
adapter's 7 x layers pairs, A and B widened to float32, ``B @ A`` and the scale, into float32
buffers reused from pair to pair (as the merge computes them: no fresh memory whose page
faults would pad the floor), with torch's default threads, timed inside its process after
the import and the adapter's load. The strict floor takes the same copy with the write-behind
belle_decrypt uses (on these VMs the plain copy's time swings 2-4x from run to run; this one
hardly moves). What the merge does beyond the floor (import torch, hash the adapter, check it
for NaN/Inf, widen and round every changed weight) is what the ratio shows. Each of the copy,
the copy with write-behind, the products and the merge runs --repeats times (3), one of each
in turn; the median is given with the fastest and slowest. Beside them, PEFT's
``merge_and_unload`` (load the whole model, resize its vocabulary, load the adapter, merge,
save) on the smallest model, which fits. Each line ends with the CPU seconds its process used
(user + system; the merge's median; not for the products, timed inside) and the 1-minute load
average when it finished: on a shared machine, figures taken under load are not quiet
figures, and the CPU time is the steadier of the two. Every folder is removed at the end;
recover runs with --no-fsync.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
from bench_recover import (
    COPY_WRITER,
    HIDDEN,
    INTERMEDIATE,
    VOCAB,
    GiB,
    Run,
    interleaved,
    measure,
    median,
    names,
    spread,
    write_model,
)

RANK, ALPHA, ROWS = 64, 128, 49954
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj", "up_proj")
PREFIX = "base_model.model."
EXE = [sys.executable, "-m", "belle_decrypt", "recover"]

COPY = (
    COPY_WRITER
    + """
import sys
from pathlib import Path
inputs, out, total = sys.argv[1].split(","), Path(sys.argv[2]), int(sys.argv[3])
buf = bytearray(16 << 20)
written = 0
with open(out / "copy.bin", "wb") as dst:
    writer = Writer(dst, sys.argv[4] == "behind")
    for folder in inputs:
        for path in sorted(Path(folder).iterdir()):
            with open(path, "rb", buffering=0) as src:
                while n := src.readinto(buf):
                    n = min(n, total - written)
                    writer.write(memoryview(buf)[:n])
                    written += n
    while written < total:
        n = min(len(buf), total - written)
        writer.write(memoryview(buf)[:n])
        written += n
"""
)

PRODUCTS = """
import sys, time, torch
state = torch.load(sys.argv[1] + "/adapter_model.bin", mmap=True, weights_only=True)
scale = float(sys.argv[3])
reused = {}
def buffer(slot, shape):
    size = shape[0] * shape[1]
    if slot not in reused or reused[slot].numel() < size:
        reused[slot] = torch.empty(size)
    return reused[slot][:size].view(shape)
started = time.monotonic()
for name in sorted(state):
    if name.endswith("lora_A.weight"):
        a, b = state[name], state[name.replace("lora_A", "lora_B")]
        a32, b32 = buffer("a", a.shape), buffer("b", b.shape)
        a32.copy_(a)
        b32.copy_(b)
        product = buffer("product", (b.shape[0], a.shape[1]))
        torch.matmul(b32, a32, out=product)
        product.mul_(scale)
open(sys.argv[2], "w").write(str(time.monotonic() - started))
"""

PEFT = """
import sys, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float16)
model.resize_token_embeddings(int(sys.argv[4]), mean_resizing=False)
model = PeftModel.from_pretrained(model, sys.argv[2]).merge_and_unload()
model.save_pretrained(sys.argv[3])
"""


def base_config(layers: int) -> dict[str, object]:
    """LLaMA-7B's config.json with ``layers`` layers."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": layers,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": VOCAB,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def write_adapter(folder: Path, layers: int) -> None:
    """A Chinese-Alpaca-shaped adapter: r 64 on every linear layer, embed and head whole."""
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(100 + layers)
    state: dict[str, torch.Tensor] = {}
    shapes = dict(names(layers))
    for n in range(layers):
        for module in LINEAR:
            part = "mlp" if module in ("gate_proj", "down_proj", "up_proj") else "self_attn"
            key = f"model.layers.{n}.{part}.{module}"
            rows, cols = shapes[key + ".weight"]
            a = torch.randn((RANK, cols), generator=gen) * 0.01
            b = torch.randn((rows, RANK), generator=gen) * 0.01
            state[f"{PREFIX}{key}.lora_A.weight"] = a.half()
            state[f"{PREFIX}{key}.lora_B.weight"] = b.half()
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        state[PREFIX + key] = (torch.randn((ROWS, HIDDEN), generator=gen) * 0.02).half()
    torch.save(state, folder / "adapter_model.bin")
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": RANK,
        "lora_alpha": ALPHA,
        "lora_dropout": 0.05,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "target_modules": list(LINEAR),
        "modules_to_save": ["embed_tokens", "lm_head"],
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))


def write_index(folder: Path) -> None:
    """The base's pytorch_model.bin.index.json, so that transformers finds its shards."""
    weight_map = {}
    for path in sorted(folder.glob("pytorch_model-*.bin")):
        for name in torch.load(path, mmap=True, weights_only=True):
            weight_map[name] = path.name
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))


def output_size(layers: int) -> int:
    """Bytes of the merged tensors (float16, the embedding and head at ROWS rows)."""
    total = 0
    for name, shape in names(layers):
        count = ROWS * HIDDEN if name in ("model.embed_tokens.weight", "lm_head.weight") else 1
        if count == 1:
            for dim in shape:
                count *= dim
        total += 2 * count
    return total


def timed(argv: Sequence[str]) -> tuple[Run, float]:
    """:func:`measure`'s run and the CPU seconds (user + system) the child used: less
    sensitive than the wall time to other jobs on a shared machine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = measure(argv)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return run, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def line(
    label: str, runs: list[Run], floor: list[Run] | None = None, cpu: float | None = None
) -> None:
    """Measured runs: the median time and the spread, peak memory, the ratio of the median to
    the floor, CPU time, the load average."""
    run = median(runs)
    ratio = f"  {run.seconds / floor[0].seconds:4.2f}x the floor" if floor else ""
    used = f"  cpu {cpu:5.1f} s" if cpu is not None else ""
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    print(
        f"{label:<58} {run.seconds:6.1f} s ({spread(runs):>11})  RssAnon "
        f"{run.peak_anon / GiB:5.2f} GiB  VmRSS {run.peak_rss / GiB:5.2f} GiB{ratio}{used}  "
        f"(load {load})",
        flush=True,
    )


def size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


def bench_layers(root: Path, layers: int, repeats: int, with_peft: bool) -> int:
    """The floor and the merge at ``layers`` layers (PEFT's merge too if ``with_peft``); the
    merge's peak RssAnon."""
    base, adapter, out = root / f"base-{layers}", root / f"adapter-{layers}", root / "out"
    write_model(base, layers, torch.float16, 0.02, 1.0, 0, "bin")
    (base / "config.json").write_text(json.dumps(base_config(layers)))
    write_index(base)
    write_adapter(adapter, layers)
    total = output_size(layers)
    print(
        f"\n{layers} layers: base {size_of(base) / GiB:.2f} GiB, adapter "
        f"{size_of(adapter) / GiB:.2f} GiB, output {total / GiB:.2f} GiB; median of "
        f"{repeats} (fastest-slowest)",
        flush=True,
    )
    copy_argv = [sys.executable, "-c", COPY, f"{base},{adapter}", str(out), str(total)]
    timing = root / "products-seconds"
    cpus: list[float] = []

    def copy(how: str) -> Run:
        out.mkdir()
        try:
            return measure([*copy_argv, how])
        finally:
            shutil.rmtree(out)

    def products() -> Run:
        run = measure(
            [sys.executable, "-c", PRODUCTS, str(adapter), str(timing), str(ALPHA / RANK)]
        )
        return Run(float(timing.read_text()), run.peak_anon, run.peak_rss)

    def merge() -> Run:
        try:
            run, cpu = timed([*EXE, str(adapter), str(base), str(out), "-q", "--no-fsync"])
        finally:
            shutil.rmtree(out, ignore_errors=True)
        cpus.append(cpu)
        return run

    copy("plain")  # warm the cache
    runs = interleaved(
        {
            "plain": partial(copy, "plain"),
            "behind": partial(copy, "behind"),
            "products": products,
            "merge": merge,
        },
        repeats,
    )
    line("plain copy (read base + adapter, write the output's bytes)", runs["plain"])
    line("the copy with belle_decrypt's write-behind", runs["behind"])
    line("float32 products alone (B.float() @ A.float() * scale)", runs["products"])
    products_time = median(runs["products"]).seconds
    floor = [Run(median(runs["plain"]).seconds + products_time, 0, 0)]
    strict = [Run(median(runs["behind"]).seconds + products_time, 0, 0)]
    print(f"{'floor: the copy + the products':<58} {floor[0].seconds:6.1f} s")
    print(
        f"{'strict floor: the copy with write-behind + the products':<58} "
        f"{strict[0].seconds:6.1f} s"
    )
    cpu = sorted(cpus)[len(cpus) // 2]
    line("recover ADAPTER BASE OUT (default 2GB shards)", runs["merge"], floor, cpu)
    line("  against the strict floor", runs["merge"], strict)
    if with_peft:
        out.mkdir()
        peft, cpu = timed(
            [sys.executable, "-c", PEFT, str(base), str(adapter), str(out), str(ROWS)]
        )
        line("PEFT 0.21 merge_and_unload (whole model)", [peft], floor, cpu)
        shutil.rmtree(out)
    shutil.rmtree(adapter)
    shutil.rmtree(base)
    return median(runs["merge"]).peak_anon


def bench(root: Path, layers_list: Sequence[int], repeats: int) -> None:
    started = time.monotonic()
    imported, cpu = timed([sys.executable, "-c", "import torch"])
    line("python -c 'import torch'", [imported], None, cpu)
    anon: dict[int, int] = {}
    for layers in layers_list:
        anon[layers] = bench_layers(root, layers, repeats, layers == min(layers_list))
    if len(anon) > 1:
        low, high = min(anon), max(anon)
        a, b = anon[low], anon[high]
        print(
            f"\npeak RssAnon recover  {low} layers {a / GiB:.2f} GiB, {high} layers "
            f"{b / GiB:.2f} GiB ({(b - a) / a:+.1%})"
        )
    print(f"\nbenchmark took {time.monotonic() - started:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 8])
    parser.add_argument(
        "--repeats", type=int, default=3, help="Runs of each measurement, taken in turn."
    )
    args = parser.parse_args()
    print(
        f"LoRA merge benchmark, 7B-shaped (hidden {HIDDEN}, vocabulary {VOCAB} -> {ROWS}, r "
        f"{RANK} on every linear layer), {torch.get_num_threads()} threads, --no-fsync, "
        f"torch {torch.__version__}",
        flush=True,
    )
    root = Path(tempfile.mkdtemp(prefix="bench-lora-", dir=args.dir))
    try:
        bench(root, args.layers, args.repeats)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
