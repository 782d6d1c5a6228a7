"""`python -m belle_decrypt` works like the `belle-decrypt` command."""

from belle_decrypt.entry import main

main()
