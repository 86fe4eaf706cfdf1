"""The batch pool: up to ``batch_pool`` batches in flight, handed back in sampler order.

One concept serves both places a loader produces batches:

* ``num_workers=0``: :class:`SamplerBatches` fills the pool from the iterator's sampler and
  takes the oldest batch;
* a worker process: torch's worker loop receives index batches on its index queue.
  :class:`WorkerIndexQueue` stands in for that queue and fills the pool from it, and
  :class:`PoolFetcher` stands in for torch's fetcher and takes the batch the loop asks for.

NOTE [ Batch pool ]
    *In flight* counts every batch whose samples were handed to the fetcher and which the
    consumer has not taken yet, including the head batch while the consumer waits for it.
    The pool never holds more than ``capacity`` in flight: a new batch starts only when the
    consumer has taken one (or, in a worker, while it waits for the head, when an index batch
    arrives and there is room). Batches are taken in the order they were submitted, so output
    order is sampler order however the samples finish. ``clear()`` cancels everything in
    flight (new epoch, error, shutdown; see NOTE [ Shutdown ] in ``lifecycle.py``).
"""

from __future__ import annotations

import collections
import queue
from typing import Any, Callable

from ..errors import WorkersStoppedError
from .batch_handles import BatchHandle
from .fetchers import SampleFetcher

__all__ = ["BatchPool", "SamplerBatches", "WorkerIndexQueue", "PoolFetcher"]


def _as_indices(index: Any, auto_collation: bool) -> list:
    return list(index) if auto_collation else [index]


class BatchPool:
    """FIFO of in-flight batches (see NOTE [ Batch pool ])."""

    # How often a consumer waiting on its head batch calls ``while_waiting``.
    POLL_S = 0.005

    def __init__(self, fetcher: SampleFetcher, capacity: int, auto_collation: bool, collate_fn: Callable,
                 while_waiting: Callable[[], None] | None = None) -> None:
        self.fetcher = fetcher
        self.capacity = capacity
        self.auto_collation = auto_collation
        self.collate_fn = collate_fn
        # Called repeatedly while the head batch is still loading, so batches whose indices
        # arrive meanwhile start at once instead of after the head is done.
        self.while_waiting = while_waiting
        self._pending: collections.deque[tuple[Any, BatchHandle]] = collections.deque()

    def __len__(self) -> int:
        return len(self._pending)

    def has_room(self) -> bool:
        return len(self._pending) < self.capacity

    def submit(self, index: Any) -> None:
        self._pending.append((index, self.fetcher.submit(_as_indices(index, self.auto_collation),
                                                         batched=self.auto_collation)))

    def fill(self, next_index: Callable[[], Any]) -> bool:
        """Submit index batches from ``next_index()`` while there is room; False once it raised
        StopIteration (the source is exhausted for now)."""
        while self.has_room():
            try:
                index = next_index()
            except StopIteration:
                return False
            self.submit(index)
        return True

    def take(self, index: Any = None) -> Any:
        """Collated result of the oldest batch; with ``index``, drop stale batches until it."""
        if index is not None:
            while self._pending and self._pending[0][0] is not index:
                self._pending.popleft()[1].cancel()
            if not self._pending:  # never submitted (it arrived before the fetcher existed)
                self.submit(index)
        _, handle = self._pending[0]  # stays in flight while we wait for it
        if self.while_waiting is not None:
            while not handle.wait(self.POLL_S):
                self.while_waiting()
        self._pending.popleft()
        samples = handle.result()
        return self.collate_fn(samples if self.auto_collation else samples[0])

    def clear(self) -> None:
        while self._pending:
            self._pending.popleft()[1].cancel()


class SamplerBatches:
    """``num_workers=0``: batches from an iterator's sampler through a :class:`BatchPool`."""

    def __init__(self, pool: BatchPool, next_index: Callable[[], Any]) -> None:
        self.pool = pool
        self.next_index = next_index
        self.exhausted = False

    def reset(self) -> None:
        self.pool.clear()
        self.exhausted = False

    def next(self) -> Any:
        if self.pool.fetcher.closed and (not self.exhausted or len(self.pool)):
            # See NOTE [ Shutdown ] (close()): never end the epoch quietly.
            raise WorkersStoppedError("DataLoader.close() stopped the fetch threads while this iterator still owed "
                                      "batches of its epoch; start a new epoch with iter(loader)")
        if not self.exhausted:
            self.exhausted = not self.pool.fill(self.next_index)
        if not len(self.pool):
            raise StopIteration
        return self.pool.take()


class PoolFetcher:
    """Stands in for torch's map-style fetcher inside a worker: ``fetch`` returns the batch that
    the pool already started."""

    def __init__(self, pool: BatchPool) -> None:
        self.pool = pool

    def fetch(self, possibly_batched_index: Any) -> Any:
        return self.pool.take(possibly_batched_index)


class WorkerIndexQueue:
    """Wraps a worker's index queue so that each ``get`` first fills the batch pool from it.

    Torch's worker loop handles one message at a time. This proxy reads index messages ahead
    (as many as the pool has room for), starts them, and returns them one by one, so the loop's
    ``fetch`` of the head batch overlaps with the fetches of the batches behind it. Control
    messages (``None``, ``_ResumeIteration``) stop the read-ahead and are returned in their
    original position. Before the pool exists (until ``worker_init_fn`` ran) messages are only
    buffered, at most ``capacity`` of them.
    """

    def __init__(self, index_queue: Any, capacity: int, is_control: Callable[[Any], bool]) -> None:
        self._queue = index_queue
        self._capacity = capacity
        self._is_control = is_control
        self._buffer: collections.deque = collections.deque()
        self.pool: BatchPool | None = None

    def _admit(self, item: Any) -> Any:
        """Buffer ``item``; return its index batch for the pool (StopIteration for a control message)."""
        self._buffer.append(item)
        if self._is_control(item):
            raise StopIteration
        return item[1]

    def _next_arrived(self) -> Any:
        if self._buffer and self._is_control(self._buffer[-1]):
            raise StopIteration  # nothing is read past a control message
        try:
            item = self._queue.get(block=False)
        except queue.Empty:
            raise StopIteration from None
        return self._admit(item)

    def top_up(self) -> None:
        """Admit index batches that already arrived while the pool has room (never blocks)."""
        if self.pool is not None:
            self.pool.fill(self._next_arrived)
            return
        while len(self._buffer) < self._capacity:
            try:
                self._next_arrived()
            except StopIteration:
                return

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if not self._buffer:
            item = self._queue.get(block, timeout)  # may raise queue.Empty, as before
            try:
                index = self._admit(item)
            except StopIteration:
                pass
            else:
                if self.pool is not None:
                    self.pool.submit(index)
        self.top_up()
        return self._buffer.popleft()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)
