"""Benchmark the start-up of `recover` and `convert`: small runs where fixed costs dominate.

Times, as child processes, interleaved and repeated (the median and the fastest are printed,
with the load average before and after):

- ``python -c "import torch, safetensors.torch"``: the floor every tensor command pays;
- ``recover`` of a tiny model (hidden 64): nothing but start-up;
- ``recover --manifest`` on a 7B-shaped 2-layer Vicuna-style diff (500MB shards): the md5 of
  the diff's files beside the run;
- ``convert`` of a 7B-shaped 2-layer Meta model in one file, with ``checklist.chk``'s md5 and
  with ``--no-verify``;

each against ``md5sum`` / a plain copy of the same bytes. ``--tree`` runs the same commands
from other checkouts too (``python -m belle_decrypt`` with that tree first on PYTHONPATH), so
a before/after pair is measured in one run on the same machine:

    python benchmarks/bench_startup.py --repeats 5
    python benchmarks/bench_startup.py --tree /tmp/main-checkout --tree .
    python benchmarks/bench_startup.py --smoke      # tiny shapes: check the script
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]
import bench_convert  # noqa: E402
import bench_recover  # noqa: E402

from tests.reference_meta import tokenizer_model  # noqa: E402

HERE = Path(__file__).parents[1]
IMPORT = "import torch, safetensors.torch"


def load() -> str:
    """The 1-minute load average."""
    return Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"


def timed(argv: Sequence[str], tree: Path | None) -> float:
    """Seconds ``argv`` takes (with ``tree`` first on PYTHONPATH); fail loudly on an error."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")]).rstrip(":")
    started = time.monotonic()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{argv}: exit {proc.returncode}: {proc.stderr.decode()}")
    return seconds


def make_inputs(root: Path, layers: int) -> dict[str, Path]:
    """The folders the runs read: a tiny pair, a 7B-shaped pair with a manifest, Meta's."""
    tiny_base, tiny_diff = root / "tiny-base", root / "tiny-diff"
    saved = bench_recover.HIDDEN, bench_recover.INTERMEDIATE, bench_recover.VOCAB
    bench_recover.HIDDEN, bench_recover.INTERMEDIATE, bench_recover.VOCAB = 64, 128, 100
    bench_recover.write_model(tiny_base, 2, torch.float16, 0.02, 1.0, 0, "bin")
    bench_recover.write_model(tiny_diff, 2, torch.float16, 0.001, 0.0, 0, "safetensors")
    bench_recover.HIDDEN, bench_recover.INTERMEDIATE, bench_recover.VOCAB = saved
    base, diff = root / "base", root / "diff"
    bench_recover.write_model(base, layers, torch.float16, 0.02, 1.0, 0, "bin")
    bench_recover.write_model(diff, layers, torch.float16, 0.001, 0.0, 0, "safetensors")
    manifest = bench_convert.md5_list(diff, root / "diff.md5")
    state = bench_convert.whole_model(layers)
    meta = bench_convert.write_meta(root / "llama", state, layers, 1, tokenizer_model(root / "spm"))
    return {
        "tiny-base": tiny_base,
        "tiny-diff": tiny_diff,
        "base": base,
        "diff": diff,
        "manifest": manifest,
        "meta": meta,
    }


def cases(paths: dict[str, Path], out: Path) -> list[tuple[str, list[str], bool]]:
    """(label, argv, whether it is a belle-decrypt run) for each timed command."""
    exe = [sys.executable, "-m", "belle_decrypt"]
    quick = ["-q", "--no-fsync", "--force"]
    recover = [*exe, "recover", "--recipe", "vicuna", *quick]
    convert = [*exe, "convert", *quick]
    weights = sorted(str(p) for p in paths["diff"].iterdir())
    metas = sorted(str(p) for p in paths["meta"].glob("consolidated.*.pth"))
    tiny = [str(paths["tiny-diff"]), str(paths["tiny-base"])]
    return [
        ("import torch, safetensors", [sys.executable, "-c", IMPORT], False),
        ("recover, tiny model", [*recover, *tiny, str(out)], True),
        ("md5sum of the diff's files", ["md5sum", *weights], False),
        (
            "recover --manifest, 500MB shards",
            [
                *recover,
                str(paths["diff"]),
                str(paths["base"]),
                str(out),
                "--max-shard-size",
                "500MB",
                "--manifest",
                str(paths["manifest"]),
            ],
            True,
        ),
        ("md5sum of Meta's file", ["md5sum", *metas], False),
        ("convert (checklist.chk's md5)", [*convert, str(paths["meta"]), str(out)], True),
        ("convert --no-verify", [*convert, str(paths["meta"]), str(out), "--no-verify"], True),
    ]


def bench(
    root: Path, trees: Sequence[Path], repeats: int, layers: int, only: Sequence[str]
) -> None:
    paths = make_inputs(root, layers)
    out = root / "out"
    plan = [case for case in cases(paths, out) if not only or any(w in case[0] for w in only)]
    times: dict[tuple[str, Path | None], list[float]] = {}
    before = load()
    for number in range(repeats + 1):  # the first round warms the page cache, untimed
        for label, argv, ours in plan:
            for tree in trees if ours else [None]:
                seconds = timed(argv, tree)
                shutil.rmtree(out, ignore_errors=True)
                if number:
                    times.setdefault((label, tree), []).append(seconds)
    print(f"load average {before} before, {load()} after; {repeats} runs each, warm cache\n")
    for (label, tree), values in times.items():
        where = "" if tree is None else f" [{tree}]"
        print(
            f"{label + where:<72} median {statistics.median(values):5.2f} s  "
            f"fastest {min(values):5.2f} s",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="Where to make the models.")
    parser.add_argument("--tree", action="append", type=Path, help="A checkout to run [.].")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--only", nargs="+", default=[], help="Cases whose label holds a word.")
    parser.add_argument("--smoke", action="store_true", help="Tiny shapes: check the script.")
    args = parser.parse_args()
    if args.smoke:
        bench_recover.HIDDEN, bench_recover.INTERMEDIATE, bench_recover.VOCAB = 256, 688, 2000
        bench_convert.DIM, bench_convert.HIDDEN, bench_convert.VOCAB = 256, 768, 2000
        args.repeats = 1
    trees = [tree.resolve() for tree in args.tree or [HERE]]
    root = Path(tempfile.mkdtemp(prefix="bench-startup-", dir=args.dir))
    print(f"start-up benchmark, {os.cpu_count()} CPUs, torch {torch.__version__}", flush=True)
    try:
        bench(root, trees, args.repeats, args.layers, args.only)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
