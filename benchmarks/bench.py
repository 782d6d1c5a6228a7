"""Benchmark belle-decrypt the way a user runs it, against md5sum and a bare SHA-256 pass.

Makes a synthetic key and `.enc` files in a temporary folder (stdlib and the package only),
warms the page cache, then runs each command ``--runs`` times and prints medians:

    python benchmarks/bench.py                 # 2 GiB, 5 runs
    python benchmarks/bench.py --size 512M --runs 3 --dir /var/tmp
    python benchmarks/bench.py --latency --size 1G   # only: how fast Ctrl-C/SIGTERM stop a run
    python benchmarks/bench.py --layouts             # only: TechGPT and OpenBuddy files
    python benchmarks/bench.py --perfile             # only: the per-file layout's lines
    python benchmarks/bench.py --loop                # only: the README's shell loop vs a folder

Wall, user and sys times and the peak RSS are those of the child process (os.wait4). The machine
may be shared: each figure carries the 1-minute load average read just after it was measured.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from belle_decrypt.layouts.seed import SEED_SIZE
from belle_decrypt.publish.encrypt import PUBLISHING, encrypt_file
from belle_decrypt.streams import engine
from belle_decrypt.streams.keystream import Key

MiB = 1024 * 1024
CHUNK = 64 * MiB
EXE = [sys.executable, "-m", "belle_decrypt"]


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def load() -> str:
    """The 1-minute load average now, to print beside a figure measured on a shared machine."""
    return f"load {os.getloadavg()[0]:.1f}"


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError


# -- synthetic data ---------------------------------------------------------------------------


def write_random(path: Path, size: int, seed: bytes) -> None:
    """Fast, deterministic filler bytes: SHAKE-256 blocks repeated with a counter."""
    block = hashlib.shake_256(seed).digest(MiB)
    with open(path, "wb") as out:
        done, i = 0, 0
        while done < size:
            n = min(CHUNK, size - done)
            piece = (block * (CHUNK // MiB))[:n]
            out.write(bytes([i & 0xFF]) + piece[1:])
            done += n
            i += 1


def make_enc(folder: Path, name: str, key_path: Path, size: int) -> tuple[Path, str, str]:
    """Encrypt a synthetic plaintext with the package; return (.enc path, enc md5, plain md5)."""
    plain = folder / f"{name}.plain"
    write_random(plain, size, name.encode())
    sha, md5 = hashlib.sha256(), hashlib.md5()
    body = folder / f"{name}.body"
    with (
        open(plain, "rb", buffering=0) as src,
        open(body, "wb", buffering=0) as dst,
        Key(key_path) as key,
    ):
        engine.xor_stream(src, dst, key, size, hashers=(sha, md5), hash_output=False)
    plain.unlink()
    digest = sha.digest()
    enc = folder / f"{name}.{digest.hex()}.enc"
    enc_md5 = hashlib.md5(digest)
    with open(enc, "wb") as out, open(body, "rb") as src:
        out.write(digest)
        while block := src.read(CHUNK):
            enc_md5.update(block)
            out.write(block)
    body.unlink()
    return enc, enc_md5.hexdigest(), md5.hexdigest()


# -- measuring --------------------------------------------------------------------------------


@dataclass
class Run:
    wall: float
    user: float
    sys: float
    rss_mb: float


def run_child(argv: Sequence[str], setup: Callable[[], None] | None = None) -> Run:
    if setup is not None:
        setup()
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.stderr is not None
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {err}")
    return Run(wall, usage.ru_utime, usage.ru_stime, usage.ru_maxrss / 1024)


def median_run(runs: int, argv: Sequence[str], setup: Callable[[], None] | None = None) -> Run:
    results = [run_child(argv, setup) for _ in range(runs)]
    return Run(
        statistics.median(r.wall for r in results),
        statistics.median(r.user for r in results),
        statistics.median(r.sys for r in results),
        max(r.rss_mb for r in results),
    )


# 64 KiB reads: the fastest bare pass measured here (the copy stays in cache; 256 KiB to
# 8 MiB reads cost 2.7-3.1 s against 2.0 s for 2 GiB, in kernel time).
SHA_PASS = (
    "import hashlib,sys\n"
    "h=hashlib.sha256();b=bytearray(64<<10);v=memoryview(b)\n"
    "with open(sys.argv[1],'rb',buffering=0) as f:\n"
    "    while n:=f.readinto(b): h.update(v[:n])\n"
)


def legacy_rate(slice_size: int = 2 * MiB) -> float:
    """Bytes/s of the legacy approach: a per-byte pure-Python XOR loop, on a slice."""
    data = os.urandom(slice_size)
    key = os.urandom(slice_size)
    started = time.perf_counter()
    out = bytes(a ^ b for a, b in zip(data, key, strict=True))
    elapsed = time.perf_counter() - started
    assert len(out) == slice_size
    return slice_size / elapsed


def engine_rate(
    enc: Path, key_path: Path, payload: int, backend: engine.Backend, md5: bool = False
) -> float:
    """Bytes/s of the engine in-process over ``payload`` bytes of ``enc``, output to /dev/null,
    SHA-256 (and md5) included; numpy or torch, where used, is loaded before the clock starts."""
    if backend == "torch":
        engine._load_torch()
    elif backend == "numpy":
        engine._load_numpy()
    hashers: list[engine.Hasher] = [hashlib.sha256()]
    if md5:
        hashers.append(hashlib.md5())
    with (
        open(enc, "rb", buffering=0) as src,
        open(os.devnull, "wb", buffering=0) as dst,
        Key(key_path) as key,
    ):
        src.seek(32)
        started = time.perf_counter()
        engine.xor_stream(src, dst, key, payload, hashers=hashers, backend=backend)
        return payload / (time.perf_counter() - started)


def keystream_rate(key_path: Path, size: int) -> float:
    """Bytes/s of reading the keystream with pread into one engine buffer (the copy that a
    mapped key avoided; the key is read, never mapped, so that a truncated key is an error
    and not a SIGBUS)."""
    buf = memoryview(bytearray(engine.BUFFER_SIZE))
    with Key(key_path) as key:
        started = time.perf_counter()
        for offset in range(0, size, len(buf)):
            key.fill(buf[: min(len(buf), size - offset)], offset)
        return size / (time.perf_counter() - started)


def hash_rate(name: str, size: int = 512 * MiB) -> float:
    """Single-core hashlib speed on an in-memory buffer."""
    data = bytes(64 * MiB)
    h = hashlib.new(name)
    started = time.perf_counter()
    for _ in range(size // len(data)):
        h.update(data)
    return size / (time.perf_counter() - started)


def supports_manifest() -> bool:
    out = subprocess.run([*EXE, "decrypt", "--help"], capture_output=True, text=True, check=True)
    return "--manifest" in out.stdout


# -- main -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2G", help="payload size of the main file (2G)")
    parser.add_argument("--small", default="512M", help="second size for the RSS check (512M)")
    parser.add_argument("--runs", type=int, default=5, help="runs per command; medians (5)")
    parser.add_argument("--dir", type=Path, default=None, help="where to make the files")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--latency", action="store_true", help="only measure how fast Ctrl-C stops a run"
    )
    parser.add_argument(
        "--layouts", action="store_true", help="only the TechGPT and OpenBuddy layouts"
    )
    parser.add_argument("--perfile", action="store_true", help="only the per-file layout's lines")
    parser.add_argument(
        "--loop", action="store_true", help="only the README's shell loop against folder mode"
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # heavy work runs in a child, so the parent's RSS stays out of the figures
        child(args.child)
        return
    size, small = parse_size(args.size), parse_size(args.small)
    root = Path(tempfile.mkdtemp(prefix="belle-bench-", dir=args.dir))
    try:
        if args.latency:
            latency(root, size, args.runs)
        elif args.layouts:
            bench_layouts(root, size, small, args.runs)
        elif args.perfile:
            perfile_bench(root, size, args.runs)
        elif args.loop:
            loop_bench(root, size, args.runs)
        else:
            bench(root, size, small, args.runs)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def child(argv: Sequence[str]) -> None:
    """Work the parent delegates: making files, measuring the engine in-process."""
    what, *rest = argv
    if what == "make":
        folder, name, key_path, size = rest
        print(*make_enc(Path(folder), name, Path(key_path), int(size)))
    elif what == "key":
        write_random(Path(rest[0]), int(rest[1]), b"key")
    elif what == "steady":
        enc, key_path, size, md5, backend = rest
        chosen: engine.Backend = "torch" if backend == "torch" else "numpy"
        print(engine_rate(Path(enc), Path(key_path), int(size), chosen, md5 == "md5"))
    elif what == "plain":
        print(engine_rate(Path(rest[0]), Path(rest[1]), 64 * MiB, "python"))
    elif what == "keystream":
        print(keystream_rate(Path(rest[0]), int(rest[1])))
    elif what == "hash":
        print(hash_rate(rest[0]))
    elif what == "make-layout":
        folder, layout, key_path, size = rest
        print(*make_layout_enc(Path(folder), layout, Path(key_path), int(size)))
    elif what == "steady-layout":
        enc, layout, key_path, size = rest
        md5_speed = hash_rate("md5")  # just before, under the same load
        print(layout_md5_rate(Path(enc), layout, Path(key_path), int(size)), md5_speed)
    elif what == "techgpt-script":
        print(techgpt_script_rate(Path(rest[0]), Path(rest[1])))
    elif what == "openbuddy-script":
        print(openbuddy_script_rate(Path(rest[0]), Path(rest[1]), Path(rest[2])))
    elif what == "perfile":
        make_perfile(Path(rest[0]), int(rest[1]))
    elif what == "perfile-steady":
        print(perfile_steady_rate(Path(rest[0]), int(rest[1])))
    elif what == "gunzip":
        gunzip(Path(rest[0]))
    elif what == "codec":
        print(codec_rate(Path(rest[0]), Path(rest[1]), Path(rest[2]), int(rest[3])))


def in_child(*argv: object) -> list[str]:
    command = [sys.executable, __file__, "--child", *map(str, argv)]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()


def bench(root: Path, size: int, small: int, runs: int) -> None:
    print(f"making a {human(max(size, small))} key and .enc files in {root} ...", file=sys.stderr)
    key_path = root / "consolidated.00.pth"
    in_child("key", key_path, max(size, small) + 12345)
    encs: dict[int, tuple[Path, str, str]] = {}
    for n in sorted({size, small}):
        folder = root / f"enc-{n}"
        folder.mkdir()
        path, enc_md5, plain_md5 = in_child("make", folder, "pytorch_model.bin", key_path, n)
        encs[n] = (Path(path), enc_md5, plain_md5)
    tiny_dir = root / "enc-tiny"
    tiny_dir.mkdir()
    tiny = Path(in_child("make", tiny_dir, "config.json", key_path, 100)[0])
    out = root / "out"

    def clear_out() -> None:
        shutil.rmtree(out, ignore_errors=True)

    enc, enc_md5, plain_md5 = encs[size]
    for path in (key_path, enc, encs[small][0]):  # warm the page cache
        run_child(["md5sum", str(path)])

    decrypt = [*EXE, str(enc), str(key_path), str(out), "--no-fsync", "-q"]
    rows: list[tuple[str, str]] = []
    md5sum = median_run(runs, ["md5sum", str(enc)])
    sha_pass = median_run(runs, [sys.executable, "-c", SHA_PASS, str(enc)])
    plain = median_run(runs, decrypt, clear_out)
    payload = size

    def line(label: str, r: Run) -> None:
        rows.append(
            (
                label,
                f"{r.wall:6.2f} s wall  {r.user:5.2f} user  {r.sys:5.2f} sys  "
                f"{payload / r.wall / 1e9:5.2f} GB/s  peak RSS {r.rss_mb:5.0f} MB  {load()}",
            )
        )

    line("md5sum .enc", md5sum)
    line("hashlib SHA-256 pass, 64 KiB reads", sha_pass)
    line("belle-decrypt --no-fsync", plain)
    rows.append(
        (
            "  ratio",
            f"{plain.wall / sha_pass.wall:.2f}x the SHA-256 pass (target <= 1.6), "
            f"{plain.wall / md5sum.wall:.2f}x md5sum",
        )
    )
    if supports_manifest():
        manifest = root / "md5.txt"
        manifest.write_text(f"{enc_md5}  ./{enc.name}\n{plain_md5}  ./pytorch_model.bin\n")
        with_manifest = median_run(runs, [*decrypt, "--manifest", str(manifest)], clear_out)
        line("belle-decrypt --no-fsync --manifest", with_manifest)
        rows.append(("  ratio", f"{with_manifest.wall / md5sum.wall:.2f}x md5sum (target <= 1.25)"))
    else:
        rows.append(("belle-decrypt --manifest", "n/a: this build has no --manifest option"))

    small_run = median_run(
        max(1, runs // 2),
        [*EXE, str(encs[small][0]), str(key_path), str(out), "--no-fsync", "-q"],
        clear_out,
    )
    rows.append(
        (
            "peak RSS",
            f"{small_run.rss_mb:.0f} MB at {human(small)}, {plain.rss_mb:.0f} MB at "
            f"{human(size)} ({(plain.rss_mb / small_run.rss_mb - 1) * 100:+.1f}%)",
        )
    )

    sha_speed = float(in_child("hash", "sha256")[0])
    md5_speed = float(in_child("hash", "md5")[0])
    steady = 0.0
    for backend in ("numpy", "torch"):
        rate = statistics.median(
            float(in_child("steady", enc, key_path, size, "-", backend)[0]) for _ in range(runs)
        )
        rate_md5 = statistics.median(
            float(in_child("steady", enc, key_path, size, "md5", backend)[0]) for _ in range(runs)
        )
        steady = rate if backend == "numpy" else steady
        rows.append(
            (
                f"in-process steady state, {backend}",
                f"{rate / 1e9:.2f} GB/s = {rate / sha_speed * 100:.0f}% of SHA-256 "
                f"({sha_speed / 1e9:.2f} GB/s); with md5 {rate_md5 / 1e9:.2f} GB/s = "
                f"{rate_md5 / md5_speed * 100:.0f}% of md5 ({md5_speed / 1e9:.2f} GB/s)  {load()}",
            )
        )
    keystream = statistics.median(
        float(in_child("keystream", key_path, size)[0]) for _ in range(runs)
    )
    rows.append(
        (
            "keystream reads (pread, one thread)",
            f"{keystream / 1e9:.2f} GB/s: {size / keystream:.2f} s of CPU for {human(size)}, "
            f"{sha_speed / keystream * 100:.0f}% of the SHA-256's  {load()}",
        )
    )
    help_run = median_run(runs, [*EXE, "--help"])
    rows.append(("startup: --help", f"{help_run.wall:.3f} s (target < 0.25)  {load()}"))
    tiny_run = median_run(runs, [*EXE, str(tiny), str(key_path), str(out), "-q"], clear_out)
    rows.append(
        ("startup: decrypt a 100-byte file", f"{tiny_run.wall:.3f} s (target < 0.5)  {load()}")
    )
    bare = median_run(runs, [sys.executable, "-c", "pass"])
    import_costs = {}
    for module in ("numpy", "torch"):
        imported = median_run(runs, [sys.executable, "-c", f"import {module}"])
        import_costs[module] = max(0.0, imported.wall - bare.wall)
        rows.append(
            (
                f"startup: python -c 'import {module}'",
                f"{imported.wall:.2f} s, {imported.rss_mb:.0f} MB RSS  {load()}",
            )
        )
    plain_speed = float(in_child("plain", enc, key_path)[0])
    crossover = import_costs["numpy"] / (1 / plain_speed - 1 / steady)
    rows.append(
        (
            "plain path (Python int XOR)",
            f"{plain_speed / 1e6:.0f} MB/s; it beats importing numpy "
            f"({import_costs['numpy']:.2f} s) below {crossover / 1e6:.0f} MB "
            f"(PLAIN_LIMIT {engine.PLAIN_LIMIT // MiB} MiB)  {load()}",
        )
    )
    legacy = legacy_rate()
    rows.append(
        (
            "legacy per-byte Python XOR",
            f"{legacy / 1e6:.1f} MB/s, measured on 2 MiB, scaled: "
            f"{size / legacy:.0f} s for {human(size)}",
        )
    )
    print_table("belle-decrypt benchmark", size, runs, rows)


def print_table(title: str, size: int, runs: int, rows: list[tuple[str, str]]) -> None:
    """The figures as an aligned table under one line saying how they were measured."""
    print(
        f"\n{title}, {human(size)} payload, median of {runs}, warm page cache, "
        f"{os.cpu_count()} CPUs, {platform.machine()} {platform.python_version()}\n"
    )
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


# -- the per-file layout (docs/FORMAT.md section 7) -------------------------------------------

SHARD = "pytorch_model-00001-of-00002.bin"
CODEC_BLOCK = 4096
CODEC_SLICE = 256 * MiB


def make_perfile(root: Path, size: int) -> None:
    """base/SHARD and payload/SHARD (the model XOR the base, by the package), decoded.md5 and
    base.md5 (the card's two lists)."""
    from belle_decrypt.publish.perfile_publish import encode_file

    for name in ("base", "payload", "model"):
        (root / name).mkdir()
    write_random(root / "base" / SHARD, size, b"base")
    write_random(root / "model" / SHARD, size, b"model")
    result = encode_file(
        root / "model" / SHARD, root / "base" / SHARD, root / "payload", fsync=False
    )
    shutil.rmtree(root / "model")
    (root / "decoded.md5").write_text(f"{result.plain_md5}  ./{SHARD}\n")
    base_md5 = hashlib.md5()
    with open(root / "base" / SHARD, "rb", buffering=0) as handle:
        while block := handle.read(CHUNK):
            base_md5.update(block)
    (root / "base.md5").write_text(f"{base_md5.hexdigest()}  ./{SHARD}\n")
    make_perfile_gzip(root)


def make_perfile_gzip(root: Path) -> None:
    """payload-gz/SHARD: the codec's ``--compress`` form of a payload like a fine-tuned fp16
    model's (every second byte zero: the high bytes agree with the base), gzip level 1, and
    decoded-gz.md5 (its decoded file's md5). The decoded file has the base's size, so the run
    takes it from the trailer and decompresses once."""
    import zlib

    import numpy as np

    (root / "payload-gz").mkdir()
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)  # 31: a gzip wrapper, time 0
    decoded = hashlib.md5()
    with (
        open(root / "payload" / SHARD, "rb", buffering=0) as src,
        open(root / "base" / SHARD, "rb", buffering=0) as base,
        open(root / "payload-gz" / SHARD, "wb") as out,
    ):
        while block := bytearray(src.read(CHUNK)):
            block[1::2] = bytes(len(block) // 2)
            key = np.frombuffer(base.read(len(block)), np.uint8)
            decoded.update(np.bitwise_xor(np.frombuffer(block, np.uint8), key).tobytes())
            out.write(packer.compress(block))
        out.write(packer.flush())
    (root / "decoded-gz.md5").write_text(f"{decoded.hexdigest()}  ./{SHARD}\n")


def perfile_steady_rate(root: Path, size: int) -> float:
    """Bytes/s of the engine in-process over the per-file release with both md5s (the decoded
    file's and the base's, checked at the end), output to /dev/null, numpy loaded first."""
    from belle_decrypt.layouts.perfile import BaseStream

    engine._load_numpy()
    base_md5 = (root / "base.md5").read_text().split()[0]
    decoded = hashlib.md5()
    with (
        open(root / "payload" / SHARD, "rb", buffering=0) as src,
        open(os.devnull, "wb", buffering=0) as dst,
    ):
        stream = BaseStream(root / "base" / SHARD, size, {"md5": base_md5})
        try:
            started = time.perf_counter()
            engine.xor_stream(src, dst, stream, size, hashers=(decoded,), backend="numpy")
            elapsed = time.perf_counter() - started
        finally:
            stream.close()
    assert decoded.hexdigest() == (root / "decoded.md5").read_text().split()[0]
    return size / elapsed


def gunzip(path: Path) -> None:
    """Decompress ``path`` once, keeping nothing: the bound of a gzip payload's decode."""
    import gzip

    view = memoryview(bytearray(CHUNK))
    with gzip.open(path, "rb") as stream:
        while stream.readinto(view):
            pass


def codec_rate(payload: Path, base: Path, out: Path, length: int) -> float:
    """Bytes/s of the publisher's codec's approach, written from docs/FORMAT.md section 7 (not
    its code): 4096-byte blocks of payload and base read, the base block zero-padded, numpy
    XOR, each block written; on the first ``length`` bytes."""
    import numpy as np

    started = time.perf_counter()
    done = 0
    with open(payload, "rb") as src, open(base, "rb") as key, open(out, "wb") as dst:
        while done < length:
            block = src.read(min(CODEC_BLOCK, length - done))
            if not block:
                break
            other = key.read(len(block))
            other += bytes(len(block) - len(other))
            xored = np.bitwise_xor(np.frombuffer(block, np.uint8), np.frombuffer(other, np.uint8))
            dst.write(xored.tobytes())
            done += len(block)
    return done / (time.perf_counter() - started)


def perfile_bench(root: Path, size: int, runs: int) -> None:
    """md5sum of the payload (the md5 bound), the decode with both lists (two md5 on two
    cores, and the base read), with the decoded list only, a gzip payload's decode against one
    decompression pass, and the codec's numpy loop."""
    print(f"making a {human(size)} base and payload in {root} ...", file=sys.stderr)
    in_child("perfile", root, size)
    payload, base, out = root / "payload" / SHARD, root / "base" / SHARD, root / "out"

    def clear_out() -> None:
        shutil.rmtree(out, ignore_errors=True)

    for path in (payload, base):  # warm the page cache
        run_child(["md5sum", str(path)])
    decode = [*EXE, str(root / "payload"), str(root / "base"), str(out), "--no-fsync", "-q"]
    decode += ["--manifest", str(root / "decoded.md5")]
    md5sum = median_run(runs, ["md5sum", str(payload)])
    both = median_run(runs, [*decode, "--base-manifest", str(root / "base.md5")], clear_out)
    decoded_only = median_run(runs, decode, clear_out)
    gz = root / "payload-gz" / SHARD
    run_child(["md5sum", str(gz)])
    gunzip = median_run(runs, [sys.executable, __file__, "--child", "gunzip", str(gz)])
    decode_gz = [*EXE, str(gz.parent), str(root / "base"), str(out), "--no-fsync", "-q"]
    gzipped = median_run(runs, [*decode_gz, "--manifest", str(root / "decoded-gz.md5")], clear_out)
    clear_out()

    def line(label: str, r: Run) -> tuple[str, str]:
        return (
            label,
            f"{r.wall:6.2f} s wall  {r.user:5.2f} user  {r.sys:5.2f} sys  "
            f"{size / r.wall / 1e9:5.2f} GB/s  peak RSS {r.rss_mb:5.0f} MB  {load()}",
        )

    rows = [
        line("md5sum payload (the md5 bound)", md5sum),
        line("perfile --manifest --base-manifest", both),
        ("  ratio", f"{both.wall / md5sum.wall:.2f}x md5sum (two md5 on two cores + base read)"),
        line("perfile --manifest", decoded_only),
        ("  ratio", f"{decoded_only.wall / md5sum.wall:.2f}x md5sum"),
        line(f"one gzip pass, Python's zlib ({gz.stat().st_size / size:.0%} packed)", gunzip),
        line("perfile gzip --manifest", gzipped),
        ("  ratio", f"{gzipped.wall / gunzip.wall:.2f}x one gzip pass (two passes before: ~2x)"),
    ]
    steady = float(in_child("perfile-steady", root, size)[0])
    md5_speed = float(in_child("hash", "md5")[0])
    rows.append(
        (
            "in-process steady state",
            f"{steady / 1e9:.2f} GB/s with both md5s = {steady / md5_speed:.0%} of one core's md5 "
            f"({md5_speed / 1e9:.2f} GB/s)  {load()}",
        )
    )
    length = min(CODEC_SLICE, size)
    try:
        codec = float(in_child("codec", payload, base, root / "codec.out", length)[0])
    except subprocess.CalledProcessError as exc:
        rows.append(("codec's 4096-byte numpy loop", f"n/a: {exc.stderr.strip().splitlines()[-1]}"))
    else:
        rows.append(
            (
                "codec's 4096-byte numpy loop",
                f"{codec / 1e6:.0f} MB/s on {human(length)}, scaled: {size / codec:.1f} s, "
                "no check; belle-decrypt with both lists: "
                f"{size / both.wall / codec:.1f}x its speed",
            )
        )
    print_table("belle-decrypt per-file benchmark", size, runs, rows)


# -- the README's shell loop against folder mode ----------------------------------------------

LOOP_SHARES = (1.25, 0.625, 0.3125)
"""The loop's release: three files of these shares of ``--size`` (2.5, 1.25 and 0.625 GiB)."""


def loop_bench(root: Path, size: int, runs: int) -> None:
    """The README's loop (one process per file) against one folder-mode process with ``--jobs
    1``, on a 3-file release, warm cache, ``--no-fsync``: the loop pays each process's start-up
    (Python, the package, numpy) three times."""
    sizes = [int(size * share) for share in LOOP_SHARES]
    made = ", ".join(map(human, sizes))
    print(f"making a 3-file release ({made}) in {root} ...", file=sys.stderr)
    key_path = root / "consolidated.00.pth"
    in_child("key", key_path, size + 12345)
    enc_dir, out = root / "enc", root / "out"
    enc_dir.mkdir()
    encs = [
        Path(in_child("make", enc_dir, f"pytorch_model-0000{n}-of-00003.bin", key_path, part)[0])
        for n, part in enumerate(sizes, start=1)
    ]
    for path in (key_path, *encs):  # warm the page cache
        run_child(["md5sum", str(path)])

    def clear_out() -> None:
        shutil.rmtree(out, ignore_errors=True)

    exe = " ".join(map(shlex.quote, EXE))
    loop = (
        f'for f in {shlex.quote(str(enc_dir))}/*; do if [ -f "$f" ]; then {exe} "$f" '
        f"{shlex.quote(str(key_path))} {shlex.quote(str(out))} --no-fsync -q; fi; done"
    )
    total = sum(sizes)
    rows: list[tuple[str, str]] = []
    walls: list[float] = []
    for label, argv in (
        ("README's shell loop (3 processes)", ["sh", "-ec", loop]),
        (
            "folder mode, --jobs 1",
            [*EXE, str(enc_dir), str(key_path), str(out), "--jobs", "1", "--no-fsync", "-q"],
        ),
    ):
        r = median_run(runs, argv, clear_out)
        rows.append(
            (
                label,
                f"{r.wall:6.2f} s wall  {r.user:5.2f} user  {r.sys:5.2f} sys  "
                f"{total / r.wall / 1e9:5.2f} GB/s  {load()}",
            )
        )
        walls.append(r.wall)
    rows.append(("  ratio", f"the loop takes {walls[0] / walls[1]:.2f}x folder mode (target 1.15)"))
    print_table("belle-decrypt loop benchmark", total, runs, rows)


# -- Ctrl-C latency ---------------------------------------------------------------------------


def bytes_read(pid: int) -> int:
    """``rchar`` of /proc/PID/io: bytes the process has read so far."""
    with open(f"/proc/{pid}/io") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("rchar:"))


