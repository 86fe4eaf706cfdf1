"""Per-process engines that load the samples of whole batches concurrently: the shared base.

``make_fetcher(dataset, config)`` returns a :class:`~.threaded_fetcher.ThreadedFetcher` or an
:class:`~.asyncio_fetcher.AsyncioFetcher`. ``submit(indices)`` starts every sample of a batch and
returns a :class:`~.batch_handles.BatchHandle`; ``handle.result()`` waits and returns the samples
in index order.

The engines live in their own modules; this one owns what they share, so that a sample is
fetched, decoded, timed, counted and annotated on error the same way whichever engine runs it:

* :class:`SampleFetcher`: one sample's steps (fetch, decode, the inline ``_load_sync``), the
  work a drained batch's pool tasks do, the decode pool and ``submit``'s common path; it mixes
  in the inline-mode decision (:mod:`.inline`);
* :func:`decode_concurrency` and :func:`new_event_loop`: what this process gives an engine;
* :func:`make_fetcher`: which engine a config asks for.

An engine owns threads (and, for asyncio, an event loop), so it is created inside the process
that uses it and never pickled (NOTE [ Fork safety ] in ``concurrent_dataloader/__init__.py``).

Types: ``dataset`` is any map-style dataset; where a step needs the fetch/decode split its
argument is a :class:`~concurrent_dataloader.loader.protocol.SupportsFetchDecode` (checked at run
time by ``is_fetch_decode``, which also refuses a subclass that overrides ``__getitem__``). An
index is whatever the sampler yields (usually an ``int``), hence ``Any``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import os
import threading
import time
import warnings
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from .. import telemetry
from ..errors import annotate_sample_error
from .adaptive import AIMDController, SharedBudget
from .batch_handles import BatchHandle, _DeferredBatch, _DrainedBatch  # noqa: F401  _DeferredBatch: re-exported
from .config import FetchConfig
from .inline import InlinePolicy
from .protocol import SupportsFetchDecode, describe_index, is_fetch_decode
from .wrappers import batched_getitems, resolve as _resolve

if TYPE_CHECKING:
    from .asyncio_fetcher import AsyncioFetcher
    from .threaded_fetcher import ThreadedFetcher

__all__ = ["BatchHandle", "SampleFetcher", "ThreadedFetcher", "AsyncioFetcher", "make_fetcher", "new_event_loop"]


def decode_concurrency() -> int:
    """How many decodes may run at once in this process.

    Decoding is CPU-bound: more concurrent decodes than this process's share of the cores only
    adds GIL and cache contention (measured: 32 decoding threads per worker on 2 cores made a
    local-disk epoch 15-30% slower than torch). Fetches stay fully concurrent; only decode is gated.
    """
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    processes = info.num_workers if info is not None else 1
    return max(1, min(4, (os.cpu_count() or 1) // processes))


_uvloop_warned = False


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop when uvloop is installed; plain asyncio with one warning per process otherwise."""
    global _uvloop_warned
    try:
        import uvloop
    except ImportError:
        if not _uvloop_warned:
            _uvloop_warned = True
            warnings.warn("uvloop is not installed; fetch_impl='asyncio' falls back to the stdlib event loop",
                          RuntimeWarning, stacklevel=3)
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class SampleFetcher(InlinePolicy):
    """Common part of both engines: how one sample is loaded, and error context.

    An engine subclass creates its fetch side (threads or an event loop) and ``_finalizer``,
    and implements ``_submit_getitems``, ``_submit_rest`` and ``_submit_one``.
    """

    # A fetch thread decodes a sample itself when decoding costs less than handing it over.
    DECODE_HERE_BELOW = 50e-6

    _gate: Any = contextlib.nullcontext()
    _decode_gate: Any = contextlib.nullcontext()
    _finalizer: weakref.finalize

    def __init__(self, dataset: Any, config: FetchConfig, stats: telemetry.StatsRow | None = None,
                 budget: SharedBudget | None = None, slot: int = 0) -> None:
        self.dataset = dataset
        self.config = config
        self.stats = stats if stats is not None else telemetry.current_row()
        self.controller: AIMDController | None = None
        if config.adaptive:
            row = self.stats
            self.controller = AIMDController(config.concurrency, budget=budget, slot=slot,
                                             throttle_count=(lambda: row.value("throttled")) if row else None)
        self._closed = False
        # Set first thing by close() or the finalizer (NOTE [ Shutdown ] in lifecycle.py): batches
        # being drained start no new sample (see _DrainedBatch), so closing never waits for a batch.
        self._stopping = threading.Event()
        self._fd_cache: dict[int, tuple[Any, bool]] = {}
        # Decodes of both engines queue here, sized to this process's core share.
        self._decode_slots = decode_concurrency()
        self._cpu_pool = self._threads(self._decode_slots, "cdl-decode")

    @property
    def closed(self) -> bool:
        return self._closed

    def _threads(self, n: int, name: str) -> cf.ThreadPoolExecutor:
        """A pool whose threads serve this fetcher only, so they count into its row (NOTE [ Stats sink ])."""
        return cf.ThreadPoolExecutor(n, thread_name_prefix=name, initializer=telemetry.bind_thread,
                                     initargs=(self.stats,))

    def current_limit(self) -> int:
        return self.controller.limit if self.controller is not None else self.config.concurrency

    @contextlib.contextmanager
    def _measured(self) -> Iterator[float]:
        """Times one fetch and reports its latency and outcome to the adaptive controller."""
        began = time.perf_counter()
        try:
            yield began
        except Exception:
            if self.controller is not None:
                self.controller.on_complete(time.perf_counter() - began, False)
            raise
        if self.controller is not None:
            self.controller.on_complete(time.perf_counter() - began, True)

    def _uses_fetch_decode(self, ds: Any) -> bool:
        """``is_fetch_decode(ds)``, cached per dataset object (it walks the class hierarchy)."""
        hit = self._fd_cache.get(id(ds))
        if hit is None or hit[0] is not ds:
            hit = self._fd_cache[id(ds)] = (ds, is_fetch_decode(ds))
        return hit[1]

    def _decode(self, ds: SupportsFetchDecode, i: Any, raw: Any) -> Any:
        began = time.perf_counter()
        sample = ds.decode(i, raw)
        self._note(decode_s=time.perf_counter() - began)
        return sample

    def _record(self, began: float, raw: Any) -> None:
        elapsed = time.perf_counter() - began
        self._note(fetch_s=elapsed)
        stats = self.stats
        if stats is not None:
            stats.observe(elapsed)
            if isinstance(raw, (bytes, bytearray, memoryview)):
                stats.add("bytes", len(raw))

    def _record_sample(self, ok: bool) -> None:
        if self.stats is not None:
            self.stats.add("samples" if ok else "fetch_errors")

    def _fetch_step(self, ds: SupportsFetchDecode, i: Any, index: Any) -> Any:
        try:
            if self.controller is None:  # the per-sample hot path of cheap samples: no context managers
                began = time.perf_counter()
                raw = ds.fetch_raw(i)
            else:
                with self._gate, self._measured() as began:
                    raw = ds.fetch_raw(i)
        except Exception as exc:
            self._record_sample(False)
            raise annotate_sample_error(exc, index, describe_index(ds, i))
        self._record(began, raw)
        return raw

    def _decode_step(self, ds: SupportsFetchDecode, i: Any, index: Any, raw: Any) -> Any:
        try:
            sample = self._decode(ds, i, raw)
        except Exception as exc:
            self._record_sample(False)
            raise annotate_sample_error(exc, index, describe_index(ds, i))
        self._record_sample(True)
        return sample

    def _work_sync(self, batch: _DrainedBatch, pos: int, index: Any) -> None:
        try:
            batch._settle(pos, self._load_sync(index))
        except Exception as exc:
            batch._settle(pos, exc=exc)

    def _work(self, batch: _DrainedBatch, pos: int, index: Any) -> None:
        """In a fetch thread: fetch one sample, and hand its decode to the decode pool (``_cpu_pool``)."""
        ds, i = _resolve(self.dataset, index)
        if not self._uses_fetch_decode(ds):
            return self._work_sync(batch, pos, index)
        try:
            raw = self._fetch_step(ds, i, index)
        except Exception as exc:
            return batch._settle(pos, exc=exc)
        d = self._decode_ewma
        if d is not None and d < self.DECODE_HERE_BELOW:
            # A decode cheaper than handing it over: do it here (no CPU worth gating either).
            try:
                return batch._settle(pos, self._decode_step(ds, i, index, raw))
            except Exception as exc:
                return batch._settle(pos, exc=exc)
        batch._hold()
        try:
            self._cpu_pool.submit(self._decode_settle, batch, pos, ds, i, index, raw).add_done_callback(
                lambda d: (batch._settle(pos, exc=cf.CancelledError("fetcher closed")), batch._release())
                if d.cancelled() else None)
        except RuntimeError as exc:  # the pool is shut down: the fetcher was closed
            batch._settle(pos, exc=cf.CancelledError(f"fetcher closed: {exc}"))
            batch._release()

    def _decode_settle(self, batch: _DrainedBatch, pos: int, ds: SupportsFetchDecode, i: Any, index: Any,
                       raw: Any) -> None:
        try:
            batch._settle(pos, self._decode_step(ds, i, index, raw))
        except Exception as exc:
            batch._settle(pos, exc=exc)
        finally:
            batch._release()

    def _drained(self, indices: Sequence[Any], head: list[cf.Future], pool: cf.ThreadPoolExecutor,
                 work: Callable[[_DrainedBatch, int, Any], None]) -> BatchHandle:
        rest = indices[len(head):]
        return _DrainedBatch(indices, head, rest, min(len(rest), self.config.concurrency), pool, work,
                             self._stopping)

    def _load_sync(self, index: Any) -> Any:
        ds, i = _resolve(self.dataset, index)
        if self._uses_fetch_decode(ds):
            raw = self._fetch_step(ds, i, index)
            d = self._decode_ewma
            if d is not None and d < self.DECODE_HERE_BELOW:  # no CPU worth gating
                return self._decode_step(ds, i, index, raw)
            with self._decode_gate:
                return self._decode_step(ds, i, index, raw)
        if self.controller is not None:
            try:
                with self._gate, self._measured() as began:
                    sample = ds[i]
            except Exception as exc:
                self._record_sample(False)
                raise annotate_sample_error(exc, index, describe_index(ds, i))
        else:  # the per-sample hot path of cheap samples: no context managers
            began = time.perf_counter()
            try:
                sample = ds[i]
            except Exception as exc:
                self._record_sample(False)
                raise annotate_sample_error(exc, index, describe_index(ds, i))
        self._record(began, None)
        self._record_sample(True)
        return sample

    def _batched_getitems(self) -> Callable[[list], list] | None:
        """A dataset's own ``__getitems__`` (a batched read API, or a user's override) is honoured
        as one task per batch; see :func:`~concurrent_dataloader.loader.wrappers.batched_getitems`."""
        return batched_getitems(self.dataset)

    def submit(self, indices: Sequence[Any], batched: bool = True) -> BatchHandle:
        """Start loading ``indices``. ``batched=False``: one sample without auto-collation, which
        torch loads with ``dataset[index]``, never ``__getitems__``."""
        if self._closed:
            raise RuntimeError("fetcher is closed")
        getitems = self._batched_getitems() if batched else None
        if getitems is not None:
            return self._submit_getitems(getitems, indices)
        head = [] if self._probed else self._probe(indices)
        if self._should_inline():
            return self._inline_batch(indices, head)  # the sync fetch path, in the calling thread
        rest = indices[len(head):]
        if not rest:
            return BatchHandle(indices, [], head=head)
        return self._submit_rest(indices, head, rest)

    def _submit_getitems(self, getitems: Callable[[list], list], indices: Sequence[Any]) -> BatchHandle:
        """The batch as one call of the dataset's own ``__getitems__``."""
        raise NotImplementedError

    def _submit_rest(self, indices: Sequence[Any], head: list[cf.Future], rest: Sequence[Any]) -> BatchHandle:
        """The batch's samples after the probe's ``head``, loaded concurrently."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop the engine (NOTE [ Shutdown ] in lifecycle.py, fetcher close). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._finalizer()
        if self.controller is not None:
            self.controller.close()

    def __enter__(self) -> "SampleFetcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shutdown_pools(pools: list[cf.ThreadPoolExecutor], dataset: Any, stopping: threading.Event) -> None:
    """The end of every engine's shutdown (NOTE [ Shutdown ] in lifecycle.py, fetcher close): no new
    sample starts, queued work is dropped, and the dataset's per-process fetch resources close."""
    stopping.set()
    for pool in pools:
        pool.shutdown(wait=False, cancel_futures=True)
    close = getattr(dataset, "close_fetch_resources", None)
    if callable(close):
        close()

def make_fetcher(dataset: Any, config: FetchConfig, stats: telemetry.StatsRow | None = None,
                 budget: SharedBudget | None = None, slot: int = 0) -> SampleFetcher:
    """``stats`` defaults to the row of the loader whose code is calling (NOTE [ Stats sink ] in
    :mod:`concurrent_dataloader.telemetry`);
    ``budget``/``slot``: this worker's share of the loader-wide in-flight budget (adaptive mode)."""
    if config.fetch_impl == "asyncio":
        from .asyncio_fetcher import AsyncioFetcher as cls
    else:
        from .threaded_fetcher import ThreadedFetcher as cls  # type: ignore[assignment]
    return cls(dataset, config, stats, budget, slot)


def __getattr__(name: str) -> Any:
    # The engines import this module (their base), so it names them lazily: the old imports
    # ``from concurrent_dataloader.loader.fetchers import ThreadedFetcher, AsyncioFetcher`` keep working.
    if name == "ThreadedFetcher":
        from .threaded_fetcher import ThreadedFetcher
        return ThreadedFetcher
    if name == "AsyncioFetcher":
        from .asyncio_fetcher import AsyncioFetcher
        return AsyncioFetcher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
