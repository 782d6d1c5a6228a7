"""The ground every other package stands on: errors and exit codes, cancellation (Ctrl-C and
signals), the platform's file and process calls, file states and per-file outcomes, and the
one lazy import of torch.

May import: nothing of belle_decrypt outside ``ground``.
"""
