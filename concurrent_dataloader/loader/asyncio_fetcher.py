"""The asyncio engine: one event loop thread per process keeps every fetch in flight.

A dataset with a real async fetch (``fetch_raw_async`` over aiobotocore, aiofiles, ...) keeps
thousands of requests in flight from one thread, without a thread per request. The loop only
awaits: decode and every blocking call (plain ``__getitem__``, the default ``fetch_raw_async``)
run in thread pools, never on the loop. What lives here and not in the shared base
(:mod:`.fetchers`): the loop thread and its shutdown, the coroutines that load a sample or a
batch on it, and the choice of loading blocking datasets in I/O threads without the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import operator
import threading
import weakref
from typing import Any, Callable, Sequence

from .. import telemetry
from ..errors import annotate_sample_error
from .adaptive import AsyncLimiter, SharedBudget
from .batch_handles import BatchHandle
from .config import FetchConfig
from .fetchers import SampleFetcher, _shutdown_pools, new_event_loop
from .protocol import ConcurrentDataset, describe_index
from .wrappers import resolve as _resolve

__all__ = ["AsyncioFetcher"]


async def _cancel_other_tasks() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Thread target: run the loop until stopped, then close it *on this thread*."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
        loop.run_until_complete(_cancel_other_tasks())
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread, pools: list, dataset: Any,
               stopping: threading.Event) -> None:
    stopping.set()
    # See NOTE [ Shutdown ] in lifecycle.py (fetcher close). This may run on any thread, including
    # the loop's own thread when the last reference to the fetcher dies inside a callback; then
    # it must not block or join.
    on_loop_thread = threading.current_thread() is thread
    if thread.is_alive() and not loop.is_closed():
        if not on_loop_thread:
            try:
                asyncio.run_coroutine_threadsafe(_cancel_other_tasks(), loop).result(timeout=5)
                aclose = getattr(dataset, "aclose_fetch_resources", None)
                if callable(aclose):  # async clients are bound to this loop: close them on it
                    asyncio.run_coroutine_threadsafe(aclose(), loop).result(timeout=5)
            except Exception:
                pass
        try:
            loop.call_soon_threadsafe(loop.stop)
        except RuntimeError:  # already closed
            pass
        if not on_loop_thread:
            thread.join(timeout=5)
    _shutdown_pools(pools, dataset, stopping)


class AsyncioFetcher(SampleFetcher):
    """Runs an event loop in one thread of this process; decode runs in a small thread pool."""

    def __init__(self, dataset: Any, config: FetchConfig, stats: telemetry.StatsRow | None = None,
                 budget: SharedBudget | None = None, slot: int = 0) -> None:
        super().__init__(dataset, config, stats, budget, slot)
        self._loop = new_event_loop()
        # Blocking fallbacks (plain __getitem__, default fetch_raw_async) run here: sized to the
        # fetch concurrency, since the stdlib default executor would silently cap it.
        self._io_pool = self._threads(config.concurrency, "cdl-aio-io")
        self._loop.set_default_executor(self._io_pool)
        self._limiter = AsyncLimiter(self.current_limit)  # only touched on the loop thread
        self._thread = threading.Thread(target=_run_loop, args=(self._loop,), name="cdl-event-loop", daemon=True)
        self._thread.start()
        self._finalizer = weakref.finalize(self, _stop_loop, self._loop, self._thread,
                                          [self._io_pool, self._cpu_pool], dataset, self._stopping)

    async def _load(self, index: Any) -> Any:
        telemetry.bind_thread(self.stats)  # this task's context only (NOTE [ Stats sink ])
        ds, i = _resolve(self.dataset, index)
        loop = asyncio.get_running_loop()
        try:
            if not self._uses_fetch_decode(ds):
                async with self._limiter:
                    with self._measured() as began:
                        sample = await loop.run_in_executor(self._io_pool, operator.getitem, ds, i)
                self._record(began, None)
            else:
                async with self._limiter:
                    with self._measured() as began:
                        raw = await ds.fetch_raw_async(i)
                self._record(began, raw)
                # NOTE: decode is CPU work and never runs on this (the event-loop) thread.
                sample = await loop.run_in_executor(self._cpu_pool, self._decode, ds, i, raw)
        except Exception as exc:
            self._record_sample(False)
            raise annotate_sample_error(exc, index, describe_index(ds, i))
        self._record_sample(True)
        return sample

    async def _load_batch(self, indices: Sequence[Any]) -> list[Any]:
        telemetry.bind_thread(self.stats)  # inherited by the gathered tasks (NOTE [ Stats sink ])
        results = await asyncio.gather(*(self._load(i) for i in indices), return_exceptions=True)
        for r in results:  # the first failure *by position*, so errors are deterministic
            if isinstance(r, BaseException):
                raise r
        return results

    async def _getitems(self, getitems: Callable[[list], list], indices: Sequence[Any]) -> list[Any]:
        telemetry.bind_thread(self.stats)
        async with self._limiter:
            return await asyncio.get_running_loop().run_in_executor(self._io_pool, getitems, list(indices))

    def _submit_getitems(self, getitems: Callable[[list], list], indices: Sequence[Any]) -> BatchHandle:
        return BatchHandle(indices, batch_future=asyncio.run_coroutine_threadsafe(
            self._getitems(getitems, indices), self._loop))

    def _submit_rest(self, indices: Sequence[Any], head: list[cf.Future], rest: Sequence[Any]) -> BatchHandle:
        ds = _resolve(self.dataset, rest[0])[0]
        if self.controller is None and (not self._uses_fetch_decode(ds) or self._sync_fetch_is_the_same(ds)):
            # A plain __getitem__, or the default fetch_raw_async (fetch_raw in an executor), is
            # blocking: it runs in the I/O threads either way. Without the loop in between, a
            # sample costs no task and no hand-off (see _DrainedBatch); decode stays in _cpu_pool.
            return self._drained(indices, head, self._io_pool, self._work)
        return BatchHandle(indices, batch_future=asyncio.run_coroutine_threadsafe(self._load_batch(rest), self._loop),
                           head=head)

    def _submit_one(self, index: Any) -> cf.Future:
        return asyncio.run_coroutine_threadsafe(self._load(index), self._loop)

    def _sync_fetch_is_the_same(self, ds: Any) -> bool:
        # The default fetch_raw_async runs fetch_raw in an executor: the same fetch, but timed on
        # the loop it would include the hand-off. A real async client is probed on the loop.
        return getattr(type(ds), "fetch_raw_async", None) is ConcurrentDataset.fetch_raw_async
