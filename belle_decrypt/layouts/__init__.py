"""The XOR layouts: how publishers lay out an encrypted release (docs/FORMAT.md sections 1, 4-7).

``protocol`` is the seam (:class:`~belle_decrypt.layouts.protocol.Layout`, ``Source``,
``plan``) and says how to add a layout; ``container``, ``headerless``, ``seed`` and ``perfile``
(with ``gzipped``, its gzip payloads) are the layouts. The protocol imports no concrete
layout: telling them apart is ``xor.detect``'s job, a layer above.

May import: ``ground``, ``streams``, ``checks``.
"""
