"""The `belle-decrypt` entry point: Ctrl-C gives one line and exit 130 from its first line on.

Importing the command line (click, tqdm) takes a moment, and click turns a KeyboardInterrupt
outside a command's own handling into "Aborted!" and exit 1. So SIGINT first ends the process
at once with one line; each command takes it over (as KeyboardInterrupt, to remove its
unfinished file) while it works, and hands it back when it is done.
"""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import NoReturn

EXIT_SIGINT = 130
INTERRUPTED = b"belle-decrypt: error: interrupted\n"


def _interrupted(signum: int, frame: FrameType | None) -> NoReturn:
    """Nothing is being written outside a command's handling: say so in one line and exit."""
    try:
        os.write(2, INTERRUPTED)
    finally:
        os._exit(EXIT_SIGINT)


def main() -> None:
    """Console-script entry point."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not ignored (nohup)
        signal.signal(signal.SIGINT, _interrupted)
    from belle_decrypt.cli.commands import main as run

    run()
