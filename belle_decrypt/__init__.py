"""belle-decrypt: turn published LLaMA XOR diffs into verified model files, fast and safely."""

__version__ = "0.1.0"
