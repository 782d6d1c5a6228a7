"""``convert``: Meta's LLaMA-1/2 folder to the Hugging Face layout (the library's side is
:mod:`belle_decrypt.recipes.convert`), or a Hugging Face folder to one GGUF file
(:mod:`belle_decrypt.tensors.convert_hf`); the options it shares with ``recover`` (``--to``,
``--gguf-type``); and ``check-key``'s lines on Meta's folder
(:mod:`belle_decrypt.tensors.metacheck`)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import click

from belle_decrypt.cli.console import (
    Bars,
    GivenPath,
    bar,
    human_size,
    one_line,
    progress_enabled,
    run_tensors,
    say,
    user_errors,
)
from belle_decrypt.ground.errors import InputError

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
@click.option("--size", help="A size folder under INPUT_DIR (13B, llama-2-13b, ...).")
@click.option("--llama-version", type=click.Choice(["1", "2"]), help="[default: from the files]")
@click.option("--no-verify", is_flag=True, help="Skip checklist.chk and the published SHA-256.")
@click.option("--bin", "as_bin", is_flag=True, help="Write pytorch_model-*.bin shards.")
@click.option("--max-shard-size", help="E.g. 500MB, 10GiB [default: 2GB].")
@click.option("--force", is_flag=True, help="Replace model files already in OUT_DIR.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars and no summary lines.")
@click.option("--no-fsync", is_flag=True, help="Skip fsync: faster, less safe on power loss.")
def convert(input_dir: Path, out_dir: Path, quiet: bool, **options: Any) -> None:
    """Convert Meta's LLaMA-1/2 files in INPUT_DIR (a size folder, or the download's root
    with --size) to the Hugging Face layout in OUT_DIR: bit for bit, checked, resumable; or a
    Hugging Face LLaMA folder (what decrypt or recover made), or Meta's files, to one GGUF
    file (--to gguf).

    \b
    Example:
      belle-decrypt convert llama/7B/ llama-7b-hf/
      belle-decrypt convert llama/7B/ llama-7b-gguf/ --to gguf
      belle-decrypt convert BELLE-7B-2M/ belle-7b-gguf/ --to gguf
    """
    from belle_decrypt.checks.keyid import is_meta_folder

    with user_errors(writing=True):
        if options["size"] is None and not is_meta_folder(input_dir) and _holds_hf(input_dir):
            hf_run(input_dir, out_dir, quiet, **options)
        else:
            convert_run(input_dir, out_dir, quiet, **options)


def _holds_hf(path: Path) -> bool:
    """Whether ``path`` looks like a Hugging Face model folder (weights or config.json)."""
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return any(
        n == "config.json" or n.endswith(".safetensors") or n.startswith("pytorch_model")
        for n in names
    )


def hf_run(input_dir: Path, out_dir: Path, quiet: bool, **options: Any) -> None:
    """A Hugging Face folder to one GGUF file; what applies to Meta's folder only is refused."""
    from belle_decrypt.tensors.convert_hf import Conversion, ConvertOptions

    for flag, given in (
        ("--llama-version", options["llama_version"] is not None),
        ("--no-verify", options["no_verify"]),
        ("--bin", options["as_bin"]),
        ("--max-shard-size", options["max_shard_size"] is not None),
    ):
        if given:
            raise InputError(
                f"{flag} applies to Meta's folder; a Hugging Face folder is converted with "
                "--to gguf only: leave it out",
                input_dir,
            )
    settings = ConvertOptions(
        to=options["to"],
        gguf_type=options["gguf_type"],
        force=options["force"],
        fsync=not options["no_fsync"],
    )
    with Conversion.prepare(input_dir, out_dir, settings) as job:
        size = sum(job.sink.planned[item.name].nbytes for item in job.shard.items)
        with (
            Bars(size, False, progress_enabled(quiet)) as bars,
            bars.file(size, job.shard.name) as advance,
        ):
            done = job.run(advance)
        say(f"converted  {done.path}: {human_size(done.size)} in {done.seconds:.1f} s", quiet)


def convert_run(
    llama_dir: Path,
    out_dir: Path,
    quiet: bool,
    *,
    size: str | None,
    llama_version: str | None,
    no_verify: bool,
    **arguments: Any,
) -> None:
    """Check, convert with a bar per shard and an overall one, then the summary."""
    from belle_decrypt.tensors.headstart import plan_convert
    from belle_decrypt.tensors.options import Options

    options = Options.parse(recipe=None, manifests=(), expect_sum=None, **arguments)
    version = int(llama_version) if llama_version is not None else None
    # checklist.chk's md5 begins while torch is imported (by the import and prepare below).
    with plan_convert(llama_dir, size, not no_verify) as head_start:
        from belle_decrypt.recipes.convert import describe, prepare_conversion

        options = dataclasses.replace(options, head_start=head_start)
        with prepare_conversion(
            llama_dir, out_dir, options, size=size, version=version, verify=not no_verify
        ) as job:
            say(f"model      {describe(job)}", quiet)
            outcome = run_tensors(job, quiet)
    if outcome.manifest_checked:
        say(f"checked    {outcome.manifest_checked} files against Meta's checksums", quiet)
    if outcome.copied:
        say(f"wrote      {', '.join(outcome.copied)}", quiet)
    shards = len(outcome.shards)
    made = f"{out_dir}: {shards} shard{'s' * (shards != 1)},"
    if job.sink.self_contained:  # one GGUF file
        made = f"{out_dir / outcome.shards[0].name}:"
    say(
        f"converted  {made} {human_size(outcome.written)} written in {outcome.seconds:.1f} s",
        quiet,
    )


def meta_run(folder: Path, quiet: bool) -> bool:
    """`check-key` on Meta's folder: the model, each file's checksums (with a bar), what it is
    the key for, the verdict; True when every file matches."""
    from belle_decrypt.tensors.metacheck import check_meta

    with bar(0, "md5", progress_enabled(quiet)) as hashing:
        report = check_meta(folder, on_progress=hashing.update)
    lines = [] if quiet else [("folder", str(report.folder)), ("model", report.model)]
    for check in report.checks if not quiet else ():
        status = "OK" if check.ok else f"FAILED ({check.listing} {check.expected})"
        lines.append((check.path.name, f"{check.algorithm} {check.actual} {status}"))
    if not quiet:
        lines.append(("key for", report.key_for))
    lines.append(("verdict", f"{report.folder} {report.verdict}"))
    for label, value in lines:
        click.echo(one_line(f"{label + ':':<21}{value}"))
    return report.ok
