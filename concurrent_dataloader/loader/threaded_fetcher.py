"""The threaded engine: fetch threads for I/O, a small decode pool for CPU work.

Each sample's blocking ``fetch_raw`` (or a plain ``__getitem__``) runs in one of
``config.concurrency`` fetch threads; its decode is handed to the decode pool that
:class:`~.fetchers.SampleFetcher` sizes to this process's share of the cores. Works with any
store client, because every fetch is an ordinary blocking call. Only what differs from the
asyncio engine lives here: its pools, how a batch and a single sample are submitted to them,
and how they are shut down.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import weakref
from typing import Any, Callable, Sequence

from .. import telemetry
from .adaptive import Limiter, SharedBudget
from .batch_handles import BatchHandle
from .config import FetchConfig
from .fetchers import SampleFetcher, _shutdown_pools
from .protocol import SupportsFetchDecode
from .wrappers import resolve as _resolve

__all__ = ["ThreadedFetcher"]


class ThreadedFetcher(SampleFetcher):
    """Fetch threads only fetch; decodes queue for a pool sized to the process's core share.

    NOTE: a fetch thread hands its bytes over and goes on to the next fetch instead of
    waiting for a decode slot: 32 threads queueing on a semaphore cost a GIL hand-off per
    sample, and the decode pool's FIFO keeps decodes in the order the fetches finished.
    """

    def __init__(self, dataset: Any, config: FetchConfig, stats: telemetry.StatsRow | None = None,
                 budget: SharedBudget | None = None, slot: int = 0) -> None:
        super().__init__(dataset, config, stats, budget, slot)
        self._pool = self._threads(config.concurrency, "cdl-fetch")
        # the inline path (and plain datasets' __getitem__) decode in their own thread: gated too
        self._decode_gate = threading.BoundedSemaphore(self._decode_slots)
        if self.controller is not None:
            self._gate = Limiter(self.current_limit)
        # See NOTE [ Shutdown ] in lifecycle.py (fetcher close): the finalizer stops the pools
        # even if close() is never called; it must not reference self.
        self._finalizer = weakref.finalize(self, _shutdown_pools, [self._pool, self._cpu_pool], dataset,
                                          self._stopping)

    def _submit_getitems(self, getitems: Callable[[list], list], indices: Sequence[Any]) -> BatchHandle:
        return BatchHandle(indices, batch_future=self._pool.submit(getitems, list(indices)))

    def _submit_rest(self, indices: Sequence[Any], head: list[cf.Future], rest: Sequence[Any]) -> BatchHandle:
        return self._drained(indices, head, self._pool, self._work)

    def _submit_one(self, index: Any) -> cf.Future:
        ds, i = _resolve(self.dataset, index)
        if not self._uses_fetch_decode(ds):
            return self._pool.submit(self._load_sync, index)
        out: cf.Future = cf.Future()
        fetched = self._pool.submit(self._fetch_step, ds, i, index)
        out.add_done_callback(lambda o: fetched.cancel() if o.cancelled() else None)
        fetched.add_done_callback(lambda f: self._after_fetch(f, out, ds, i, index))
        return out

    def _after_fetch(self, fetched: cf.Future, out: cf.Future, ds: SupportsFetchDecode, i: Any,
                     index: Any) -> None:
        # NOTE: the one place that moves ``out`` on from PENDING, exactly once; runs in the fetch
        # thread (or wherever ``fetched`` was cancelled).
        if fetched.cancelled():
            out.cancel()
        if not out.set_running_or_notify_cancel():
            return
        exc = fetched.exception()
        if exc is not None:
            out.set_exception(exc)
            return
        try:
            decoded = self._cpu_pool.submit(self._decode_into, out, ds, i, index, fetched.result())
        except RuntimeError as exc:  # the pool is shut down: the fetcher was closed
            out.set_exception(cf.CancelledError(f"fetcher closed: {exc}"))
            return
        decoded.add_done_callback(lambda d: out.set_exception(cf.CancelledError("fetcher closed"))
                                  if d.cancelled() else None)

    def _decode_into(self, out: cf.Future, ds: SupportsFetchDecode, i: Any, index: Any, raw: Any) -> None:
        try:
            out.set_result(self._decode_step(ds, i, index, raw))
        except Exception as exc:
            out.set_exception(exc)
