"""`convert`: one command line for turning a model folder into another format (here a Hugging
Face folder into one GGUF file), and the options it shares with `recover` (``--to``,
``--gguf-type``)."""

from __future__ import annotations

from pathlib import Path

import click

from belle_decrypt.cli.console import (
    Bars,
    GivenPath,
    human_size,
    progress_enabled,
    say,
    user_errors,
)

PATH = GivenPath(path_type=Path, readable=False)
TO_CHOICES = ("hf", "gguf")
TO_HELP = "hf: Hugging Face shards [default]; gguf: one GGUF file."
GGUF_TYPES = ("f16", "q8_0")
GGUF_TYPE_HELP = "GGUF matrices: f16 [default] or q8_0 (K-quants: llama-quantize on the f16 file)."


@click.command()
@click.argument("input_dir", type=PATH)
@click.argument("out_dir", type=PATH)
@click.option("--to", type=click.Choice(TO_CHOICES), help=TO_HELP)
@click.option("--gguf-type", type=click.Choice(GGUF_TYPES), help=GGUF_TYPE_HELP)
@click.option("--force", is_flag=True, help="Replace the GGUF file already in OUT_DIR.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars and no summary lines.")
@click.option("--no-fsync", is_flag=True, help="Skip fsync: faster, less safe on power loss.")
def convert(
    input_dir: Path,
    out_dir: Path,
    to: str | None,
    gguf_type: str | None,
    force: bool,
    quiet: bool,
    no_fsync: bool,
) -> None:
    """Convert a Hugging Face LLaMA folder in INPUT_DIR (what decrypt or recover made) to one
    GGUF file in OUT_DIR (--to gguf): read and written tensor by tensor, checked, atomic.

    \b
    Example:
      belle-decrypt convert BELLE-7B-2M/ belle-7b-gguf/ --to gguf
    """
    from belle_decrypt.tensors.convert_hf import Conversion, ConvertOptions

    options = ConvertOptions(to=to, gguf_type=gguf_type, force=force, fsync=not no_fsync)
    with user_errors(writing=True), Conversion.prepare(input_dir, out_dir, options) as job:
        size = sum(job.sink.planned[item.name].nbytes for item in job.shard.items)
        with (
            Bars(size, False, progress_enabled(quiet)) as bars,
            bars.file(size, job.shard.name) as advance,
        ):
            done = job.run(advance)
        say(f"converted  {done.path}: {human_size(done.size)} in {done.seconds:.1f} s", quiet)
