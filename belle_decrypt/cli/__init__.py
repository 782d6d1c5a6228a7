"""The command line: ``commands`` parses options (click) and calls the library; ``console``
turns errors and signals into one line and an exit code and draws the bars; ``reports`` shows
each command's run. The entry point itself is :mod:`belle_decrypt.entry` (no click, so Ctrl-C
during start-up is one line).

May import: every package. Nothing outside ``cli`` imports click.
"""
