"""The one way tests run the command line in-process: click's CliRunner with exceptions let
through, so a traceback fails the test instead of being folded into the result."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result

from belle_decrypt.cli.commands import cli


def run(*args: str | Path, stdin: bytes | None = None) -> Result:
    """``belle-decrypt ARGS`` in-process (``stdin`` its standard input); exit code, stdout and
    stderr in the result."""
    return CliRunner().invoke(cli, [str(arg) for arg in args], input=stdin, catch_exceptions=False)
