"""Streaming XOR as a pipeline: read + keystream + XOR, each hash, and the write overlap.

A reader thread reads a buffer of input and XORs it with the keystream into an output buffer
(with numpy on uint8 arrays, or with Python ints for small inputs, where importing numpy would
cost more than the work); the keystream is read with pread into the output buffer, and the
XOR is done in place there (the input stays intact for hashes of the input). Each
hash and the writer run in a thread of their own (hashlib, numpy and file I/O release the GIL)
and see the buffers in order. A buffer goes back to the pool when every consumer is done with
it, so memory is ``slots * 2 * buffer_size`` whatever the file size. The calling thread
supervises: it imports numpy while the stages start, waits with timeouts (so Ctrl-C and
SIGTERM reach it promptly), reports progress, and on any error, interruption or cancelled
token (:mod:`belle_decrypt.ground.cancel`) stops every stage, waits for them, and raises the first
error.

torch is never imported here unless a caller asks for the "torch" backend (the benchmark
compares it): importing it costs seconds, numpy a tenth of one, and both XOR far faster than
the hashes run.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from queue import Empty, Queue
from typing import TYPE_CHECKING, BinaryIO, Literal, Protocol

from belle_decrypt.ground.cancel import Cancelled, CancelToken
from belle_decrypt.ground.errors import OutputError
from belle_decrypt.ground.torchload import import_torch
from belle_decrypt.streams.keystream import Keystream
from belle_decrypt.streams.output import WriteBehind

if TYPE_CHECKING:
    import numpy
    import numpy.typing as npt
    import torch

BUFFER_SIZE = 8 * 1024 * 1024
"""Bytes per buffer on the array paths (numpy, torch)."""
SLOTS = 3
"""Buffers in flight per stream (each is an input and an output buffer of BUFFER_SIZE)."""
PLAIN_CHUNK = 1024 * 1024
"""Bytes per buffer on the plain path (Python int XOR is fastest around 1 MiB)."""
PLAIN_LIMIT = 4 * 1024 * 1024
"""Bytes a process XORs with Python ints, in total, before it imports numpy instead.

