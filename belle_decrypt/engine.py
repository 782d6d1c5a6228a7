"""Streaming XOR as a pipeline: read + keystream + XOR, each hash, and the write overlap.

A reader thread fills a buffer from the input, fills its twin with the keystream and XORs the
two in place (on torch uint8 tensors, or with Python ints for small inputs, where importing
torch would cost more than the work). Each hash and the writer run in a thread of their own
(hashlib and file I/O release the GIL) and see the buffers in order. A buffer goes back to the
pool when every consumer is done with it, so memory is ``slots * 2 * buffer_size`` whatever
the file size. The calling thread supervises: it waits with timeouts (so Ctrl-C and SIGTERM
reach it promptly), reports progress, and on any error or interruption stops every stage,
waits for them, and raises the first error.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from queue import Empty, Queue
from typing import TYPE_CHECKING, BinaryIO, Literal, Protocol

from belle_decrypt.errors import OutputError
from belle_decrypt.keystream import Key

if TYPE_CHECKING:
    import torch

BUFFER_SIZE = 8 * 1024 * 1024
"""Bytes per buffer on the torch path."""
SLOTS = 3
"""Buffers in flight per stream (each is an input and an output buffer of BUFFER_SIZE)."""
PLAIN_CHUNK = 1024 * 1024
"""Bytes per buffer on the plain path (Python int XOR is fastest around 1 MiB)."""
PLAIN_LIMIT = 128 * 1024 * 1024
"""Bytes a process XORs with Python ints, in total, before it imports torch instead.

