"""Benchmark `recover --to gguf` and `convert --to gguf` on 7B-shaped models: memory and time.

Makes the same LLaMA-7B-shaped base and Vicuna-style diff as bench_recover.py (float16, hidden
4096, intermediate 11008, vocabulary 32000) with 2 and 8 layers, plus a config.json and a real
sentencepiece tokenizer.model (a small one: the other rows get placeholder tokens, so the
token list has the 7B's 32000 entries). Each run is a child process whose /proc/PID/status is
sampled every 10 ms:

    python benchmarks/bench_gguf.py                 # in /tmp, 2 and 8 layers
    python benchmarks/bench_gguf.py --dir /var/tmp --layers 2

Then Meta's folder of the same shapes (bench_convert.py's, one consolidated.00.pth): `convert
LLAMA_DIR --to gguf` in one pass against the two runs it replaces (to the Hugging Face layout,
then that folder to GGUF). Beside them, on the smallest model, gguf-py's own whole-model path
(``add_tensor`` for every tensor, then ``write_tensors_to_file``, as llama.cpp's converter
calls it with --no-lazy) shows the buffering the streaming sink avoids. Every folder is
removed at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import bench_convert
import bench_recover as common
import sentencepiece
import torch

GiB = common.GiB
EXE = [sys.executable, "-m", "belle_decrypt"]

# gguf-py's documented path: every array handed to the writer, then one write at the end. The
# arrays are copies in memory, as recovered tensors are (mapped inputs would be page cache).
WHOLE_MODEL = """
import sys
from pathlib import Path
import gguf
from safetensors.torch import load_file
folder, out = Path(sys.argv[1]), sys.argv[2]
writer = gguf.GGUFWriter(out, "llama")
for shard in sorted(folder.glob("*.safetensors")):
    for name, tensor in load_file(str(shard)).items():
        writer.add_tensor(name, tensor.clone().numpy())  # computed, as a recovery makes it
writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()
"""


def tokenizer_model() -> bytes:
    """A real sentencepiece model of a few hundred pieces."""
    lines = ["the quick brown fox jumps over the lazy dog", "你好世界，这是一个测试。"]  # noqa: RUF001
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines * 20),
        model_writer=model,
        vocab_size=300,
        model_type="bpe",
        byte_fallback=True,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return model.getvalue()


def config(layers: int) -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": common.HIDDEN,
        "intermediate_size": common.INTERMEDIATE,
        "num_hidden_layers": layers,
        "num_attention_heads": 32,
        "vocab_size": common.VOCAB,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "torch_dtype": "float16",
    }


def meta_runs(root: Path, layers: int, anon: dict[tuple[str, int], int]) -> None:
    """Meta's folder to GGUF in one pass, and the two runs it replaces."""
    tokenizer = bench_convert.tokenizer_model(root / "spm")
    state = bench_convert.whole_model(layers)
    llama = bench_convert.write_meta(root / f"meta-{layers}", state, layers, 1, tokenizer)
    del state
    out, hf = root / "out", root / "meta-hf"
    convert = [*EXE, "convert", str(llama)]
    print(f"Meta's folder, {layers} layers: {common.size_of(llama) / GiB:.2f} GiB", flush=True)
    runs = {
        "convert LLAMA_DIR --to gguf (one pass)": [*convert, str(out), "--to", "gguf"],
        "convert LLAMA_DIR (Hugging Face shards)": [*convert, str(hf)],
        "  then convert HF_DIR --to gguf": [*EXE, "convert", str(hf), str(out), "--to", "gguf"],
    }
    for label, argv in runs.items():
        run = common.measure([*argv, "-q", "--no-fsync"])
        common.line(label, run)
        anon[(label.strip(), layers)] = run.peak_anon
        if "to gguf" in label:
            shutil.rmtree(out)
    shutil.rmtree(hf)
    shutil.rmtree(llama.parent)


def bench(root: Path, layers_list: Sequence[int]) -> None:
    started = time.monotonic()
    anon: dict[tuple[str, int], int] = {}
    for layers in layers_list:
        base, diff = root / f"base-{layers}", root / f"vicuna-diff-{layers}"
        common.write_model(base, layers, torch.float16, 0.02, 1.0, 0, "bin")
        common.write_model(diff, layers, torch.float16, 0.001, 0.0, 0, "safetensors")
        (diff / "config.json").write_text(json.dumps(config(layers)))
        (diff / "tokenizer.model").write_bytes(tokenizer_model())
        print(
            f"\nvicuna, {layers} layers: base {common.size_of(base) / GiB:.2f} GiB, diff "
            f"{common.size_of(diff) / GiB:.2f} GiB",
            flush=True,
        )
        recover = [*EXE, "recover", str(diff), str(base)]
        out, hf = root / "out", root / "hf"
        runs = {
            "recover (Hugging Face shards)": [*recover, str(hf), "--recipe", "vicuna"],
            "recover --to gguf": [*recover, str(out), "--recipe", "vicuna", "--to", "gguf"],
            "recover --to gguf --gguf-type q8_0": [
                *recover,
                str(out),
                "--recipe",
                "vicuna",
                "--to",
                "gguf",
                "--gguf-type",
                "q8_0",
            ],
            "convert HF_DIR --to gguf": [*EXE, "convert", str(hf), str(out), "--to", "gguf"],
        }
        for label, argv in runs.items():
            run = common.measure([*argv, "-q", "--no-fsync"])
            common.line(label, run)
            anon[(label, layers)] = run.peak_anon
            if "to gguf" in label:
                shutil.rmtree(out)
        meta_runs(root, layers, anon)
        if layers == min(layers_list):
            out.mkdir()
            script = [sys.executable, "-c", WHOLE_MODEL, str(hf), str(out / "model.gguf")]
            common.line("gguf-py add_tensor (in-memory arrays), then write", common.measure(script))
            shutil.rmtree(out)
        shutil.rmtree(hf)
        shutil.rmtree(diff)
        shutil.rmtree(base)
    if len(layers_list) > 1:
        low, high = min(layers_list), max(layers_list)
        print()
        for key in sorted({k for k, _ in anon}):
            a, b = anon[(key, low)], anon[(key, high)]
            print(
                f"peak RssAnon {key:<40} {low} layers {a / GiB:.2f} GiB, {high} layers "
                f"{b / GiB:.2f} GiB ({(b - a) / a:+.1%})"
            )
    print(f"\nbenchmark took {time.monotonic() - started:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="Where to make the models.")
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--smoke", action="store_true", help="Tiny shapes: check the script.")
    args = parser.parse_args()
    if args.smoke:
        common.HIDDEN, common.INTERMEDIATE, common.VOCAB = 256, 688, 2000
        bench_convert.DIM, bench_convert.HIDDEN, bench_convert.VOCAB = 256, 768, 2000
    root = Path(tempfile.mkdtemp(prefix="bench-gguf-", dir=args.dir))
    print(
        f"GGUF benchmark, 7B-shaped (hidden {common.HIDDEN}, vocabulary {common.VOCAB}), "
        f"{os.cpu_count()} CPUs, warm page cache, --no-fsync, torch {torch.__version__}",
        flush=True,
    )
    try:
        bench(root, args.layers)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
