"""Publishing: encrypting a model folder into any XOR layout (with the manifest a card lists),
the per-file layout's encoder, and the self-contained demo.

May import: ``ground``, ``streams``, ``checks``, ``layouts``, ``xor``.
"""
