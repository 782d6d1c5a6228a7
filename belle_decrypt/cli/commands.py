"""The `belle-decrypt` command line: a thin click layer over the library.

It parses arguments, calls the library, and hands results and errors to :mod:`console`, which
turns them into lines and exit codes: 0 success, 1 a file failed, 2 unusable input found before
writing, 130/143/129 interrupted.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from belle_decrypt import __version__
from belle_decrypt.cli.console import (
    PROG,
    ConsoleNotices,
    GivenPath,
    bar,
    error,
    failure,
    keep_going_without_stdout_reader,
    progress_enabled,
    user_errors,
    warn,
)
from belle_decrypt.cli.convert import GGUF_TYPE_HELP, GGUF_TYPES, TO_CHOICES, TO_HELP, convert
from belle_decrypt.cli.reports import (
    check_key_run,
    decrypt_run,
    echo_batched,
    encrypt_run,
    verify_lines,
)
from belle_decrypt.ground.errors import BelleError, ExitCode, InputError
from belle_decrypt.ground.states import CheckStatus
from belle_decrypt.recipes.catalogue import RECIPES

# Arguments are checked by the library, which says what is wrong in one line.
PATH = GivenPath(path_type=Path, readable=False)


class DefaultToDecrypt(click.Group):
    """A group where `belle-decrypt ENC KEY OUT` means `belle-decrypt decrypt ENC KEY OUT`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        top_level = {*self.commands, *ctx.help_option_names, "--version"}
        if args and args[0] not in top_level:
            args = ["decrypt", *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(PROG, "ENC_FILE_OR_DIR KEY_FILE OUT_DIR [OPTIONS]")
        formatter.write_usage(PROG, "COMMAND [ARGS]...", prefix="   or: ")


@click.group(
    cls=DefaultToDecrypt,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name=PROG)
def cli() -> None:
    """Decrypt LLaMA XOR diffs (BELLE, point-alpaca, ...) fast, verified, and safely.

    \b
    Example, the upstream loop with belle-decrypt in place of decrypt.py:
      for f in enc/*; do belle-decrypt "$f" consolidated.00.pth out/; done
    or the whole folder at once, checked against the model card's md5 list:
      belle-decrypt enc/ consolidated.00.pth out/ --manifest md5.txt
    and in CI:
      belle-decrypt verify out/ --manifest md5.txt --json
    """


MANIFEST_HELP = (
    "An md5 or SHA-256 list (md5sum / sha256sum output or the model card's text pasted as is; "
    "- reads standard input); repeatable."
)
FORMATS = click.Choice(("belle", "techgpt", "openbuddy", "perfile"))
JOBS = click.IntRange(min=1)
KEEP_GOING_HELP = "Go on even when the first two files fail their checksum with an unknown key."
JOBS_HELP = "Files to decrypt at once in folder form (default: from the cores and the files)."
NO_VERIFY_HELP = "Decrypt files with no checksum (techgpt, openbuddy, perfile) unchecked."
DETECTED = "by name: NAME.<sha256>.enc belle, NAME.e3b0c442…b855.enc techgpt, NAME.enc openbuddy"
FORMAT_HELP = f"The layout [default: {DETECTED}; perfile when KEY_FILE is a folder]."
BASE_HELP = "perfile: the card's list of the base files, checked as they are read."


@cli.command()
@click.argument("source", type=PATH)
@click.argument("key_file", type=PATH)
@click.argument("out_dir", type=PATH)
@click.option(
    "--manifest",
    "manifests",
    multiple=True,
    type=PATH,
    help=MANIFEST_HELP + " Each output's md5 must match its entry.",
)
@click.option("--keep-going", is_flag=True, help=KEEP_GOING_HELP)
@click.option("-j", "--jobs", type=JOBS, help=JOBS_HELP)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars and no summary lines.")
@click.option("--force", is_flag=True, help="Replace an existing output file that differs.")
@click.option(
    "--no-fsync",
    is_flag=True,
    help="Skip fsync of outputs and folder: faster, but a power cut may lose finished files.",
)
@click.option("--format", "format_name", type=FORMATS, help=FORMAT_HELP)
@click.option("--base-manifest", "base_manifests", multiple=True, type=PATH, help=BASE_HELP)
@click.option("--no-verify", is_flag=True, help=NO_VERIFY_HELP)
def decrypt(source: Path, key_file: Path, out_dir: Path, quiet: bool, **options: Any) -> None:
    """Decrypt SOURCE (one .enc file, or a folder of them) into OUT_DIR.

    KEY_FILE is Meta's original LLaMA-7B consolidated.00.pth (OpenAssistant, Pygmalion: the
    folder of LLaMA converted to the Hugging Face layout). Each output is checked against the
    SHA-256 in its header (TechGPT, OpenBuddy, per-file: none) and, with --manifest (required
    for those, or --no-verify), the model card's md5 before it appears under its final name. A
    failure says whether the download is broken or the key is wrong.

    \b
    Example:
      belle-decrypt decrypt BELLE-7B-2M-enc/ llama/7B/consolidated.00.pth BELLE-7B-2M/ \\
          --manifest model-card-md5.txt
    """
    from belle_decrypt.xor.perfile_run import prepare_decrypt

    with user_errors(writing=True):
        with prepare_decrypt(source, key_file, out_dir, ConsoleNotices(quiet), **options) as run:
            tally = decrypt_run(run, quiet)
        if not tally.ok:
            sys.exit(ExitCode.FAILED)


@cli.command()
@click.argument("folder", type=PATH)
@click.option(
    "--manifest", "manifests", multiple=True, required=True, type=PATH, help=MANIFEST_HELP
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("-j", "--jobs", type=JOBS, help="Files hashed at once [default: up to 4].")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar; print only files not OK.")
def verify(
    folder: Path, manifests: tuple[Path, ...], as_json: bool, jobs: int | None, quiet: bool
) -> None:
    """Check the files in FOLDER against md5 or SHA-256 manifests, like `md5sum -c`.

    The manifest's .enc entries are checked when any of them is in FOLDER, and so are its
    decrypted-file entries: the same model card checks the downloads before decrypting and
    the results after. Every listed file of a checked group is reported OK, FAILED or
    MISSING; other files in FOLDER are ignored. Exit 0 when all are OK, 1 when any is
    FAILED or MISSING, 2 when a manifest cannot be read or lists nothing in FOLDER.

    \b
    Example:
      belle-decrypt verify BELLE-7B-2M-enc/ --manifest model-card-md5.txt
      belle-decrypt verify BELLE-7B-2M/ --manifest model-card-md5.txt --json | jq .ok
    """
    from belle_decrypt.checks.manifest import Manifest
    from belle_decrypt.checks.verify import files_to_check, planned_bytes, verify_folder

    with user_errors():
        try:
            manifest = Manifest.read_all(manifests)
            for ignored in manifest.ignored:
                warn(ignored.message)
            files = files_to_check(folder, manifest)
            total = planned_bytes(files)
            with bar(total, "verifying", progress_enabled(quiet)) as verifying:
                report = verify_folder(
                    folder, manifest, files=files, workers=jobs, on_progress=verifying.update
                )
        except BaseException as exc:
            reported = failure(exc)
            if as_json and reported is not None:  # one JSON document, whatever happened
                doc = {"folder": str(folder), "ok": False, "error": reported[0], "files": []}
                click.echo(json.dumps(doc, indent=2))
            raise
    echo_batched(report.json_chunks() if as_json else verify_lines(report, quiet))
    if not report.ok:
        bad = len(report.files) - report.count(CheckStatus.OK)
        error(
            f"{folder}: {bad} of {len(report.files)} listed files FAILED or MISSING; "
            "download (or decrypt) those files again"
        )
        sys.exit(ExitCode.FAILED)


@cli.command("check-key")
@click.argument("key_file", type=GivenPath(path_type=str, readable=False))
@click.option("--full", is_flag=True, help="Hash the whole file and compare with every LLaMA file.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar; print only the verdict.")
@click.option("--format", "format_name", type=FORMATS, default="belle", help="The layout.")
@click.option("--base-manifest", "base_manifests", multiple=True, type=PATH, help=BASE_HELP)
def check_key(key_file: str, quiet: bool, **options: Any) -> None:
    """Say whether KEY_FILE is Meta's original LLaMA-7B consolidated.00.pth, and if not, what.

    Instantly from its size and the md5 of its first 16 MiB; with --full from the md5 of
    the whole file, compared with every known LLaMA file. A checkpoint is described (layers,
    hidden size, vocabulary) so a LLaMA-13B file or a Hugging Face shard is named as such.
    Exit 0 when it is the LLaMA-7B file (--format openbuddy: starts like it), 1 when not. A
    folder: is it a converted LLaMA (and the base --base-manifest lists)?

    \b
    Example:
      belle-decrypt check-key llama/7B/consolidated.00.pth --full
    """
    with user_errors():
        folder = key_file.endswith("/")  # `llama-7b-hf/`: a folder is meant, even a missing one
        ok = check_key_run(Path(key_file), quiet, folder=folder, **options)
    sys.exit(ExitCode.OK if ok else ExitCode.FAILED)


@cli.command()
@click.argument("source", type=PATH)
@click.argument("key_file", type=PATH)
@click.argument("out_dir", type=PATH)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars and no summary lines.")
@click.option("--force", is_flag=True, help="Replace an existing .enc file that differs.")
@click.option("--no-fsync", is_flag=True, help="Skip fsync: faster, less safe on power loss.")
@click.option("--format", "format_name", type=FORMATS, default="belle", help="The layout.")
def encrypt(source: Path, key_file: Path, out_dir: Path, quiet: bool, **options: Any) -> None:
    """Encrypt SOURCE (a model file, or every non-hidden file in a folder) for publishing.

    Each file becomes NAME.<sha256>.enc in OUT_DIR, in the format BELLE and others use
    (--format techgpt: NAME.e3b0c442…b855.enc, openbuddy: NAME.enc), and OUT_DIR/md5sums.txt
    lists the md5 of the .enc files ("after you clone") and of the plain files ("after you
    decrypt"), ready for the model card and for --manifest / verify. --format perfile: KEY_FILE
    is a base folder, payloads keep their names, md5sums-decoded.txt lists the model files.

    \b
    Example:
      belle-decrypt encrypt my-finetune/ llama/7B/consolidated.00.pth my-finetune-enc/
      belle-decrypt encrypt --format perfile my-finetune/ llama-7b-hf/ my-finetune-xor/
    """
    from belle_decrypt.publish.perfile_publish import prepare_any_publish

    with user_errors(writing=True):
        notices = ConsoleNotices(quiet)
        with prepare_any_publish(
            source, key_file, out_dir, notices, options["format_name"]
        ) as publish:
            tally = encrypt_run(
                publish, quiet, force=options["force"], fsync=not options["no_fsync"]
            )
        if not tally.ok:
            sys.exit(ExitCode.FAILED)


@cli.command()
@click.option(
    "--keep",
    type=GivenPath(path_type=Path, file_okay=False),
    help="Build the example in this (new or empty) folder and keep it.",
)
def demo(keep: Path | None) -> None:
    """Show the whole flow on a small built-in example: no network, no LLaMA file.

    It makes a random stand-in key and a plain model with a real torch checkpoint, encrypts
    it as a publisher would, then runs what you would run: decrypt the folder against the
    md5 list, verify, and load the checkpoint. It cleans up unless --keep is given.

    \b
    Example:
      belle-decrypt demo --keep belle-demo/
    """
    import tempfile

    from belle_decrypt.publish.demo import run_steps

    def steps(folder: Path) -> None:
        run_steps(folder, click.echo, _run_demo_step)

    started = time.monotonic()
    with user_errors(writing=True):
        if keep is None:
            with tempfile.TemporaryDirectory(prefix="belle-demo-") as folder:
                steps(Path(folder))
            where = "removed the example (keep it with --keep DIR)"
        else:
            if keep.exists() and any(keep.iterdir()):
                raise InputError("is not empty; give --keep a new or empty folder", keep)
            keep.mkdir(parents=True, exist_ok=True)
            steps(keep)
            where = f"the example is in {keep}"
        click.echo(f"\nDone in {time.monotonic() - started:.1f} s; {where}.")


def _run_demo_step(args: list[str]) -> None:
    """Run one of the demo's command lines through the real command group."""
    try:
        cli.main(args=args, prog_name=PROG, standalone_mode=False)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise BelleError(f"the demo step `{PROG} {' '.join(args)}` failed") from exc


RECOVER_HELP = (
    "Recover a model from an additive diff (tuned - base) in DIFF_DIR and LLaMA-1 in BASE_DIR.\n\n"
    "Hugging Face folders (--to gguf: one GGUF file), checked first, bit-exact, resumable, in "
    "the memory of a few tensors; "
    "--recipe may be left out when DIFF_DIR's own name (or hub-cache name) says the release. "
    "DIFF_DIR may be a PEFT LoRA adapter (adapter_config.json; --then: more, in order).\n\n"
    "\b\nRecipes:\n"
    + "\n".join(f"  {recipe.name:<11} {recipe.purpose}" for recipe in RECIPES.values())
    + "\n\n\b\nExample:\n"
    + "  belle-decrypt recover weight-diff/ llama-7b-hf/ alpaca-7b/ --recipe alpaca\n"
    + "  belle-decrypt recover llama-plus-lora-7b/ --then alpaca-plus-lora-7b/ llama-7b-hf/ out/"
)


cli.add_command(convert)


def main() -> None:
    """Console-script entry point."""
    keep_going_without_stdout_reader()
    cli(prog_name=PROG)


@cli.command(help=RECOVER_HELP)
@click.argument("diff_dir", type=PATH)
@click.argument("base_dir", type=PATH)
@click.argument("out_dir", type=PATH)
@click.option(
    "--recipe", type=click.Choice(list(RECIPES)), help="The release's recipe (see the list above)."
)
@click.option("--then", multiple=True, type=PATH, help="A LoRA adapter merged after DIFF_DIR.")
@click.option("--bin", "as_bin", is_flag=True, help="Write pytorch_model-*.bin shards.")
@click.option("--max-shard-size", help="E.g. 500MB, 10GiB [default: 2GB].")
@click.option("--to", type=click.Choice(TO_CHOICES), help=TO_HELP)
@click.option("--gguf-type", type=click.Choice(GGUF_TYPES), help=GGUF_TYPE_HELP)
@click.option("--manifest", "manifests", multiple=True, type=PATH, help=MANIFEST_HELP)
@click.option("--expect-sum", type=float, help="The sum to check (recipes with a sum).")
@click.option("--force", is_flag=True, help="Replace model files already in OUT_DIR.")
@click.option("--allow-nonfinite", is_flag=True, help="Recover a diff holding NaN or Inf as it is.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars and no summary lines.")
@click.option("--no-fsync", is_flag=True, help="Skip fsync: faster, less safe on power loss.")
def recover(diff_dir: Path, base_dir: Path, out_dir: Path, quiet: bool, **options: Any) -> None:
    """Recover a model from an additive diff in DIFF_DIR and LLaMA-1 in BASE_DIR."""
    from belle_decrypt.cli.reports import recover_run

    with user_errors(writing=True):
        recover_run(diff_dir, base_dir, out_dir, quiet, **options)
