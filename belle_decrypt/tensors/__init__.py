"""The tensor pipeline that ``recover`` runs: sources -> recipe -> sink, checked first.

- ``protocol``: the seams (``TensorSource``/``SourceKind``, ``Recipe``, ``Sink``, ``Item``,
  ``Shard``); ``sources/`` (a Hugging Face folder), ``sinks/`` (safetensors and ``--bin``
  shards); the recipes live in :mod:`belle_decrypt.recipes`, a layer above.
- ``run``: ``Recovery.prepare`` (open, choose the recipe, its checks, plan, journal, what is in
  the way, free space) and ``Recovery.run`` (each file under a pending name, journalled; the
  manifest thread, ``listed``; the sum check, ``sumcheck``; the config and tokenizer files,
  ``copies``; the atomic finish, index last).
- ``headstart``: the checksums the run checks beside itself, begun before torch's import.
- ``journal``, ``buffers``, ``options``, ``llama`` (LLaMA's tensor names): shared by all.

A new source, recipe or sink touches no module here but the list that names it: see
:mod:`belle_decrypt.tensors.sources`, :mod:`belle_decrypt.tensors.sinks` and
:mod:`belle_decrypt.recipes.catalogue` for how.

May import: ``ground``, ``streams``, ``checks``, ``layouts`` (the XOR names an input folder
must not hold).
"""
