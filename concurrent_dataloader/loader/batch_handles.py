"""Handles of in-flight batches: what ``SampleFetcher.submit`` returns, and how each kind settles.

A fetcher starts a batch and hands back a handle; the batch pool (``batch_pool.py``) keeps the
handles of the batches in flight and the consumer takes their samples in index order. The
handle is separate from the engines because its contract is the same whichever engine filled
it (threads or an event loop) and whichever way the samples are loaded:

* :class:`BatchHandle`: samples (or one ``__getitems__`` call) as ``concurrent.futures`` futures;
* :class:`_DeferredBatch`: the inline mode (``inline.py``): loaded in the thread that first
  waits for it, on demand and in order, as torch's own fetcher does;
* :class:`_DrainedBatch`: the concurrent path: at most ``k`` pool tasks take positions from one
  iterator, so a sample costs no future or hand-off of its own.

All three deliver the first error *by position* and never a partial batch.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from typing import Any, Callable, Sequence

from .. import telemetry

__all__ = ["BatchHandle"]


class BatchHandle:
    """The in-flight samples of one batch."""

    __slots__ = ("indices", "_futures", "_batch_future", "_head", "_watch", "_finished")

    def __init__(self, indices: Sequence[Any], futures: list[cf.Future] | None = None,
                 batch_future: cf.Future | None = None, head: list[cf.Future] | None = None) -> None:
        self.indices = indices
        self._futures = futures
        self._batch_future = batch_future
        self._head = head or []  # samples loaded before the rest of the batch (the start-up probe)
        self._watch: list[cf.Future] | None = None
        self._finished = 0  # NOTE: _watch[:_finished] are done; a poll only looks beyond them

    def result(self, timeout: float | None = None) -> Any:
        """The samples in index order; a dataset's own ``__getitems__`` result as it returned it
        (torch hands that object to ``collate_fn`` unchanged: it need not be a list)."""
        head = [f.result(timeout) for f in self._head]
        if self._batch_future is not None:
            rest = self._batch_future.result(timeout)
            return head + rest if head else rest
        return head + [f.result(timeout) for f in self._futures or []]

    def _all(self) -> list[cf.Future]:
        if self._watch is None:
            rest = [self._batch_future] if self._batch_future is not None else list(self._futures or [])
            self._watch = self._head + rest
        return self._watch

    def _advance(self) -> cf.Future | None:
        """The first future not yet done, or None. Amortized O(1): the cursor only moves on."""
        watch = self._all()
        while self._finished < len(watch):
            f = watch[self._finished]
            if not f.done():
                return f
            self._finished += 1
        return None

    def done(self) -> bool:
        return self._advance() is None

    def wait(self, timeout: float | None) -> bool:
        """Wait until every sample finished (or failed); False on timeout. Never raises.

        NOTE: a worker polls this every few ms while its head batch loads; waiting on all N
        futures each time would make a batch cost O(N x polls). We wait on one future at a time.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            f = self._advance()
            if f is None:
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            cf.wait([f], timeout=remaining)

    def cancel(self) -> None:
        for f in self._all():
            f.cancel()


class _DeferredBatch(BatchHandle):
    """A batch loaded one sample at a time by whichever thread first waits for it.

    NOTE: no future per sample (a ``cf.Future`` costs a condition variable): samples go straight
    into a list and loading stops at the first error, as in torch's fetcher. The error raised is
    the first by position, as on the concurrent paths.
    """

    __slots__ = ("_load", "_cancelled", "_stats", "_results", "_error")

    def __init__(self, indices: Sequence[Any], load: Callable[[Any], Any], head: list[cf.Future] | None,
                 stats: telemetry.StatsRow | None = None) -> None:
        super().__init__(indices, futures=None, head=head)
        self._load: Callable[[Any], Any] | None = load
        self._cancelled = False
        self._stats = stats  # the caller's thread counts into the loader's row (NOTE [ Stats sink ])
        self._results: list[Any] = []
        self._error: BaseException | None = None

    def _run(self) -> None:
        load, self._load = self._load, None
        if load is None:
            return
        results = self._results
        with telemetry.sink(self._stats):
            for i in self.indices[len(self._head):]:
                if self._cancelled:
                    return
                try:
                    results.append(load(i))
                except Exception as exc:  # delivered by result(), like a pool task's error
                    self._error = exc
                    return

    def result(self, timeout: float | None = None) -> list[Any]:
        self._run()
        head = [f.result(timeout) for f in self._head]
        if self._cancelled:
            raise cf.CancelledError("batch cancelled")
        if self._error is not None:
            raise self._error
        return head + self._results

    def wait(self, timeout: float | None) -> bool:
        self._run()
        return super().wait(timeout)

    def done(self) -> bool:
        return self._load is None and super().done()

    def cancel(self) -> None:
        self._cancelled = True
        super().cancel()


