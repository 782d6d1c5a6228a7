"""`python -m belle_decrypt` works like the `belle-decrypt` command."""

from belle_decrypt.cli import main

main()