Importing torch costs 0.7-2.7 s; the int XOR runs at about 0.2-0.25 GB/s. The measured
crossover (benchmarks/bench.py --crossover) is several hundred MB; this limit stays well below
it so that the plain path never costs more than a fraction of a second.
"""
_POLL = 0.05

Backend = Literal["auto", "torch", "python"]


class Hasher(Protocol):
    """What the engine needs of a hashlib object."""

    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...


class Cancelled(Exception):
    """A stream stopped because :func:`cancel_running` was called (another file failed or the
    user interrupted a run with several jobs)."""


_cancel = threading.Event()
_plain_lock = threading.Lock()
_plain_used = 0
_torch_lock = threading.Lock()


def cancel_running() -> None:
    """Make every running and later stream stop with :class:`Cancelled` until reset."""
    _cancel.set()


def reset_cancel() -> None:
    """Allow streams to run again after :func:`cancel_running`."""
    _cancel.clear()


def _load_torch() -> None:
    """Import torch once; if we are the importer, keep its intra-op pool to one thread.

    An XOR at 14+ GB/s on one thread is never the bound, and on a 2-core machine extra
    intra-op threads take CPU from the hash threads.
    """
    with _torch_lock:
        if "torch" in sys.modules:
            return
        import torch

        torch.set_num_threads(1)


def _use_torch(length: int, backend: Backend) -> bool:
    """Choose the XOR for a stream of ``length`` bytes (and spend the plain-path budget)."""
    global _plain_used
    if backend != "auto":
        return backend == "torch"
    if "torch" in sys.modules:
        return True
    with _plain_lock:
        if _plain_used + length <= PLAIN_LIMIT:
            _plain_used += length
            return False
    return True


class _Slot:
    """One buffer pair in flight: the input bytes and the keystream that becomes the output."""

    def __init__(self, size: int, use_torch: bool) -> None:
        self.src = bytearray(size)
        self.out = bytearray(size)
        self.src_view = memoryview(self.src)
        self.out_view = memoryview(self.out)
        self.length = 0
        self.pending = 0
        self._src_t: torch.Tensor | None = None
        self._out_t: torch.Tensor | None = None
        if use_torch:
            import torch

            self._src_t = torch.frombuffer(self.src, dtype=torch.uint8)
            self._out_t = torch.frombuffer(self.out, dtype=torch.uint8)

    def xor(self, n: int) -> None:
        """out[:n] ^= src[:n]; the input stays intact for hashes of the input."""
        if self._out_t is not None and self._src_t is not None:
            import torch

            out = self._out_t[:n]
            torch.bitwise_xor(out, self._src_t[:n], out=out)
        else:
            value = int.from_bytes(self.src_view[:n], "little") ^ int.from_bytes(
                self.out_view[:n], "little"
            )
            self.out_view[:n] = value.to_bytes(n, "little")


def _read_exact(src: BinaryIO, view: memoryview, label: str) -> None:
    done = 0
    while done < len(view):
        try:
            got = src.readinto(view[done:])  # type: ignore[attr-defined]
        except OSError as exc:
            raise OutputError(
                f"cannot read: {exc.strerror or exc}; nothing written", label
            ) from exc
        if not got:
            raise OutputError("the file ended early (it changed while being read)", label)
        done += got


def _write_all(dst: BinaryIO, view: memoryview, label: str) -> None:
    done = 0
    while done < len(view):
        try:
            got = dst.write(view[done:])
        except OSError as exc:
            raise OutputError(
                f"cannot write: {exc.strerror or exc}; nothing written (check the free space "
                "and permissions of the output folder)",
                label,
            ) from exc
        done += got if got is not None else len(view) - done


_SENTINEL = None


class _Pipeline:
    """The stages of one stream and the state they share."""

    def __init__(
        self,
        src: BinaryIO,
        dst: BinaryIO,
        key: Key,
        length: int,
        *,
        hashers: Sequence[Hasher],
        hash_output: bool,
        buffer_size: int,
        slots: int,
        use_torch: bool,
        dst_label: str,
    ) -> None:
        self.src, self.dst, self.key, self.length = src, dst, key, length
        self.hash_output = hash_output
        self.dst_label = dst_label
        self.src_label = str(getattr(src, "name", "input"))
        self.size = min(buffer_size, length)
        chunks = -(-length // self.size)
        self.free: Queue[_Slot] = Queue()
        for _ in range(max(1, min(slots, chunks))):
            self.free.put(_Slot(self.size, use_torch))
        self.consumers: list[tuple[Callable[[_Slot], None], Queue[_Slot | None]]] = [
            (self._write, Queue())
        ]
        for hasher in hashers:
            self.consumers.append((self._hash_with(hasher), Queue()))
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.finished = threading.Event()
        self.error: BaseException | None = None
        self.done_bytes = 0
        self.running_consumers = len(self.consumers)

    # -- shared plumbing ------------------------------------------------------------------

    def fail(self, exc: BaseException) -> None:
        """Record the first error and stop every stage."""
        with self.lock:
            if self.error is None:
                self.error = exc
        self.stop.set()
        self.finished.set()

    def guarded(self, stage: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                stage()
            except BaseException as exc:
                self.fail(exc)

        return run

    def _get(self, queue: Queue[_Slot] | Queue[_Slot | None]) -> _Slot | None:
        """The next item, or None once the stream is stopping (or at the end sentinel)."""
        while not self.stop.is_set():
            try:
                return queue.get(timeout=_POLL)
            except Empty:
                continue
        return None

    def _release(self, slot: _Slot) -> None:
        with self.lock:
            slot.pending -= 1
            last = slot.pending == 0
            if last:
                self.done_bytes += slot.length
        if last:
            self.free.put(slot)

    # -- stages ---------------------------------------------------------------------------

    def produce(self) -> None:
        done = 0
        while done < self.length:
            if _cancel.is_set():
                raise Cancelled("cancelled")
            slot = self._get(self.free)
            if slot is None:
                return
            n = min(self.size, self.length - done)
            _read_exact(self.src, slot.src_view[:n], self.src_label)
            self.key.fill(slot.out_view[:n], done)
            slot.xor(n)
            slot.length = n
            slot.pending = len(self.consumers)
            for _, queue in self.consumers:
                queue.put(slot)
            done += n
        for _, queue in self.consumers:
            queue.put(_SENTINEL)

    def consume(self, work: Callable[[_Slot], None], queue: Queue[_Slot | None]) -> None:
        while (slot := self._get(queue)) is not None:
            work(slot)
            self._release(slot)
        with self.lock:
            self.running_consumers -= 1
            last = self.running_consumers == 0
        if last and not self.stop.is_set():
            self.finished.set()

    def _write(self, slot: _Slot) -> None:
        _write_all(self.dst, slot.out_view[: slot.length], self.dst_label)

    def _hash_with(self, hasher: Hasher) -> Callable[[_Slot], None]:
        def work(slot: _Slot) -> None:
            view = slot.out_view if self.hash_output else slot.src_view
            hasher.update(view[: slot.length])

        return work

    # -- supervision ----------------------------------------------------------------------

    def run(self, on_progress: Callable[[int], None] | None) -> None:
        stages = [self.produce] + [
            (lambda work=work, queue=queue: self.consume(work, queue))
            for work, queue in self.consumers
        ]
        threads = [
            threading.Thread(target=self.guarded(stage), name=f"belle-xor-{i}", daemon=True)
            for i, stage in enumerate(stages)
        ]
        reported = 0
        try:
            for thread in threads:
                thread.start()
            while not self.finished.wait(_POLL):
                if _cancel.is_set():
                    self.fail(Cancelled("cancelled"))
                reported = self._report(on_progress, reported)
        finally:
            self.stop.set()
            _join_all(threads)
        if self.error is not None:
            raise self.error
        self._report(on_progress, reported)

    def _report(self, on_progress: Callable[[int], None] | None, reported: int) -> int:
        done = self.done_bytes
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
    key: Key,
    length: int,
    *,
    hashers: Sequence[Hasher] = (),
    hash_output: bool = True,
    on_progress: Callable[[int], None] | None = None,
    buffer_size: int = BUFFER_SIZE,
    dst_label: str = "output",
    slots: int = SLOTS,
    backend: Backend = "auto",
) -> None:
    """XOR ``length`` bytes of ``src`` with the keystream from payload offset 0 into ``dst``.

    ``hashers`` see the plaintext: the output when decrypting (``hash_output``), the input when
    encrypting. ``src`` must be positioned at the first payload byte. ``backend`` "auto" uses
    Python ints while the process has XORed less than ``PLAIN_LIMIT`` bytes that way and has
    not imported torch, and torch otherwise. Errors from any stage are raised here, after
    every stage has stopped.
    """
    if length == 0:
        return
    if buffer_size <= 0 or slots <= 0:
        raise ValueError("buffer_size and slots must be positive")
    use_torch = _use_torch(length, backend)
    if use_torch:
        _load_torch()
    else:
        buffer_size = min(buffer_size, PLAIN_CHUNK)
    pipeline = _Pipeline(
        src,
        dst,
        key,
        length,
        hashers=hashers,
        hash_output=hash_output,
        buffer_size=buffer_size,
        slots=slots,
        use_torch=use_torch,
        dst_label=dst_label,
    )
    pipeline.run(on_progress)


__all__ = [
    "BUFFER_SIZE",
    "PLAIN_LIMIT",
    "SLOTS",
    "Cancelled",
    "Hasher",
    "cancel_running",
    "reset_cancel",
    "xor_stream",
]
