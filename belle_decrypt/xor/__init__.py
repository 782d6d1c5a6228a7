"""A decrypt run over XOR layouts: detection of a file's layout, the checks before anything is
written (``batch.prepare_run``, ``perfile_run``), decrypting one file, the batch, and the
diagnosis of a failure (broken download or wrong key) and of a per-file base folder.

May import: ``ground``, ``streams``, ``checks``, ``layouts``.
"""