The plain path runs at 0.15-0.3 GB/s with SHA-256 (benchmarks/bench.py); importing numpy costs
0.08-0.2 s here and the numpy path runs at the hash's speed, so the plain path wins below about
30-45 MB. The limit stays well under that: config and tokenizer files never load numpy, and a
file between the limit and the crossover loses at most the import (a tenth of a second).
"""
_POLL = 0.05

Backend = Literal["auto", "numpy", "python", "torch"]
"""How the engine XORs: "auto" picks Python ints or numpy; "torch" is for comparisons only."""


class Hasher(Protocol):
    """What the engine needs of a hashlib object."""

    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...


_plain_lock = threading.Lock()
_plain_used = 0
_torch_lock = threading.Lock()
_torch_ready = False


def _load_numpy() -> None:
    """Import numpy (once per process; later calls are a dictionary look-up)."""
    import numpy  # noqa: F401


def _load_torch() -> None:
    """Get torch ready for the XOR, once: if we import it, keep its intra-op pool to one thread.

    An XOR at 14+ GB/s on one thread is never the bound, and on a 2-core machine extra
    intra-op threads take CPU from the hash threads.
    """
    global _torch_ready
    with _torch_lock:
        if _torch_ready:
            return
        imported_here = "torch" not in sys.modules
        torch = import_torch()
        if imported_here:
            torch.set_num_threads(1)
        _torch_ready = True


def _choose(length: int, backend: Backend) -> Backend:
    """The backend for a stream of ``length`` bytes ("auto" resolved; spends the plain budget)."""
    global _plain_used
    if backend != "auto":
        return backend
    if "numpy" in sys.modules:
        return "numpy"
    with _plain_lock:
        if _plain_used + length <= PLAIN_LIMIT:
            _plain_used += length
            return "python"
    return "numpy"


def prepare(length: int) -> None:
    """Load numpy now if a stream of ``length`` bytes will need it, so that a caller timing
    the stream does not count the import (once per process)."""
    if "numpy" in sys.modules or length == 0:
        return
    with _plain_lock:
        fits_plain = _plain_used + length <= PLAIN_LIMIT
    if not fits_plain:
        _load_numpy()


class _Slot:
    """One buffer pair in flight: the input bytes and the keystream that becomes the output."""

    def __init__(self, size: int) -> None:
        self.src = bytearray(size)
        self.out = bytearray(size)
        self.src_view = memoryview(self.src)
        self.out_view = memoryview(self.out)
        self.length = 0
        self.pending = 0
        self._arrays: tuple[npt.NDArray[numpy.uint8], npt.NDArray[numpy.uint8]] | None = None
        self._tensors: tuple[torch.Tensor, torch.Tensor] | None = None

    def xor(self, n: int, backend: Backend) -> None:
        """out[:n] = src[:n] ^ out[:n], where out[:n] holds the keystream; the input stays
        intact for hashes of the input. numpy and torch release the GIL for the XOR."""
        if backend == "numpy":
            import numpy

            if self._arrays is None:
                self._arrays = (
                    numpy.frombuffer(self.src, dtype=numpy.uint8),
                    numpy.frombuffer(self.out, dtype=numpy.uint8),
                )
            src_a, out_a = self._arrays
            out_n = out_a[:n]
            numpy.bitwise_xor(out_n, src_a[:n], out=out_n)
        elif backend == "torch":
            import torch

            if self._tensors is None:
                self._tensors = (
                    torch.frombuffer(self.src, dtype=torch.uint8),
                    torch.frombuffer(self.out, dtype=torch.uint8),
                )
            src_t, out_t = self._tensors
            out = out_t[:n]
            torch.bitwise_xor(out, src_t[:n], out=out)
        else:
            stream = self.out_view[:n]
            value = int.from_bytes(self.src_view[:n], "little") ^ int.from_bytes(stream, "little")
            self.out_view[:n] = value.to_bytes(n, "little")


def _read_fully(
    read_into: Callable[[memoryview, int], int | None], view: memoryview, label: str
) -> None:
    """Fill ``view`` with ``read_into(part, bytes_done)`` calls; one-line errors name the file."""
    done = 0
    while done < len(view):
        try:
            got = read_into(view[done:], done)
        except OSError as exc:
            raise OutputError(
                f"cannot read: {exc.strerror or exc}; nothing written", label
            ) from exc
        if not got:
            raise OutputError("the file ended early (it changed while being read)", label)
        done += got


_SENTINEL = None
Reader = Callable[[memoryview, int], None]
"""Fills a view with the input bytes at a payload offset (called with offsets in order)."""


class _Shared:
    """What the stages of one call share: the first error, the stop flag, completion, and
    the caller's cancel token."""

    def __init__(self, cancel: CancelToken) -> None:
        self.cancel = cancel
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.changed = threading.Event()
        self.error: BaseException | None = None
        self.running = 0

    def fail(self, exc: BaseException) -> None:
        """Record the first error and stop every stage."""
        with self.lock:
            if self.error is None:
                self.error = exc
        self.stop.set()
        self.changed.set()

    def stage_done(self) -> None:
        with self.lock:
            self.running -= 1
        self.changed.set()

    def get(self, queue: Queue[_Slot] | Queue[_Slot | None]) -> _Slot | None:
        """The next item, or None once the call is stopping (or at the end sentinel)."""
        while not self.stop.is_set():
            try:
                return queue.get(timeout=_POLL)
            except Empty:
                continue
        return None