def written(folder: Path) -> int:
    """Bytes in the files of ``folder`` (0 when it does not exist yet)."""
    try:
        return sum(entry.stat().st_size for entry in os.scandir(folder))
    except OSError:
        return 0


def signal_latency(
    argv: Sequence[str], started: Callable[[int], bool], signum: int, code: int
) -> float:
    """Start ``argv``, send ``signum`` once ``started(pid)``, return the seconds from the
    signal to its exit (which must be ``code``)."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not started(proc.pid):
        if proc.poll() is not None:
            raise SystemExit(f"{' '.join(argv)} ended before the point to interrupt it")
        time.sleep(0.001)
    sent = time.perf_counter()
    proc.send_signal(signum)
    proc.wait()
    seconds = time.perf_counter() - sent
    assert proc.stderr is not None
    proc.stderr.close()
    if proc.returncode != code:
        raise SystemExit(f"{' '.join(argv)}: exit {proc.returncode} after {signum}, not {code}")
    return seconds


def sparse(path: Path, size: int, head: bytes = b"") -> Path:
    with open(path, "wb") as handle:
        handle.write(head)
        handle.truncate(size)
    return path


def latency(root: Path, size: int, runs: int) -> None:
    """Signal to exit, for SIGINT and SIGTERM, for each long read: verify (one job, two
    jobs), the re-hash of existing outputs on a re-run (one job, two jobs), the md5 of the
    downloads in a failure's diagnosis, and a decrypt mid-file. Sparse files for the hashes
    (no disk space); a real `.enc` of ``size`` bytes for the decrypt."""
    after = min(256 * MiB, size // 4)

    def hashed(threshold: int) -> Callable[[int], bool]:
        return lambda pid: bytes_read(pid) >= threshold

    model = root / "model"
    model.mkdir()
    for name in ("a.bin", "b.bin"):
        sparse(model / name, size)
    card = root / "md5.txt"
    card.write_text(f"{'0' * 32}  ./a.bin\n{'1' * 32}  ./b.bin\n")
    key_path = root / "consolidated.00.pth"
    in_child("key", key_path, 10 * MiB + 12345)
    digest = hashlib.sha256(b"something else").digest()
    resume_enc = root / "resume-enc"
    resume_enc.mkdir()
    resume_out = root / "resume-out"
    resume_out.mkdir()
    for name in ("a.bin", "b.bin"):
        sparse(resume_enc / f"{name}.{digest.hex()}.enc", size + 32, digest)
        sparse(resume_out / name, size)
    # The diagnosis: two small payloads that fail their checksum, whose downloads then grow to
    # ``size`` (the decrypt reads the planned payload, the md5 reads it all).
    diagnosis_enc = root / "diagnosis-enc"
    diagnosis_enc.mkdir()
    broken = [diagnosis_enc / f"{name}.{digest.hex()}.enc" for name in ("a.bin", "b.bin")]
    diagnosis_card = root / "diagnosis-md5.txt"
    diagnosis_card.write_text("".join(f"{'0' * 32}  {enc.name}\n" for enc in broken))
    diagnosis_out = root / "diagnosis-out"
    small = 16 * MiB

    def reset_diagnosis() -> None:
        shutil.rmtree(diagnosis_out, ignore_errors=True)
        for enc in broken:
            sparse(enc, small + 32, digest)

    def diagnosing(pid: int) -> bool:
        if diagnosis_out.exists() and broken[0].stat().st_size < size:
            for enc in broken:
                os.truncate(enc, size)
        return bytes_read(pid) >= 2 * small + after

    enc_dir = root / "enc"
    enc_dir.mkdir()
    enc = Path(in_child("make", enc_dir, "pytorch_model.bin", key_path, size)[0])
    out = root / "out"
    verify = [*EXE, "verify", str(model), "--manifest", str(card)]
    resume = [*EXE, str(resume_enc), str(key_path), str(resume_out)]
    cases: dict[str, tuple[list[str], Callable[[int], bool], Callable[[], None]]] = {
        "verify -j 1": ([*verify, "-j", "1"], hashed(after), lambda: None),
        "verify -j 2": ([*verify, "-j", "2"], hashed(after), lambda: None),
        "re-run --jobs 1: re-hash": ([*resume, "--jobs", "1"], hashed(after), lambda: None),
        "re-run --jobs 2: re-hashes": ([*resume, "--jobs", "2"], hashed(2 * after), lambda: None),
        "diagnosis md5, --jobs 2": (
            [
                *EXE,
                str(diagnosis_enc),
                str(key_path),
                str(diagnosis_out),
                "--jobs",
                "2",
                "--manifest",
                str(diagnosis_card),
            ],
            diagnosing,
            reset_diagnosis,
        ),
        "decrypt mid-file": (
            [*EXE, str(enc), str(key_path), str(out), "--no-fsync"],
            lambda pid: written(out) >= after,
            lambda: shutil.rmtree(out, ignore_errors=True),
        ),
    }
    signals = {"SIGINT": (signal.SIGINT, 130), "SIGTERM": (signal.SIGTERM, 143)}
    print(f"\nsignal to exit, {human(size)} files, median of {runs} (max)\n")
    print(f"{'':<28} {'SIGINT':>20} {'SIGTERM':>20}")
    for label, (argv, started, reset) in cases.items():
        cells = []
        for signum, code in signals.values():
            seconds = []
            for _ in range(runs):
                reset()
                seconds.append(signal_latency([*argv, "-q"], started, signum, code))
            reset()
            cells.append(
                f"{statistics.median(seconds) * 1000:7.1f} ms ({max(seconds) * 1000:6.1f})"
            )
        print(f"{label:<28} {cells[0]:>20} {cells[1]:>20}")


# -- the headerless layouts (TechGPT, OpenBuddy) ----------------------------------------------


def make_layout_enc(folder: Path, layout: str, key_path: Path, size: int) -> tuple[Path, str, str]:
    """A synthetic model file encrypted by the package in ``layout``; return (.enc path, enc
    md5, plain md5)."""
    plain = folder / "pytorch_model.bin"
    write_random(plain, size, layout.encode())
    with Key(key_path) as key:
        made = encrypt_file(plain, key, folder, fsync=False, publishing=PUBLISHING[layout])
    plain.unlink()
    return made.target, made.enc_md5, made.plain_md5


def layout_md5_rate(enc: Path, layout: str, key_path: Path, payload: int) -> float:
    """Bytes/s of the engine in-process with ``layout``'s keystream and one md5 (what a run
    with a manifest computes for a file that carries no checksum), output to /dev/null."""
    from belle_decrypt.layouts.headerless import Headerless
    from belle_decrypt.xor.detect import LAYOUTS

    engine._load_numpy()
    source = Headerless(enc, LAYOUTS[layout], "pytorch_model.bin", payload)
    with (
        open(enc, "rb", buffering=0) as src,
        open(os.devnull, "wb", buffering=0) as dst,
        Key(key_path) as key,
        source.layout.keystream(source, key) as keystream,
    ):
        started = time.perf_counter()
        engine.xor_stream(src, dst, keystream, payload, hashers=(hashlib.md5(),))
        return payload / (time.perf_counter() - started)


def techgpt_script_rate(enc: Path, key_path: Path, slice_size: int = 2 * MiB) -> float:
    """Bytes/s of TechGPT's script as docs/FORMAT.md section 4 describes it, on a slice: a
    per-byte Python XOR with the key, and the SHA-256 of the result."""
    with open(enc, "rb") as handle:
        data = handle.read(slice_size)
    with open(key_path, "rb") as handle:
        key = handle.read(slice_size)
    started = time.perf_counter()
    out = bytes(a ^ b for a, b in zip(data, key, strict=True))
    hashlib.sha256(out).hexdigest()
    return slice_size / (time.perf_counter() - started)


def openbuddy_script_rate(
    enc: Path, key_path: Path, out: Path, slice_size: int = 256 * MiB
) -> float:
    """Bytes/s of OpenBuddy's script as docs/FORMAT.md section 5 describes it, on a slice: the
    seed's md5 checked, then numpy XOR of 16 MiB blocks with the seed, written out."""
    import numpy as np

    started = time.perf_counter()
    with open(key_path, "rb") as handle:
        seed_bytes = handle.read(SEED_SIZE)
    hashlib.md5(seed_bytes).hexdigest()
    seed = np.frombuffer(seed_bytes, dtype=np.uint8)
    done = 0
    with open(enc, "rb") as src, open(out, "wb") as dst:
        while done < slice_size and (block := src.read(SEED_SIZE)):
            data = np.frombuffer(block, dtype=np.uint8)
            dst.write(np.bitwise_xor(data, seed[: len(data)]).tobytes())
            done += len(block)
    elapsed = time.perf_counter() - started
    out.unlink()
    return done / elapsed


