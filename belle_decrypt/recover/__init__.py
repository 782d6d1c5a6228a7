"""Recovering tuned weights published as additive deltas (``tuned - base`` per tensor).

May import: ``ground``, ``streams``, ``checks``, ``layouts`` (the XOR names it refuses).
"""
