"""The byte pipeline: keystreams, the read-XOR-write engine, safe output files (temporary name,
fsync, rename), hashing while reading, and the worker pool for several files at once.

May import: ``ground``. ``jobs`` knows nothing of the engine: it runs any per-file call.
"""
