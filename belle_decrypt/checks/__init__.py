"""What a run checks files against: model-card manifests (md5/SHA-256 lists), the verification
of a folder against them, and the identification of a key file (LLaMA-7B's fingerprints).

May import: ``ground``, ``streams``.
"""
