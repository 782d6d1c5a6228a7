"""Several files at once: run a callable over items with N worker threads.

Results are handed back in the items' order, in the calling thread, as soon as each is ready.
The first exception a call raises stops the handing out of new items, cancels the run's token
(:class:`belle_decrypt.ground.cancel.CancelToken`: the calls in flight hold it and stop at their
next buffer), and is raised once every worker has stopped. An exception in the calling thread
(Ctrl-C, SIGTERM, a failing ``on_result``) does the same. The calling thread only ever waits
with timeouts, so signals reach it promptly. The exception raised carries the unfinished files
that the stopped calls removed (:func:`belle_decrypt.ground.cancel.removed_unfinished`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from belle_decrypt.ground.cancel import CancelToken, carry_removed
from belle_decrypt.ground.platform_io import available_cores

T = TypeVar("T")
R = TypeVar("R")

_POLL = 0.05
BIG_FILE = 256 * 1024 * 1024
"""Files smaller than this finish in well under a second: they do not earn a job of their own."""


def default_jobs(sizes: Sequence[int], hashes_per_file: int = 1, cores: int | None = None) -> int:
    """How many files to decrypt at once.

    One file keeps a core busy per hash (each hash is single-threaded) plus about half a core
    for reading, the XOR and writing. Run as many files at once as the cores hold whole, but
    no more than there are large files (at least one).
    """
    cores = available_cores() if cores is None else cores
    per_file = hashes_per_file + 0.5
    big = sum(1 for size in sizes if size >= BIG_FILE)
    return max(1, min(big, int(cores / per_file)))


class _State(Generic[R]):
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.next_index = 0
        self.results: dict[int, R] = {}
        self.error: BaseException | None = None
        self.errors: list[BaseException] = []
        self.stop = False


def run(
    func: Callable[[T], R],
    items: Sequence[T],
    jobs: int,
    *,
    cancel: CancelToken | None = None,
    on_result: Callable[[T, R], None] | None = None,
) -> list[R]:
    """``[func(item) for item in items]`` with up to ``jobs`` calls at once, in order.

    ``cancel`` is the token ``func`` checks: it is cancelled when a call or the calling thread
    fails, so the calls in flight stop early. Without one, only the handing out stops.
    """
    token = cancel if cancel is not None else CancelToken()
    if jobs <= 1 or len(items) <= 1:
        results: list[R] = []
        for item in items:
            result = func(item)
            results.append(result)
            if on_result is not None:
                on_result(item, result)
        return results

    state: _State[R] = _State()

    def worker() -> None:
        while True:
            with state.cond:
                if state.stop or state.next_index >= len(items):
                    return
                index = state.next_index
                state.next_index += 1
            try:
                result = func(items[index])
            except BaseException as exc:
                with state.cond:
                    state.errors.append(exc)
                    if state.error is None:
                        state.error = exc
                    state.stop = True
                    state.cond.notify_all()
                token.cancel()
                return
            with state.cond:
                state.results[index] = result
                state.cond.notify_all()

    threads = [
        threading.Thread(target=worker, name=f"belle-job-{i}", daemon=True)
        for i in range(min(jobs, len(items)))
    ]
    ordered: list[R] = []
    try:
        for thread in threads:
            thread.start()
        while len(ordered) < len(items):
            with state.cond:
                while len(ordered) not in state.results and state.error is None:
                    state.cond.wait(_POLL)
                if state.error is not None:
                    break
                result = state.results.pop(len(ordered))
            ordered.append(result)
            if on_result is not None:
                on_result(items[len(ordered) - 1], result)
    except BaseException as exc:
        token.cancel()
        try:
            _stop(state, threads)
        except BaseException as again:  # a second Ctrl-C while the workers stop
            _carry(state, again)
            raise
        _carry(state, exc)
        raise
    _stop(state, threads)
    if state.error is not None:
        _carry(state, state.error)
        raise state.error
    return ordered


def _carry(state: _State[R], raised: BaseException) -> None:
    """Let ``raised`` tell which unfinished files the stopped calls removed."""
    with state.cond:
        errors = list(state.errors)
    for error in errors:
        carry_removed(error, raised)


def _stop(state: _State[R], threads: Sequence[threading.Thread]) -> None:
    """Hand out no more items and wait for the workers (with timeouts: signals get through)."""
    with state.cond:
        state.stop = True
    for thread in threads:
        while thread.is_alive():
            thread.join(_POLL)
