"""The recipes: how ``recover`` makes each output tensor from the input tensors.

``additive`` holds the five additive recipes (docs/FORMAT.md section 3) with their checks and
pairing; ``catalogue`` names every recipe and says how to add one.

May import: ``ground``, ``streams``, ``tensors`` (its protocol, buffers and LLaMA names).
"""
