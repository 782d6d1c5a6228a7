"""How long, and how much memory, `verify` takes on a huge manifest (issue 10, item 12).

Writes a manifest of md5sum lines (default 100 MB, about 1.3 million entries with folders in
their names) and runs `belle-decrypt verify` on a folder holding none of them, in a subprocess,
reporting wall and CPU time (the wall time of a shared machine varies) and peak RSS.
Usage: python benchmarks/manifest_bench.py [--dir D] [--mb N]
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-m", "belle_decrypt"]


def write_manifest(path: Path, size: int) -> int:
    """An md5sum-style manifest of at least ``size`` bytes; returns its number of lines."""
    written = lines = 0
    with path.open("w") as handle:
        while written < size:
            digest = hashlib.md5(str(lines).encode()).hexdigest()
            line = f"{digest}  ./shard-{lines:08d}/pytorch_model-{lines:05d}.bin\n"
            handle.write(line)
            written += len(line)
            lines += 1
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the manifest")
    parser.add_argument("--mb", type=int, default=100, help="manifest size in MB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        manifest = folder / "big.md5"
        lines = write_manifest(manifest, args.mb * 1_000_000)
        (folder / "data").mkdir()
        started = time.monotonic()
        proc = subprocess.run(
            [*CLI, "verify", str(folder / "data"), "--manifest", str(manifest), "-q"],
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.monotonic() - started
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        f"verify, {args.mb} MB manifest ({lines:,} entries, none present): "
        f"{seconds:.2f} s wall, {usage.ru_utime + usage.ru_stime:.2f} s CPU, "
        f"peak RSS {usage.ru_maxrss / 1024:.0f} MB, exit {proc.returncode}"
    )


if __name__ == "__main__":
    main()