class _Stream:
    """Reader -> (keystream + XOR) -> consumers, over a pool of buffers, in threads."""

    def __init__(
        self,
        shared: _Shared,
        read: Reader,
        length: int,
        *,
        key: Keystream,
        ready: threading.Event,
        backend: Backend,
        write: Callable[[memoryview], None],
        hashers: Sequence[tuple[Hasher, bool]],
        buffer_size: int,
        slots: int,
    ) -> None:
        """``hashers``: each with whether it sees the output (else the input)."""
        self.shared, self.read, self.length, self.key = shared, read, length, key
        self.ready, self.backend = ready, backend
        self.size = min(buffer_size, length)
        chunks = -(-length // self.size)
        self.free: Queue[_Slot] = Queue()
        for _ in range(max(1, min(slots, chunks))):
            self.free.put(_Slot(self.size))
        works: list[Callable[[_Slot], None]] = [lambda slot: write(slot.out_view[: slot.length])]
        for hasher, output in hashers:
            works.append(_hash_work(hasher, output=output))
        self.consumers = [(work, Queue[_Slot | None]()) for work in works]
        self.done_bytes = 0

    def stages(self) -> list[Callable[[], None]]:
        return [self.produce] + [
            (lambda work=work, queue=queue: self.consume(work, queue))
            for work, queue in self.consumers
        ]

    def produce(self) -> None:
        done = 0
        while done < self.length:
            self.shared.cancel.check()
            slot = self.shared.get(self.free)
            if slot is None:
                return
            n = min(self.size, self.length - done)
            self.read(slot.src_view[:n], done)
            self.key.fill(slot.out_view[:n], done)
            while not self.ready.wait(_POLL):  # numpy (or torch) is being imported
                if self.shared.stop.is_set():
                    return
            slot.xor(n, self.backend)
            slot.length = n
            slot.pending = len(self.consumers)
            for _, queue in self.consumers:
                queue.put(slot)
            done += n
        for _, queue in self.consumers:
            queue.put(_SENTINEL)

    def consume(self, work: Callable[[_Slot], None], queue: Queue[_Slot | None]) -> None:
        while (slot := self.shared.get(queue)) is not None:
            work(slot)
            with self.shared.lock:
                slot.pending -= 1
                last = slot.pending == 0
                if last:
                    self.done_bytes += slot.length
            if last:
                self.free.put(slot)


def _hash_work(hasher: Hasher, *, output: bool) -> Callable[[_Slot], None]:
    def work(slot: _Slot) -> None:
        view = slot.out_view if output else slot.src_view
        hasher.update(view[: slot.length])

    return work


def _sequential_reader(src: BinaryIO, label: str) -> Reader:
    def read(view: memoryview, offset: int) -> None:
        _read_fully(lambda part, _: src.readinto(part), view, label)  # type: ignore[attr-defined]

    return read


def _supervise(
    shared: _Shared,
    stream: _Stream,
    on_progress: Callable[[int], None] | None,
    before: Callable[[], None],
) -> None:
    """Run every stage in a thread; call ``before`` (the numpy import) meanwhile; wait."""
    threads = [
        threading.Thread(target=_guarded(shared, stage), name=f"belle-xor-{i}", daemon=True)
        for i, stage in enumerate(stream.stages())
    ]
    shared.running = len(threads)
    reported = 0
    try:
        for thread in threads:
            thread.start()
        before()
        while True:
            with shared.lock:
                running = shared.running
            if shared.error is not None or running == 0:
                break
            shared.changed.wait(_POLL)
            shared.changed.clear()
            if shared.cancel.cancelled:
                shared.fail(Cancelled("cancelled"))
            reported = _report(stream, on_progress, reported)
    finally:
        shared.stop.set()
        _join_all(threads)
    if shared.error is not None:
        raise shared.error
    _report(stream, on_progress, reported)


def _guarded(shared: _Shared, stage: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            stage()
        except BaseException as exc:
            shared.fail(exc)
        finally:
            shared.stage_done()

    return run


def _report(stream: _Stream, on_progress: Callable[[int], None] | None, reported: int) -> int:
    done = stream.done_bytes
    if on_progress is not None and done > reported:
        on_progress(done - reported)
    return done


def _join_all(threads: Sequence[threading.Thread]) -> None:
    """Wait for stopped stages with timeouts, so the main thread still takes signals."""
    for thread in threads:
        while thread.is_alive():
            thread.join(_POLL)


def xor_stream(
    src: BinaryIO,
    dst: BinaryIO,
    key: Keystream,
    length: int,
    *,
    hashers: Sequence[Hasher] = (),
    hash_output: bool = True,
    on_progress: Callable[[int], None] | None = None,
    buffer_size: int = BUFFER_SIZE,
    dst_label: str = "output",
    slots: int = SLOTS,
    backend: Backend = "auto",
    cancel: CancelToken | None = None,
) -> None:
    """XOR ``length`` bytes of ``src`` with ``key``'s keystream from payload offset 0 into
    ``dst``.

    ``hashers`` see the plaintext: the output when decrypting (``hash_output``), the input when
    encrypting. ``src`` must be positioned at the first payload byte. ``backend`` "auto" uses
    Python ints while the process has XORed less than ``PLAIN_LIMIT`` bytes that way and has
    not imported numpy, and numpy otherwise. ``cancel``, once cancelled, stops every stage
    within a buffer and raises :class:`~belle_decrypt.ground.cancel.Cancelled`. Errors from any
    stage are raised here, after every stage has stopped.
    """
    if length == 0:
        return
    if buffer_size <= 0 or slots <= 0:
        raise ValueError("buffer_size and slots must be positive")
    backend = _choose(length, backend)
    if backend == "python":
        buffer_size = min(buffer_size, PLAIN_CHUNK)
    shared = _Shared(cancel if cancel is not None else CancelToken())
    ready = threading.Event()
    stream = _Stream(
        shared,
        _sequential_reader(src, str(getattr(src, "name", "input"))),
        length,
        key=key,
        ready=ready,
        backend=backend,
        write=WriteBehind(dst, dst_label).write,
        hashers=[(hasher, hash_output) for hasher in hashers],
        buffer_size=buffer_size,
        slots=slots,
    )

    def before() -> None:
        if backend == "numpy":
            _load_numpy()
        elif backend == "torch":
            _load_torch()
        ready.set()

    _supervise(shared, stream, on_progress, before)


__all__ = ["BUFFER_SIZE", "PLAIN_LIMIT", "SLOTS", "Cancelled", "Hasher", "xor_stream"]