def bench_layouts(root: Path, size: int, small: int, runs: int) -> None:
    """Per headerless layout, on ``size`` bytes with the card's md5 list: md5sum of the .enc,
    belle-decrypt --manifest, the in-process steady state against md5, peak RSS at ``small``
    and ``size``, and the publisher's script logic measured on a slice and scaled."""
    print(f"making a {human(size)} key and .enc files in {root} ...", file=sys.stderr)
    key_path = root / "consolidated.00.pth"
    in_child("key", key_path, max(size, small, SEED_SIZE) + 12345)  # longer than the payload
    out = root / "out"

    def clear_out() -> None:
        shutil.rmtree(out, ignore_errors=True)

    rows: list[tuple[str, str]] = []
    for layout in ("techgpt", "openbuddy"):
        made: dict[int, tuple[Path, Path]] = {}
        for n in sorted({size, small}):
            folder = root / f"{layout}-{n}"
            folder.mkdir()
            enc_path, enc_md5, plain_md5 = in_child("make-layout", folder, layout, key_path, n)
            card = folder / "md5.txt"
            card.write_text(
                f"{enc_md5}  ./{Path(enc_path).name}\n{plain_md5}  ./pytorch_model.bin\n"
            )
            made[n] = (Path(enc_path), card)
        enc, card = made[size]
        for path in (key_path, enc):  # warm the page cache
            run_child(["md5sum", str(path)])

        def command(n: int, made: dict[int, tuple[Path, Path]] = made) -> list[str]:
            path, listed = made[n]
            return [*EXE, str(path), str(key_path), str(out), "--manifest", str(listed)]

        md5sum = median_run(runs, ["md5sum", str(enc)])
        decrypt = median_run(runs, [*command(size), "--no-fsync", "-q"], clear_out)
        small_run = median_run(max(1, runs // 2), [*command(small), "--no-fsync", "-q"], clear_out)
        clear_out()
        pairs = [
            [float(x) for x in in_child("steady-layout", enc, layout, key_path, size)]
            for _ in range(runs)
        ]
        steady = statistics.median(rate for rate, _ in pairs)
        md5_speed = statistics.median(speed for _, speed in pairs)
        share = statistics.median(rate / speed for rate, speed in pairs)
        for label, r in (
            (f"{layout}: md5sum .enc", md5sum),
            (f"{layout}: belle-decrypt --manifest", decrypt),
        ):
            rows.append(
                (
                    label,
                    f"{r.wall:6.2f} s wall  {r.user:5.2f} user  {r.sys:5.2f} sys  "
                    f"{size / r.wall / 1e9:5.2f} GB/s  peak RSS {r.rss_mb:5.0f} MB",
                )
            )
        rows.append(("  ratio", f"{decrypt.wall / md5sum.wall:.2f}x md5sum (--no-fsync)"))
        rows.append(
            (
                f"{layout}: in-process steady state",
                f"{steady / 1e9:.2f} GB/s = {share * 100:.0f}% of md5 measured just before "
                f"({md5_speed / 1e9:.2f} GB/s; target >= 90%)",
            )
        )
        rows.append(
            (
                f"{layout}: peak RSS",
                f"{small_run.rss_mb:.0f} MB at {human(small)}, {decrypt.rss_mb:.0f} MB at "
                f"{human(size)} ({(decrypt.rss_mb / small_run.rss_mb - 1) * 100:+.1f}%)",
            )
        )
        if layout == "techgpt":
            rate = float(in_child("techgpt-script", enc, key_path)[0])
            what = "TechGPT's script (per-byte Python XOR + SHA-256), on 2 MiB"
        else:
            rate = float(in_child("openbuddy-script", enc, key_path, root / "numpy.out")[0])
            sliced = human(min(size, 256 * MiB))
            what = f"OpenBuddy's script (numpy, 16 MiB blocks, no check), on {sliced}"
        rows.append(
            (
                f"{layout}: official script's logic",
                f"{rate / 1e6:.1f} MB/s, {what}, scaled: {size / rate:.0f} s for {human(size)}",
            )
        )
        for path, _ in made.values():
            shutil.rmtree(path.parent)
    print_table("belle-decrypt layouts benchmark", size, runs, rows)


if __name__ == "__main__":
    main()