class _DrainedBatch(BatchHandle):
    """A batch loaded by at most ``k`` pool tasks, each taking the next position until none is left.

    NOTE (per-sample cost): one pool task per *slot*, not per sample. A sample then costs no
    future, no queue hand-off and no thread wake-up of its own, so a large batch of cheap samples
    is not dominated by hand-offs, while up to ``k`` samples are still in flight. Positions are
    taken in order (one shared iterator; ``next`` on it is atomic under the GIL), as the per-sample
    FIFO did. After an error no new sample starts; the first error by position is raised.
    ``work(handle, pos, index)`` loads one sample and calls ``_settle`` for it, now or later
    (then it calls ``_hold`` first and ``_release`` after settling).
    """

    __slots__ = ("_rest", "_results", "_errors", "_positions", "_lock", "_outstanding", "_settled", "_stop",
                 "_tasks", "_stopping")

    def __init__(self, indices: Sequence[Any], head: list[cf.Future], rest: Sequence[Any], k: int,
                 pool: cf.ThreadPoolExecutor, work: Callable[["_DrainedBatch", int, Any], None],
                 stopping: threading.Event) -> None:
        super().__init__(indices, batch_future=cf.Future(), head=head)
        self._stopping = stopping  # the fetcher is closing: start no new sample
        self._rest = rest
        self._results: list[Any] = [None] * len(rest)
        self._errors: dict[int, BaseException] = {}
        self._positions = iter(range(len(rest)))
        self._lock = threading.Lock()
        self._outstanding = k
        self._settled = 0
        self._stop = False
        self._tasks: list[cf.Future] = []
        for _ in range(k):
            try:
                task = pool.submit(self._drain, work)
            except RuntimeError:  # the pool is shut down: the fetcher was closed
                self._release()
                continue
            # a task cancelled before it ran (the fetcher closed) still counts as finished
            task.add_done_callback(lambda t: self._release() if t.cancelled() else None)
            self._tasks.append(task)

    def _drain(self, work: Callable[["_DrainedBatch", int, Any], None]) -> None:
        try:
            for pos in self._positions:
                if self._stop or self._stopping.is_set():
                    break
                work(self, pos, self._rest[pos])
        finally:
            self._release()

    def _settle(self, pos: int, value: Any = None, exc: BaseException | None = None) -> None:
        if exc is not None:
            self._errors[pos] = exc
            self._stop = True
        else:
            self._results[pos] = value
        with self._lock:
            self._settled += 1

    def _hold(self) -> None:
        with self._lock:
            self._outstanding += 1

    def _release(self) -> None:
        with self._lock:
            self._outstanding -= 1
            last = self._outstanding == 0
        if not last:
            return
        done = self._batch_future
        assert done is not None
        if not done.set_running_or_notify_cancel():
            return  # cancelled: nobody wants the samples
        if self._errors:
            done.set_exception(self._errors[min(self._errors)])
        elif self._settled < len(self._rest):
            done.set_exception(cf.CancelledError("fetcher closed before the batch was loaded"))
        else:
            done.set_result(self._results)

    def cancel(self) -> None:
        self._stop = True
        for task in self._tasks:
            task.cancel()
        super().cancel()
