"""The sinks: output formats that cut the output tensors into files and write each file as a
stream (safetensors shards, ``--bin`` torch pickles, one GGUF file).

Adding a sink (GGUF): write a module here with a class that has the methods of
:class:`~belle_decrypt.tensors.protocol.Sink` (``plan`` the files with their sizes before
anything is computed, ``write`` one file from the tensors ``produce`` gives, ``index`` the file
written last if any; ``bind`` takes what else the format needs, ``verify`` reads a file back),
and name it in :data:`SINKS`. The pipeline writes each file under a
pending name, journals its SHA-256, and renames them all at the end; the sink does not.
"""

from __future__ import annotations

from collections.abc import Callable

from belle_decrypt.tensors.protocol import Sink
from belle_decrypt.tensors.sinks.ggufsink import GGUF, GgufSink
from belle_decrypt.tensors.sinks.shards import BIN, SAFETENSORS, ShardSink

SINKS: dict[str, Callable[[int], Sink]] = {
    SAFETENSORS: lambda max_size: ShardSink(SAFETENSORS, max_size),
    BIN: lambda max_size: ShardSink(BIN, max_size),
    GGUF: lambda max_size: GgufSink(),
}
"""Each format by name, made for a maximum file size."""
