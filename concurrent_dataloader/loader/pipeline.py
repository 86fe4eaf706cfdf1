"""Ordered read-ahead: keep up to ``batch_pool`` batches in flight, hand them back in order."""

from __future__ import annotations

import collections
import queue
from typing import Any, Callable

from .fetchers import BatchHandle, SampleFetcher

__all__ = ["ReadAhead", "ReadAheadIndexQueue", "PipelineFetcher"]


def _as_indices(index: Any, auto_collation: bool) -> list:
    return list(index) if auto_collation else [index]


class ReadAhead:
    """FIFO of in-flight batches.

    NOTE (ordering): batches are submitted in the order the sampler produced them and
    ``take`` pops the oldest one, so output order equals sampler order no matter which
    sample finishes first.
    """

    # How often a worker waiting on its head batch looks for newly arrived index batches.
    POLL_S = 0.005

    def __init__(self, fetcher: SampleFetcher, auto_collation: bool, collate_fn: Callable,
                 while_waiting: Callable[[], None] | None = None) -> None:
        self.fetcher = fetcher
        self.auto_collation = auto_collation
        self.collate_fn = collate_fn
        # NOTE: called repeatedly while the head batch is still loading, so batches whose indices
        # arrive meanwhile start at once instead of after the head is done.
        self.while_waiting = while_waiting
        self._pending: collections.deque[tuple[Any, BatchHandle]] = collections.deque()

    def __len__(self) -> int:
        return len(self._pending)

    def submit(self, index: Any) -> None:
        self._pending.append((index, self.fetcher.submit(_as_indices(index, self.auto_collation))))

    def take(self, index: Any = None) -> Any:
        """Collated result of the oldest batch; with ``index``, skip stale batches until it."""
        if index is not None:
            while self._pending and self._pending[0][0] is not index:
                self._pending.popleft()[1].cancel()
            if not self._pending:  # never submitted (e.g. admitted before the fetcher existed)
                self.submit(index)
        _, handle = self._pending[0]  # stays counted as in flight while we wait for it
        if self.while_waiting is not None:
            while not handle.wait(self.POLL_S):
                self.while_waiting()
        self._pending.popleft()
        samples = handle.result()
        return self.collate_fn(samples if self.auto_collation else samples[0])

    def clear(self) -> None:
        while self._pending:
            self._pending.popleft()[1].cancel()


class PipelineFetcher:
    """Stands in for torch's ``_MapDatasetFetcher`` inside a worker: ``fetch`` returns the
    batch that the read-ahead queue already started."""

    def __init__(self, read_ahead: ReadAhead) -> None:
        self.read_ahead = read_ahead

    def fetch(self, possibly_batched_index: Any) -> Any:
        return self.read_ahead.take(possibly_batched_index)


class ReadAheadIndexQueue:
    """Wraps a worker's index queue: each ``get`` first tops up the in-flight batches.

    Torch's worker loop handles one message at a time. This proxy reads up to ``batch_pool``
    index messages ahead and starts fetching them, then returns them one by one, so the loop's
    ``fetch`` of the head batch overlaps with the fetches of the batches behind it.
    Control messages (``None``, ``_ResumeIteration``) stop the read-ahead and are returned in
    their original position.
    """

    def __init__(self, index_queue: Any, batch_pool: int, is_control: Callable[[Any], bool]) -> None:
        self._queue = index_queue
        self._batch_pool = batch_pool
        self._is_control = is_control
        self._buffer: collections.deque = collections.deque()
        self.read_ahead: ReadAhead | None = None  # set once the fetcher exists (after worker_init_fn)

    def _admit(self, item: Any) -> None:
        self._buffer.append(item)
        if self.read_ahead is not None and not self._is_control(item):
            self.read_ahead.submit(item[1])

    def _in_flight(self) -> int:
        return len(self.read_ahead) if self.read_ahead is not None else len(self._buffer)

    def top_up(self) -> None:
        """Admit index batches that already arrived, up to ``batch_pool`` in flight (never blocks)."""
        while (self._in_flight() < self._batch_pool
               and not (self._buffer and self._is_control(self._buffer[-1]))):
            try:
                self._admit(self._queue.get(block=False))
            except queue.Empty:
                break

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if not self._buffer:
            self._admit(self._queue.get(block, timeout))  # may raise queue.Empty, as before
        self.top_up()
        return self._buffer.popleft()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)
