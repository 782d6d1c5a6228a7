"""Recovering tuned weights published as additive deltas (``tuned - base`` per tensor)."""
